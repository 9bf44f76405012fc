//! The registry client against registries that lie, misbehave or race us, with no Docker engine:
//! in-process fakes, `openssl` for a test CA, and (where the machine has it, always in CI) a
//! real `docker-registry` behind that CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{FakeRegistry, docker_baking_archives, docker_login, text, xtask};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn version() -> String {
    let version: Value =
        serde_json::from_slice(&xtask(&["version", "--json"]).output().unwrap().stdout).unwrap();
    version["version"].as_str().unwrap().to_owned()
}

fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "sha256:{}",
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn credentials_never_go_to_an_upload_location_on_another_origin() {
    use base64::Engine as _;
    let (path, _) = docker_baking_archives("cross-origin");
    // The blob storage: another origin, which records whether a request carried credentials.
    let carried = Arc::new(Mutex::new(Vec::new()));
    let seen = carried.clone();
    let storage = FakeRegistry::start(move |request, _| {
        seen.lock().unwrap().push(request.headers.contains_key("authorization"));
        None
    });
    let storage_address = storage.address.clone();
    let login = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("me:s3cret"));
    let registry = FakeRegistry::start(move |request, so_far| {
        if request.headers.get("authorization") != Some(&login) {
            let challenge = r#"Basic realm="fake""#.to_owned();
            return Some((401, vec![("WWW-Authenticate".into(), challenge)], Vec::new()));
        }
        if request.method == "POST" {
            let location = format!("http://{storage_address}/upload/{}", so_far.len());
            return Some((202, vec![("Location".into(), location)], Vec::new()));
        }
        None
    });
    let config = docker_login("docker-config-cross-origin", &registry.address);
    let namespace = format!("{}/acme", registry.address);
    let output = xtask(&["release", "server", "--registry", &namespace, "--allow-dirty"])
        .env("PATH", path)
        .env("DOCKER_CONFIG", &config)
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("pushed server as {namespace}/server:")), "{stderr}");
    let carried = carried.lock().unwrap().clone();
    let uploads = storage.requests().iter().filter(|r| r.starts_with("PUT /upload/")).count();
    assert_eq!(uploads, 3, "config and two layers: {:?}", storage.requests());
    assert!(!carried.contains(&true), "credentials reached another origin: {carried:?}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn an_expired_token_is_renewed_before_the_request_that_would_carry_it() {
    let (path, _) = docker_baking_archives("token-expiry");
    // Tokens last two seconds. A request with a stale one is cut off without an answer, as a
    // registry that drops an upload whose token ran out does; each request takes 100 ms, so
    // the push outlives several tokens.
    let issued: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let registry = FakeRegistry::start(move |request, _| {
        let header = |name: &str| request.headers.get(name).map(String::as_str);
        let mut issued = issued.lock().unwrap();
        if request.path == "/token" {
            issued.push(Instant::now());
            let token = format!(r#"{{"token":"t{}","expires_in":2}}"#, issued.len() - 1);
            return Some((200, Vec::new(), token.into_bytes()));
        }
        let held = header("authorization")
            .and_then(|h| h.strip_prefix("Bearer t"))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| issued.get(n).copied());
        std::thread::sleep(Duration::from_millis(100));
        match held {
            Some(at) if at.elapsed() < Duration::from_millis(2100) => None,
            Some(_) => Some((0, Vec::new(), Vec::new())),
            None => {
                let port = header("host").unwrap_or_default().rsplit(':').next().unwrap_or("");
                let challenge = format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#);
                Some((401, vec![("WWW-Authenticate".into(), challenge)], Vec::new()))
            }
        }
    });
    let namespace = format!("{}/acme", registry.address);
    let started = Instant::now();
    let output = xtask(&["release", "server", "--registry", &namespace, "--allow-dirty"])
        .env("PATH", path)
        .env("DOCKER_CONFIG", scratch("no-docker-config-expiry"))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("pushed server as {namespace}/server:")), "{stderr}");
    let tokens = registry.requests().iter().filter(|r| *r == "GET /token").count();
    assert!(tokens >= 3, "tokens were renewed as they ran out: {tokens}");
    assert!(!stderr.contains("retrying"), "no request went out with a stale token: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

#[test]
fn a_tag_another_build_pushed_meanwhile_is_never_overwritten() {
    let (path, _) = docker_baking_archives("immutable-race");
    let version = version();
    let tag = format!("/v2/acme/server/manifests/{version}");
    let foreign = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let registry = FakeRegistry::start(move |request, so_far| {
        // Absent when the release looks first; there once our push has begun.
        let pushing = so_far.iter().any(|r| r.starts_with("HEAD /v2/acme/server/blobs/"));
        if request.method == "GET" && request.path == tag && pushing {
            let media = "application/vnd.oci.image.index.v1+json".to_owned();
            return Some((200, vec![("Content-Type".into(), media)], foreign.to_vec()));
        }
        None
    });
    let namespace = format!("{}/acme", registry.address);
    let output = xtask(&["release", "server", "--registry", &namespace, "--allow-dirty"])
        .env("PATH", path)
        .env("DOCKER_CONFIG", scratch("no-docker-config-race"))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "{namespace}/server:{version} appeared in the registry as {} while this image was built",
            digest(foreign)
        )),
        "{stderr}"
    );
    let writes: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| r == &format!("PUT /v2/acme/server/manifests/{version}"))
        .collect();
    assert!(writes.is_empty(), "the foreign tag was written over: {writes:?}");
}

