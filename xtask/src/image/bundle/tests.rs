//! Unit tests of `crate::image::bundle`, kept beside it so that the module reads as code.

use super::*;

fn scratch(name: &str) -> Utf8PathBuf {
    let dir = Utf8PathBuf::try_from(std::env::temp_dir())
        .unwrap()
        .join(format!("bundle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SERVER: &str = "sha256:aaaa";
const OTHER: &str = "sha256:bbbb";

/// A layout as `docker save` writes it: a blob, docker's tag list, and an index whose
/// entries carry only their tag as the OCI ref name, one of them an image not asked for.
fn saved_layout(dir: &Utf8Path) -> Utf8PathBuf {
    let entry = |name: &str, digest: &str| {
        let tag = name.rsplit_once(':').unwrap().1;
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
               "size": 855, "annotations": {CONTAINERD_NAME: format!("docker.io/{name}"),
               REF_NAME: tag}})
    };
    let index = json!({"schemaVersion": 2, "manifests": [
        entry("memories/server:t", SERVER), entry("memories/evil:t", OTHER)]});
    let path = dir.join("saved.tar");
    let mut tar = tar::Builder::new(File::create(&path).unwrap());
    let files: [(&str, Vec<u8>); 4] = [
        ("blobs/sha256/aaaa", b"layer bytes".to_vec()),
        (INDEX, index.to_string().into_bytes()),
        (DOCKER_MANIFEST, b"[{\"RepoTags\":[\"memories/evil:t\"]}]".to_vec()),
        ("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}".to_vec()),
    ];
    for (name, bytes) in files {
        tar.append_data(&mut oci::tar_header(bytes.len() as u64), name, bytes.as_slice()).unwrap();
    }
    tar.finish().unwrap();
    path
}

fn metadata(refs: &[(&str, &str)]) -> Value {
    let images: Vec<Value> =
        refs.iter().map(|(r, d)| json!({"image": "server", "digest": d, "refs": [r]})).collect();
    json!({"format": FORMAT, "images": images})
}

fn names_and_index(bytes: &[u8]) -> (Vec<String>, Document) {
    let mut archive = tar::Archive::new(bytes);
    let mut names = Vec::new();
    let mut index = Document::default();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == INDEX {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            index = serde_json::from_str(&text).unwrap();
        }
        names.push(name);
    }
    (names, index)
}

#[test]
fn an_unsigned_bundle_is_refused_when_a_key_is_given() {
    let dir = scratch("unsigned");
    let bundle = dir.join("bundle.tar");
    write_bundle(&saved_layout(&dir), &bundle, &metadata(&[("memories/server:t", SERVER)]), None)
        .unwrap();
    let pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    let key = Key::read(&KeySource::Env("NO_SUCH_KEY_VAR".into()), KeyKind::Public);
    assert!(key.is_err(), "an unset variable is refused");
    let key_file = dir.join("cosign.pub");
    std::fs::write(&key_file, pem).unwrap();
    let key = Key::read(&KeySource::File(key_file), KeyKind::Public).unwrap();
    let tools = Cosign::tools_build(Utf8Path::new("/repo"), &Revision::example());
    let cosign = Cosign::new(Utf8Path::new("/repo"), &tools, Options::default());
    let check = SignatureCheck { key, tools, cosign };
    let err = check.check(&Archive::open(&bundle).unwrap(), &bundle).unwrap_err().to_string();
    assert!(err.contains("is not signed: nothing was loaded"), "{err}");
    assert!(err.contains("images save --sign KEY"), "{err}");
}

#[test]
fn a_bundle_is_the_saved_layout_with_full_ref_names_and_its_metadata_first() {
    let dir = scratch("layout");
    let bundle = dir.join("bundle.tar");
    let asked = metadata(&[("memories/server:t", SERVER)]);
    let signature = json!({"signs": METADATA, "cosign": "MEUC"});
    write_bundle(&saved_layout(&dir), &bundle, &asked, Some(&signature)).unwrap();
    let (names, index) = names_and_index(&std::fs::read(&bundle).unwrap());
    assert_eq!(
        names,
        [INDEX, METADATA, SIGNATURE, "blobs/sha256/aaaa", DOCKER_MANIFEST, "oci-layout"],
        "a reader finds the index, the metadata and its signature before the blobs"
    );
    // What is signed is the metadata entry's bytes, as written.
    let archive = Archive::open(&bundle).unwrap();
    let written = archive.get(METADATA).unwrap();
    assert_eq!(written.unwrap(), serde_json::to_vec_pretty(&asked).unwrap());
    let refs: Vec<&str> =
        index.manifests.iter().map(|e| e.annotations[REF_NAME].as_str()).collect();
    assert_eq!(refs, ["memories/server:t", "memories/evil:t"], "skopeo can tell them apart");
    let layout = Layout::read(&archive, &bundle).unwrap();
    assert_eq!(layout.metadata, asked);

    let mut loaded = Vec::new();
    write_for_load(&bundle, &layout, &mut loaded).unwrap();
    let (names, index) = names_and_index(&loaded);
    assert_eq!(
        names,
        [INDEX, "blobs/sha256/aaaa", "oci-layout"],
        "no metadata, no signature, no tag list"
    );
    let loaded_refs: Vec<&str> = index.manifests.iter().filter_map(entry_ref).collect();
    assert_eq!(loaded_refs, ["memories/server:t"], "only what the bundle names is loaded");
}

