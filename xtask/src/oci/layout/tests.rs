//! Layout directories as BuildKit writes them, and the lies a directory can tell.

use super::*;
use crate::oci::manifest::{OCI_MANIFEST, sha256_digest};

/// A fresh directory under the temporary one, removed first if a killed run left it.
fn scratch(name: &str) -> Utf8PathBuf {
    let dir = Utf8PathBuf::try_from(std::env::temp_dir())
        .unwrap()
        .join(format!("xtask-layout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` as a blob of the layout at `dir` and returns its digest.
fn put(dir: &Utf8Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let path = dir.join(blob_name(&digest));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    digest
}

/// Adds an image to the layout at `dir`, as `type=oci,tar=false` writes it: an index of one
/// amd64 manifest (config, the layers `layers` and one of its own) under the name `name`.
/// Returns the index's digest and the layer of its own.
fn image(dir: &Utf8Path, name: &str, layers: &[&str]) -> (String, String) {
    let config = put(dir, format!("{{\"config\":{{}},\"name\":\"{name}\"}}").as_bytes());
    let own = put(dir, format!("the layer of {name}").as_bytes());
    let mut all: Vec<String> = layers.iter().map(|l| put(dir, l.as_bytes())).collect();
    all.push(own.clone());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                   "size": 1},
        "layers": all.iter().map(|d| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d, "size": 1}))
            .collect::<Vec<_>>()});
    let manifest = put(dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": manifest, "size": 1,
         "platform": {"architecture": "amd64", "os": "linux"}}]});
    let index = put(dir, index.to_string().as_bytes());
    let mut top: serde_json::Value = std::fs::read(dir.join("index.json"))
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or_else(|_| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    let name = format!("docker.io/memories/{name}:t");
    let entry = serde_json::json!({"mediaType": OCI_INDEX, "digest": index, "size": 1,
        "annotations": {"org.opencontainers.image.ref.name": name}});
    top["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (index, own)
}

/// The entries of a tar stream: name and bytes.
fn entries(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    let mut read = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_str().unwrap().to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        read.push((name, bytes));
    }
    read
}

