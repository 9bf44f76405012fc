//! Unit tests of `crate::image`, kept beside it so that the module reads as code.

use super::*;
use crate::image::version::{AppVersion, rfc3339_utc};

fn revision() -> Revision {
    Revision {
        version: AppVersion::parse("0.4.2").unwrap(),
        commit: "abcdef0123456789abcdef0123456789abcdef01".into(),
        dirty: false,
        epoch: 1_700_000_000,
        created: rfc3339_utc(1_700_000_000),
        // The db's inputs last changed before the commit; the other images have its time.
        epochs: [(ImageName::DB, 1_600_000_000)].into(),
        source: Some("https://example.com/memories.git".into()),
    }
}

#[test]
fn default_plan_builds_every_image_in_one_bake_and_loads() {
    let plan = plan(Utf8Path::new("/repo"), &revision(), &BuildRequest::default());
    assert_eq!(
        plan.step.args,
        [
            "buildx",
            "bake",
            "--file",
            "-",
            "--metadata-file",
            format!("/repo/target/xtask/bake-metadata-{}.json", std::process::id()).as_str()
        ]
    );
    assert_eq!(
        plan.bake["group"]["default"]["targets"],
        json!(["server", "standalone", "db", "redis", "proxy", "prometheus", "otlp"])
    );
    let server = &plan.bake["target"]["server"];
    assert_eq!(server["dockerfile"], "docker/server/Dockerfile");
    assert_eq!(server["target"], "runtime");
    assert_eq!(server["output"], json!(["type=docker,compression=uncompressed"]));
    assert_eq!(server["args"], json!({"SOURCE_DATE_EPOCH": "1700000000"}));
    assert_eq!(server["labels"]["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
    // An image dates from the newest commit that touched its inputs, labels and all.
    let db = &plan.bake["target"]["db"];
    assert_eq!(db["args"], json!({"SOURCE_DATE_EPOCH": "1600000000"}));
    assert_eq!(db["labels"]["org.opencontainers.image.created"], "2020-09-13T12:26:40Z");
    assert_eq!(db["labels"]["org.opencontainers.image.revision"], revision().commit);
    assert!(server.get("attest").is_none() && plan.load.is_none() && plan.exports.is_none());
    assert_eq!(
        server["tags"],
        json!([
            "memories/server:0.4.2",
            "memories/server:0.4.2-abcdef0",
            "memories/server:sha-abcdef0"
        ])
    );
    assert!(server.get("platforms").is_none(), "the builder's own platform by default");
    let labels = &server["labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "0.4.2");
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        "abcdef0123456789abcdef0123456789abcdef01"
    );
    assert_eq!(labels["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
    assert_eq!(labels["org.opencontainers.image.source"], "https://example.com/memories.git");
    assert_eq!(labels["org.opencontainers.image.title"], "memories-server");
    assert_eq!(plan.bake["target"]["standalone"]["target"], "standalone");
    assert_eq!(plan.bake["target"]["db"]["dockerfile"], "docker/db/Dockerfile");
    let stdin: Value = serde_json::from_str(plan.step.stdin.as_deref().unwrap()).unwrap();
    assert_eq!(stdin, plan.bake, "the bake file is exactly what goes to stdin");
}

#[test]
fn caches_are_one_flag_with_a_scope_per_image() {
    let parse = |raw: &str| raw.parse::<Cache>();
    assert_eq!(parse("gha"), Ok(Cache::Gha));
    assert_eq!(parse("local=/tmp/c"), Ok(Cache::Local("/tmp/c".into())));
    let cwd = Utf8PathBuf::try_from(std::env::current_dir().unwrap()).unwrap();
    assert_eq!(parse("local=c"), Ok(Cache::Local(cwd.join("c"))), "relative to the caller");
    assert_eq!(
        parse("registry=ghcr.io/acme/cache"),
        Ok(Cache::Registry("ghcr.io/acme/cache".into()))
    );
    assert_eq!(
        parse("registry=127.0.0.1:5000/cache"),
        Ok(Cache::Registry("127.0.0.1:5000/cache".into())),
        "a port is not a tag"
    );
    assert!(parse("registry=ghcr.io/acme/cache:v1").unwrap_err().contains("without a tag"));
    for bad in ["", "s3=bucket", "registry=", "local=", "gha=x", "local=a,b"] {
        assert!(parse(bad).unwrap_err().contains("registry=REPO"), "{bad}");
    }
    let (from, to) = Cache::Gha.entries(ImageName::SERVER);
    assert_eq!(
        (from, to),
        (
            vec!["type=gha,scope=server".to_owned()],
            vec![
                "type=gha,scope=server,mode=max,compression=zstd,compression-level=3,\
                 force-compression=true"
                    .to_owned()
            ]
        )
    );
    // A local cache that is not there yet is only written.
    let dir = std::env::temp_dir().join(format!("cache-test-{}", std::process::id()));
    let local = Cache::Local(Utf8PathBuf::try_from(dir.clone()).unwrap());
    let (from, to) = local.entries(ImageName::DB);
    assert!(from.is_empty());
    assert_eq!(
        to,
        [format!(
            "type=local,dest={}/db,mode=max,compression=zstd,compression-level=3,\
             force-compression=true",
            dir.display()
        )]
    );
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::write(dir.join("db/index.json"), "{}").unwrap();
    assert_eq!(local.entries(ImageName::DB).0, [format!("type=local,src={}/db", dir.display())]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flags_reach_the_plan() {
    let request = BuildRequest {
        images: vec![ImageName::DB, ImageName::SERVER, ImageName::DB],
        platforms: Some(crate::image::platform::parse_list("linux/amd64,linux/aarch64").unwrap().0),
        output: Output::Push,
        tags: None,
        registry: Some("127.0.0.1:5000/acme".into()),
        builder: Some("multi".into()),
        no_cache: true,
        cache: Some(Cache::Registry("127.0.0.1:5000/acme/cache".into())),
        overwrite: false,
        store: StoreExport::Direct,
        cache_space: Some("bench-1".into()),
    };
    let plan = plan(Utf8Path::new("/repo"), &revision(), &request);
    assert_eq!(plan.step.args[..4], ["buildx", "--builder", "multi", "bake"]);
    assert_eq!(plan.step.args.last().unwrap(), "--no-cache");
    let cached = BuildRequest { no_cache: false, cache_space: None, ..request.clone() };
    let cached = crate::image::plan(Utf8Path::new("/repo"), &revision(), &cached);
    assert!(cached.bake["target"]["db"]["args"].get("CACHE_SPACE").is_none());
    // A cache space of its own: every stage that declares it, the SBOM generator's too.
    let spaced = BuildRequest { no_cache: false, ..request.clone() };
    let spaced = crate::image::plan(Utf8Path::new("/repo"), &revision(), &spaced);
    assert_eq!(spaced.bake["target"]["db"]["args"]["CACHE_SPACE"], "-bench-1");
    let generator = &spaced.generator.as_ref().unwrap().bake["target"]["sbom"];
    assert_eq!(generator["args"]["CACHE_SPACE"], "-bench-1");
    assert_eq!(plan.bake["group"]["default"]["targets"], json!(["server", "db"]));
    let db = &plan.bake["target"]["db"];
    assert_eq!(db["platforms"], json!(["linux/amd64", "linux/arm64"]));
    let archives = plan.exports.as_ref().expect("a pushed build is reproducible");
    assert!(archives.starts_with("/repo/target/xtask"), "{archives}");
    assert_eq!(
        db["output"],
        json!([format!(
            "type=oci,dest={archives}/db.tar,compression=zstd,compression-level=3,\
             force-compression=true"
        )])
    );
    let run = RunId::of_process(std::process::id()).unwrap();
    assert_eq!(
        db["args"],
        json!({"SOURCE_DATE_EPOCH": "1600000000", "CACHE_SPACE": format!("-{run}")}),
        "--no-cache has cache mounts of its own"
    );
    let generator = &plan.generator.as_ref().expect("an SBOM generator").images[0].refs[0];
    assert_eq!(*generator, format!("memories/run-{run}/sbom:0.4.2-abcdef0"));
    assert_eq!(
        db["attest"],
        json!(["type=provenance,mode=max", format!("type=sbom,generator={generator}")])
    );
    assert_eq!(db["tags"][0], "127.0.0.1:5000/acme/db:0.4.2");
    assert!(plan.bake["target"].get("standalone").is_none());
    assert_eq!(db["cache-from"], json!(["type=registry,ref=127.0.0.1:5000/acme/cache:db"]));
    assert_eq!(
        db["cache-to"],
        json!(["type=registry,ref=127.0.0.1:5000/acme/cache:db,mode=max,image-manifest=true,\
             oci-mediatypes=true,compression=zstd,compression-level=3,force-compression=true"])
    );
    let generator = plan.generator.as_ref().unwrap();
    assert_eq!(
        generator.bake["target"]["sbom"]["cache-from"],
        json!(["type=registry,ref=127.0.0.1:5000/acme/cache:sbom"]),
        "the SBOM generator's build is cached too"
    );
    // Nothing is loaded: each archive is pushed under both of its refs.
    assert!(plan.load.is_none());
    let pushed: Vec<(String, usize)> =
        plan.pushes.iter().map(|(archive, refs)| (archive.to_string(), refs.len())).collect();
    assert_eq!(pushed, [(format!("{archives}/server.tar"), 3), (format!("{archives}/db.tar"), 3)]);
    assert!(plan.pushes[1].1.contains(&"127.0.0.1:5000/acme/db:sha-abcdef0".to_owned()));
    let shown = plan.to_plan();
    let items: Vec<String> = shown
        .items
        .iter()
        .filter_map(|item| match item {
            crate::run::plan::PlanItem::Run(step) => Some(step.args[0].clone()),
            crate::run::plan::PlanItem::Request(request) => {
                Some(request.detail["action"].to_string())
            }
            _ => None,
        })
        .collect();
    // The generator, the bake, then each archive pushed.
    assert_eq!(items, ["buildx", "buildx", "\"push\"", "\"push\""]);
}

#[test]
fn a_store_build_goes_straight_into_the_store_where_the_builder_can_else_through_layouts() {
    let request = BuildRequest {
        images: vec![ImageName::SERVER],
        output: Output::Store,
        store: StoreExport::Direct,
        ..BuildRequest::default()
    };
    let runs = |plan: &BuildPlan| -> Vec<String> {
        let items = plan.to_plan().items;
        let steps = items.into_iter().filter_map(|item| match item {
            crate::run::plan::PlanItem::Run(step) => Some(step.args[0].clone()),
            _ => None,
        });
        steps.collect()
    };
    let direct = plan(Utf8Path::new("/repo"), &revision(), &request);
    assert_eq!(
        direct.bake["target"]["server"]["output"],
        json!(["type=image,oci-mediatypes=true,compression=zstd,compression-level=3,\
                force-compression=true"])
    );
    assert!(direct.exports.is_none() && direct.images[0].export.is_none());
    assert_eq!(runs(&direct), ["buildx", "buildx"], "the generator and the bake, no load");

    let archive = BuildRequest { store: StoreExport::Load, ..request.clone() };
    let archive = plan(Utf8Path::new("/repo"), &revision(), &archive);
    let exports = archive.exports.clone().expect("a directory of layouts");
    // One layout for every image: a layer they share is written once.
    assert_eq!(archive.images[0].export.as_ref(), Some(&exports.join("layout")));
    assert_eq!(
        archive.bake["target"]["server"]["output"],
        json!([format!(
            "type=oci,tar=false,dest={exports}/layout,compression=zstd,compression-level=3,\
             force-compression=true"
        )])
    );
    // Only this bake's log is quieted (buildx logs each wait for a shared layer as an error).
    assert_eq!(archive.step.args[..4], ["--log-level", "fatal", "buildx", "bake"]);
    assert_eq!(direct.step.args[..2], ["buildx", "bake"]);
    assert_eq!(runs(&archive), ["buildx", "--log-level", "load"]);
    assert_eq!(archive.load.as_ref().unwrap().args, ["load", "--quiet"], "one load, of all");
    assert_eq!(direct.bake["target"]["server"]["tags"], archive.bake["target"]["server"]["tags"]);

    // A dev build (`type=docker`) and a push are the same whatever the store can take.
    for output in [Output::Load, Output::Push] {
        let outputs = |store| {
            let request = BuildRequest { output, store, ..request.clone() };
            plan(Utf8Path::new("/repo"), &revision(), &request).bake["target"]["server"]["output"]
                .clone()
        };
        assert_eq!(outputs(StoreExport::Direct), outputs(StoreExport::Load));
    }
}

#[test]
fn a_fingerprint_follows_its_images_inputs_but_not_this_runs_scratch_names_or_other_images() {
    let root = Utf8PathBuf::try_from(std::env::temp_dir())
        .unwrap()
        .join(format!("noop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for input in ImageName::SERVER.inputs().iter().chain(ImageName::DB.inputs()) {
        let path = root.join(input);
        if input.ends_with('/') || !input.contains('.') {
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("file"), "one").unwrap();
        } else {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "one").unwrap();
        }
    }
    let request = BuildRequest { images: vec![ImageName::SERVER], ..BuildRequest::default() };
    let planned = || plan(&root, &revision(), &request);
    let server = |plan: &BuildPlan| noop::fingerprint(plan, ImageName::SERVER).unwrap();
    let first = server(&planned());
    assert_eq!(server(&planned()), first, "a plan made again is the same");
    let mut other_scratch = planned();
    let at = other_scratch.step.args.iter().position(|a| a == "--metadata-file").unwrap();
    other_scratch.step.args[at + 1] = root.join("target/xtask/bake-metadata-1.json").to_string();
    assert_eq!(server(&other_scratch), first, "scratch names do not count");

    let both = BuildRequest { images: vec![ImageName::SERVER, ImageName::DB], ..request.clone() };
    let both = plan(&root, &revision(), &both);
    assert_eq!(server(&both), first, "an image built beside others is the same image");
    let db = noop::fingerprint(&both, ImageName::DB).unwrap();
    let db_input = root.join(&ImageName::DB.inputs()[0]);
    let db_file = if db_input.is_dir() { db_input.join("file") } else { db_input };
    std::fs::write(&db_file, "two").unwrap();
    assert_ne!(noop::fingerprint(&both, ImageName::DB).unwrap(), db, "the db's input counts");
    assert_eq!(server(&both), first, "for the db alone");

    let input = root.join(&ImageName::SERVER.inputs()[0]);
    let file = if input.is_dir() { input.join("file") } else { input };
    std::fs::write(&file, "two").unwrap();
    assert_ne!(server(&planned()), first, "an input's content counts");
    std::fs::create_dir_all(root.join("app/__pycache__")).unwrap();
    let changed = server(&planned());
    std::fs::write(root.join("app/__pycache__/x.pyc"), "bytecode").unwrap();
    assert_eq!(server(&planned()), changed, "no context holds bytecode");

    let uncached = BuildRequest { no_cache: true, ..request.clone() };
    let plan = plan(&root, &revision(), &uncached);
    assert!(noop::reuse(&plan, &[first]).unwrap().is_none(), "--no-cache always builds");
    let _ = std::fs::remove_dir_all(&root);
}
