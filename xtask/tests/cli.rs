//! The command line as a user meets it, with no Docker engine: help, plans, exit codes, and
//! proof that `--dry-run` runs no docker command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{FakeRegistry, docker_baking_archives, text, xtask};

/// A directory whose `docker` records each call and fails, placed first on PATH. The one
/// exception is `docker compose ... config`, which reads the compose files (the service
/// model of every stack task) and needs no engine: it is handed to the real CLI, if any.
fn fake_docker(test: &str) -> (String, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-docker-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls.log");
    let script = dir.join("docker");
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("docker"))
        .find(|p| p.is_file())
        .map_or("false".into(), |p| p.display().to_string());
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = compose ]; then\n  for a in \"$@\"; do\n    [ \"$a\" = config ] && exec '{real}' \"$@\"\n  done\nfi\necho \"$@\" >> '{}'\nexit 1\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    (path, log)
}

/// What a build's plan asks docker, whether its builder writes straight into the image store
/// (the exporter it plans depends on it): reads, none of which changes anything.
const STORE_QUERIES: [&str; 3] =
    ["buildx inspect", "context show", "info --format {{json .DriverStatus}}"];

/// The docker calls in `log` other than [`STORE_QUERIES`].
fn calls_beyond_store_queries(log: &Path) -> Vec<String> {
    let calls = std::fs::read_to_string(log).unwrap_or_default();
    calls.lines().filter(|c| !STORE_QUERIES.contains(c)).map(str::to_owned).collect()
}

fn run_without_docker(test: &str, args: &[&str]) -> (Output, PathBuf) {
    let (path, log) = fake_docker(test);
    let output =
        xtask(args).env("PATH", path).env("DOCKER_HOST", "tcp://127.0.0.1:9").output().unwrap();
    (output, log)
}

#[test]
fn help_lists_the_tasks_that_exist() {
    let output = xtask(&["--help"]).output().unwrap();
    assert!(output.status.success());
    let help = text(&output.stdout);
    for task in [
        "version",
        "build",
        "release",
        "images",
        "dev",
        "test",
        "prod",
        "run",
        "wait-for",
        "ci",
        "doctor",
        "completions",
        "fault-proxy",
        "bench",
    ] {
        assert!(help.contains(&format!("  {task} ")), "{help}");
    }
}

#[test]
fn dry_run_prints_the_bake_plan_and_runs_no_docker_command() {
    let (output, log) = run_without_docker("dry-run", &["build", "--dry-run"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("# build server standalone db redis proxy prometheus otlp (dry run"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("docker buildx bake --file - --metadata-file ")),
        "{stdout}"
    );
    assert!(stdout.contains("\"dockerfile\": \"docker/server/Dockerfile\""), "{stdout}");
    // The fake answers no: the build goes through a layout per image, loaded at once.
    assert!(stdout.contains("type=oci,tar=false,dest="), "{stdout}");
    let bake = "docker --log-level fatal buildx bake --file - --metadata-file ";
    assert!(stdout.lines().any(|l| l.starts_with(bake)), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("docker load")).count(), 1, "{stdout}");
    assert!(stdout.lines().any(|l| l == "docker load --quiet"), "{stdout}");
    let calls = calls_beyond_store_queries(&log);
    assert!(calls.is_empty(), "docker was called: {calls:?}");
}

#[test]
fn dry_run_json_is_the_plan() {
    let (output, log) = run_without_docker(
        "dry-run-json",
        &[
            "build",
            "db",
            "--platform",
            "linux/amd64,linux/x86_64,linux/arm64",
            "--dry-run",
            "--json",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["images"][0]["image"], "db");
    assert_eq!(
        plan["bake"]["target"]["db"]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["plan"][0]["run"]["program"], "docker");
    assert_eq!(calls_beyond_store_queries(&log), Vec::<String>::new());
}

#[test]
fn release_dry_run_is_the_whole_plan_and_calls_neither_docker_nor_the_registry() {
    let (output, log) = run_without_docker(
        "release-dry-run",
        &[
            "release",
            "--registry",
            "127.0.0.1:9/acme",
            "--platform",
            "linux/x86_64,linux/aarch64,linux/amd64",
            "--allow-dirty",
            "--dry-run",
            "--json",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));
    assert_eq!(plan["images"].as_array().unwrap().len(), 7);
    let requests: Vec<&Value> =
        plan["plan"].as_array().unwrap().iter().filter_map(|item| item.get("registry")).collect();
    let with = |action: &str| -> Vec<&Value> {
        requests.iter().copied().filter(|r| r["action"] == action).collect()
    };
    assert_eq!(with("read").len(), 35, "five refs of seven images");
    let pushes = with("push");
    assert_eq!(pushes.len(), 7, "one push per image");
    assert_eq!(pushes[0]["refs"].as_array().unwrap().len(), 2, "under both immutable refs");
    assert!(pushes[0]["archive"].as_str().unwrap().ends_with(".tar"), "{:#}", pushes[0]);
    let copies = with("copy");
    assert_eq!(copies.len(), 21, "the three moving tags of each image are manifest copies");
    let last = copies.last().unwrap();
    assert_eq!(last["to"], "127.0.0.1:9/acme/otlp:latest", "latest moves last");
    assert_eq!(last["from"], "127.0.0.1:9/acme/otlp@sha256:<built>");
    assert!(!log.exists(), "docker was called: {}", std::fs::read_to_string(&log).unwrap());

    let (text_plan, log) =
        run_without_docker("release-dry-run-text", &["release", "--allow-dirty", "--dry-run"]);
    assert!(text_plan.status.success(), "{}", text(&text_plan.stderr));
    let stdout = text(&text_plan.stdout);
    let bake = stdout.find("docker buildx bake").expect("the build is planned");
    let push = stdout.find("# registry: push ").expect("pushes are planned");
    assert!(bake < push, "every image builds before anything is pushed:\n{stdout}");
    assert!(!log.exists(), "docker was called: {}", std::fs::read_to_string(&log).unwrap());
}

#[test]
fn a_build_into_the_store_loads_every_image_at_once_named_by_its_refs() {
    let (path, log) = docker_baking_archives("store-load");
    let output = xtask(&["build", "server", "db", "--registry", "127.0.0.1:5000/acme", "--json"])
        .env("PATH", path)
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let loads: Vec<&str> = calls.lines().filter(|l| l.starts_with("load")).collect();
    assert_eq!(loads, ["load --quiet"], "one load, from stdin: {calls}");
    // What `docker load` read: one layout, each image under each of its refs, every blob once.
    let fake = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-docker-store-load");
    let mut loaded = tar::Archive::new(std::fs::File::open(fake.join("loaded.tar")).unwrap());
    let mut names = Vec::new();
    let mut index = Value::Null;
    for entry in loaded.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_str().unwrap().to_owned();
        if name == "index.json" {
            index = serde_json::from_reader(&mut entry).unwrap();
        }
        names.push(name);
    }
    let unique: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    let built: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut named = Vec::new();
    for entry in index["manifests"].as_array().unwrap() {
        let name = entry["annotations"]["io.containerd.image.name"].as_str().unwrap();
        named.push((name.to_owned(), entry["digest"].as_str().unwrap().to_owned()));
    }
    let mut wanted = Vec::new();
    for image in built["images"].as_array().unwrap() {
        for reference in image["refs"].as_array().unwrap() {
            let digest = image["digest"].as_str().unwrap().to_owned();
            wanted.push((reference.as_str().unwrap().to_owned(), digest));
        }
    }
    named.sort();
    wanted.sort();
    assert_eq!(named, wanted, "{index}");
    assert_eq!(wanted.len(), 6, "three refs of each image: {built}");
}

