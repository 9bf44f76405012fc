//! The images, built for real by `cargo xtask build` and run: labels, the standalone image's
//! API, its clean shutdown and durable data, the db image, and an arm64 build under emulation.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    Cleanup, arm64_machine, docker, docker_output, http, published_port, pyproject_version,
    require_docker, unique_name, wait_for_200, xtask_ok, xtask_process,
};

/// `cargo xtask build --json`, once for the whole binary.
fn built() -> &'static Value {
    static BUILT: OnceLock<Value> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_docker();
        serde_json::from_str(&xtask_ok(&["build", "--json"])).expect("build --json prints JSON")
    })
}

/// The `<version>-<sha>` ref of a built image: unlike `<version>`, no other build moves it.
fn image_ref(image: &str) -> String {
    let images = built()["images"].as_array().expect("images");
    let entry =
        images.iter().find(|i| i["image"] == image).unwrap_or_else(|| panic!("{image} built"));
    entry["refs"][1].as_str().expect("a ref").to_owned()
}

fn label(reference: &str, key: &str) -> String {
    docker(&[
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
        reference,
    ])
}

#[test]
fn every_image_builds_with_its_tags_labels_and_digest() {
    let version = pyproject_version();
    let head = String::from_utf8(
        std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(tests::repo_root())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let images = built()["images"].as_array().expect("images");
    let names: Vec<&str> = images.iter().map(|i| i["image"].as_str().unwrap()).collect();
    assert_eq!(names, ["server", "standalone", "db", "redis", "proxy", "prometheus", "otlp"]);
    for image in images {
        let digest = image["digest"].as_str().expect("a digest per image");
        assert!(digest.starts_with("sha256:"), "{digest}");
        let refs: Vec<&str> =
            image["refs"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert_eq!(refs.len(), 3);
        assert!(refs[0].ends_with(&format!(":{version}")), "{refs:?}");
        assert!(refs[2].contains(":sha-"), "{refs:?}");
        for r in &refs {
            docker(&["image", "inspect", "--format", "{{.Id}}", r]);
        }
        assert_eq!(label(refs[1], "org.opencontainers.image.version"), version);
        assert!(label(refs[1], "org.opencontainers.image.revision").starts_with(head.trim()));
        assert!(!label(refs[1], "org.opencontainers.image.created").is_empty());
        assert!(!label(refs[1], "org.opencontainers.image.source").is_empty());
    }
}

#[test]
fn runtime_images_run_as_non_root() {
    for image in ["server", "standalone", "db", "redis", "proxy", "prometheus", "otlp"] {
        let uid = docker(&["run", "--rm", "--entrypoint", "id", &image_ref(image), "-u"]);
        assert_ne!(uid, "0", "{image} runs as root");
    }
}

/// The receiver's image runs the receiver, turns healthy by its own healthcheck, and holds the
/// locked dependencies but none of the server's code: a release of new server code must leave it
/// as it was (its inputs in `docker/images.toml` are its own files).
#[test]
fn otlp_image_serves_the_receiver_turns_healthy_and_holds_none_of_the_server() {
    let image = image_ref("otlp");
    let mut cleanup = Cleanup::default();
    let name = unique_name("memories-otlp-test");
    cleanup.container(&name);
    docker(&["run", "--detach", "--name", &name, "--publish", "127.0.0.1::4318", &image]);
    let port = published_port(&name, 4318);
    wait_for_200(port, "/healthz", Duration::from_secs(30));
    let metrics = http("GET", port, "/metrics", None).unwrap();
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let started = Instant::now();
    loop {
        let health = docker(&["inspect", "--format", "{{.State.Health.Status}}", &name]);
        if health == "healthy" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{name} is {health}, not healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    let server = docker_output(&[
        "run",
        "--rm",
        "--entrypoint",
        "python",
        &image,
        "-c",
        "import memories.api",
    ]);
    let said = String::from_utf8_lossy(&server.stderr);
    assert!(
        !server.status.success() && said.contains("No module named 'memories.api'"),
        "the otlp image holds the server's code: {said}"
    );
}

#[test]
fn standalone_image_serves_stops_fast_and_keeps_its_data() {
    let image = image_ref("standalone");
    let mut cleanup = Cleanup::default();
    let name = unique_name("memories-standalone-test");
    let volume = format!("{name}-data");
    cleanup.container(&name);
    cleanup.volume(&volume);
    docker(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--publish",
        "127.0.0.1::8283",
        "--volume",
        &format!("{volume}:/var/lib/memories"),
        &image,
    ]);
    let port = published_port(&name, 8283);
    let took = wait_for_200(port, "/v1/health", Duration::from_secs(30));
    eprintln!("standalone healthy after {took:?}");

    let health: Value =
        serde_json::from_str(&http("GET", port, "/v1/health", None).unwrap().body).unwrap();
    assert_eq!(health["status"], "ok");
    let version: Value =
        serde_json::from_str(&http("GET", port, "/v1/version", None).unwrap().body).unwrap();
    assert_eq!(version["version"], pyproject_version());
    assert_eq!(label(&image, "org.opencontainers.image.version"), pyproject_version());

    let mut near = vec![0.0f32; 384];
    near[0] = 1.0;
    let mut far = vec![0.0f32; 384];
    far[1] = 1.0;
    for (text, embedding) in [("near", &near), ("far", &far)] {
        let body = serde_json::json!({"text": text, "embedding": embedding}).to_string();
        let created = http("POST", port, "/v1/memories", Some(&body)).unwrap();
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let mut query = near.clone();
    query[1] = 0.1;
    let query: Vec<String> = query.iter().map(|v| v.to_string()).collect();
    let search_path = format!("/v1/memories/search?embedding={}&k=2", query.join(","));
    let search = |port| -> Value {
        let response = http("GET", port, &search_path, None).unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        serde_json::from_str(&response.body).unwrap()
    };
    let found = search(port);
    assert_eq!(found[0]["text"], "near");
    assert_eq!(found[1]["text"], "far");

    let wrong = http("GET", port, "/v1/memories/search?embedding=1,2,3", None).unwrap();
    assert_eq!(wrong.status, 422);
    assert!(wrong.body.contains("expects 384"), "{}", wrong.body);
    let bad_json = http("POST", port, "/v1/memories", Some("{not json")).unwrap();
    assert_eq!(bad_json.status, 422);

    let start = Instant::now();
    docker(&["stop", &name]);
    let stopped = start.elapsed();
    assert!(stopped < Duration::from_secs(3), "docker stop took {stopped:?}");
    assert_eq!(docker(&["inspect", "--format", "{{.State.ExitCode}}", &name]), "0");

    docker(&["start", &name]);
    let port = published_port(&name, 8283);
    wait_for_200(port, "/v1/health", Duration::from_secs(30));
    let found = search(port);
    assert_eq!(found.as_array().unwrap().len(), 2, "the rows survive a restart: {found}");
    let logs = docker_output(&["logs", &name]);
    let logs =
        String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("database system is shut down"), "a clean shutdown is logged:\n{logs}");
    for crash in ["not properly shut down", "automatic recovery in progress"] {
        assert!(!logs.contains(crash), "the restarted database logged `{crash}`:\n{logs}");
    }
}

#[test]
fn db_image_needs_a_password_turns_healthy_over_tcp_and_the_server_image_migrates_it() {
    let image = image_ref("db");
    let refused = docker_output(&["run", "--rm", &image]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("POSTGRES_PASSWORD is not set"));

    let mut cleanup = Cleanup::default();
    let name = unique_name("memories-db-test");
    cleanup.container(&name);
    docker(&["run", "--detach", "--name", &name, "--env", "POSTGRES_PASSWORD=test-only", &image]);
    let start = Instant::now();
    loop {
        let status = docker(&["inspect", "--format", "{{.State.Health.Status}}", &name]);
        if status == "healthy" {
            break;
        }
        assert_ne!(status, "unhealthy");
        assert!(start.elapsed() < Duration::from_secs(60), "db not healthy after 60 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The schema is the server's: its migrations, run from its image on the db's network.
    let url = "DATABASE_URL=postgresql://memories:test-only@127.0.0.1:5432/memories";
    let network = format!("container:{name}");
    let server = image_ref("server");
    let migrate = ["--entrypoint", "python", &server, "-m", "memories.migrate"];
    let run = ["run", "--rm", "--network", &network, "--env", url];
    // Another migration holds the lock (`MIGRATION_LOCK` in migrate.py) for 3 s: this one
    // waits for it rather than migrating beside it.
    let hold = "select pg_advisory_lock(7882827048126343026); select pg_sleep(3);";
    let mut holder = std::process::Command::new("docker")
        .args(["exec", &name, "psql", "-U", "memories", "-d", "memories", "-c", hold])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let migrated = docker(&[&run[..], &migrate[..], &["upgrade", "--json"]].concat());
    let waited = start.elapsed();
    assert!(holder.wait().unwrap().success());
    assert!(waited >= Duration::from_secs(2), "it waited for the lock: {waited:?}");
    let migrated: serde_json::Value = serde_json::from_str(&migrated).unwrap();
    assert_eq!(migrated["before"], serde_json::Value::Null, "{migrated}");
    assert_eq!(migrated["after"], "0002", "{migrated}");
    let again = docker(&[&run[..], &migrate[..], &["upgrade", "--json"]].concat());
    assert!(again.contains(r#""before": "0002""#), "a second run finds nothing to do: {again}");
    let columns = docker(&[
        "exec",
        "--env",
        "PGPASSWORD=test-only",
        &name,
        "psql",
        "--host=127.0.0.1",
        "--username=memories",
        "--dbname=memories",
        "--tuples-only",
        "--no-align",
        "--command",
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'memories'::regclass AND attname = 'embedding'",
    ]);
    assert_eq!(columns, "vector(384)");
}

/// pgBackRest's settings, as `compose/prod.yaml` gives them to the db.
const PGBACKREST: [&str; 7] = [
    "PGBACKREST_STANZA=memories",
    "PGBACKREST_PG1_PATH=/var/lib/postgresql/volume/data",
    "PGBACKREST_PG1_USER=memories",
    "PGBACKREST_PG1_SOCKET_PATH=/tmp/postgresql",
    "PGBACKREST_REPO1_PATH=/var/lib/pgbackrest",
    "PGBACKREST_LOCK_PATH=/tmp/pgbackrest",
    "PGBACKREST_START_FAST=y",
];

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn db_image_backs_up_on_its_schedule_and_says_when_a_scheduled_backup_fails() {
    let image = image_ref("db");
    // `docker run` with the password, `env` and then `rest`.
    let run = |env: &[&str], rest: &[&str]| -> Vec<String> {
        let mut args = vec!["run".to_owned(), "--env".into(), "POSTGRES_PASSWORD=test-only".into()];
        for e in env {
            args.extend(["--env".to_owned(), (*e).to_owned()]);
        }
        args.extend(rest.iter().map(|a| (*a).to_owned()));
        args
    };
    for (env, says) in [
        ("BACKUP_EVERY=1h2m", "BACKUP_EVERY=1h2m is not a duration"),
        ("BACKUP_EVERY=0s", "is not a duration"),
        ("BACKUP_EVERY=30s", "pgBackRest is not"),
    ] {
        let out = docker_output(&strs(&run(&[env], &["--rm", &image])));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env}: {stderr}");
        assert!(stderr.contains(says), "{env}: {stderr}");
    }

    let mut cleanup = Cleanup::default();
    let name = unique_name("memories-db-schedule");
    let repo = format!("{name}-backups");
    cleanup.container(&name);
    cleanup.volume(&repo);
    let mount = format!("{repo}:/var/lib/pgbackrest");
    let env = [&PGBACKREST[..], &["BACKUP_EVERY=2s"]].concat();
    let archive = ["-c", "archive_mode=on", "-c", "archive_command=pgbackrest archive-push %p"];
    let rest = [&["--detach", "--name", &name, "--volume", &mount, &image], &archive[..]].concat();
    docker(&strs(&run(&env, &rest)));
    // tini is PID 1, so the schedule is not PostgreSQL's child.
    assert_eq!(docker(&["exec", &name, "cat", "/proc/1/comm"]), "tini");

    // The schedule's state file, as `key -> value`.
    let schedule = || -> std::collections::BTreeMap<String, String> {
        let out = docker_output(&["exec", &name, "cat", "/var/lib/pgbackrest/schedule"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pairs = text.lines().filter_map(|l| l.split_once('='));
        pairs.map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    };
    let time = |state: &std::collections::BTreeMap<String, String>, key: &str| -> i64 {
        state.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let fulls = || {
        let info = docker(&["exec", &name, "pgbackrest", "info", "--output=json"]);
        let info: Value = serde_json::from_str(&info).unwrap();
        let backups = info[0]["backup"].as_array().cloned().unwrap_or_default();
        backups.iter().filter(|b| b["type"] == "full").count()
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(60), "{what} within 60 s");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // With no backup yet, the first comes at the first check; then one whenever the newest is
    // older than 2 s.
    until("two scheduled full backups", &|| fulls() >= 2);
    let ok = schedule();
    assert_eq!(ok["every"], "2", "{ok:?}");
    assert!(time(&ok, "last_ok") > 0 && ok["last_error"].is_empty(), "{ok:?}");

    // A repository it cannot write to: the next attempt fails, is logged and is recorded.
    let backup_dir = "/var/lib/pgbackrest/backup/memories";
    docker(&["exec", &name, "chmod", "0500", backup_dir]);
    until("a failed attempt recorded", &|| {
        let state = schedule();
        time(&state, "last_attempt") > time(&state, "last_ok")
    });
    let failed = schedule();
    assert!(!failed["last_error"].is_empty(), "{failed:?}");
    let logs = docker_output(&["logs", &name]);
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("db: the scheduled full backup failed"), "{logs}");
    // Writable again: the schedule recovers on its own.
    docker(&["exec", &name, "chmod", "0750", backup_dir]);
    until("a successful attempt after the failure", &|| {
        let state = schedule();
        time(&state, "last_ok") >= time(&state, "last_attempt") && state["last_error"].is_empty()
    });
}

#[test]
fn server_builds_for_arm64_and_runs_there() {
    require_docker();
    let registry = unique_name("localhost/arm64-test");
    let out = xtask_ok(&[
        "build",
        "server",
        "--platform",
        "linux/aarch64",
        "--registry",
        &registry,
        "--json",
    ]);
    let out: Value = serde_json::from_str(&out).unwrap();
    let mut cleanup = Cleanup::default();
    let refs: Vec<String> = out["images"][0]["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    for r in &refs {
        cleanup.image(r);
    }
    let machine = arm64_machine(&refs[0]);
    assert_eq!(machine, "aarch64");
}

/// A build straight into the image store (`MEMORIES_STORE_EXPORT=direct`: BuildKit's
/// `type=image`, where the builder is the engine's own over the containerd store) gives the
/// images a build through an OCI layout and `docker load` (the default) gives: the same
/// manifest, config and layers for each platform, with the platforms read back from the store
/// for `--json`. The engine holds the direct build's cache until it restarts (see
/// `StoreExport::Direct`): one image, so that a test run leaves little.
#[test]
fn a_build_straight_into_the_store_gives_the_images_a_build_through_docker_load_gives() {
    require_docker();
    let mut cleanup = Cleanup::default();
    let build = |registry: &str, store: Option<&str>| {
        let mut build = xtask_process();
        build.args(["build", "server", "--platform", "linux/amd64,linux/arm64", "--json"]);
        build.args(["--registry", registry]);
        match store {
            Some(way) => build.env("MEMORIES_STORE_EXPORT", way),
            None => build.env_remove("MEMORIES_STORE_EXPORT"),
        };
        let output = build.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let built: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.success(), built, stderr)
    };
    let refs = |built: &Value| -> Vec<String> {
        let refs = built["images"][0]["refs"].as_array().cloned().unwrap_or_default();
        refs.iter().map(|r| r.as_str().unwrap().to_owned()).collect()
    };
    let store = docker(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(
        store.contains("io.containerd.snapshotter.v1"),
        "the tests' engine keeps images in the containerd store (docker-env): {store}"
    );
    let (ok, direct, said) = build(&unique_name("localhost/direct-test"), Some("direct"));
    refs(&direct).iter().for_each(|r| cleanup.image(r));
    assert!(ok, "{said}");
    let (ok, archived, said_archived) = build(&unique_name("localhost/archive-test"), None);
    refs(&archived).iter().for_each(|r| cleanup.image(r));
    assert!(ok, "{said_archived}");

    assert!(!said.contains("docker load"), "the engine's own builder needs no load: {said}");
    assert!(said_archived.contains("docker load"), "the default loads layouts: {said_archived}");
    assert!(!said_archived.contains("ERROR"), "{said_archived}");
    let platforms = &direct["images"][0]["platforms"];
    let names: Vec<&str> =
        platforms.as_array().unwrap().iter().map(|p| p["platform"].as_str().unwrap()).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64"]);
    assert_eq!(*platforms, archived["images"][0]["platforms"], "the same image either way");
    // Each tag names the index the build reported, either way.
    for built in [&direct, &archived] {
        for reference in refs(built) {
            let id = docker(&["image", "inspect", "--format", "{{.Id}}", &reference]);
            assert_eq!(id, built["images"][0]["digest"].as_str().unwrap(), "{reference}");
        }
    }
}

/// A direct build without `--json` keeps no platforms; the same build asked again with
/// `--json` answers from the store (nothing to build) and reads them from there.
#[test]
fn a_direct_no_op_build_with_json_reads_its_platforms_from_the_store() {
    require_docker();
    let registry = unique_name("localhost/direct-noop-test");
    let mut cleanup = Cleanup::default();
    let build = |json: bool| {
        let mut build = xtask_process();
        build.args(["build", "redis", "--registry", &registry]);
        build.env("MEMORIES_STORE_EXPORT", "direct");
        if json {
            build.arg("--json");
        }
        let output = build.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        (String::from_utf8(output.stdout).unwrap(), stderr)
    };
    let (lines, _) = build(false);
    for line in lines.lines() {
        cleanup.image(line.split_whitespace().next().unwrap());
    }
    let (json, said) = build(true);
    assert!(said.contains("nothing to build"), "{said}");
    assert!(said.contains("docker save"), "the platforms come from the store: {said}");
    let built: Value = serde_json::from_str(&json).unwrap();
    let platforms = built["images"][0]["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 1, "{json}");
    assert!(platforms[0]["digest"].as_str().unwrap().starts_with("sha256:"), "{json}");
    assert!(!platforms[0]["layers"].as_array().unwrap().is_empty(), "{json}");
}

#[test]
fn server_start_up_fails_in_one_line_when_the_database_is_wrong_or_absent() {
    let image = image_ref("server");
    let cases: [(&[&str], &str); 3] = [
        (&[], "memories: error: no database configured: set DATABASE_URL="),
        (
            &["DATABASE_URL=postgresql://u:secret@db/x", "POSTGRES_HOST=other"],
            "memories: error: DATABASE_URL and POSTGRES_HOST are both set",
        ),
        (
            &["DATABASE_URL=postgresql://u:secret@127.0.0.1:9/x", "DB_WAIT_TIMEOUT=1"],
            "memories: error: database at 127.0.0.1:9/x not ready after 1s:",
        ),
    ];
    for (env, says) in cases {
        let mut args = vec!["run", "--rm"];
        for e in env {
            args.extend(["--env", e]);
        }
        args.push(&image);
        let start = Instant::now();
        let output = docker_output(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{env:?}: {stderr}");
        assert!(start.elapsed() < Duration::from_secs(15), "{env:?} took {:?}", start.elapsed());
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with(says), "{env:?}: {stderr}");
        assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    }
}

/// A build in which nothing that reaches the image changed (its bake definition, the files it
/// copies) is answered from the image store: the same refs, digests and platforms as the
/// build that made them, and no bake, also for an image first built beside another. An edited
/// input, or a ref gone from the store, builds again.
#[test]
fn a_build_with_nothing_changed_answers_from_the_store_and_an_edit_builds_again() {
    require_docker();
    let copy = tests::RepoCopy::new("0.0.0.dev5");
    let build_these = |images: &[&str]| {
        let output = xtask_process()
            .env("MEMORIES_ROOT", &copy.root)
            .arg("build")
            .args(images)
            .arg("--json")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let built: Value = serde_json::from_slice(&output.stdout).unwrap();
        (built, stderr.contains("nothing to build"))
    };
    let build = || build_these(&["server"]);
    let (both, reused) = build_these(&["server", "redis"]);
    assert!(!reused, "the first build of a new copy builds");
    let (again, reused) = build_these(&["server", "redis"]);
    assert!(reused, "nothing changed: nothing to build");
    assert_eq!(again, both, "the same refs, digests and platforms as the full build");
    let (first, reused) = build();
    assert!(reused, "an image built beside another is answered alone: nothing to build");
    assert_eq!(first["images"][0], both["images"][0], "the same as built beside the other");

    let init = copy.path("app/src/memories/__init__.py");
    let text = std::fs::read_to_string(&init).unwrap();
    std::fs::write(&init, format!("{text}# an edit\n")).unwrap();
    let (edited, reused) = build();
    assert!(!reused, "an edited input builds again");
    assert_ne!(edited["images"][0]["platforms"], first["images"][0]["platforms"]);

    let reference = edited["images"][0]["refs"][0].as_str().unwrap().to_owned();
    docker(&["image", "rm", &reference]);
    let (rebuilt, reused) = build();
    assert!(!reused, "a ref gone from the store builds again");
    assert_eq!(rebuilt["images"][0]["platforms"], edited["images"][0]["platforms"]);
}

#[test]
fn prune_removes_older_commits_images_and_keeps_this_ones_and_those_in_use() {
    require_docker();
    // Names of this test's own (`--registry`), so nothing another suite builds is pruned.
    let names = unique_name("localhost/prune");
    let other = unique_name("localhost/prune-other");
    let head = {
        let output = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(tests::repo_root())
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let (old, older) = ("0".repeat(40), "1".repeat(40));
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_name("prune"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM debian:trixie-slim\n").unwrap();
    let mut cleanup = Cleanup::default();
    // Each an image of ours (the title label) built from `revision`, under `tags`. The first
    // and the last are one image (the same labels on the same base), under two names: pruning
    // one name leaves the image its other tag.
    let images: [(&[String], &str); 4] = [
        (&[format!("{names}/server:0.0.1"), format!("{names}/server:sha-0000000")], &old),
        (&[format!("{names}/server:now")], &head),
        (&[format!("{names}/db:used")], &older),
        (&[format!("{other}/server:0.0.1")], &old),
    ];
    for (tags, revision) in images {
        for tag in tags {
            cleanup.image(tag);
        }
        let title = format!("org.opencontainers.image.title=memories-prune-{}", &revision[..1]);
        let revision = format!("org.opencontainers.image.revision={revision}");
        let tagged: Vec<&str> = tags.iter().flat_map(|t| ["--tag", t.as_str()]).collect();
        let args = [&["build", "--quiet", "--label", &title, "--label", &revision], &tagged[..]];
        docker(&[&args.concat()[..], &[dir.to_str().unwrap()]].concat());
    }
    let plain = format!("{names}/plain:0.0.1");
    docker(&["tag", "debian:trixie-slim", &plain]);
    cleanup.image(&plain);
    let used = unique_name("prune-user");
    docker(&["create", "--name", &used, &format!("{names}/db:used")]);
    cleanup.container(&used);
    let present = |tag: &str| docker_output(&["image", "inspect", tag]).status.success();
    let tags_of = |listed: &Value| -> Vec<String> {
        let mut tags: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["tags"].as_array().unwrap().iter().map(|t| t.to_string()))
            .map(|t| t.trim_matches('"').to_owned())
            .collect();
        tags.sort();
        tags
    };
    let prune = |extra: &[&str]| -> Value {
        let out = xtask_ok(&[&["images", "prune", "--registry", &names, "--json"], extra].concat());
        serde_json::from_str(&out).unwrap()
    };

    let planned = prune(&["--dry-run"]);
    assert_eq!(tags_of(&planned["images"]["removed"]), images[0].0, "{planned}");
    assert!(present(&images[0].0[0]), "a dry run removes nothing");

    let pruned = prune(&[]);
    assert_eq!(tags_of(&pruned["removed"]), images[0].0, "{pruned}");
    let mut kept: Vec<(String, String)> = pruned["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["tags"][0].as_str().unwrap().to_owned(), k["why"].as_str().unwrap().to_owned()))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            (images[2].0[0].clone(), "in_use".into()),
            (images[1].0[0].clone(), "this_revision".into())
        ],
    );
    assert!(!present(&images[0].0[0]) && !present(&images[0].0[1]), "both old tags are gone");
    for kept in [&images[1].0[0], &images[2].0[0], &images[3].0[0], &plain] {
        assert!(present(kept), "{kept} stays: this commit's, in use, other names, not ours");
    }

    let all = prune(&["--all"]);
    assert_eq!(tags_of(&all["removed"]), images[1].0, "--all removes this commit's too: {all}");
    assert!(present(&images[2].0[0]), "what a container uses stays even so");
    let _ = std::fs::remove_dir_all(&dir);
}
