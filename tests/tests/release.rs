//! Releases against a registry of the test's own: what lands (both platforms, labels, one digest
//! per image across its tags), that a version is never pushed twice, that a release killed
//! half-way finishes when run again, that moving tags only move forward, that a flaky registry
//! is retried through, that a failed build pushes nothing, and air-gapped bundles (OCI image
//! layouts that skopeo reads) that load only when their hash is the one saved.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tests::{
    Cleanup, FaultyRegistry, Registry, arm64_machine, docker, docker_output, free_port, image_refs,
    pyproject_version, repo_root, unique_name, wait_for_200, xtask_captured, xtask_ok,
    xtask_process,
};

/// The `tools` image (cosign, skopeo), built once for the whole binary: two builds naming the
/// same image at once make the image store refuse the second, and the xtask commands these
/// tests run build it again (from cache) for themselves.
fn tools_image() -> &'static str {
    static TOOLS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOOLS.get_or_init(|| {
        let built: Value = serde_json::from_str(&xtask_ok(&["build", "tools", "--json"])).unwrap();
        built["images"][0]["refs"][1].as_str().unwrap().to_owned()
    })
}

/// What `cargo xtask version --json` says about this tree.
fn version() -> Value {
    serde_json::from_str(&xtask_ok(&["version", "--json"])).unwrap()
}

/// The tags a stable release of this tree gets.
fn release_tags() -> Vec<String> {
    let version = version();
    let v = version["version"].as_str().unwrap().to_owned();
    let mut parts = v.split('.');
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    vec![
        v.clone(),
        format!("sha-{}", version["short"].as_str().unwrap()),
        format!("{major}.{minor}"),
        major.to_owned(),
        "latest".to_owned(),
    ]
}

/// `docker buildx imagetools inspect REF --format '{{json .}}'`, or `None` when the registry
/// does not have it.
fn inspect(reference: &str) -> Option<Value> {
    let output =
        docker_output(&["buildx", "imagetools", "inspect", reference, "--format", "{{json .}}"]);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not found"), "cannot inspect {reference}: {stderr}");
        return None;
    }
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

/// Every ref of the release → its digest in the registry.
fn digests(registry: &str, images: &[&str]) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for image in images {
        for tag in release_tags() {
            let reference = format!("{registry}/{image}:{tag}");
            let found = inspect(&reference).unwrap_or_else(|| panic!("{reference} is missing"));
            digests.insert(reference, found["manifest"]["digest"].as_str().unwrap().to_owned());
        }
    }
    digests
}

/// The platform of the releases whose promise does not depend on how many there are: half
/// the exports and pushes of both. The first test, the signed one and the new image's release
/// for both.
const ONE_PLATFORM: [&str; 2] = ["--platform", "linux/amd64"];

/// The flags every release here uses: the tree may be dirty while developing.
fn release(registry: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["release", "server", "db", "--registry", registry, "--allow-dirty"];
    args.extend_from_slice(extra);
    xtask_captured(&args)
}

