//! Reproducible images: a `cargo xtask build` of one commit for amd64 and arm64 that may take
//! every step from the cache, and one from empty BuildKit caches (every step run again, every
//! cache mount emptied), give every image the same manifest digest on both platforms.
//!
//! Both date their images a day from now (`SOURCE_DATE_EPOCH`), an epoch no build used before.
//! The export keeps file times as the steps left them, so a file that kept the time its step
//! ran, or its checkout's time, differs between the cached step and the one run again. That is
//! how a cached build once differed from a fresh one (a cached step had run before the commit
//! it built). The cached build's layers were mostly first exported by other builds (a dev
//! build's `type=docker`, uncompressed); its zstd blobs must still be the fresh build's,
//! converted from the layers' content.
//! The build from empty caches has cache mounts of its own (`CACHE_SPACE`), so the builds of
//! other tests running beside it are not disturbed.
//!
//! No exemption: the db image carries no cluster prepared at build time (one stamped with the
//! time, a pid and a random nonce), it initialises its database on a first start.

use std::collections::BTreeMap;

use serde_json::Value;
use tests::{Cleanup, require_docker, unique_name, xtask_ok, xtask_process};

/// Every image of the catalogue (`cargo xtask images list`), released or not, but those built
/// for the build machine only (`platforms = "build"`: sbom, the generator every reproducible
/// build runs, and node, the swarm test's engine).
fn images() -> Vec<String> {
    let listed: Value = serde_json::from_str(&xtask_ok(&["images", "list", "--json"])).unwrap();
    let images: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|image| image["platforms"] == "requested")
        .map(|image| image["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(images.len() >= 7, "{images:?}");
    images
}

/// Image → platform → (manifest digest, layer digests).
type Built = BTreeMap<String, BTreeMap<String, (String, Vec<String>)>>;

/// Which build cache a build may read.
#[derive(Clone, Copy)]
enum Caches {
    /// The build cache, as a developer's build does: steps run before are not run again.
    Read,
    /// None: `--no-cache` also gives the build cache mounts of its own (package lists, uv's
    /// wheel cache), empty, so it fetches everything again as on a fresh machine, while builds
    /// beside it keep theirs.
    Empty,
}

fn build(caches: Caches, epoch: u64, registry: &str, cleanup: &mut Cleanup) -> Built {
    let images = images();
    let mut args = vec!["build"];
    args.extend(images.iter().map(String::as_str));
    args.extend(["--platform", "linux/amd64,linux/arm64", "--registry", registry, "--json"]);
    if let Caches::Empty = caches {
        args.push("--no-cache");
    }
    // Every ref the build may load is removed at the end, also after a build that failed
    // half-way (its first images loaded, a later one not).
    let planned: Value =
        serde_json::from_str(&xtask_ok(&[&args[..], &["--dry-run"]].concat())).unwrap();
    for image in planned["images"].as_array().expect("a plan lists its images") {
        for reference in image["refs"].as_array().unwrap() {
            cleanup.image(reference.as_str().unwrap());
        }
    }
    let output = xtask_process()
        .args(&args)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("cannot run xtask");
    assert!(output.status.success(), "xtask {} failed: {:?}", args.join(" "), output.status);
    let out: Value = serde_json::from_slice(&output.stdout).expect("build --json prints JSON");
    let mut built = Built::new();
    for image in out["images"].as_array().expect("images") {
        let platforms = image["platforms"]
            .as_array()
            .expect("a reproducible build reports its platforms")
            .iter()
            .map(|p| {
                let layers =
                    p["layers"].as_array().unwrap().iter().map(|l| l.to_string()).collect();
                (p["platform"].as_str().unwrap().to_owned(), (p["digest"].to_string(), layers))
            })
            .collect();
        built.insert(image["image"].as_str().unwrap().to_owned(), platforms);
    }
    built
}

#[test]
fn a_cached_build_and_one_from_empty_caches_give_the_same_digests() {
    require_docker();
    let mut cleanup = Cleanup::default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let epoch = now.as_secs() + 86_400;
    let first = build(Caches::Read, epoch, &unique_name("localhost/repro-a"), &mut cleanup);
    let second = build(Caches::Empty, epoch, &unique_name("localhost/repro-b"), &mut cleanup);
    let mut every = images();
    every.sort_unstable();
    assert_eq!(first.keys().cloned().collect::<Vec<_>>(), every);
    let mut differing = Vec::new();
    for (image, platforms) in &first {
        assert_eq!(
            platforms.keys().collect::<Vec<_>>(),
            ["linux/amd64", "linux/arm64"],
            "{image} is built for both platforms"
        );
        for (platform, (digest, layers)) in platforms {
            let (again, layers_again) = &second[image][platform];
            if digest != again {
                let changed: Vec<usize> = (0..layers.len().max(layers_again.len()))
                    .filter(|&i| layers.get(i) != layers_again.get(i))
                    .collect();
                differing.push(format!(
                    "{image} {platform}: {digest} then {again} (layers that differ: {changed:?})"
                ));
            }
        }
    }
    assert!(differing.is_empty(), "not reproducible:\n{}", differing.join("\n"));
}
