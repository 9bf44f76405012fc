//! What the command-line tests share: the binary, a fake registry in this process, and a fake
//! `docker` whose bake writes real OCI archives.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn xtask(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args).current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
    cmd
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A registry on a loopback port that keeps what it is sent in memory and logs each request
/// as `METHOD PATH`. `answer` may answer a request itself first (given the log so far), e.g.
/// with a 500 or a refusal; status 0 drops the connection without an answer.
pub struct FakeRegistry {
    pub address: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub type Answer = Option<(u16, Vec<(String, String)>, Vec<u8>)>;

/// What the fake registry was asked: header names are lowercase.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: std::collections::HashMap<String, String>,
    /// What follows `?` in the target, as sent.
    pub query: String,
}

impl FakeRegistry {
    pub fn start(answer: impl Fn(&Request, &[String]) -> Answer + Send + 'static) -> FakeRegistry {
        use std::collections::HashMap;
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread_log = log.clone();
        std::thread::spawn(move || {
            let mut stored: HashMap<String, (String, Vec<u8>)> = HashMap::new();
            let mut uploads = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, target) =
                    (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
                let mut headers = HashMap::new();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let Some((name, value)) = header.trim_end().split_once(": ") else { break };
                    headers.insert(name.to_ascii_lowercase(), value.to_owned());
                }
                let length: usize =
                    headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let path = target.split('?').next().unwrap().to_owned();
                let so_far = thread_log.lock().unwrap().clone();
                thread_log.lock().unwrap().push(format!("{method} {path}"));
                let query = target.split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default();
                let request =
                    Request { method: method.clone(), path: path.clone(), headers, query };
                let (status, extra, reply) = answer(&request, &so_far).unwrap_or_else(|| {
                    let Request { headers, .. } = &request;
                    let media = headers.get("content-type").cloned().unwrap_or_default();
                    let key = |p: &str| p.replace("/manifests/", "/m/").replace("/blobs/", "/b/");
                    match method.as_str() {
                        // A mount of a blob the registry holds (from any repository).
                        "POST" if request.query.contains("mount=") => {
                            let digest = request.query.split("mount=").nth(1).unwrap();
                            let digest = digest.split('&').next().unwrap().replace("%3A", ":");
                            if stored.contains_key(&format!("blob {digest}")) {
                                let location = format!(
                                    "{}/blobs/{digest}",
                                    path.trim_end_matches("/blobs/uploads/")
                                );
                                (201, vec![("Location".into(), location)], Vec::new())
                            } else {
                                uploads += 1;
                                let location = format!("/upload/{uploads}");
                                (202, vec![("Location".into(), location)], Vec::new())
                            }
                        }
                        "POST" => {
                            uploads += 1;
                            let location = format!("/upload/{uploads}");
                            (202, vec![("Location".into(), location)], Vec::new())
                        }
                        "PUT" if path.starts_with("/upload/") => {
                            let digest =
                                target.split("digest=").nth(1).unwrap().replace("%3A", ":");
                            stored.insert(format!("blob {digest}"), (media, body));
                            (201, Vec::new(), Vec::new())
                        }
                        "PUT" => {
                            stored.insert(key(&path), (media, body));
                            (201, Vec::new(), Vec::new())
                        }
                        _ => {
                            let found = if path.contains("/blobs/") {
                                stored.get(&format!("blob {}", path.rsplit('/').next().unwrap()))
                            } else {
                                stored.get(&key(&path))
                            };
                            match found {
                                Some((media, bytes)) => {
                                    let headers = vec![("Content-Type".into(), media.clone())];
                                    let body =
                                        if method == "HEAD" { Vec::new() } else { bytes.clone() };
                                    (200, headers, body)
                                }
                                None => (
                                    404,
                                    Vec::new(),
                                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec(),
                                ),
                            }
                        }
                    }
                });
                if status == 0 {
                    // The connection is dropped without an answer (a reset, a broken pipe).
                    continue;
                }
                let mut head = format!(
                    "HTTP/1.1 {status} Fake\r\nConnection: close\r\nContent-Length: {}\r\n",
                    reply.len()
                );
                for (name, value) in extra {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                if method != "HEAD" {
                    let _ = stream.write_all(&reply);
                }
            }
        });
        FakeRegistry { address, log }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The base layer every image of [`oci_archive`] shares, as images of one Dockerfile base do.
pub const SHARED_LAYER: &[u8] = b"the base layer every image shares";

/// An OCI archive as BuildKit's exporter writes one: an index of one amd64 image (a config, the
/// shared base layer and a layer of its own) under `index.json`; returns it and the index's
/// digest.
pub fn oci_archive(seed: &str) -> (Vec<u8>, String) {
    use sha2::{Digest, Sha256};
    let digest = |b: &[u8]| -> String {
        format!(
            "sha256:{}",
            Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    };
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"seed":"{seed}"}}}}}}"#
    )
    .into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    let base = SHARED_LAYER.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        digest(&config), config.len(), digest(&base), base.len(), digest(&layer), layer.len()
    ).into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        digest(&manifest), manifest.len()
    ).into_bytes();
    let top = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{}","size":{}}}]}}"#,
        digest(&index), index.len()
    ).into_bytes();
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |name: String, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, bytes).unwrap();
    };
    add("index.json".into(), &top);
    for blob in [&config, &base, &layer, &manifest, &index] {
        add(format!("blobs/sha256/{}", &digest(blob)[7..]), blob);
    }
    (archive.into_inner().unwrap(), digest(&index))
}

