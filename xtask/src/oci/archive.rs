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

/// The platforms of the one index in an OCI archive BuildKit wrote (attestation manifests,
/// platform `unknown/unknown`, are not images and are left out).
pub fn platform_images(archive: &Utf8Path) -> Result<Vec<PlatformImage>> {
    let layout = Archive::open(archive)?;
    let index = layout.top()?;
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

    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>> {
        self.get(name)?.with_context(|| format!("{} has no {name}", self.path))
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

    pub(crate) fn manifest(&self, digest: &str, media_type: &str) -> Result<Manifest> {
        let bytes = self.read(&blob_name(digest))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            bail!("{}: blob {digest} hashes to {actual}", self.path);
        }
        let document = Document::parse(&bytes, &format!("{}: manifest {digest}", self.path))?;
        Ok(Manifest {
            bytes,
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            document,
        })
    }

    /// The one index or manifest `index.json` names.
    pub(crate) fn top(&self) -> Result<Manifest> {
        let index =
            Document::parse(&self.read("index.json")?, &format!("index.json of {}", self.path))?;
        // One entry per tag the image was exported with, each naming the same index.
        let entries = &index.manifests;
        let digests: BTreeSet<&str> = entries.iter().map(|e| e.digest.as_str()).collect();
        let (Some(entry), 1) = (entries.first(), digests.len()) else {
            bail!(
                "{} names {} images in its index.json; a push takes an archive of one",
                self.path,
                digests.len()
            );
        };
        self.manifest(&entry.digest, entry.media_type.as_deref().unwrap_or(OCI_INDEX))
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
}
