//! Unit tests of `crate::tasks::release`, kept beside it so that the module reads as code.

use super::readback::*;
use super::*;
use crate::image::platform::parse_list;
use crate::image::version::{AppVersion, rfc3339_utc};
use crate::oci::{FoundIndex, Inspected};
use crate::run::plan::PlanItem;

fn revision(version: &str, dirty: bool) -> Revision {
    Revision {
        version: AppVersion::parse(version).unwrap(),
        commit: "abcdef0123456789abcdef0123456789abcdef01".into(),
        dirty,
        epoch: 1_700_000_000,
        created: rfc3339_utc(1_700_000_000),
        epochs: Default::default(),
        source: None,
    }
}

fn request(allow: Allowances) -> ReleaseRequest {
    ReleaseRequest {
        images: vec![ImageName::DB, ImageName::SERVER],
        registry: "127.0.0.1:5000/acme".into(),
        platforms: parse_list("linux/amd64,linux/aarch64,linux/x86_64").unwrap().0,
        builder: None,
        allow,
        expect_version: None,
        sign: None,
        signing: sign::Options::default(),
        cache: None,
        cache_space: None,
    }
}

#[test]
fn a_signed_release_signs_each_index_before_any_moving_tag_and_never_shows_the_key() {
    let dir = std::env::temp_dir().join(format!("release-sign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("cosign.key");
    std::fs::write(&key, "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nSECRETBODY\n").unwrap();
    let key = Utf8PathBuf::try_from(key).unwrap();
    let signed = ReleaseRequest { sign: Some(KeySource::File(key.clone())), ..request(STABLE) };
    let plan = plan(Utf8Path::new("/repo"), &revision("1.4.2", false), &signed).unwrap();
    let steps = commands(&plan.to_plan());
    let signs: Vec<usize> =
        (0..steps.len()).filter(|&i| steps[i].contains("cosign sign")).collect();
    assert_eq!(signs.len(), 2, "one signature per index: {steps:#?}");
    assert!(
        steps[signs[0]]
            .ends_with("--tlog-upload=false '127.0.0.1:5000/acme/server@sha256:<built>' <stdin"),
        "{}",
        steps[signs[0]]
    );
    let last_push = steps.iter().rposition(|s| s.starts_with("registry: push ")).unwrap();
    let first_move = steps
        .iter()
        .position(|s| s.ends_with("to 127.0.0.1:5000/acme/server:1.4 (the manifest only)"))
        .unwrap();
    assert!(last_push < signs[0] && signs[1] < first_move, "{steps:#?}");
    assert!(steps.iter().all(|s| !s.contains("SECRETBODY")), "{steps:#?}");
    let wrong = ReleaseRequest {
        sign: Some(KeySource::File(dir.join("absent.key").try_into().unwrap())),
        ..request(STABLE)
    };
    let err = plan_err(&wrong);
    assert!(err.contains("cannot read the key"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The commands and registry requests of a plan, as shown.
fn commands(plan: &Plan) -> Vec<String> {
    plan.items
        .iter()
        .filter_map(|item| match item {
            PlanItem::Run(step) => Some(step.to_string()),
            PlanItem::Request(request) => Some(format!("registry: {}", request.summary)),
            PlanItem::WaitFor(_) | PlanItem::Note(_) => None,
        })
        .collect()
}

fn plan_err(request: &ReleaseRequest) -> String {
    format!("{:#}", plan(Utf8Path::new("/repo"), &revision("1.4.2", false), request).unwrap_err())
}

const STABLE: Allowances = Allowances { dirty: false, overwrite: false, latest: true };

#[test]
fn stable_versions_get_semver_tags_and_latest_last() {
    let tags = release_tags(&revision("1.4.2", false), true);
    assert_eq!(tags.immutable, ["1.4.2", "sha-abcdef0"]);
    assert_eq!(tags.moving, ["1.4", "1", "latest"]);
    assert_eq!(release_tags(&revision("1.4.2", false), false).moving, ["1.4", "1"]);
    let post = release_tags(&revision("1.4.2.post1", false), true);
    assert_eq!(post.immutable, ["1.4.2.post1", "sha-abcdef0"]);
    assert_eq!(post.moving, ["1.4", "1", "latest"], "a post-release is stable");
}

#[test]
fn prereleases_move_nothing_and_refuse_latest() {
    let tags = release_tags(&revision("2.0.0rc1", false), false);
    assert_eq!(tags.immutable, ["2.0.0rc1", "sha-abcdef0"]);
    assert!(tags.moving.is_empty());
    let err = check_revision(&revision("2.0.0rc1", false), STABLE).unwrap_err().to_string();
    assert!(err.contains("2.0.0rc1 is a pre-release") && err.contains("--no-latest"), "{err}");
    check_revision(&revision("2.0.0rc1", false), Allowances { latest: false, ..STABLE }).unwrap();
}

#[test]
fn a_dirty_tree_is_refused_unless_allowed() {
    let err = check_revision(&revision("1.0.0", true), STABLE).unwrap_err().to_string();
    assert!(err.contains("uncommitted changes") && err.contains("--allow-dirty"), "{err}");
    check_revision(&revision("1.0.0", true), Allowances { dirty: true, ..STABLE }).unwrap();
    let tags = release_tags(&revision("1.0.0", true), true);
    assert_eq!(
        tags.immutable[1], "sha-abcdef0-dirty",
        "a dirty build never takes the clean sha tag"
    );
}

#[test]
fn plan_reads_every_ref_builds_everything_pushes_each_archive_then_moves_tags() {
    let plan = plan(Utf8Path::new("/repo"), &revision("1.4.2", false), &request(STABLE)).unwrap();
    assert_eq!(
        plan.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );
    let server = &plan.build.bake["target"]["server"];
    assert_eq!(server["platforms"], json!(["linux/amd64", "linux/arm64"]));
    let archive = plan.build.images[0].export.clone().unwrap();
    assert_eq!(
        server["output"],
        json!([format!(
            "type=oci,dest={archive},compression=zstd,compression-level=3,\
             force-compression=true"
        )]),
        "nothing is pushed by the build, which is reproducible"
    );
    assert_eq!(
        server["tags"],
        json!(["127.0.0.1:5000/acme/server:1.4.2", "127.0.0.1:5000/acme/server:sha-abcdef0"]),
        "moving tags are made in the registry, not locally"
    );
    let planned = plan.to_plan();
    let steps = commands(&planned);
    let reads = steps.iter().take_while(|s| s.starts_with("registry: read ")).count();
    assert_eq!(reads, 10, "every ref of both images is read first: {steps:#?}");
    assert_eq!(steps[0], "registry: read 127.0.0.1:5000/acme/server:1.4.2");
    assert!(steps[10].contains("buildx bake"), "the SBOM generator: {}", steps[10]);
    assert!(steps[11].contains("buildx bake"), "{}", steps[11]);
    assert_eq!(
        steps[12],
        format!(
            "registry: push {archive} as 127.0.0.1:5000/acme/server:1.4.2, \
             127.0.0.1:5000/acme/server:sha-abcdef0 (each blob the registry lacks, then the \
             manifests)"
        )
    );
    assert!(steps[13].starts_with("registry: push ") && steps[13].contains("/db.tar as "));
    assert_eq!(
        steps[14],
        "registry: copy 127.0.0.1:5000/acme/server@sha256:<built> to \
         127.0.0.1:5000/acme/server:1.4 (the manifest only)"
    );
    // Moving tags come last, after every immutable ref of every image.
    assert!(steps[14..].iter().all(|s| s.starts_with("registry: copy ")), "{steps:#?}");
    assert!(steps[16].ends_with("to 127.0.0.1:5000/acme/server:latest (the manifest only)"));
    assert_eq!(steps.len(), 20);
}

#[test]
fn every_image_is_the_default() {
    let mut request = request(Allowances { overwrite: true, ..STABLE });
    request.images.clear();
    let plan = plan(Utf8Path::new("/repo"), &revision("1.4.2", false), &request).unwrap();
    let names: Vec<&str> = plan.images.iter().map(|i| i.image.as_str()).collect();
    assert_eq!(names, ["server", "standalone", "db", "redis", "proxy", "prometheus", "otlp"]);
}

fn found(digest: &str, version: Option<&str>) -> FoundIndex {
    FoundIndex {
        digest: digest.into(),
        platforms: BTreeMap::new(),
        version: version.map(str::to_owned),
        revision: None,
    }
}

#[test]
fn moving_tags_only_move_forward() {
    let ours = revision("0.1.1", false);
    assert_eq!(decide_move(&ours, Some("sha256:a"), None), Move::Forward, "absent");
    assert_eq!(
        decide_move(&ours, Some("sha256:a"), Some(&found("sha256:a", Some("0.1.1")))),
        Move::InPlace
    );
    assert_eq!(
        decide_move(&ours, Some("sha256:a"), Some(&found("sha256:b", Some("0.2.0")))),
        Move::Keep("0.2.0".into())
    );
    for older in ["0.1.0", "0.1.1rc1", "0.1.0.post3", "0.0.9"] {
        assert_eq!(
            decide_move(&ours, Some("sha256:a"), Some(&found("sha256:b", Some(older)))),
            Move::Forward,
            "{older}"
        );
    }
    assert_eq!(
        decide_move(&ours, None, Some(&found("sha256:b", Some("0.1.1")))),
        Move::Forward,
        "the same version under another digest (an overwrite) follows the release"
    );
    assert_eq!(
        decide_move(&ours, None, Some(&found("sha256:b", None))),
        Move::Forward,
        "an unlabelled image is not known to be newer"
    );
    assert_eq!(
        decide_move(&ours, None, Some(&found("sha256:b", Some("0.10.0")))),
        Move::Keep("0.10.0".into()),
        "versions compare as numbers, not text"
    );
}

#[test]
fn a_newer_release_stored_as_one_manifest_keeps_its_moving_tags() {
    let labels = [("org.opencontainers.image.version", "0.9.0")];
    let single = crate::oci::inspected_for_test("sha256:one", &["linux/amd64"], &labels);
    let ours = revision("0.1.1", false);
    assert_eq!(
        decide_move(&ours, Some("sha256:a"), Some(&single.found())),
        Move::Keep("0.9.0".into())
    );
}

fn inspected(platforms: &[&str], version: &str, revision: &str) -> Inspected {
    let labels = [
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.revision", revision),
    ];
    crate::oci::inspected_for_test("sha256:index", platforms, &labels)
}

#[test]
fn a_pushed_index_must_hold_every_platform_with_the_release_labels() {
    let rev = revision("1.4.2", false);
    let wanted = parse_list("linux/amd64,linux/arm64").unwrap().0;
    let good = inspected(&["linux/amd64", "linux/arm64"], "1.4.2", &rev.commit);
    let found = check_index(&good, &rev, &wanted).unwrap();
    assert_eq!(found.digest, "sha256:index");
    assert_eq!(found.platforms.keys().collect::<Vec<_>>(), ["linux/amd64", "linux/arm64"]);

    let one = inspected(&["linux/amd64"], "1.4.2", &rev.commit);
    let err = check_index(&one, &rev, &wanted).unwrap_err().to_string();
    assert_eq!(err, "platforms missing: linux/arm64 (found: linux/amd64)");

    let stale = inspected(&["linux/amd64", "linux/arm64"], "1.4.1", &rev.commit);
    let err = check_index(&stale, &rev, &wanted).unwrap_err().to_string();
    assert!(err.contains("org.opencontainers.image.version is `1.4.1`, expected `1.4.2`"), "{err}");
    let read = stale.found();
    assert_eq!(
        (read.version.as_deref(), read.revision.as_deref()),
        (Some("1.4.1"), Some(rev.commit.as_str()))
    );
}
