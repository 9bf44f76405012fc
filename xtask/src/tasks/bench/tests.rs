//! Unit tests of `crate::tasks::bench`, kept beside it so that the module reads as code.

use super::*;

#[test]
fn the_peer_builds_the_same_image_by_hand() {
    let revision = Revision::example();
    let request = BuildRequest {
        images: vec![ImageName::SERVER],
        output: image::Output::Store,
        ..BuildRequest::default()
    };
    let plan = image::plan(Utf8Path::new("/repo"), &revision, &request);
    let step = bare_build(Utf8Path::new("/repo"), &plan, Utf8Path::new("/a/s.tar")).to_string();
    let generator = &plan.generator.as_ref().unwrap().images[0].refs[0];
    assert!(
        // The script says `docker buildx build "$@"`: the arguments start after `build`.
        step.contains(&format!(
            "sh /a/s.tar --output type=oci,dest=/a/s.tar,rewrite-timestamp=true,\
             compression=gzip,compression-level=1 \
             --attest type=provenance,mode=max --attest type=sbom,generator={generator} \
             --build-arg SOURCE_DATE_EPOCH=1577836800 --file docker/server/Dockerfile \
             --target runtime --tag memories/server:1.0.0 --tag memories/server:1.0.0-1234567 \
             --tag memories/server:sha-1234567 \
             --label org.opencontainers.image.created=2020-01-01T00:00:00Z"
        )),
        "{step}"
    );
    assert!(step.ends_with(" ."), "{step}");
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
