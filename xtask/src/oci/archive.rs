//! The one reader of OCI archives (an image layout in a tar file, as BuildKit's `type=oci`
//! exporter and `images save` write it).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::oci::manifest::{Manifest, OCI_INDEX, OCI_MANIFEST, blob_name, is_index, sha256_digest};
use crate::oci::model::Document;
use crate::run::interrupt::Interruptible;

/// One platform of a built image: the digest of its manifest (what a rebuild of the commit
/// reproduces) and its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    pub platform: String,
    pub digest: String,
    pub layers: Vec<String>,
}

impl PlatformImage {
    pub fn to_json(&self) -> Value {
        serde_json::json!({"platform": self.platform, "digest": self.digest, "layers": self.layers})
    }
}

/// The platforms of the one index in an OCI layout BuildKit wrote (attestation manifests,
/// platform `unknown/unknown`, are not images and are left out).
pub fn platform_images(layout: &impl ImageLayout) -> Result<Vec<PlatformImage>> {
    let index = layout.top()?;
    platforms_of(layout, &index)
}

/// The platforms of the index `digest` in a layout of several images (as `docker save` or a
/// bake's exports into one directory write it): `index.json` must name it (a layout that holds
/// another image is an error, not that image's platforms), and its blob and every platform
/// manifest's must hash to their digests.
pub fn platform_images_in(layout: &impl ImageLayout, digest: &str) -> Result<Vec<PlatformImage>> {
    let top =
        Document::parse(&layout.read("index.json")?, &format!("index.json of {}", layout.path()))?;
    let Some(entry) = top.manifests.iter().find(|e| e.digest == digest) else {
        bail!(
            "{} does not hold {digest}: was the image replaced or removed while it was read?",
            layout.path()
        );
    };
    let index = layout.manifest(digest, entry.media_type.as_deref().unwrap_or(OCI_INDEX))?;
    if !is_index(&index.media_type) {
        bail!("{}: {digest} is a single manifest, not the index of a build", layout.path());
    }
    let images = platforms_of(layout, &index)?;
    if images.is_empty() {
        bail!("{}: the index {digest} names no platform", layout.path());
    }
    Ok(images)
}

/// The platform images `index` lists, each manifest read from `layout`.
fn platforms_of(layout: &impl ImageLayout, index: &Manifest) -> Result<Vec<PlatformImage>> {
    let mut images = Vec::new();
    for entry in &index.document.manifests {
        let Some(platform) = entry.platform_name() else { continue };
        let media_type = entry.media_type.as_deref().unwrap_or(OCI_MANIFEST);
        let manifest = layout.manifest(&entry.digest, media_type)?;
        let layers = manifest.document.layers.iter().map(|l| l.digest.clone()).collect();
        images.push(PlatformImage { platform, digest: entry.digest.clone(), layers });
    }
    Ok(images)
}

/// An OCI image layout: an archive ([`Archive`]) or a directory ([`LayoutDir`]). What it
/// holds is read by name (`index.json`, `blobs/sha256/<hex>`); every manifest read through it
/// must hash to its digest.
///
/// [`LayoutDir`]: crate::oci::LayoutDir
pub trait ImageLayout {
    /// The layout's file or directory, for errors.
    fn path(&self) -> &Utf8Path;

    /// The bytes of `name`; an error when the layout has none.
    fn read(&self, name: &str) -> Result<Vec<u8>>;

    /// The manifest or index `digest`, whose bytes must hash to it.
    fn manifest(&self, digest: &str, media_type: &str) -> Result<Manifest> {
        let bytes = self.read(&blob_name(digest))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            bail!("{}: blob {digest} hashes to {actual}", self.path());
        }
        let document = Document::parse(&bytes, &format!("{}: manifest {digest}", self.path()))?;
        Ok(Manifest {
            bytes,
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            document,
        })
    }

    /// The one index or manifest `index.json` names.
    fn top(&self) -> Result<Manifest> {
        let index =
            Document::parse(&self.read("index.json")?, &format!("index.json of {}", self.path()))?;
        // One entry per tag the image was exported with, each naming the same index.
        let entries = &index.manifests;
        let digests: BTreeSet<&str> = entries.iter().map(|e| e.digest.as_str()).collect();
        let (Some(entry), 1) = (entries.first(), digests.len()) else {
            bail!(
                "{} names {} images in its index.json, where an export writes one",
                self.path(),
                digests.len()
            );
        };
        self.manifest(&entry.digest, entry.media_type.as_deref().unwrap_or(OCI_INDEX))
    }

    /// Collects the manifests below `manifest` (children before their index) and every blob
    /// they name.
    fn walk(
        &self,
        manifest: &Manifest,
        manifests: &mut Vec<Manifest>,
        blobs: &mut BTreeSet<String>,
    ) -> Result<()> {
        if is_index(&manifest.media_type) {
            for entry in &manifest.document.manifests {
                let media_type = entry.media_type.as_deref().unwrap_or(OCI_MANIFEST);
                let child = self.manifest(&entry.digest, media_type)?;
                self.walk(&child, manifests, blobs)?;
                manifests.push(child);
            }
        } else {
            let config = manifest.document.config.iter();
            for blob in config.chain(&manifest.document.layers) {
                blobs.insert(blob.digest.clone());
            }
        }
        Ok(())
    }
}

