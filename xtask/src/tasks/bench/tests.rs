//! Unit tests of `crate::tasks::bench`, kept beside it so that the module reads as code.

use super::*;

#[test]
fn the_peer_is_the_bare_build_a_user_types() {
    let step = bare_build(Utf8Path::new("/repo")).to_string();
    assert_eq!(
        step,
        "docker buildx build --load --file docker/server/Dockerfile --target runtime --tag \
         memories/bench-bare-build:latest ."
    );
}

#[test]
fn medians_and_ratios() {
    let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
    assert_eq!(median(&ms(&[5, 1, 3])), Duration::from_millis(3));
    assert_eq!(median(&ms(&[4, 1, 3, 2])), Duration::from_micros(2500));
    assert_eq!(median(&[]), Duration::ZERO);
    let report = Report {
        name: "t",
        ours: Side::new("a", ms(&[120, 130, 110])),
        peer: Side::new("b", ms(&[100, 90, 110])),
        others: Vec::new(),
        note: None,
    };
    assert!((report.ratio() - 1.2).abs() < 1e-9);
    let ten = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(p90(&ten), Duration::from_millis(9));
    assert_eq!(p90(&ms(&[7])), Duration::from_millis(7));
    assert_eq!(p90(&ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])), Duration::from_millis(10));
}