#[test]
fn release_pushes_both_platforms_verified_and_never_the_same_version_twice() {
    let registry = Registry::start();
    let namespace = registry.namespace("acme");
    let version = version();

    let first = release(&namespace, &["--json"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let reported: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(reported["version"], version["version"]);

    for (n, image) in ["server", "db"].iter().enumerate() {
        let reference = format!("{namespace}/{image}:{}", version["version"].as_str().unwrap());
        let found = inspect(&reference).unwrap();
        let mut platforms: Vec<String> = found["manifest"]["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}/{}", m["platform"]["os"], m["platform"]["architecture"]))
            .filter(|p| !p.contains("unknown"))
            .map(|p| p.replace('"', ""))
            .collect();
        platforms.sort();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{reference}");
        for platform in ["linux/amd64", "linux/arm64"] {
            let labels = &found["image"][platform]["config"]["Labels"];
            assert_eq!(labels["org.opencontainers.image.version"], version["version"]);
            let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
            assert!(revision.starts_with(version["commit"].as_str().unwrap()), "{revision}");
        }
        let released = &reported["images"][n];
        assert_eq!(released["image"], *image);
        assert_eq!(released["digest"], found["manifest"]["digest"], "--json reports the digest");
        assert_eq!(released["refs"].as_array().unwrap().len(), 5);
    }
    let before = digests(&namespace, &["server", "db"]);
    assert_eq!(
        before.values().collect::<std::collections::BTreeSet<_>>().len(),
        2,
        "every tag of an image names the same index: {before:#?}"
    );

    let arm =
        arm64_machine(&format!("{namespace}/server:{}", version["version"].as_str().unwrap()));
    assert_eq!(arm, "aarch64");

    let again = release(&namespace, &[]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: ") && last.contains("already in the registry"), "{stderr}");
    assert!(last.contains("--force"), "{last}");
    assert!(!stderr.lines().any(|l| l.starts_with("pushed ")), "nothing was pushed: {stderr}");
    assert_eq!(digests(&namespace, &["server", "db"]), before, "the registry is unchanged");
}

/// The digest `reference` names in the registry; panics when it is absent.
fn digest_of(reference: &str) -> String {
    let found = inspect(reference).unwrap_or_else(|| panic!("{reference} is missing"));
    found["manifest"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn a_release_killed_after_its_first_push_finishes_when_run_again() {
    use std::io::BufRead;
    let registry = Registry::start();
    let namespace = registry.namespace("resumed");
    let version = version();
    let v = version["version"].as_str().unwrap();
    let mut child = xtask_process()
        .args(["release", "server", "db", "--registry", &namespace, "--allow-dirty"])
        .args(ONE_PLATFORM)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        // The first image's push has completed: its blobs, manifests and every immutable tag.
        if line.starts_with("pushed server as ") {
            child.kill().unwrap(); // SIGKILL: no clean-up of any kind.
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the release was killed:\n{}", seen.join("\n"));
    // SIGKILL left what the run named for itself (its SBOM generator's tag, named by its pid):
    // that is the reaper's.
    let killed = format!("reference=memories/run-*-{}-*/sbom", child.id());
    let generator = || tests::docker(&["image", "ls", "--quiet", "--filter", &killed]);
    assert_ne!(generator(), "", "the killed release's generator is still tagged");
    let reaped = xtask_process()
        .arg("reap")
        .env_remove("MEMORIES_RUN")
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(reaped.status.success(), "{}", String::from_utf8_lossy(&reaped.stderr));
    assert_eq!(generator(), "", "cargo xtask reap removed it");
    let server = format!("{namespace}/server:{v}");
    let first = digest_of(&server);
    assert_eq!(inspect(&format!("{namespace}/db:{v}")), None, "db was not pushed yet");
    assert_eq!(inspect(&format!("{namespace}/server:latest")), None, "latest never moved");

    let again = release(&namespace, &[&ONE_PLATFORM[..], &["--json"]].concat());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "a re-run without --force finishes the release: {stderr}");
    let reported: Value = serde_json::from_slice(&again.stdout).unwrap();
    for (n, image) in ["server", "db"].iter().enumerate() {
        let digest = reported["images"][n]["digest"].as_str().unwrap();
        for tag in release_tags() {
            let reference = format!("{namespace}/{image}:{tag}");
            assert_eq!(digest_of(&reference), digest, "{reference}");
        }
    }
    assert_eq!(reported["images"][0]["digest"], first, "the server the first run pushed stays");
    assert_eq!(reported["images"][0]["refs"].as_array().unwrap().len(), 5);

    let complete = release(&namespace, &ONE_PLATFORM);
    assert_eq!(complete.status.code(), Some(1), "a finished release is not released twice");
    let stderr = String::from_utf8_lossy(&complete.stderr);
    assert!(stderr.contains("already in the registry with every tag in place"), "{stderr}");
}

/// A clone of this repository's HEAD at `version` (committed).
fn clone_at_version(dir: &std::path::Path, version: &str) {
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@example.invalid"])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    if !dir.join(".git").exists() {
        std::fs::create_dir_all(dir).unwrap();
        let source = repo_root();
        git(&["clone", "--quiet", source.to_str().unwrap(), "."]);
    }
    // A clone may already be at another version (an earlier call): the lock follows it.
    let pyproject = dir.join("app/pyproject.toml");
    let text = std::fs::read_to_string(&pyproject).unwrap();
    let line = text.lines().find(|l| l.starts_with("version")).unwrap().to_owned();
    let current = line.split('"').nth(1).unwrap().to_owned();
    std::fs::write(&pyproject, text.replace(&line, &format!("version = \"{version}\""))).unwrap();
    let lock = dir.join("app/uv.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    let entry = |v: &str| format!("name = \"memories\"\nversion = \"{v}\"");
    assert!(text.contains(&entry(&current)), "uv.lock locks memories {current}");
    std::fs::write(&lock, text.replacen(&entry(&current), &entry(version), 1)).unwrap();
    git(&["commit", "--quiet", "--all", "--message", &format!("version {version}")]);
}

/// `cargo xtask release redis` in the clone at `dir`: this checkout's xtask (the clone's code
/// is the same, committed) with the clone as its repository root (`MEMORIES_ROOT`), so its
/// version and revision are the clone's.
fn release_from(dir: &std::path::Path, namespace: &str) -> std::process::Output {
    xtask_process()
        .args(["release", "redis", "--json", "--registry", namespace])
        .args(ONE_PLATFORM)
        .env("MEMORIES_ROOT", dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn moving_tags_never_move_back_to_an_older_line() {
    let registry = Registry::start();
    let namespace = registry.namespace("lines");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_name("lines"));

    clone_at_version(&dir, "0.2.0");
    let newer = release_from(&dir, &namespace);
    assert!(newer.status.success(), "{}", String::from_utf8_lossy(&newer.stderr));
    let newer = digest_of(&format!("{namespace}/redis:0.2.0"));

    clone_at_version(&dir, "0.1.1");
    let output = release_from(&dir, &namespace);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let older = digest_of(&format!("{namespace}/redis:0.1.1"));
    assert_ne!(newer, older);
    for (tag, want) in [("latest", &newer), ("0", &newer), ("0.2", &newer), ("0.1", &older)] {
        assert_eq!(digest_of(&format!("{namespace}/redis:{tag}")), *want, "redis:{tag}");
    }
    for tag in ["latest", "0"] {
        let said = format!("left alone: {namespace}/redis:{tag} names 0.2.0, newer than 0.1.1");
        assert!(stderr.contains(&said), "{said}: {stderr}");
    }
    let reported: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reported["left_alone"].as_array().unwrap().len(), 2, "{reported:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_release_through_a_flaky_registry_is_retried_to_the_end() {
    let registry = Registry::start();
    // One request in five fails: a 500, a 429, a reset connection or a delay.
    let flaky = FaultyRegistry::start(&registry, "20%", 20261123);
    let namespace = flaky.namespace("flaky");
    let output = release(&namespace, &[&ONE_PLATFORM[..], &["--json"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let reported: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(reported["retries"].as_u64().unwrap() > 0, "the proxy failed nothing? {stderr}");
    assert!(stderr.contains("transient, attempt 1 of 12, retrying in"), "{stderr}");
    // Read back directly from the registry, not through the proxy.
    let direct = registry.namespace("flaky");
    for (n, image) in ["server", "db"].iter().enumerate() {
        for tag in release_tags() {
            let reference = format!("{direct}/{image}:{tag}");
            assert_eq!(digest_of(&reference), reported["images"][n]["digest"], "{reference}");
        }
    }
}

/// A `docker` in front of the real one that breaks the `db` target of every bake definition
/// that has one (an unknown Dockerfile stage), so exactly one image of a release fails to
/// build.
fn docker_breaking_db(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let real = Command::new("sh").args(["-c", "command -v docker"]).output().unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_owned();
    let script = format!(
        "#!/bin/sh\n\
         case \" $* \" in\n\
         *\" bake \"*) python3 -c 'import json,sys; b=json.load(sys.stdin); \
         b[\"target\"].get(\"db\", {{}}).update(target=\"no-such-stage\"); \
         json.dump(b, sys.stdout)' \
         | exec {real} \"$@\" ;;\n\
         *) exec {real} \"$@\" ;;\n\
         esac\n"
    );
    let path = dir.join("docker");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap())
}

#[test]
fn a_release_with_one_failed_build_pushes_nothing_and_leaves_no_tags() {
    let registry = Registry::start();
    let namespace = registry.namespace("broken");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_name("docker-breaking-db"));
    let path = docker_breaking_db(&dir);
    let output = xtask_process()
        .args(["release", "server", "db", "--registry", &namespace, "--allow-dirty"])
        .args(ONE_PLATFORM)
        .env("PATH", path)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("release aborted before pushing anything"), "{stderr}");
    assert!(stderr.contains("no-such-stage"), "the build really failed on db: {stderr}");
    for image in ["server", "db"] {
        for tag in release_tags() {
            let reference = format!("{namespace}/{image}:{tag}");
            assert!(inspect(&reference).is_none(), "{reference} was pushed");
        }
    }
    let local = image_refs(Some(&format!("{namespace}/*")));
    assert_eq!(local, "", "a failed release leaves no local tags");
}

#[test]
fn a_bundle_brings_the_stack_up_with_no_registry_and_refuses_damage() {
    let registry = Registry::start();
    let mut cleanup = Cleanup::default();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_name("bundle"));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("memories.tar");
    let bundle_arg = bundle.to_str().unwrap();

    let (ours, other) = (dir.join("ours"), dir.join("other"));
    key_pair(&ours, "bundle secret");
    key_pair(&other, "");
    let saved = xtask_process()
        .args(["images", "save", "server", "db", "--output", bundle_arg, "--json"])
        .args(["--sign", ours.join("cosign.key").to_str().unwrap()])
        .env("COSIGN_PASSWORD", "bundle secret")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let saved: Value = serde_json::from_slice(&saved.stdout).unwrap();
    assert_eq!(saved["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));
    let sha256 = saved["sha256"].as_str().unwrap().to_owned();
    let on_disk = Command::new("sha256sum").arg(&bundle).output().unwrap();
    assert!(String::from_utf8_lossy(&on_disk.stdout).starts_with(&sha256), "the file's own hash");
    let refs: Vec<String> = saved["images"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["refs"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(refs.len(), 6, "three tags of two images: {refs:?}");
    let server = &saved["images"][0];
    assert_eq!(server["image"], "server");

    // Someone else's tool reads it: Debian's skopeo, as an OCI archive, by the full ref.
    let tools = tools_image();
    let skopeo = |args: &[&str]| -> Value {
        let mount = format!("{}:/bundle:ro", dir.display());
        let archive = format!("oci-archive:/bundle/memories.tar:{}", refs[0]);
        let mut command = vec!["run", "--rm", "--volume", mount.as_str(), tools, "skopeo"];
        command.extend(args);
        command.push(&archive);
        serde_json::from_str(&docker(&command)).unwrap()
    };
    let raw = skopeo(&["inspect", "--raw"]);
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["platform"]["os"] != "unknown")
        .map(|m| {
            format!("{}/{}", m["platform"]["os"], m["platform"]["architecture"]).replace('"', "")
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{raw}");
    let inspected = skopeo(&["inspect"]);
    assert_eq!(inspected["Labels"]["org.opencontainers.image.version"], saved["version"]);

    // A damaged copy is refused before anything is loaded.
    let damaged = dir.join("damaged.tar");
    let bytes = std::fs::read(&bundle).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    for r in &refs {
        docker(&["image", "rm", r]);
    }
    let refused =
        xtask_captured(&["images", "load", damaged.to_str().unwrap(), "--sha256", &sha256]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not the bundle that was saved"), "{stderr}");
    assert!(!docker_output(&["image", "inspect", &refs[0]]).status.success(), "nothing loaded");

    // A forged bundle: the base image saved as our server, with metadata that lists no image.
    // Its hash is not the real one's; without the hash check, its empty list is refused.
    docker(&["pull", "--quiet", "debian:trixie-slim"]);
    docker(&["tag", "debian:trixie-slim", &refs[0]]);
    let forged = dir.join("forged.tar");
    docker(&["save", "--output", forged.to_str().unwrap(), &refs[0]]);
    docker(&["image", "rm", &refs[0]]);
    let metadata = dir.join("memories-bundle.json");
    std::fs::write(&metadata, r#"{"format": "memories-bundle/2", "images": []}"#).unwrap();
    let appended = Command::new("tar")
        .args(["--append", "--file", forged.to_str().unwrap(), "--directory"])
        .args([dir.to_str().unwrap(), "memories-bundle.json"])
        .status()
        .unwrap();
    assert!(appended.success());
    let forged = forged.to_str().unwrap();
    let refused = xtask_captured(&["images", "load", forged, "--sha256", &sha256]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not the bundle that was saved"), "{stderr}");
    let unchecked = xtask_captured(&["images", "load", forged, "--skip-checksum"]);
    let stderr = String::from_utf8_lossy(&unchecked.stderr);
    assert_eq!(unchecked.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lists no image"), "{stderr}");
    assert!(!docker_output(&["image", "inspect", &refs[0]]).status.success(), "nothing loaded");

    // Signed by our key: another key's public half refuses it before anything is loaded.
    let load_with_key = |keys: &std::path::Path| {
        let key = keys.join("cosign.pub");
        let key = key.to_str().unwrap().to_owned();
        xtask_captured(&["images", "load", bundle_arg, "--sha256", &sha256, "--key", &key])
    };
    let wrong_key = load_with_key(&other);
    let stderr = String::from_utf8_lossy(&wrong_key.stderr);
    assert_eq!(wrong_key.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not signed by") && stderr.contains("nothing was loaded"),
        "{stderr}"
    );
    assert!(!docker_output(&["image", "inspect", &refs[0]]).status.success(), "nothing loaded");

    // No registry from here on: the stack must come from the bundle alone.
    registry.stop();
    let loaded = load_with_key(&ours);
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let loaded = String::from_utf8(loaded.stdout).unwrap();
    for r in &refs {
        assert!(loaded.contains(r.as_str()), "{r} is reported: {loaded}");
        docker(&["image", "inspect", r]);
    }
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &refs[0]]);
    assert_eq!(id, server["digest"].as_str().unwrap(), "the server is ours, not the forgery");
    let project = unique_name("memories-bundle");
    cleanup.project(&project);
    let port = free_port();
    let up = xtask_process()
        .args(["dev", "up", "--no-build"])
        .env("COMPOSE_PROJECT_NAME", &project)
        .env("DEV_SERVER_PORT", port.to_string())
        .env("DEV_DB_PORT", free_port().to_string())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    wait_for_200(port, "/v1/health", Duration::from_secs(30));
    let down = xtask_process()
        .args(["dev", "down", "--volumes"])
        .env("COMPOSE_PROJECT_NAME", &project)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(down.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cosign key pair made by the tools image in `dir` (cosign.key, cosign.pub), with
/// `password`.
fn key_pair(dir: &std::path::Path, password: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mount = format!("{}:/keys", dir.display());
    let output = docker_output(&[
        "run",
        "--rm",
        "--user",
        "0",
        "--volume",
        &mount,
        "--workdir",
        "/keys",
        "--env",
        &format!("COSIGN_PASSWORD={password}"),
        tools_image(),
        "cosign",
        "generate-key-pair",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `cosign verify` of `reference` with the public key in `dir`, run by hand.
fn cosign_verifies(reference: &str, dir: &std::path::Path) -> bool {
    let mount = format!("{}:/keys:ro", dir.display());
    docker_output(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--volume",
        &mount,
        tools_image(),
        "cosign",
        "verify",
        "--key",
        "/keys/cosign.pub",
        "--insecure-ignore-tlog=true",
        reference,
    ])
    .status
    .success()
}

#[test]
fn a_signed_release_verifies_with_its_key_only_and_a_retagged_ref_fails_verify() {
    let registry = Registry::start();
    let namespace = registry.namespace("signed");
    let version = pyproject_version();
    let dir = std::env::temp_dir().join(unique_name("release-keys"));
    let (ours, other) = (dir.join("ours"), dir.join("other"));
    key_pair(&ours, "correct horse");
    key_pair(&other, "");
    let key = ours.join("cosign.key");
    let key_text = std::fs::read_to_string(&key).unwrap();
    let body = key_text.lines().nth(1).unwrap().to_owned();

    let wrong_password = xtask_process()
        .args(["release", "server", "--registry", &namespace, "--allow-dirty"])
        .args(["--sign", key.to_str().unwrap()])
        .env("COSIGN_PASSWORD", "wrong")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(wrong_password.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong_password.stderr);
    assert!(
        stderr.contains("cannot read the signing key") && stderr.contains("COSIGN_PASSWORD"),
        "{stderr}"
    );
    assert!(
        inspect(&format!("{namespace}/server:{version}")).is_none(),
        "nothing pushed: {stderr}"
    );

    let released = xtask_process()
        .args(["release", "server", "db", "--registry", &namespace, "--allow-dirty"])
        .args(["--sign", "env://RELEASE_KEY", "--json"])
        .env("RELEASE_KEY", &key_text)
        .env("COSIGN_PASSWORD", "correct horse")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&released.stderr);
    assert!(released.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&released.stdout);
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains(&body) && !shown.contains("correct horse"), "{shown}");
    }
    let report: Value = serde_json::from_slice(&released.stdout).unwrap();
    for image in report["images"].as_array().unwrap() {
        assert_eq!(image["signed"], true, "{image}");
        for reference in image["refs"].as_array().unwrap() {
            let reference = reference.as_str().unwrap();
            assert!(cosign_verifies(reference, &ours), "{reference} verifies with our key");
            assert!(
                !cosign_verifies(reference, &other),
                "{reference} must not verify with another key"
            );
        }
    }

    // Each index carries an SBOM per platform that lists Debian and Python packages.
    for (image, package) in [("db", "postgresql-17"), ("server", "fastapi")] {
        let reference = format!("{namespace}/{image}:{version}");
        let sboms: Value = serde_json::from_str(&docker(&[
            "buildx",
            "imagetools",
            "inspect",
            &reference,
            "--format",
            "{{json .SBOM}}",
        ]))
        .unwrap();
        for platform in ["linux/amd64", "linux/arm64"] {
            let packages = sboms[platform]["SPDX"]["packages"].as_array().unwrap_or_else(|| {
                panic!("{reference} has no SPDX SBOM for {platform}: {sboms:#}")
            });
            let found = packages.iter().find(|p| p["name"] == package);
            let version = found.and_then(|p| p["versionInfo"].as_str()).unwrap_or_default();
            assert!(!version.is_empty(), "{reference} {platform}: {package} with its version");
        }
    }

    let server = format!("{namespace}/server:{version}");
    let public = ours.join("cosign.pub");
    let verify = |reference: &str, key: &std::path::Path| {
        xtask_captured(&["verify", reference, "--key", key.to_str().unwrap(), "--json"])
    };
    let good = verify(&server, &public);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let good: Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(good["ok"], true);
    let names: Vec<&str> =
        good["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(names, ["platforms", "labels", "signature", "provenance", "sbom"]);
    assert!(good["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{good:#}");

    let by_other = verify(&server, &other.join("cosign.pub"));
    assert_eq!(by_other.status.code(), Some(1), "another key: failed");

    // Tampered: the server's version tag retagged to the db image (signed, but as db).
    let db = digest_of(&format!("{namespace}/db:{version}"));
    docker(&["buildx", "imagetools", "create", "--tag", &server, &format!("{namespace}/db@{db}")]);
    let tampered = verify(&server, &public);
    assert_eq!(tampered.status.code(), Some(1));
    let tampered_report: Value = serde_json::from_slice(&tampered.stdout).unwrap();
    assert_eq!(tampered_report["ok"], false);
    let failed: Vec<&str> = tampered_report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["labels", "signature"], "{tampered_report:#}");
    let last =
        String::from_utf8_lossy(&tampered.stderr).lines().last().unwrap_or_default().to_owned();
    assert!(last.contains("failed verification: labels, signature"), "{last}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Images as data: in a copy of the repository, an image added to `docker/images.toml` with its
/// Dockerfile, and nothing else (no change to xtask), is listed, built and run, released signed
/// to a registry for both platforms and verified, and saved to a bundle that loads back.
#[test]
fn a_new_image_declared_as_data_is_built_released_verified_and_bundled() {
    let copy = tests::RepoCopy::new("0.0.7");
    std::fs::create_dir_all(copy.path("docker/hello")).unwrap();
    std::fs::write(copy.path("docker/hello/greeting"), "hello from an image of data\n").unwrap();
    std::fs::write(
        copy.path("docker/hello/Dockerfile"),
        "# A test image: a file and a command that prints it.\n\
         FROM debian:trixie-slim AS hello\n\
         COPY docker/hello/greeting /greeting\n\
         USER 65534:65534\n\
         HEALTHCHECK CMD [\"cat\", \"/greeting\"]\n\
         CMD [\"cat\", \"/greeting\"]\n",
    )
    .unwrap();
    let catalogue = copy.path("docker/images.toml");
    let mut text = std::fs::read_to_string(&catalogue).unwrap();
    text.push_str(
        "\n[[image]]\nname = \"hello\"\nabout = \"a test image\"\n\
         dockerfile = \"docker/hello/Dockerfile\"\ntarget = \"hello\"\n\
         inputs = [\"docker/hello\"]\nrelease = true\n",
    );
    std::fs::write(&catalogue, text).unwrap();
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .args(["-c", "user.name=tests", "-c", "user.email=tests@localhost"])
            .args(args)
            .current_dir(&copy.root)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    git(&["add", "--all"]);
    git(&["commit", "--quiet", "--message", "an image of data"]);
    let sha = git(&["rev-parse", "--short=7", "HEAD"]);
    let mut cleanup = Cleanup::default();
    for tag in ["0.0.7".to_owned(), format!("0.0.7-{sha}"), format!("sha-{sha}")] {
        cleanup.image(&format!("memories/hello:{tag}"));
    }
    let in_copy = |args: &[&str]| {
        let output = xtask_process()
            .args(args)
            .env("MEMORIES_ROOT", &copy.root)
            .env("COSIGN_PASSWORD", "")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "xtask {args:?}: {stderr}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let listed: Value = serde_json::from_str(&in_copy(&["images", "list", "--json"])).unwrap();
    let hello = listed.as_array().unwrap().iter().find(|i| i["name"] == "hello").unwrap();
    assert_eq!(hello["release"], true);

    // Built (reproducibly, like every image) and run.
    let built: Value = serde_json::from_str(&in_copy(&["build", "hello", "--json"])).unwrap();
    assert_eq!(built["images"][0]["image"], "hello", "{built}");
    let reference = built["images"][0]["refs"][1].as_str().unwrap().to_owned();
    assert_eq!(docker(&["run", "--rm", &reference]), "hello from an image of data");

    // Released for both platforms, signed, and verified.
    let registry = Registry::start();
    let namespace = registry.namespace("data");
    let dir = std::env::temp_dir().join(unique_name("data-image"));
    key_pair(&dir, "");
    let key = dir.join("cosign.key");
    let released = in_copy(&[
        "release",
        "hello",
        "--registry",
        &namespace,
        "--sign",
        key.to_str().unwrap(),
        "--json",
    ]);
    let released: Value = serde_json::from_str(&released).unwrap();
    assert_eq!(released["images"][0]["image"], "hello", "{released}");
    let public = dir.join("cosign.pub");
    let report = in_copy(&[
        "verify",
        &format!("{namespace}/hello:0.0.7"),
        "--key",
        public.to_str().unwrap(),
        "--json",
    ]);
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");

    // Saved to a bundle, and loaded from it.
    let bundle = dir.join("hello.tar");
    let saved = in_copy(&[
        "images",
        "save",
        "hello",
        "--platform",
        "linux/amd64",
        "--output",
        bundle.to_str().unwrap(),
        "--json",
    ]);
    let saved: Value = serde_json::from_str(&saved).unwrap();
    let sha256 = saved["sha256"].as_str().unwrap();
    docker(&["image", "rm", &reference]);
    let loaded = in_copy(&["images", "load", bundle.to_str().unwrap(), "--sha256", sha256]);
    assert!(loaded.contains("memories/hello:"), "{loaded}");
    assert_eq!(docker(&["run", "--rm", &reference]), "hello from an image of data");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cargo xtask <TAB>` completes in zsh and fish too, asked in the `tools` image that has
/// both shells: fish lists the completions of a command line (`complete -C`), zsh registers
/// the hook for `cargo` and defines clap's function (it has no non-interactive way to list
/// them). bash is asked on the host (`xtask/tests/cli.rs`).
#[test]
fn zsh_and_fish_complete_cargo_xtask() {
    let dir = std::env::temp_dir().join(format!("completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for shell in ["zsh", "fish"] {
        std::fs::write(dir.join(shell), xtask_ok(&["completions", shell])).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount = format!("{}:/c:ro", dir.display());
    let shell = |program: &[&str]| -> String {
        let args =
            [&["run", "--rm", "--env", "HOME=/tmp", "--volume", &mount, tools_image()], program]
                .concat();
        docker(&args)
    };
    let fish = |line: &str| {
        shell(&["fish", "--no-config", "-c", &format!("source /c/fish; complete -C '{line}'")])
    };
    let said = fish("cargo xtask de");
    assert!(said.lines().any(|l| l.starts_with("dev")), "{said}");
    let said = fish("cargo xtask prod d");
    assert!(said.lines().any(|l| l.starts_with("deploy")), "{said}");
    assert!(said.lines().any(|l| l.starts_with("down")), "{said}");
    let said = fish("cargo xtask build --pla");
    assert!(said.lines().any(|l| l.starts_with("--platform")), "{said}");
    let said = fish("cargo bu");
    assert!(!said.lines().any(|l| l.starts_with("dev")), "xtask's words only after xtask: {said}");
    let said = shell(&[
        "zsh",
        "-fc",
        "autoload -U compinit && compinit -D && source /c/zsh && print -r -- $_comps[cargo] \
         && whence -w _cargo-xtask",
    ]);
    assert_eq!(said, "_cargo_xtask_complete\n_cargo-xtask: function", "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