#[test]
fn a_bundle_that_names_nothing_or_other_digests_is_refused() {
    let dir = scratch("refused");
    let saved = saved_layout(&dir);
    let refused = |asked: Value| {
        let bundle = dir.join("bundle.tar");
        // Written by hand: write_bundle refuses these itself.
        let index = Archive::open(&saved).unwrap().get(INDEX).unwrap().unwrap();
        let mut tar = tar::Builder::new(File::create(&bundle).unwrap());
        for (name, bytes) in [(INDEX, index.clone()), (METADATA, asked.to_string().into_bytes())] {
            tar.append_data(&mut oci::tar_header(bytes.len() as u64), name, bytes.as_slice())
                .unwrap();
        }
        tar.finish().unwrap();
        let archive = Archive::open(&bundle).unwrap();
        Layout::read(&archive, Utf8Path::new("shown.tar")).err().unwrap().to_string()
    };
    let empty = refused(metadata(&[]));
    assert!(empty.contains("lists no image") && empty.contains("shown.tar"), "{empty}");
    let other = refused(metadata(&[("memories/server:t", OTHER)]));
    assert!(other.contains("names memories/server:t as sha256:aaaa"), "{other}");
    let absent = refused(metadata(&[("memories/server:u", SERVER)]));
    assert!(absent.contains("has no memories/server:u"), "{absent}");
    let foreign = refused(json!({"format": "memories-bundle/1", "images": []}));
    assert!(foreign.contains("is not memories-bundle/2"), "{foreign}");
    assert!(write_bundle(&saved, &dir.join("b.tar"), &metadata(&[]), None).is_err());

    let truncated = dir.join("truncated.tar");
    std::fs::write(&truncated, &std::fs::read(&saved).unwrap()[..700]).unwrap();
    let err = format!("{:#}", Archive::open(&truncated).err().unwrap());
    assert!(
        err.contains("truncated.tar is cut short: it ends without the end-of-archive"),
        "{err}"
    );
    let mid_entry = dir.join("mid-entry.tar");
    std::fs::write(&mid_entry, &std::fs::read(&saved).unwrap()[..520]).unwrap();
    let err = format!("{:#}", Archive::open(&mid_entry).err().unwrap());
    assert!(err.contains("its entry `blobs/sha256/aaaa` ends after the end"), "{err}");
    let no_metadata = dir.join("no-metadata.tar");
    let mut tar = tar::Builder::new(File::create(&no_metadata).unwrap());
    tar.append_data(&mut oci::tar_header(2), INDEX, b"{}".as_slice()).unwrap();
    tar.finish().unwrap();
    let archive = Archive::open(&no_metadata).unwrap();
    let err = Layout::read(&archive, &no_metadata).err().unwrap().to_string();
    assert!(
        err.contains("not a complete memories bundle") && err.contains("nothing was loaded"),
        "{err}"
    );
}

#[test]
fn the_whole_file_is_checked_against_the_hash_given() {
    let dir = scratch("hash");
    let file = dir.join("f");
    std::fs::write(&file, b"abc").unwrap();
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(check_file(&file, &Checksum::parse(abc).unwrap()).unwrap(), abc);
    let upper = format!("sha256:{}", abc.to_uppercase());
    assert_eq!(Checksum::parse(&upper).unwrap(), Checksum::Sha256(abc.into()));
    assert!(Checksum::parse("abc").unwrap_err().contains("64 hex digits"));
    let other = Checksum::Sha256("0".repeat(64));
    let err = check_file(&file, &other).unwrap_err().to_string();
    assert!(err.contains(&format!("has SHA-256 {abc}, not the")), "{err}");
    assert!(err.contains("nothing was loaded"), "{err}");
    assert_eq!(check_file(&file, &Checksum::Skip).unwrap(), abc);
}