/// A `docker` whose bake writes a real OCI archive for each image (server and db), or both into
/// one OCI layout directory, and reports their digests; whose `load` keeps what it read as
/// `loaded.tar` (or fails, saying `FAKE_LOAD_FAILS`, or hangs, with `FAKE_LOAD_HANGS`, when
/// that is set); whose `save` copies
/// `save.tar` from its directory when a test put one there; every other call succeeds.
/// Returns PATH with it first, and its log of calls.
pub fn docker_baking_archives(test: &str) -> (String, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-docker-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut metadata = serde_json::Map::new();
    // Both images in one layout as well, as a bake into one directory writes them.
    let layout = dir.join("layout");
    let mut entries = Vec::new();
    for image in ["server", "db"] {
        let (archive, digest) = oci_archive(image);
        tar::Archive::new(archive.as_slice()).unpack(&layout).unwrap();
        let top: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        entries.extend(top["manifests"].as_array().unwrap().iter().cloned());
        std::fs::write(dir.join(format!("{image}.tar")), archive).unwrap();
        metadata.insert(image.into(), serde_json::json!({"containerimage.digest": digest}));
    }
    let top = serde_json::json!({"schemaVersion": 2, "manifests": entries});
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    std::fs::write(dir.join("metadata.json"), Value::Object(metadata).to_string()).unwrap();
    let log = dir.join("calls.log");
    let script = format!(
        r#"#!/bin/sh
echo "$@" >> '{log}'
[ "$1" = --log-level ] && shift 2
case "$1 $2" in
"buildx bake")
    while [ $# -gt 0 ]; do [ "$1" = --metadata-file ] && out=$2; shift; done
    for dest in $(grep -o 'dest=[^,]*' | cut -d= -f2); do
        case "$dest" in
        *.tar) cp '{dir}'/"$(basename "$dest")" "$dest" ;;
        *) mkdir -p "$dest" && cp -r '{dir}/layout/.' "$dest" ;;
        esac
    done
    cp '{dir}/metadata.json' "$out" ;;
"load --quiet")
    if [ -n "$FAKE_LOAD_HANGS" ]; then
        : > '{dir}/load-started'
        exec sleep 30
    fi
    if [ -n "$FAKE_LOAD_FAILS" ]; then
        echo "Error response from daemon: $FAKE_LOAD_FAILS" >&2
        exit 1
    fi
    cat > '{dir}/loaded.tar' ;;
"save --output")
    [ -f '{dir}/save.tar' ] && cp --sparse=always '{dir}/save.tar' "$3" ;;
esac
exit 0
"#,
        log = log.display(),
        dir = dir.display()
    );
    let path = dir.join("docker");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (format!("{}:{}", dir.display(), std::env::var("PATH").unwrap()), log)
}

/// A Docker config that logs in to `registry` as `me:s3cret`.
pub fn docker_login(name: &str, registry: &str) -> PathBuf {
    use base64::Engine as _;
    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&config);
    std::fs::create_dir_all(&config).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("me:s3cret");
    let auths = serde_json::json!({"auths": {registry: {"auth": auth}}});
    std::fs::write(config.join("config.json"), auths.to_string()).unwrap();
    config
}