#[test]
fn a_load_that_fails_says_so_not_that_its_pipe_closed() {
    let (path, _) = docker_baking_archives("store-load-fails");
    let output = xtask(&["build", "server", "db"])
        .env("PATH", path)
        .env("FAKE_LOAD_FAILS", "write /var/lib/docker: no space left on device")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no space left on device"), "the engine's reason is shown: {stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.contains("`docker load` failed (its error is above)"), "{last}");
    assert!(!last.contains("Broken pipe"), "{last}");
}

#[test]
fn ctrl_c_during_the_load_stops_it_and_leaves_no_layout() {
    use std::time::{Duration, Instant};
    let (path, _) = docker_baking_archives("store-load-hangs");
    let fake = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-docker-store-load-hangs");
    let child = xtask(&["build", "server", "db"])
        .env("PATH", path)
        .env("FAKE_LOAD_HANGS", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fake.join("load-started").exists() {
        assert!(Instant::now() < deadline, "the load never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, took, stderr) = interrupt(child);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(2), "it took {took:?} to stop: {stderr}");
    let exports = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xtask");
    let left: Vec<String> = std::fs::read_dir(exports)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("exports-") && name.contains(&format!("-{pid}-")))
        .collect();
    assert!(left.is_empty(), "the layouts were left: {left:?}");
}

#[test]
fn a_transient_push_failure_is_retried_a_definite_one_stops_before_any_moving_tag() {
    let (path, log) = docker_baking_archives("push-refused");
    // The first manifest write for server meets a 500; every blob request for db is refused.
    let registry = FakeRegistry::start(|request, so_far| {
        let (method, path) = (request.method.as_str(), request.path.as_str());
        let error = |status, code: &str| {
            let body = format!(r#"{{"errors":[{{"code":"{code}","message":"said the fake"}}]}}"#);
            Some((status, Vec::new(), body.into_bytes()))
        };
        let manifest_writes =
            so_far.iter().filter(|l| l.starts_with("PUT /v2/acme/server/manifests/")).count();
        if method == "PUT" && path.starts_with("/v2/acme/server/manifests/") && manifest_writes == 0
        {
            return error(500, "UNKNOWN");
        }
        if path.starts_with("/v2/acme/db/blobs/") {
            return error(403, "DENIED");
        }
        None
    });
    let namespace = format!("{}/acme", registry.address);
    let output = xtask(&["release", "server", "db", "--registry", &namespace, "--allow-dirty"])
        .env("PATH", path)
        .env("DOCKER_CONFIG", Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-docker-config"))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let version: Value =
        serde_json::from_slice(&xtask(&["version", "--json"]).output().unwrap().stdout).unwrap();
    let version = version["version"].as_str().unwrap();
    let retried = format!("registry: writing {namespace}/server@sha256:");
    let retried =
        stderr.lines().find(|l| l.starts_with(&retried)).unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        retried.contains("failed (500 Internal Server Error (UNKNOWN: said the fake)); transient, attempt 1 of 12, retrying in"),
        "{retried}"
    );
    assert!(
        stderr.contains(&format!("pushed server as {namespace}/server:{version}, ")),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap();
    assert!(last.contains("the release stopped before moving any tag: run it again"), "{last}");
    assert!(last.contains(&format!("cannot push db as {namespace}/db:{version}")), "{last}");
    assert!(last.contains(": 403 Forbidden"), "{last}");
    assert!(last.contains("docker login"), "a refusal names the fix: {last}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.contains("buildx bake"), "built: {calls}");
    let requests = registry.requests();
    let refused: Vec<&String> =
        requests.iter().filter(|r| r.contains("/v2/acme/db/blobs/")).collect();
    let distinct: std::collections::BTreeSet<&String> = refused.iter().copied().collect();
    assert!(!refused.is_empty(), "{requests:#?}");
    assert_eq!(refused.len(), distinct.len(), "no refusal is retried: {requests:#?}");
    let tags: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("PUT /v2/acme/server/manifests/") && !r.contains("sha256:"))
        .collect();
    assert_eq!(tags.len(), 2, "server's version and sha tags, each written once: {requests:#?}");
    assert!(!requests.iter().any(|r| r.contains("latest")), "latest never moved: {requests:#?}");
}

#[test]
fn a_registry_that_wants_a_token_gets_one_made_with_the_docker_login_credentials() {
    use base64::Engine as _;
    let (path, _) = docker_baking_archives("push-token");
    let registry = FakeRegistry::start(move |request, _| {
        let header = |name: &str| request.headers.get(name).map(String::as_str);
        if request.path == "/token" {
            // The credentials `docker login` stored, as basic auth.
            let login = base64::engine::general_purpose::STANDARD.encode("me:s3cret");
            if header("authorization") != Some(&format!("Basic {login}")) {
                return Some((401, Vec::new(), Vec::new()));
            }
            return Some((200, Vec::new(), br#"{"token":"t0ken"}"#.to_vec()));
        }
        if header("authorization") != Some("Bearer t0ken") {
            let port = header("host").unwrap_or_default().rsplit(':').next().unwrap_or_default();
            let challenge =
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#);
            return Some((401, vec![("WWW-Authenticate".into(), challenge)], Vec::new()));
        }
        None
    });
    let config = common::docker_login("docker-config-token", &registry.address);
    let namespace = format!("{}/acme", registry.address);
    let output = xtask(&["release", "server", "--registry", &namespace, "--allow-dirty"])
        .env("PATH", path)
        .env("DOCKER_CONFIG", &config)
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("pushed server as {namespace}/server:")), "{stderr}");
    assert!(!stderr.contains("s3cret") && !stderr.contains("t0ken"), "{stderr}");
    // The read-back that follows the push then refuses the fake image, which lacks the
    // release's labels: proof that it was read through the token too.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("is not what was released"), "{stderr}");
    assert_eq!(output.status.code(), Some(1));
    let requests = registry.requests();
    let tokens = requests.iter().filter(|r| *r == "GET /token").count();
    // One token for reading (pull), one for pushing (pull,push): each asked for once.
    assert_eq!(tokens, 2, "{requests:#?}");
    let manifests = requests.iter().filter(|r| r.starts_with("PUT /v2/acme/server/manifests/"));
    assert_eq!(
        manifests.count(),
        3,
        "the platform manifest, then the index under two tags: {requests:#?}"
    );
}

#[test]
fn a_release_for_another_version_than_pyproject_is_refused_in_one_line() {
    let (output, log) = run_without_docker(
        "release-expect",
        &["release", "--expect-version", "v9.9.9", "--allow-dirty", "--dry-run"],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: app/pyproject.toml says version "), "{stderr}");
    assert!(stderr.contains("but 9.9.9 was expected"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!log.exists());
}

#[test]
fn pack_docker_sh_is_a_shim_to_release() {
    let (path, log) = fake_docker("pack-docker");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new(root.join("scripts/pack_docker.sh"))
        .args(["127.0.0.1:9/legacy", "--allow-dirty", "--dry-run", "--json"])
        .env("PATH", path)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["registry"], "127.0.0.1:9/legacy");
    assert_eq!(plan["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));
    assert!(!log.exists(), "docker was called: {}", std::fs::read_to_string(&log).unwrap());
}

#[test]
fn ci_dry_run_lists_each_step_in_order_and_runs_nothing() {
    let (output, log) =
        run_without_docker("ci-dry-run", &["ci", "release", "fmt", "--dry-run", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["steps"], serde_json::json!(["fmt", "release"]), "CI's order, whatever given");
    let items = plan["plan"].as_array().unwrap();
    assert_eq!(items[0]["note"], "fmt");
    let release = items.iter().position(|i| i["note"] == "release").expect("a release heading");
    assert_eq!(items[release + 1]["run"]["args"][0], "release");
    assert!(!log.exists(), "docker was called: {}", std::fs::read_to_string(&log).unwrap());

    let all = xtask(&["ci", "--dry-run"]).output().unwrap();
    let stdout = text(&all.stdout);
    let headings: Vec<&str> = stdout.lines().filter(|l| l.starts_with("# ")).collect();
    assert_eq!(
        headings,
        [
            "# ci (dry run: nothing was run)",
            "# fmt",
            "# clippy",
            "# unit",
            "# repo",
            "# hadolint",
            "# actionlint",
            "# python",
            "# build",
            "# docker",
            "# e2e",
            "# release"
        ]
    );
}

#[test]
fn usage_errors_exit_2_and_say_what_is_accepted() {
    let cases: [(&[&str], &str); 9] = [
        (&["build", "nosuch"], "docker/images.toml declares server, standalone, db, redis, proxy"),
        (&["images", "load", "b.tar"], "--sha256 <HASH>"),
        (&["images", "load", "b.tar", "--sha256", "abc"], "give the 64 hex digits"),
        (&["release", "--platform", "linux/amd64,windows/amd64"], "only linux images"),
        (&["release", "--registry", "http://127.0.0.1:5000"], "scheme"),
        (&["ci", "lint"], "possible values: fmt, clippy, unit, repo, hadolint, actionlint"),
        (&["build", "--platform", "linux/sparc"], "unknown architecture `sparc`"),
        (&["build", "--platform", "amd64"], "use os/arch"),
        (&["build", "--push"], "--registry"),
    ];
    for (args, says) in cases {
        let output = xtask(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn a_stopped_daemon_is_named_with_the_fix_and_exits_1() {
    let output =
        xtask(&["build", "server"]).env("DOCKER_HOST", "tcp://127.0.0.1:9").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains(
                "image build failed: cannot reach the Docker daemon at DOCKER_HOST=tcp://127.0.0.1:9"
            ),
        "{stderr}"
    );
}

#[test]
fn a_missing_docker_cli_is_named_with_the_fix() {
    // git stays reachable: only docker is missing.
    assert!(Path::new("/usr/bin/git").exists(), "this test expects git in /usr/bin");
    let output = xtask(&["build"]).env("PATH", "/usr/bin:/bin").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("the docker CLI is required"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn version_json_matches_pyproject() {
    let output = xtask(&["version", "--json"]).output().unwrap();
    assert!(output.status.success());
    let version: Value = serde_json::from_slice(&output.stdout).unwrap();
    let pyproject = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../app/pyproject.toml"),
    )
    .unwrap();
    let expected =
        pyproject.lines().find(|l| l.starts_with("version")).unwrap().split('"').nth(1).unwrap();
    assert_eq!(version["version"], expected);
    let tags = version["tags"].as_array().unwrap();
    assert_eq!(tags[0], expected);
    assert!(tags[2].as_str().unwrap().starts_with("sha-"));
}

#[test]
fn doctor_names_a_stopped_daemon_and_its_fix() {
    let output = xtask(&["doctor"]).env("DOCKER_HOST", "tcp://127.0.0.1:9").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report = text(&output.stdout);
    let line = report.lines().find(|l| l.starts_with("fail")).expect("a failing line");
    assert!(line.contains("docker engine"), "{report}");
    assert!(
        line.contains("cannot reach the Docker daemon at DOCKER_HOST=tcp://127.0.0.1:9"),
        "{report}"
    );
    assert!(line.contains("systemctl start docker"), "{report}");
    assert!(text(&output.stderr).contains("1 check failed"));
}

#[test]
fn completions_come_from_the_same_command_line() {
    let output = xtask(&["completions", "bash"]).output().unwrap();
    assert!(output.status.success());
    let script = text(&output.stdout);
    for word in ["wait-for", "doctor", "--dry-run"] {
        assert!(script.contains(word), "{word} is completed");
    }
    let bad = xtask(&["completions", "cmd"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// A PostgreSQL server that asks for SCRAM with `iterations` PBKDF2 rounds, or for a
/// cleartext password with `None`; it records every byte it receives.
fn greedy_postgres(iterations: Option<u32>) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let message = |kind: u8, body: &[u8]| {
                let mut packet = vec![kind];
                packet.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                packet.extend_from_slice(body);
                packet
            };
            let mut chunk = [0u8; 4096];
            let Ok(n) = stream.read(&mut chunk) else { continue };
            seen.lock().unwrap().extend_from_slice(&chunk[..n]);
            let mut request = match iterations {
                Some(_) => 10u32.to_be_bytes().to_vec(),
                None => 3u32.to_be_bytes().to_vec(),
            };
            if iterations.is_some() {
                request.extend_from_slice(b"SCRAM-SHA-256\0\0");
            }
            let _ = stream.write_all(&message(b'R', &request));
            let Ok(n) = stream.read(&mut chunk) else { continue };
            seen.lock().unwrap().extend_from_slice(&chunk[..n]);
            let said = String::from_utf8_lossy(&chunk[..n]).into_owned();
            if let (Some(i), Some(nonce)) = (iterations, said.split("r=").nth(1)) {
                let mut challenge = 11u32.to_be_bytes().to_vec();
                challenge.extend_from_slice(format!("r={nonce}x,s=AAAA,i={i}").as_bytes());
                let _ = stream.write_all(&message(b'R', &challenge));
                if let Ok(n) = stream.read(&mut chunk) {
                    seen.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }
        }
    });
    (port, received)
}

#[test]
fn a_greedy_or_cleartext_postgres_gets_no_password_and_the_wait_times_out_on_time() {
    for iterations in [Some(2_000_000_000), None] {
        let (port, received) = greedy_postgres(iterations);
        let started = std::time::Instant::now();
        let spec = format!("postgres://memories:sentinel-pw@127.0.0.1:{port}/memories");
        let output = xtask(&["wait-for", "--timeout", "2s", &spec]).output().unwrap();
        let elapsed = started.elapsed();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(124), "{iterations:?}: {stderr}");
        assert!(elapsed < std::time::Duration::from_secs(3), "{iterations:?}: took {elapsed:?}");
        assert!(!stderr.contains("sentinel-pw"), "{stderr}");
        let bytes = received.lock().unwrap().clone();
        assert!(!bytes.windows(11).any(|w| w == b"sentinel-pw"), "the server got the password");
        let why = if iterations.is_some() { "SCRAM iterations" } else { "cleartext" };
        assert!(stderr.contains(why), "{stderr}");
    }
    let output = xtask(&["wait-for", "postgres://me:sentinel-pw@127.0.0.1:5432x/db"]).output();
    let stderr = text(&output.unwrap().stderr);
    assert!(stderr.contains("me:***@") && !stderr.contains("sentinel-pw"), "{stderr}");
}

/// Every task that starts or changes something, as a user would call it.
/// `BUNDLE` stands for a valid bundle's path, `SHA256` for its hash.
const TASKS: [&[&str]; 40] = [
    &["dev"],
    &["dev", "up", "--profile", "cache", "--attach"],
    &["dev", "--watch"],
    &["dev", "up", "db"],
    &["dev", "down", "--volumes"],
    &["dev", "logs", "server", "--follow"],
    &["dev", "ps"],
    &["dev", "exec", "db", "--", "psql", "--command=select 1"],
    &["dev", "restart", "server"],
    &["test"],
    &["test", "--e2e-only", "--keep"],
    &["prod", "up"],
    &["prod", "down", "--volumes"],
    &["prod", "config"],
    &["prod", "deploy", "--swarm", "--local"],
    &["prod", "deploy", "--swarm", "--registry", "127.0.0.1:5000/memories", "--version", "0.1.0"],
    &["prod", "rollback", "server"],
    &["run", "--port", "18283"],
    &["images", "save", "server", "--platform", "linux/amd64"],
    &["images", "load", "BUNDLE", "--sha256", "SHA256"],
    &["images", "prune"],
    &["db", "psql", "--", "--command=select 1"],
    &["db", "dump", "--output", "sentinel.dump"],
    &["db", "restore", "BUNDLE", "--clean"],
    &["db", "reset", "--yes"],
    &["build", "server"],
    &["release", "--allow-dirty"],
    &["ci", "fmt"],
    &["reap"],
    &["prod", "status"],
    &["prod", "backup"],
    &["prod", "backups"],
    &["prod", "restore", "--force"],
    &["prod", "certs", "--renew"],
    &["prod", "keys", "create", "ops"],
    &["prod", "keys", "revoke", "ops"],
    &["prod", "keys", "list"],
    &["db", "migrate"],
    &["db", "current"],
    &["db", "revision", "add a column"],
];

/// A bundle as `images save` writes it (an OCI layout whose one image is `blob`), and its
/// SHA-256.
fn bundle(dir: &Path, blob: &[u8]) -> (PathBuf, String) {
    use sha2::Digest;
    let hex = |bytes: &[u8]| -> String {
        sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    };
    let digest = format!("sha256:{}", hex(blob));
    let reference = "memories/server:t";
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
        "size": blob.len(), "annotations": {
            "io.containerd.image.name": format!("docker.io/{reference}"),
            "org.opencontainers.image.ref.name": reference}}]})
    .to_string();
    let metadata = serde_json::json!({
        "format": "memories-bundle/2",
        "images": [{"image": "server", "digest": digest, "refs": [reference]}],
    })
    .to_string();
    let path = dir.join("bundle.tar");
    let mut archive = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let blob_path = format!("blobs/sha256/{}", hex(blob));
    for (name, bytes) in [
        ("index.json", index.as_bytes()),
        ("memories-bundle.json", metadata.as_bytes()),
        (blob_path.as_str(), blob),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, bytes).unwrap();
    }
    archive.finish().unwrap();
    let sha256 = hex(&std::fs::read(&path).unwrap());
    (path, sha256)
}

#[test]
fn every_task_plans_without_docker_and_no_output_carries_a_secret() {
    const SENTINEL: &str = "Sentinel-7f3a9c";
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sentinel");
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join("prod-secrets.env");
    // HTTPS from certificate files: the key's text is a secret too.
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/stack/tls");
    let key_text = std::fs::read_to_string(tls.join("long.key")).unwrap();
    let key_line = key_text.lines().nth(1).unwrap().to_owned();
    std::fs::write(
        &env_file,
        format!(
            "POSTGRES_PASSWORD={SENTINEL}-file\nAPI_TOKEN={SENTINEL}-token\nAPI_KEYS=off\n\
             TLS_CERT_FILE={}\nTLS_KEY_FILE={}\n",
            tls.join("long.pem").display(),
            tls.join("long.key").display()
        ),
    )
    .unwrap();
    let (bundle, sha256) = bundle(&dir, b"not really images");
    let (path, log) = fake_docker("sentinel");
    let run = |args: &[&str]| {
        let output = xtask(args)
            .env("PATH", &path)
            .env("DOCKER_HOST", "tcp://127.0.0.1:9")
            .env("POSTGRES_PASSWORD", format!("{SENTINEL}-env"))
            .env("REDIS_URL", format!("redis://:{SENTINEL}-url@cache:6379/0"))
            .env("PGPASSWORD", format!("{SENTINEL}-pg"))
            .output()
            .unwrap();
        let said = text(&output.stdout) + &text(&output.stderr);
        assert!(!said.contains(SENTINEL), "`xtask {}` printed a secret:\n{said}", args.join(" "));
        assert!(!said.contains(&key_line), "`xtask {}` printed the TLS key", args.join(" "));
        output
    };
    for task in TASKS {
        let mut args: Vec<&str> = task
            .iter()
            .map(|a| match *a {
                "BUNDLE" => bundle.to_str().unwrap(),
                "SHA256" => sha256.as_str(),
                _ => a,
            })
            .collect();
        if task[0] == "prod" {
            args.extend(["--env-file", env_file.to_str().unwrap()]);
        }
        // The flags go before a `--`, after which everything is the command's.
        let with = |flags: &[&'static str]| {
            let at = args.iter().position(|a| *a == "--").unwrap_or(args.len());
            let mut all = args.clone();
            all.splice(at..at, flags.iter().copied());
            all
        };
        let dry = with(&["--dry-run"]);
        let planned = run(&dry);
        assert!(planned.status.success(), "{dry:?}: {}", text(&planned.stderr));
        assert!(text(&planned.stdout).contains("dry run: nothing was run"), "{dry:?}");
        let json = with(&["--dry-run", "--json"]);
        let planned = run(&json);
        assert!(planned.status.success(), "{json:?}: {}", text(&planned.stderr));
        let plan: Value = serde_json::from_slice(&planned.stdout)
            .unwrap_or_else(|e| panic!("{json:?} is not JSON ({e}): {}", text(&planned.stdout)));
        assert_eq!(plan["dry_run"], true, "{json:?}");
        assert!(plan["plan"].as_array().is_some_and(|items| !items.is_empty()), "{json:?}");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        // A plan may read the engine where what it would do depends on it (what `reap` would
        // remove; the SQL `db migrate` would run, rendered offline by the server image), and
        // says so when it cannot: nothing else.
        let reads = |call: &str| {
            ["ps ", "volume ls ", "network ls ", "image ls ", "service ls ", "secret ls "]
                .iter()
                .chain(&["image inspect ", "container ls ", "container inspect "])
                .any(|read| call.starts_with(read))
                || STORE_QUERIES.contains(&call)
                || call.starts_with("run --rm --network none ")
        };
        let changes: Vec<&str> = calls.lines().filter(|c| !reads(c)).collect();
        assert!(changes.is_empty(), "{dry:?} called docker: {calls}");
        // Without --dry-run the fake docker fails every call: the failure carries no secret
        // either. `test` and `ci` would run the whole cargo suite first; their plan is enough.
        // `prod keys` and `db revision` write files in the repository, not Docker.
        // `prod config` only reads the files, so it succeeds, every secret shown as ***.
        match task {
            ["test", ..] | ["ci", ..] | ["prod", "keys", ..] | ["db", "revision", ..] => {}
            ["prod", "config"] => assert!(run(&args).status.success(), "{args:?}"),
            _ => {
                let failed = run(&args);
                assert!(!failed.status.success(), "{args:?} succeeded with a failing docker");
            }
        }
        let _ = std::fs::remove_file(&log);
    }
    // A probe spec with the password in it, failing in three ways.
    let spec = format!("postgres://memories:{SENTINEL}@127.0.0.1:9/memories");
    let bad_port = format!("postgres://memories:{SENTINEL}@127.0.0.1:9x/memories");
    for args in [
        vec!["wait-for", "--timeout", "1s", spec.as_str()],
        vec!["wait-for", "--timeout", "1s", "--json", spec.as_str()],
        vec!["wait-for", bad_port.as_str()],
    ] {
        assert!(!run(&args).status.success(), "{args:?}");
    }
}

#[test]
fn a_service_the_stack_lacks_and_json_where_output_is_a_stream_are_refused_in_one_line() {
    let (output, log) =
        run_without_docker("no-such-service", &["dev", "exec", "web", "--", "true"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "the stack has no service `web`: name one of db, otel-collector, redis, server"
        ),
        "{stderr}"
    );
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
    let (output, _) = run_without_docker("logs-json", &["dev", "logs", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("`dev logs` prints the service's own output, which is not JSON"),
        "{stderr}"
    );
}

#[test]
fn dev_up_names_only_services_the_stack_has_and_db_psql_refuses_json() {
    let (output, log) = run_without_docker("up-no-such", &["dev", "up", "db", "web", "--dry-run"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("the stack has no service `web`: name one of"), "{stderr}");
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
    // `dev up db` starts the database alone and waits for nothing else.
    let (output, _) = run_without_docker("up-db", &["dev", "up", "db", "--dry-run", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    let items = plan["plan"].as_array().unwrap();
    let up = items
        .iter()
        .filter_map(|item| item["run"]["args"].as_array())
        .find(|args| args.iter().any(|a| a == "up"))
        .expect("an up step");
    assert_eq!(up.last().unwrap(), "db", "{up:?}");
    let waits: Vec<&str> = items.iter().filter_map(|item| item["wait_for"].as_str()).collect();
    assert_eq!(waits.len(), 1, "only the database is waited for: {waits:?}");
    assert!(waits[0].starts_with("db postgres://"), "{waits:?}");
    let (output, _) = run_without_docker("psql-json", &["db", "psql", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("`db psql` prints psql's own output"));
}

#[test]
fn dev_watch_plans_the_rules_of_the_dev_overlay_and_excludes_attach() {
    let (output, _) = run_without_docker("watch-plan", &["dev", "--watch", "--dry-run"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan = text(&output.stdout);
    assert!(plan.contains("then watches the working tree until Ctrl-C"), "{plan}");
    assert!(
        plan.contains(
            "server: sync app/src/memories to /opt/venv/lib/python3.13/site-packages/memories, \
             then restart"
        ),
        "{plan}"
    );
    assert!(plan.contains("server: rebuild on a change under app/uv.lock"), "{plan}");
    let both = xtask(&["dev", "--watch", "--attach"]).output().unwrap();
    assert_eq!(both.status.code(), Some(2), "--watch and --attach exclude each other");
}

/// `bundle` with one more entry at its end: `name` (written raw, so `..` stays), of `kind`.
fn bundle_with(dir: &Path, name: &str, kind: tar::EntryType, bytes: &[u8]) -> (PathBuf, String) {
    use sha2::Digest;
    let (path, _) = bundle(dir, b"an image index");
    let mut tar = std::fs::read(&path).unwrap();
    // Drop the end-of-archive blocks (and any padding) that `finish` wrote.
    while tar.len() >= 512 && tar[tar.len() - 512..].iter().all(|b| *b == 0) {
        tar.truncate(tar.len() - 512);
    }
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(if kind == tar::EntryType::Regular { bytes.len() as u64 } else { 0 });
    if kind == tar::EntryType::Symlink {
        header.set_link_name("/etc/shadow").unwrap();
    }
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    if kind == tar::EntryType::Regular {
        tar.extend_from_slice(bytes);
        tar.resize(tar.len().next_multiple_of(512), 0);
    }
    tar.resize(tar.len() + 1024, 0);
    std::fs::write(&path, &tar).unwrap();
    let sha256: String = sha2::Sha256::digest(&tar).iter().map(|b| format!("{b:02x}")).collect();
    (path, sha256)
}

#[test]
fn a_bundle_with_a_smuggled_or_escaping_entry_is_refused_before_anything_loads() {
    let smuggled = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:00","size":1,"annotations":{"io.containerd.image.name":"docker.io/adv/smuggled:1"}}]}"#;
    use sha2::Digest;
    let hex: String =
        sha2::Sha256::digest(b"an image index").iter().map(|b| format!("{b:02x}")).collect();
    let blob = format!("blobs/sha256/{hex}");
    let cases = [
        ("./index.json", tar::EntryType::Regular, "repeats a name"),
        (blob.as_str(), tar::EntryType::Regular, "repeats a name"),
        ("../outside", tar::EntryType::Regular, "climbs out of the archive"),
        ("/etc/cron.d/x", tar::EntryType::Regular, "is an absolute path"),
        ("blobs/sha256/link", tar::EntryType::Symlink, "is not a file"),
        ("dev", tar::EntryType::Char, "is not a file"),
    ];
    for (n, (name, kind, why)) in cases.into_iter().enumerate() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("smuggled-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (file, sha256) = bundle_with(&dir, name, kind, smuggled);
        let file = file.to_str().unwrap();
        let public = dir.join("cosign.pub");
        std::fs::write(&public, "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n")
            .unwrap();
        for key in [None, Some(public.to_str().unwrap())] {
            let mut args = vec!["images", "load", file, "--sha256", &sha256];
            args.extend(key.map(|k| ["--key", k]).into_iter().flatten());
            let (output, log) = run_without_docker(&format!("smuggled-{n}"), &args);
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
            let last = stderr.lines().last().unwrap_or_default();
            assert!(
                last.contains(&format!("{file} is refused: its entry `{name}` {why}")),
                "{last}"
            );
            assert!(!log.exists(), "docker ran for {name}: {:?}", std::fs::read_to_string(&log));
        }
    }
}

#[test]
fn ctrl_c_while_a_multi_gb_bundle_is_copied_exits_130_at_once_and_leaves_no_copy() {
    use std::time::{Duration, Instant};
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ctrl-c-load");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 8 GB, sparse: the copy into the private directory takes far longer than the test waits.
    let file = dir.join("big.tar");
    std::fs::File::create(&file).unwrap().set_len(8 << 30).unwrap();
    let temp = dir.join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let (path, log) = fake_docker("ctrl-c-load");
    let child = xtask(&["images", "load", file.to_str().unwrap(), "--sha256", &"a".repeat(64)])
        .env("PATH", path)
        .env("TMPDIR", &temp)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the private copy is growing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let copy_size =
        || -> u64 { walk_files(&temp).iter().map(|f| f.metadata().map_or(0, |m| m.len())).sum() };
    while copy_size() < (64 << 20) {
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, took, stderr) = interrupt(child);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(1), "it took {took:?} to stop: {stderr}");
    assert!(walk_files(&temp).is_empty(), "the private copy was left: {:?}", walk_files(&temp));
    assert!(!log.exists(), "docker ran: {:?}", std::fs::read_to_string(&log));
    assert!(stderr.lines().last().unwrap_or_default().contains("interrupted"), "{stderr}");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk_files(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn ctrl_c_while_a_multi_gb_bundle_is_written_exits_130_at_once_and_leaves_no_file() {
    use std::io::{Seek, SeekFrom, Write};
    use std::time::{Duration, Instant};
    let (path, _) = common::docker_baking_archives("ctrl-c-save");
    let fake = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-docker-ctrl-c-save");
    let built: Value =
        serde_json::from_slice(&std::fs::read(fake.join("metadata.json")).unwrap()).unwrap();
    let digest = built["server"]["containerimage.digest"].as_str().unwrap();
    let version = {
        let out = xtask(&["version", "--json"]).output().unwrap();
        let value: Value = serde_json::from_slice(&out.stdout).unwrap();
        value["version"].as_str().unwrap().to_owned()
    };
    // What `docker save` writes: an index naming server's refs, and one 8 GB blob of zeros
    // (sparse on disk, so the test writes almost nothing itself).
    let refs = xtask(&["images", "save", "server", "--dry-run", "--json"]).output().unwrap();
    let plan = text(&refs.stdout);
    let tags: Vec<String> = plan
        .split('"')
        .filter(|s| s.starts_with("memories/server:"))
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(tags.iter().any(|t| t.ends_with(&version)), "{plan}");
    let entries: Vec<Value> = tags
        .iter()
        .map(|t| serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest, "size": 1, "annotations": {"io.containerd.image.name": format!("docker.io/{t}")}}))
        .collect();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": entries}).to_string();
    let save = fake.join("save.tar");
    // Written by hand: a tar builder would end the archive before the blob.
    let mut file = std::fs::File::create(&save).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_path("index.json").unwrap();
    header.set_size(index.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    file.write_all(header.as_bytes()).unwrap();
    file.write_all(index.as_bytes()).unwrap();
    file.write_all(&vec![0; index.len().next_multiple_of(512) - index.len()]).unwrap();
    let size: u64 = 8 << 30;
    let mut header = tar::Header::new_gnu();
    header.set_path("blobs/sha256/zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    file.write_all(header.as_bytes()).unwrap();
    let end = file.stream_position().unwrap() + size;
    file.seek(SeekFrom::Start(end + 1023)).unwrap();
    file.write_all(&[0]).unwrap();
    drop(file);

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ctrl-c-save-out");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let output = out_dir.join("bundle.tar");
    let mut child = xtask(&["images", "save", "server", "--output", output.to_str().unwrap()])
        .env("PATH", path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = out_dir.join(".bundle.tar.partial");
    while partial.metadata().map_or(0, |m| m.len()) < (64 << 20) {
        assert!(Instant::now() < deadline, "the bundle was never being written");
        assert!(child.try_wait().unwrap().is_none(), "it ended before the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, took, stderr) = interrupt(child);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(1), "it took {took:?} to stop: {stderr}");
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "a partial bundle was left: {left:?}");
}

/// Sends SIGINT to `child` (its stderr piped) and waits: its exit status, how long it took to
/// end after the signal, and what it said.
fn interrupt(
    mut child: std::process::Child,
) -> (std::process::ExitStatus, std::time::Duration, String) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, took, stderr)
}

/// `wait-for --ca`: a CA file that cannot be used is refused at once in one line, as is a
/// `--ca` with no https probe to apply to; neither waits.
#[test]
fn wait_for_refuses_a_ca_it_cannot_use() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wait-ca");
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let cert = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/stack/tls/long.pem");
    let cases: [(Vec<&str>, &str); 3] = [
        (vec!["--ca", "/nonexistent/ca.pem", "https://127.0.0.1:9/"], "cannot read --ca"),
        (
            vec!["--ca", not_pem.to_str().unwrap(), "https://127.0.0.1:9/"],
            "holds no PEM certificate",
        ),
        (vec!["--ca", cert.to_str().unwrap(), "tcp://127.0.0.1:9"], "is for https:// probes"),
    ];
    for (args, expected) in cases {
        let started = std::time::Instant::now();
        let output =
            xtask(&[&["wait-for", "--timeout", "30s"][..], &args].concat()).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{args:?} waited");
    }
}

/// The tasks that only read, and the experiments (`bench`, `fault-proxy`), as a user would
/// call them, with what their `--dry-run` says.
const READ_ONLY: [(&[&str], &str); 18] = [
    (&["version"], "nothing to plan"),
    (&["images", "list"], "nothing to plan"),
    (&["doctor"], "nothing to plan"),
    (&["completions", "bash"], "nothing to plan"),
    (&["wait-for", "tcp://127.0.0.1:9"], "nothing to plan"),
    (&["verify", "127.0.0.1:5000/x/server:1", "--key", "cosign.pub"], "nothing to plan"),
    (&["db", "history"], "nothing to plan"),
    (&["bench"], "runs `bench startup`"),
    (&["bench", "deploy"], "runs `bench deploy`"),
    (&["bench", "stack"], "runs `bench stack`"),
    (&["bench", "wait"], "runs `bench wait`"),
    (&["bench", "release"], "runs `bench release`"),
    (&["bench", "cache"], "runs `bench cache`"),
    (&["bench", "devloop"], "runs `bench devloop`"),
    (&["bench", "flaky"], "runs `bench flaky`"),
    (&["bench", "startup"], "runs `bench startup`"),
    (&["bench", "build"], "runs `bench build`"),
    (&["fault-proxy", "--upstream", "127.0.0.1:5000"], "forward to 127.0.0.1:5000"),
];

/// Every command of the CLI reference (`docs/cli.md`, generated from the command line and
/// tested current) is walked with `--dry-run` by one of the tests above: a task that starts
/// or changes something in [`TASKS`], one that only reads or experiments in [`READ_ONLY`].
#[test]
fn the_dry_run_walks_cover_every_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let reference = std::fs::read_to_string(root.join("docs/cli.md")).unwrap();
    let commands: Vec<String> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("## `cargo xtask")?.strip_suffix('`'))
        .map(|c| c.trim().to_owned())
        .collect();
    // A group (`prod`, `db`, ...) is walked through its subcommands.
    let leaves: Vec<&String> = commands
        .iter()
        .filter(|c| !c.is_empty())
        .filter(|c| !commands.iter().any(|o| o.starts_with(&format!("{c} "))) || *c == "bench")
        .collect();
    assert!(leaves.len() > 40, "{leaves:?}");
    let walked: Vec<String> = TASKS
        .iter()
        .copied()
        .chain(READ_ONLY.iter().map(|(args, _)| *args))
        .map(|args| args.join(" "))
        .collect();
    let missing: Vec<&&String> = leaves
        .iter()
        .filter(|leaf| !walked.iter().any(|w| *w == ***leaf || w.starts_with(&format!("{leaf} "))))
        .collect();
    assert!(missing.is_empty(), "no dry-run walk for: {missing:?}");
}

/// The tasks that only read, and the two that run a long experiment (`bench`, `fault-proxy`),
/// take `--dry-run` too: it says what they are and runs nothing, no docker command included.
#[test]
fn read_only_and_experiment_tasks_say_what_a_dry_run_would_do() {
    for (args, says) in READ_ONLY {
        let dry = [args, &["--dry-run"]].concat();
        let (output, log) = run_without_docker("read-only", &dry);
        assert!(output.status.success(), "{dry:?}: {}", text(&output.stderr));
        let stdout = text(&output.stdout);
        assert!(stdout.contains("dry run: nothing was run") && stdout.contains(says), "{stdout}");
        assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty(), "{dry:?} ran docker");
        let _ = std::fs::remove_file(&log);
    }
}

/// `--version` names the app's version (what every task builds and releases), not only the
/// task runner's.
#[test]
fn version_flag_names_the_app_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let pyproject = std::fs::read_to_string(root.join("app/pyproject.toml")).unwrap();
    let line = pyproject.lines().find(|l| l.starts_with("version = ")).unwrap();
    let app = line.trim_start_matches("version = ").trim_matches('"');
    let output = xtask(&["--version"]).output().unwrap();
    assert!(output.status.success());
    let said = text(&output.stdout);
    assert!(said.starts_with(&format!("cargo xtask {app} (the app, revision ")), "{said}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .current_dir(root)
        .output()
        .unwrap();
    let head = text(&head.stdout).trim().to_owned();
    assert!(said.contains(&format!("revision {head}")), "{said}");
    let short = xtask(&["-V"]).output().unwrap();
    assert_eq!(text(&short.stdout), said, "-V is --version");
    // A subcommand's names its whole command line.
    let nested = xtask(&["prod", "keys", "--version"]).output().unwrap();
    let nested = text(&nested.stdout);
    assert!(nested.starts_with(&format!("cargo xtask prod keys {app} (the app")), "{nested}");
}

/// Bad TLS input is refused before anything runs, in one line naming the cause: no way to
/// serve chosen, an expired certificate, a key of another certificate, a file that cannot be
/// read, a wildcard ACME name, an ACME account with no address.
#[test]
fn prod_refuses_bad_tls_input_in_one_line_before_anything_runs() {
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/stack/tls");
    let file = |name: &str| tls.join(name).to_str().unwrap().to_owned();
    let cases: [(&[(&str, String)], &str); 6] = [
        (&[], "the prod stack serves HTTPS: give a certificate"),
        (
            &[("TLS_CERT_FILE", file("expired.pem")), ("TLS_KEY_FILE", file("expired.key"))],
            "the certificate expired on 2021-01-01 00:00:00 UTC",
        ),
        (
            &[("TLS_CERT_FILE", file("long.pem")), ("TLS_KEY_FILE", file("other.key"))],
            "TLS_KEY_FILE is not the key of TLS_CERT_FILE's certificate",
        ),
        (
            &[("TLS_CERT_FILE", file("long.pem")), ("TLS_KEY_FILE", "/nonexistent/key.pem".into())],
            "TLS_KEY_FILE=/nonexistent/key.pem cannot be read",
        ),
        (&[("ACME_DOMAIN", "*.example.com".into())], "is a wildcard"),
        (&[("ACME_DOMAIN", "memories.example.com".into())], "ACME_EMAIL=\"\" is not an address"),
    ];
    for (settings, says) in cases {
        let (path, log) = fake_docker("tls-input");
        let mut command = xtask(&["prod", "up", "--dry-run"]);
        command.env("PATH", path).env("POSTGRES_PASSWORD", "x").env("API_KEYS", "off");
        for key in ["TLS", "TLS_CERT_FILE", "TLS_KEY_FILE", "ACME_DOMAIN", "ACME_EMAIL"] {
            command.env_remove(key);
        }
        for (key, value) in settings {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{settings:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(says), "{settings:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(text(&output.stdout).is_empty(), "no plan printed");
        assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty(), "docker ran");
        let _ = std::fs::remove_file(&log);
    }
}

/// `cargo xtask <TAB>` completes in bash: the script hooks into `cargo`'s completion, the
/// words after `xtask` are ours, and a completion `cargo` already had keeps the rest. (zsh and
/// fish are asked in the Docker-backed tests, in the `tools` image that has them.)
#[test]
fn bash_completes_cargo_xtask() {
    let script = xtask(&["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("completions");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cargo-xtask.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let ask = |line: &str| -> String {
        let program = format!(
            "_cargo_before() {{ COMPREPLY=(cargo-own); }}; complete -F _cargo_before cargo\n\
             source '{}'\n\
             read -ra COMP_WORDS <<< '{line}'; [[ '{line}' == *' ' ]] && COMP_WORDS+=('')\n\
             COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
             _cargo_xtask_complete cargo \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"; complete -p cargo",
            file.display()
        );
        let output = Command::new("bash").arg("-c").arg(program).output().unwrap();
        assert!(output.status.success(), "{line}: {}", text(&output.stderr));
        text(&output.stdout)
    };
    let words = |said: &str| said.lines().map(str::to_owned).collect::<Vec<_>>();
    assert!(words(&ask("cargo xtask de")).contains(&"dev".to_owned()), "{}", ask("cargo xtask de"));
    let prod = words(&ask("cargo xtask prod d"));
    assert!(prod.contains(&"deploy".into()) && prod.contains(&"down".into()), "{prod:?}");
    assert!(words(&ask("cargo xtask build --pla")).contains(&"--platform".into()));
    assert!(words(&ask("cargo xtask ci ")).contains(&"hadolint".into()));
    let other = ask("cargo bu");
    assert!(other.starts_with("cargo-own\n"), "cargo's own completion is kept: {other}");
    assert!(other.contains("-F _cargo_xtask_complete") && other.trim_end().ends_with(" cargo"));
}

/// The flags a team sets once default from the environment: `MEMORIES_REGISTRY` for
/// `release --registry`, `MEMORIES_PLATFORMS` for `--platform` of `build`, `release`,
/// `verify`, `images save` and `doctor`; `--help` names the variables, a flag given still wins,
/// and a bad value is refused.
#[test]
fn registry_and_platforms_default_from_the_environment() {
    let help = text(&xtask(&["release", "--help"]).output().unwrap().stdout);
    assert!(
        help.contains("[env: MEMORIES_REGISTRY]") && help.contains("[env: MEMORIES_PLATFORMS]")
    );
    let plan = |args: &[&str], registry: &str, platforms: &str| -> Value {
        let output = xtask(args)
            .env("MEMORIES_REGISTRY", registry)
            .env("MEMORIES_PLATFORMS", platforms)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let release = ["release", "--allow-dirty", "--dry-run", "--json"];
    let planned = plan(&release, "127.0.0.1:5000/team", "linux/arm64").to_string();
    assert!(planned.contains("127.0.0.1:5000/team/server:"), "{planned}");
    assert!(planned.contains("linux/arm64") && !planned.contains("linux/amd64"), "{planned}");
    let flagged = [&release[..], &["--registry", "127.0.0.1:5000/other"]].concat();
    let planned = plan(&flagged, "127.0.0.1:5000/team", "linux/arm64").to_string();
    assert!(planned.contains("127.0.0.1:5000/other/server:") && !planned.contains("/team/"));
    let build = plan(&["build", "server", "--dry-run", "--json"], "x.io/y", "linux/arm64");
    assert!(build.to_string().contains("linux/arm64"), "{build}");
    let save = plan(&["images", "save", "server", "--dry-run", "--json"], "x.io/y", "linux/arm64");
    assert!(save.to_string().contains("linux/arm64"), "{save}");
    assert!(!save.to_string().contains("linux/amd64"), "{save}");
    let doctor = text(&xtask(&["doctor", "--help"]).output().unwrap().stdout);
    assert!(doctor.contains("[env: MEMORIES_PLATFORMS]"), "{doctor}");
    let bad = xtask(&release).env("MEMORIES_REGISTRY", "http://127.0.0.1:5000").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("scheme"), "{}", text(&bad.stderr));
}

/// The environment's settings of a build are checked before anything runs, each failure one
/// line naming the variable and what it takes.
#[test]
fn a_bad_store_export_or_cache_space_is_refused_in_one_line() {
    let (path, log) = fake_docker("bad-build-env");
    let cases = [
        ("MEMORIES_STORE_EXPORT", "archive", "MEMORIES_STORE_EXPORT=archive is not a way"),
        ("MEMORIES_CACHE_SPACE", "Bench 1", "MEMORIES_CACHE_SPACE=Bench 1 is not a cache space"),
    ];
    for (variable, value, says) in cases {
        let output = xtask(&["build", "--dry-run"])
            .env("PATH", &path)
            .env("DOCKER_HOST", "tcp://127.0.0.1:9")
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{variable}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    let calls = calls_beyond_store_queries(&log);
    assert!(calls.is_empty(), "docker was called: {calls:?}");
}