/// An OCI archive (an image layout in a tar file, as BuildKit's `type=oci` exporter and
/// `docker save` write it) with the place of every entry, so that a blob is read straight from
/// the file. Opening it checks every entry's name and kind ([`entries`]).
pub struct Archive {
    pub(crate) path: Utf8PathBuf,
    /// Entry name → (offset of its data, size).
    entries: HashMap<String, (u64, u64)>,
}

impl Archive {
    pub fn open(path: &Utf8Path) -> Result<Archive> {
        Archive::open_as(path, path)
    }

    /// Opens the archive at `path`, named `shown` in errors (the user's name for it, where
    /// `path` is a private copy).
    pub fn open_as(path: &Utf8Path, shown: &Utf8Path) -> Result<Archive> {
        Ok(Archive { path: path.to_owned(), entries: entries(path, shown)? })
    }

    /// The bytes of entry `name`, or `None` when the archive has none.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(&(offset, size)) = self.entries.get(name) else { return Ok(None) };
        let mut bytes = Vec::new();
        open_range(&self.path, offset, size)
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {name} of {}", self.path))?;
        Ok(Some(bytes))
    }

    pub(crate) fn blob_position(&self, digest: &str) -> Result<(u64, u64)> {
        self.entries
            .get(&blob_name(digest))
            .copied()
            .with_context(|| format!("{} has no blob {digest}", self.path))
    }
}

impl ImageLayout for Archive {
    fn path(&self) -> &Utf8Path {
        &self.path
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        self.get(name)?.with_context(|| format!("{} has no {name}", self.path))
    }
}

/// The entries of the tar file at `path` (`shown` in errors: the user's name for it, where
/// `path` is a private copy), by name, each with the offset of its data and its size. Every
/// name is normalised once (`./` taken off); the whole file is refused, naming the entry, when
/// any entry is absolute, climbs out with `..`, is a link, a device or anything but a file or a
/// directory, or repeats a name: such an archive is not what an exporter wrote, and a second
/// `index.json` or a link would reach `docker load` unchecked. Only the headers are read.
pub fn entries(path: &Utf8Path, shown: &Utf8Path) -> Result<HashMap<String, (u64, u64)>> {
    let file = File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let length = file.metadata().with_context(|| format!("cannot read {shown}"))?.len();
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = HashMap::new();
    // Where the last entry's data ends, padded to the 512-byte block: the two zero blocks that
    // end a tar file follow it.
    let mut end = 0u64;
    let refuse = |name: &str, why: &str| {
        anyhow::anyhow!(
            "{shown} is refused: its entry `{name}` {why}; an OCI archive holds only files and \
             directories, each named once, inside it (nothing was loaded or pushed)"
        )
    };
    for entry in archive.entries_with_seek().with_context(|| format!("cannot read {shown}"))? {
        let entry = entry.with_context(|| format!("cannot read {shown}"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        end = end.max(entry.raw_file_position().saturating_add(entry.size().next_multiple_of(512)));
        let name = normalise(&raw).map_err(|why| refuse(&raw, why))?;
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(refuse(&raw, "is not a file (a link, a device or another special entry)"));
        }
        let (offset, size) = (entry.raw_file_position(), entry.size());
        if offset.saturating_add(size) > length {
            bail!(
                "{shown} is cut short: its entry `{raw}` ends after the end of the file (damaged \
                 or still being written); nothing was loaded or pushed"
            );
        }
        if entries.insert(name, (offset, size)).is_some() {
            return Err(refuse(&raw, "repeats a name an earlier entry has"));
        }
    }
    if length < end.saturating_add(1024) {
        bail!(
            "{shown} is cut short: it ends without the end-of-archive blocks a tar file ends with \
             (damaged or still being written); nothing was loaded or pushed"
        );
    }
    Ok(entries)
}

/// A tar entry's name without `./` and trailing `/`; an error says why it is not acceptable.
fn normalise(raw: &str) -> Result<String, &'static str> {
    if raw.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("climbs out of the archive with `..`"),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("has no name");
    }
    Ok(parts.join("/"))
}

