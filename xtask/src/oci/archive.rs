//! The one reader of OCI archives (an image layout in a tar file, as BuildKit's `type=oci`
//! exporter and `images save` write it).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::interrupt::Interruptible;
use crate::oci::manifest::{Manifest, OCI_INDEX, OCI_MANIFEST, blob_name, is_index, sha256_digest};

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

/// The platforms of the one index in an OCI archive BuildKit wrote (attestation manifests,
/// platform `unknown/unknown`, are not images and are left out).
pub fn platform_images(archive: &Utf8Path) -> Result<Vec<PlatformImage>> {
    let layout = Layout::open(archive)?;
    let index = layout.top()?;
    let mut images = Vec::new();
    let entries = index.value["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
    for entry in entries {
        let (Some(platform), Some(digest)) =
            (crate::oci::platform_name(&entry["platform"]), entry["digest"].as_str())
        else {
            continue;
        };
        let media_type = entry["mediaType"].as_str().unwrap_or(OCI_MANIFEST);
        let manifest = layout.manifest(digest, media_type)?;
        let layers = manifest.value["layers"].as_array().map(Vec::as_slice).unwrap_or_default();
        let layers =
            layers.iter().filter_map(|l| l["digest"].as_str().map(str::to_owned)).collect();
        images.push(PlatformImage { platform, digest: digest.to_owned(), layers });
    }
    Ok(images)
}

/// An OCI archive (an image layout in a tar file, as BuildKit's `type=oci` exporter writes it)
/// with the place of every entry, so that a blob is read straight from the file.
pub(crate) struct Layout {
    pub(crate) path: Utf8PathBuf,
    /// Entry name → (offset of its data, size).
    entries: HashMap<String, (u64, u64)>,
}

impl Layout {
    pub(crate) fn open(path: &Utf8Path) -> Result<Layout> {
        Ok(Layout { path: path.to_owned(), entries: entries(path, path)? })
    }

    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>> {
        let &(offset, size) =
            self.entries.get(name).with_context(|| format!("{} has no {name}", self.path))?;
        let mut bytes = Vec::new();
        open_range(&self.path, offset, size)
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {name} of {}", self.path))?;
        Ok(bytes)
    }

    pub(crate) fn blob_position(&self, digest: &str) -> Result<(u64, u64)> {
        self.entries
            .get(&blob_name(digest))
            .copied()
            .with_context(|| format!("{} has no blob {digest}", self.path))
    }

    pub(crate) fn manifest(&self, digest: &str, media_type: &str) -> Result<Manifest> {
        let bytes = self.read(&blob_name(digest))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            bail!("{}: blob {digest} hashes to {actual}", self.path);
        }
        let value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: manifest {digest} is not JSON", self.path))?;
        Ok(Manifest { bytes, media_type: media_type.to_owned(), digest: digest.to_owned(), value })
    }

    /// The one index or manifest `index.json` names.
    pub(crate) fn top(&self) -> Result<Manifest> {
        let index: Value = serde_json::from_slice(&self.read("index.json")?)
            .with_context(|| format!("index.json of {} is not JSON", self.path))?;
        // One entry per tag the image was exported with, each naming the same index.
        let entries = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
        let digests: BTreeSet<&str> = entries.iter().filter_map(|e| e["digest"].as_str()).collect();
        let (Some(entry), 1) = (entries.first(), digests.len()) else {
            bail!(
                "{} names {} images in its index.json; a push takes an archive of one",
                self.path,
                digests.len()
            );
        };
        let digest = entry["digest"].as_str().expect("counted above");
        self.manifest(digest, entry["mediaType"].as_str().unwrap_or(OCI_INDEX))
    }

    /// Collects the manifests below `manifest` (children before their index) and every blob
    /// they name.
    pub(crate) fn walk(
        &self,
        manifest: &Manifest,
        manifests: &mut Vec<Manifest>,
        blobs: &mut BTreeSet<String>,
    ) -> Result<()> {
        if is_index(&manifest.media_type) {
            for entry in
                manifest.value["manifests"].as_array().map(Vec::as_slice).unwrap_or_default()
            {
                let digest = entry["digest"].as_str().context("an index entry without a digest")?;
                let child =
                    self.manifest(digest, entry["mediaType"].as_str().unwrap_or(OCI_MANIFEST))?;
                self.walk(&child, manifests, blobs)?;
                manifests.push(child);
            }
        } else {
            let config = manifest.value["config"]["digest"].as_str();
            let layers = manifest.value["layers"].as_array().map(Vec::as_slice).unwrap_or_default();
            for digest in
                config.into_iter().chain(layers.iter().filter_map(|l| l["digest"].as_str()))
            {
                blobs.insert(digest.to_owned());
            }
        }
        Ok(())
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
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = HashMap::new();
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
        let name = normalise(&raw).map_err(|why| refuse(&raw, why))?;
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(refuse(&raw, "is not a file (a link, a device or another special entry)"));
        }
        if entries.insert(name, (entry.raw_file_position(), entry.size())).is_some() {
            return Err(refuse(&raw, "repeats a name an earlier entry has"));
        }
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
}