#[test]
fn a_base_layer_shared_by_images_is_uploaded_once_and_mounted_elsewhere() {
    let (path, _) = docker_baking_archives("mounts");
    let registry = FakeRegistry::start(|_, _| None);
    let namespace = format!("{}/acme", registry.address);
    let output = xtask(&["release", "server", "db", "--registry", &namespace, "--allow-dirty"])
        .env("PATH", path)
        .env("DOCKER_CONFIG", scratch("no-docker-config-mounts"))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(stderr.contains("pushed server as") && stderr.contains("pushed db as"), "{stderr}");
    let requests = registry.requests();
    let uploads = requests.iter().filter(|r| r.starts_with("PUT /upload/")).count();
    // Server: config, base, its layer; db: config and its layer, the base mounted.
    assert_eq!(uploads, 5, "{requests:#?}");
}

#[test]
fn a_failing_credential_helper_never_shows_the_secret_it_printed() {
    let (path, _) = docker_baking_archives("helper-secret");
    let registry = FakeRegistry::start(|_, _| {
        Some((401, vec![("WWW-Authenticate".into(), r#"Basic realm="fake""#.into())], Vec::new()))
    });
    let config = scratch("docker-config-helper");
    let creds = serde_json::json!({"credHelpers": {&registry.address: "leaky"}});
    std::fs::write(config.join("config.json"), creds.to_string()).unwrap();
    let helper = config.join("docker-credential-leaky");
    std::fs::write(
        &helper,
        "#!/bin/sh\necho '{\"Username\":\"me\",\"Secret\":\"hunter2-s3cret\"}'\n\
         echo 'keychain locked while reading hunter2-s3cret' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let namespace = format!("{}/acme", registry.address);
    let output = xtask(&["release", "server", "--registry", &namespace, "--allow-dirty"])
        .env("PATH", format!("{}:{path}", config.display()))
        .env("DOCKER_CONFIG", &config)
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`docker-credential-leaky get` failed"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A CA and a certificate it signed for 127.0.0.1, made with `openssl`: (CA, cert, key).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output();
        let out = out.expect("openssl is needed to make a test CA");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]]
        .concat()
        .iter()
        .copied()
        .chain(["-subj", "/CN=memories test CA"])
        .collect::<Vec<_>>());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr"]]
        .concat()
        .iter()
        .copied()
        .chain(["-subj", "/CN=127.0.0.1"])
        .collect::<Vec<_>>());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Stops the child when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_registry_behind_a_private_ca_is_trusted_through_certs_d_and_refused_at_once_without() {
    let Ok(binary) = which_registry() else {
        assert!(
            std::env::var("CI").is_err(),
            "docker-registry (from ../shared/docker-env/setup) is required under CI=true"
        );
        eprintln!("skipped: no docker-registry on this machine (../shared/docker-env/setup)");
        return;
    };
    let dir = scratch("tls-registry");
    let (ca, cert, key) = test_ca(&dir);
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n\
             http: {{addr: '{address}', tls: {{certificate: {}, key: {}}}}}\n",
            dir.join("storage").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let _registry = Killed(
        std::process::Command::new(binary)
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "the registry did not listen on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let certs_d = dir.join("certs.d");
    let host_dir = certs_d.join(&address);
    std::fs::create_dir_all(&host_dir).unwrap();
    let namespace = format!("{address}/acme");
    let release = |name: &str| {
        let (path, _) = docker_baking_archives(name);
        let started = Instant::now();
        let output = xtask(&["release", "server", "--registry", &namespace, "--allow-dirty"])
            .env("PATH", path)
            .env("DOCKER_CONFIG", scratch(&format!("no-docker-config-{name}")))
            .env("MEMORIES_CERTS_D", &certs_d)
            .output()
            .unwrap();
        (text(&output.stderr), output.status.code(), started.elapsed())
    };

    // Without the CA: a certificate error, definite, said with its cause and the fix.
    let (stderr, code, took) = release("tls-without-ca");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(2), "a certificate error is not retried: {took:?}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&format!("TLS with {address} failed")), "{last}");
    assert!(last.contains("certificate") && last.contains("Mozilla's root certificates"), "{last}");
    assert!(last.contains(&format!("/etc/docker/certs.d/{address}/ca.crt")), "{last}");

    // With the CA where Docker looks for it: the push goes through.
    std::fs::copy(&ca, host_dir.join("ca.crt")).unwrap();
    let (stderr, _, _) = release("tls-with-ca");
    assert!(stderr.contains(&format!("pushed server as {namespace}/server:")), "{stderr}");
    assert!(!stderr.contains("TLS with"), "{stderr}");
}

fn which_registry() -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("docker-registry")).find(|p| p.is_file()).ok_or(())
}