/// `size` bytes of the file at `path` from `offset`; reading stops on Ctrl-C.
pub(crate) fn open_range(
    path: &Utf8Path,
    offset: u64,
    size: u64,
) -> io::Result<impl Read + Send + 'static> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(Interruptible(BufReader::new(file).take(size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_normalised_once_and_escapes_refused() {
        assert_eq!(normalise("./index.json"), Ok("index.json".into()));
        assert_eq!(normalise("blobs//sha256/ab/"), Ok("blobs/sha256/ab".into()));
        assert!(normalise("/etc/passwd").is_err());
        assert!(normalise("blobs/../../x").is_err());
        assert!(normalise("./").is_err());
    }

    /// A layout as `docker save` writes it of two built images, with `lie` applied to the
    /// entries (name, bytes) before they are written.
    fn saved(name: &str, lie: impl Fn(&mut Vec<(String, Vec<u8>)>)) -> (Utf8PathBuf, [String; 3]) {
        let blob = |bytes: Vec<u8>| (blob_name(&sha256_digest(&bytes)), bytes);
        let manifest = |layer: &str| {
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "sha256:c0", "size": 2},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                            "digest": layer, "size": 5}]})
            .to_string()
            .into_bytes()
        };
        let (amd, arm) = (blob(manifest("sha256:1a")), blob(manifest("sha256:1b")));
        let attestation = blob(manifest("sha256:a7"));
        let digest = |entry: &(String, Vec<u8>)| sha256_digest(&entry.1);
        let index = blob(
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": digest(&amd), "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(&arm), "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": digest(&attestation), "size": 1,
                 "platform": {"architecture": "unknown", "os": "unknown"}}]})
            .to_string()
            .into_bytes(),
        );
        let single = blob(manifest("sha256:5e"));
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_INDEX, "digest": digest(&index), "size": 1,
             "annotations": {"io.containerd.image.name": "docker.io/memories/server:t"}},
            {"mediaType": OCI_MANIFEST, "digest": digest(&single), "size": 1,
             "annotations": {"io.containerd.image.name": "docker.io/memories/db:t"}}]});
        let digests = [digest(&index), digest(&amd), digest(&single)];
        let mut entries = vec![amd, arm, attestation, index, single];
        entries.push(("index.json".to_owned(), top.to_string().into_bytes()));
        lie(&mut entries);
        let path = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("saved-{name}-{}.tar", std::process::id()));
        let mut tar = tar::Builder::new(File::create(&path).unwrap());
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes.as_slice()).unwrap();
        }
        tar.finish().unwrap();
        (path, digests)
    }

    #[test]
    fn a_saved_index_gives_its_platforms_and_a_lying_save_is_refused() {
        let (path, [index, amd, single]) = saved("true", |_| {});
        let layout = Archive::open(&path).unwrap();
        let images = platform_images_in(&layout, &index).unwrap();
        let platforms: Vec<(&str, &str)> =
            images.iter().map(|i| (i.platform.as_str(), i.layers[0].as_str())).collect();
        assert_eq!(platforms, [("linux/amd64", "sha256:1a"), ("linux/arm64", "sha256:1b")]);
        assert_eq!(images[0].digest, amd);
        // A save that holds another image than the build reported.
        let err = platform_images_in(&layout, "sha256:0ther").unwrap_err().to_string();
        assert!(err.contains("does not hold sha256:0ther"), "{err}");
        let err = platform_images_in(&layout, &single).unwrap_err().to_string();
        assert!(err.contains("is a single manifest"), "{err}");
        std::fs::remove_file(&path).unwrap();

        // A platform manifest whose bytes are not what its digest says.
        let (path, [index, ..]) = saved("forged", |entries| {
            let arm = |bytes: &[u8]| bytes.windows(9).any(|w| w == b"sha256:1b");
            let forged = entries.iter_mut().find(|(_, bytes)| arm(bytes));
            forged.unwrap().1 = b"{}".to_vec();
        });
        let layout = Archive::open(&path).unwrap();
        let err = format!("{:#}", platform_images_in(&layout, &index).unwrap_err());
        assert!(err.contains("hashes to"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