#[test]
fn the_images_of_a_layout_stream_each_blob_once_named_by_their_refs() {
    let root = scratch("two");
    let (server_index, server_own) = image(&root, "server", &["the base layer"]);
    let (db_index, db_own) = image(&root, "db", &["the base layer"]);
    // An image of the layout that the build did not report is not loaded.
    let (other_index, other_own) = image(&root, "other", &[]);
    let server_refs = ["memories/server:1".to_owned(), "memories/server:sha-abc".to_owned()];
    let db_refs = ["127.0.0.1:5000/acme/db:1".to_owned()];
    let layout = LayoutDir::new(&root);
    let platforms = crate::oci::platform_images_in(&layout, &server_index).unwrap();
    assert_eq!(platforms[0].layers[1], server_own);
    let images = [(server_index.clone(), &server_refs[..]), (db_index.clone(), &db_refs[..])];

    let loadable = Loadable::read(&layout, &images).unwrap();
    let shared = "the base layer".len() as u64;
    let own = |name: &str| format!("the layer of {name}").len() as u64;
    let configs = ["server", "db"].map(|name| {
        let config = format!("{{\"config\":{{}},\"name\":\"{name}\"}}");
        config.len() as u64
    });
    assert_eq!(loadable.blob_bytes(), shared + own("server") + own("db") + configs[0] + configs[1]);
    let mut stream = Vec::new();
    loadable.write(&mut stream, "loading").unwrap();
    let entries = entries(&stream);

    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names[..2], ["oci-layout", "index.json"]);
    // Two images of three manifests each (index, manifest) and three blobs, one layer shared.
    assert_eq!(names.len(), 2 + 2 * 2 + 5, "{names:?}");
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "every blob once: {names:?}");
    for (name, bytes) in &entries[2..] {
        let digest = format!("sha256:{}", name.strip_prefix("blobs/sha256/").unwrap());
        assert_eq!(sha256_digest(bytes), digest, "{name} holds its blob's bytes");
    }
    // Each image under each of its refs, in full, whatever its own index.json says.
    let index = Document::parse(&entries[1].1, "index.json").unwrap();
    let named: Vec<(&str, &str, &str)> = index
        .manifests
        .iter()
        .map(|e| {
            let name = |key: &str| e.annotations[key].as_str();
            (e.digest.as_str(), name(IMAGE_NAME), name(REF_NAME))
        })
        .collect();
    assert_eq!(
        named,
        [
            (server_index.as_str(), "docker.io/memories/server:1", "1"),
            (server_index.as_str(), "docker.io/memories/server:sha-abc", "sha-abc"),
            (db_index.as_str(), "127.0.0.1:5000/acme/db:1", "1")
        ]
    );
    assert!(names.contains(&blob_name(&db_own).as_str()));
    assert!(!names.contains(&blob_name(&other_own).as_str()), "{names:?}");
    assert!(!names.contains(&blob_name(&other_index).as_str()), "{names:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_layout_that_lies_is_refused_before_anything_is_streamed() {
    let refs = ["memories/server:1".to_owned()];
    let refused = |name: &str, lie: &dyn Fn(&Utf8Path, &str)| -> String {
        let dir = scratch(name);
        let (index, own) = image(&dir, "server", &[]);
        lie(&dir, &own);
        let read = Loadable::read(&LayoutDir::new(&dir), &[(index, &refs[..])]);
        std::fs::remove_dir_all(&dir).unwrap();
        format!("{:#}", read.err().unwrap())
    };
    // A layer that is a link to a file outside the layout, readable by us.
    let outside = scratch("outside").join("secret");
    std::fs::write(&outside, "not a layer").unwrap();
    let err = refused("link", &|dir, own| {
        let path = dir.join(blob_name(own));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
    });
    assert!(err.contains("is not a regular file"), "{err}");
    std::fs::remove_dir_all(outside.parent().unwrap()).unwrap();

    let err =
        refused("missing", &|dir, own| std::fs::remove_file(dir.join(blob_name(own))).unwrap());
    assert!(err.contains("has no blobs/sha256/"), "{err}");

    // A manifest whose bytes are not what its digest says.
    let err = refused("forged", &|dir, _| {
        let index = std::fs::read_to_string(dir.join("index.json")).unwrap();
        let index = Document::parse(index.as_bytes(), "index.json").unwrap();
        let digest = &index.manifests[0].digest;
        std::fs::write(dir.join(blob_name(digest)), "{}").unwrap();
    });
    assert!(err.contains("hashes to"), "{err}");

    // A layout that holds another image than the one the build reported.
    let err = refused("another", &|dir, _| {
        std::fs::write(dir.join("index.json"), r#"{"schemaVersion": 2, "manifests": []}"#).unwrap();
    });
    assert!(err.contains("does not hold sha256:"), "{err}");

    // A digest that names a file outside the blobs.
    let dir = scratch("climbs");
    let escape = "sha256:../../../etc/passwd";
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": escape, "size": 1}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    let read = Loadable::read(&LayoutDir::new(&dir), &[(escape.to_owned(), &refs[..])]);
    let err = format!("{:#}", read.err().unwrap());
    assert!(err.contains("is not a file of an OCI layout"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_blob_that_changes_after_it_was_checked_fails_the_stream() {
    let dir = scratch("changed");
    let (index, own) = image(&dir, "server", &["a base layer"]);
    let refs = ["memories/server:1".to_owned()];
    let loadable = Loadable::read(&LayoutDir::new(&dir), &[(index, &refs[..])]).unwrap();
    std::fs::write(dir.join(blob_name(&own)), "the layer of server, and more").unwrap();
    let err = loadable.write(io::sink(), "loading").unwrap_err().to_string();
    assert!(err.contains(&format!("blob {own} changed while it was read")), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
