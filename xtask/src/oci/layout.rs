//! OCI image layouts in directories, as BuildKit's `type=oci,tar=false` exporter writes them
//! (a build writes all its images into one, so each layer they share is written once: the base
//! image's, Python's), and the stream that takes a build's images from one into the image
//! store: `docker load` reads a tar of a layout.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use crate::oci::archive::ImageLayout;
use crate::oci::manifest::{OCI_INDEX, blob_name};
use crate::oci::model::{Descriptor, Document};
use crate::oci::reference::{Reference, full_name};
use crate::run::interrupt::Interruptible;
use crate::run::progress::{Counted, Progress};

/// The annotation `docker load` names an image by, in full (`docker.io/memories/server:1`).
const IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation of an image's tag in a layout.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout in a directory. Only `index.json` and blobs named by a sha256 digest are
/// read from it, each a regular file (a link is refused, wherever it
/// points): a digest from a document names no other file.
#[derive(Debug, Clone)]
pub struct LayoutDir {
    path: Utf8PathBuf,
}

impl LayoutDir {
    /// The layout in the directory `path`; nothing is read yet.
    pub fn new(path: &Utf8Path) -> LayoutDir {
        LayoutDir { path: path.to_owned() }
    }

    /// The file `name` of the layout, opened, with its size.
    fn open(&self, name: &str) -> Result<(File, u64)> {
        if !is_layout_name(name) {
            bail!("{}: `{name}` is not a file of an OCI layout", self.path);
        }
        let path = self.path.join(name);
        let kind = std::fs::symlink_metadata(&path)
            .with_context(|| format!("{} has no {name}", self.path))?
            .file_type();
        if !kind.is_file() {
            bail!("{}: {name} is not a regular file (a link or a directory)", self.path);
        }
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        let size = file.metadata().with_context(|| format!("cannot read {path}"))?.len();
        Ok((file, size))
    }
}

impl ImageLayout for LayoutDir {
    fn path(&self) -> &Utf8Path {
        &self.path
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let (file, _) = self.open(name)?;
        let mut bytes = Vec::new();
        Interruptible(file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {name} of {}", self.path))?;
        Ok(bytes)
    }
}

/// Whether `name` is one a layout's reader asks for: `index.json`, or `blobs/sha256/` and 64
/// lowercase hex digits (xtask writes its own `oci-layout` for `docker load`).
fn is_layout_name(name: &str) -> bool {
    if name == "index.json" {
        return true;
    }
    let Some(hex) = name.strip_prefix("blobs/sha256/") else { return false };
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The images of a layout, as `docker load` takes them: what it holds is read and checked
/// before the first byte is written ([`Loadable::write`]).
pub struct Loadable {
    index: Document,
    /// Every manifest and index, by digest: bytes that hashed to it.
    manifests: BTreeMap<String, Vec<u8>>,
    /// Every other blob (configs, layers, attestations), by digest: its file, opened, and size.
    blobs: BTreeMap<String, (File, u64)>,
}

impl Loadable {
    /// Reads the `images` (each an index digest and its refs) of `layout`: its `index.json`
    /// must name each digest (a layout that holds another image is an error, not that image);
    /// every manifest below must hash to its digest, and every blob they name is opened. Each
    /// image is named by each of its refs (`docker load` tags it so:
    /// `io.containerd.image.name`), whatever the layout's own names. A blob missing or not a
    /// regular file is an error here, before `docker load` is started.
    pub fn read(layout: &LayoutDir, images: &[(String, &[String])]) -> Result<Loadable> {
        let index = layout.read("index.json")?;
        let index = Document::parse(&index, &format!("index.json of {}", layout.path()))?;
        let mut entries: Vec<Descriptor> = Vec::new();
        let mut manifests = BTreeMap::new();
        let mut blobs = BTreeMap::new();
        for (digest, refs) in images {
            let Some(entry) = index.manifests.iter().find(|e| e.digest == *digest) else {
                bail!("{} does not hold {digest}, the image the build reported", layout.path());
            };
            let top = layout.manifest(digest, entry.media_type.as_deref().unwrap_or(OCI_INDEX))?;
            for raw in refs.iter() {
                let reference = Reference::parse(raw)?;
                let annotations = BTreeMap::from([
                    (IMAGE_NAME.to_owned(), full_name(raw)?),
                    (REF_NAME.to_owned(), reference.reference),
                ]);
                entries.push(Descriptor {
                    media_type: Some(top.media_type.clone()),
                    digest: top.digest.clone(),
                    size: Some(top.bytes.len() as u64),
                    annotations,
                    ..Descriptor::default()
                });
            }
            let mut below = Vec::new();
            let mut named = BTreeSet::new();
            layout.walk(&top, &mut below, &mut named)?;
            for manifest in below.into_iter().chain([top]) {
                manifests.insert(manifest.digest, manifest.bytes);
            }
            for digest in named {
                if blobs.contains_key(&digest) || manifests.contains_key(&digest) {
                    continue;
                }
                let opened = layout.open(&blob_name(&digest))?;
                blobs.insert(digest, opened);
            }
        }
        let index = Document {
            schema_version: Some(2),
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: entries,
            ..Document::default()
        };
        Ok(Loadable { index, manifests, blobs })
    }

    /// The bytes of the blobs (not manifests) it holds, each counted once.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.values().map(|(_, size)| size).sum()
    }

    /// Writes the layout to `sink` as a tar: `oci-layout`, `index.json`, the manifests, then
    /// the blobs, each file's bytes as they are. Shows its progress as `what`; stops on Ctrl-C.
    pub fn write(self, sink: impl Write, what: &str) -> io::Result<()> {
        let progress = Arc::new(Progress::bytes(what, self.blob_bytes()));
        let mut tar = tar::Builder::new(sink);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        let index = serde_json::to_vec(&self.index).expect("an index serialises");
        tar.append_data(&mut tar_header(layout.len() as u64), "oci-layout", layout.as_slice())?;
        tar.append_data(&mut tar_header(index.len() as u64), "index.json", index.as_slice())?;
        for (digest, bytes) in &self.manifests {
            let mut head = tar_header(bytes.len() as u64);
            tar.append_data(&mut head, blob_name(digest), bytes.as_slice())?;
        }
        for (digest, (file, size)) in self.blobs {
            // Exactly `size` bytes: a file that grew or shrank since it was opened makes the
            // stream fail, not a tar whose entries are out of step.
            let mut reader = Interruptible(Counted::new(BufReader::new(file), progress.clone()));
            let mut data = (&mut reader).take(size);
            tar.append_data(&mut tar_header(size), blob_name(&digest), &mut data)?;
            if data.limit() != 0 || reader.read(&mut [0])? != 0 {
                return Err(io::Error::other(format!("blob {digest} changed while it was read")));
            }
        }
        tar.into_inner()?.flush()
    }
}

/// The header of a tar entry of `size` bytes that xtask writes for `docker load` (a layout's
/// file): mode 0644, dated 1970.
pub fn tar_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header
}

#[cfg(test)]
mod tests;
