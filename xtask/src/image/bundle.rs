//! `cargo xtask images save|load`: release images for a machine without a registry (and the
//! dispatch of every `images` action).
//!
//! A bundle is one OCI image layout in a tar file (`oci-layout`, `index.json`,
//! `blobs/sha256/...`, as `docker save` writes it), so skopeo (`oci-archive:FILE:REF`), crane,
//! `ctr import` and `docker load` read it as it is. Its `index.json` names each image by its
//! full ref, and `memories-bundle.json` beside it says what the bundle holds: the version,
//! commit and platforms, and each image's refs and digest.
//!
//! `images save` prints the file's SHA-256. `images load --sha256 HASH` copies the file into a
//! private directory while hashing it and refuses any other hash, so the file cannot change
//! between the check and the load; it then loads from that copy only the refs the bundle names
//! (an extra tag in `index.json` never gets in), and checks each ref's digest afterwards.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::image::platform::Platform;
use crate::image::sign::{Cosign, Key, KeyKind, KeySource, Options, Signer};
use crate::image::version::Revision;
use crate::image::{self, BuildRequest, ImageName, Output, StoreExport};
use crate::oci::{self, Archive, Descriptor, Document, OCI_INDEX};
use crate::run::docker;
use crate::run::interrupt::{self, Interruptible};
use crate::run::label::RunDir;
use crate::run::plan::{Plan, ReadOnly, Step, Stream, Streams, Task};
use crate::run::progress::{Counted, Progress};

pub const FORMAT: &str = "memories-bundle/2";
const METADATA: &str = "memories-bundle.json";
/// The cosign signature of the metadata's bytes, in a bundle saved with `--sign`.
const SIGNATURE: &str = "memories-bundle.sig.json";
const INDEX: &str = "index.json";
/// Docker's own list of the archive's images and tags, which `docker save` adds to the layout.
const DOCKER_MANIFEST: &str = "manifest.json";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What `cargo xtask images` does.
#[derive(Debug, Clone)]
pub enum Action {
    /// List the images of the catalogue (nothing to do with bundles but their names).
    List,
    /// Save a bundle to `output`; `memories-<version>-<sha>.tar` when `None`.
    Save { request: SaveRequest, output: Option<Utf8PathBuf> },
    /// Check a bundle (and with `key`, its signature), then load it.
    Load { file: Utf8PathBuf, checksum: Checksum, key: Option<KeySource>, signing: Options },
    /// Remove older revisions' images from the store.
    Prune(image::prune::PruneRequest),
}

/// What `images load` checks the whole file against before it loads anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// The SHA-256 `images save` printed, as 64 hex digits.
    Sha256(String),
    /// No check of the file as a whole (its structure and digests are still checked).
    Skip,
}

impl Checksum {
    /// Accepts 64 hex digits, with or without a `sha256:` prefix, in either case.
    pub fn parse(raw: &str) -> Result<Checksum, String> {
        let hex = raw.trim().strip_prefix("sha256:").unwrap_or(raw.trim()).to_ascii_lowercase();
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Checksum::Sha256(hex))
        } else {
            Err(format!(
                "`{raw}` is not a SHA-256: give the 64 hex digits `cargo xtask images save` printed"
            ))
        }
    }
}

/// `cargo xtask images ...`: the task `action` asks for, its paths made absolute and its key
/// read.
pub fn task(root: &Utf8Path, action: Action) -> Result<Box<dyn Task + '_>> {
    Ok(match action {
        Action::List => Box::new(ReadOnly {
            task: "images list",
            run: |json| {
                image::list(json);
                Ok(())
            },
        }),
        Action::Save { request, output } => {
            let revision = Revision::read(root)?;
            let output = match output {
                Some(path) => absolute(&path)?,
                None => absolute(Utf8Path::new(&format!(
                    "memories-{}-{}.tar",
                    revision.version,
                    revision.short()
                )))?,
            };
            Box::new(SaveTask { root, revision, request, output })
        }
        Action::Load { file, checksum, key, signing } => {
            let file = absolute(&file)?;
            let key = key.map(|k| Key::read(&k, KeyKind::Public)).transpose()?;
            Box::new(LoadTask { root, file, checksum, key, signing })
        }
        Action::Prune(request) => Box::new(image::prune::task(root, request)),
    })
}

/// `images save`, its output path settled.
struct SaveTask<'a> {
    root: &'a Utf8Path,
    revision: Revision,
    request: SaveRequest,
    output: Utf8PathBuf,
}

impl Task for SaveTask<'_> {
    fn plan(&self) -> Result<Plan> {
        Ok(save_plan(self.root, &self.revision, &self.request, &self.output))
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let SaveTask { root, revision, request, output } = *self;
        let saved = save(root, &revision, &request, &output)?;
        for (reference, digest) in refs_of(&saved.metadata) {
            say!("saved {reference} {digest}");
        }
        if json {
            let mut report = saved.metadata.clone();
            report["file"] = json!(output.as_str());
            report["sha256"] = json!(saved.sha256);
            out!("{report:#}");
        } else {
            // `sha256sum` format: `sha256sum --check` reads it back.
            out!("{}  {output}", saved.sha256);
        }
        say!("load it with `cargo xtask images load {output} --sha256 {}`", saved.sha256);
        Ok(())
    }
}

/// `images load`, its file's path settled and its key read.
struct LoadTask<'a> {
    root: &'a Utf8Path,
    file: Utf8PathBuf,
    checksum: Checksum,
    key: Option<Key>,
    signing: Options,
}

impl Task for LoadTask<'_> {
    fn plan(&self) -> Result<Plan> {
        load_plan(self.root, &self.file, &self.checksum, self.key.as_ref())
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let LoadTask { root, file, checksum, key, signing } = *self;
        let checker = match key {
            Some(key) => Some(SignatureCheck::new(root, key, signing)?),
            None => None,
        };
        let metadata = load(root, &file, &checksum, checker.as_ref())?;
        if json {
            out!("{metadata:#}");
        } else {
            for (reference, digest) in refs_of(&metadata) {
                out!("{reference} {digest}");
            }
        }
        Ok(())
    }
}

fn absolute(path: &Utf8Path) -> Result<Utf8PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let cwd = Utf8PathBuf::try_from(cwd).context("the current directory is not UTF-8")?;
    Ok(cwd.join(path))
}

#[derive(Debug, Clone)]
pub struct SaveRequest {
    pub images: Vec<ImageName>,
    pub platforms: Vec<Platform>,
    pub builder: Option<String>,
    /// The cosign private key that signs the bundle's metadata (its refs and digests).
    pub sign: Option<KeySource>,
    pub signing: Options,
}

/// The build `images save` starts with: every platform into the local store.
fn build_plan(root: &Utf8Path, revision: &Revision, request: &SaveRequest) -> image::BuildPlan {
    let build = BuildRequest {
        images: request.images.clone(),
        platforms: Some(request.platforms.clone()),
        output: Output::Store,
        tags: None,
        registry: None,
        builder: request.builder.clone(),
        no_cache: false,
        cache: None,
        overwrite: false,
        store: StoreExport::Load,
        cache_space: None,
    };
    image::plan(root, revision, &build)
}

/// Where `docker save` writes, and where the bundle is written before it is renamed to
/// `output`.
fn partial_files(output: &Utf8Path) -> (Utf8PathBuf, Utf8PathBuf) {
    let dir = output.parent().unwrap_or(Utf8Path::new("."));
    let name = output.file_name().unwrap_or("bundle");
    (dir.join(format!(".{name}.saved.partial")), dir.join(format!(".{name}.partial")))
}

/// `docker save` of `refs` (tags or digests) into `archive`; the one way images leave the
/// store as a layout, for bundles and for reading a build's platforms back.
pub(super) fn save_step(
    root: &Utf8Path,
    archive: &Utf8Path,
    refs: impl IntoIterator<Item = String>,
) -> Step {
    docker::cli(root).args(["save", "--output", archive.as_str()]).args(refs)
}

/// What `images save` would do.
fn save_plan(
    root: &Utf8Path,
    revision: &Revision,
    request: &SaveRequest,
    output: &Utf8Path,
) -> Plan {
    let build = build_plan(root, revision, request);
    let (archive, partial) = partial_files(output);
    let refs = build.images.iter().flat_map(|i| i.refs.iter().cloned()).collect::<Vec<_>>();
    Plan::new(format!("save a bundle to {output}"))
        .step(build.step)
        .step(save_step(root, &archive, refs))
        .note(format!(
            "writes the OCI image layout of {archive} into {partial} with {INDEX} naming each \
             image by its full ref and {METADATA} listing each ref and digest, hashes it \
             (SHA-256), renames it to {output}, removes {archive}, and prints the hash"
        ))
}

/// What `images load` would do, after checking the bundle (which only reads it).
fn load_plan(
    root: &Utf8Path,
    file: &Utf8Path,
    checksum: &Checksum,
    key: Option<&Key>,
) -> Result<Plan> {
    let sha256 = check_file(file, checksum)?;
    let layout = Layout::read(&Archive::open(file)?, file)?;
    let mut plan = Plan::new(format!("load the bundle {file}"))
        .note(match checksum {
            Checksum::Sha256(_) => format!("checked {file}: its SHA-256 is {sha256}, as given"),
            Checksum::Skip => format!("--skip-checksum: {file} (SHA-256 {sha256}) is not checked"),
        })
        .note("copies it into a private directory, checking its SHA-256 again on the way");
    if let Some(key) = key {
        plan = plan.note(format!(
            "checks with cosign that {METADATA} of the copy is signed by {} (refused if not)",
            key.source()
        ));
    }
    let mut plan = plan.step(load_step(root)).note(format!(
        "fed the copy on stdin with {INDEX} cut down to the refs the bundle names; then checks \
         that each ref names its digest:"
    ));
    for (reference, digest) in refs_of(&layout.metadata) {
        plan = plan.note(format!("{reference} {digest}"));
    }
    Ok(plan)
}

fn load_step(root: &Utf8Path) -> Step {
    docker::cli(root).arg("load").quiet()
}

/// Every ref of the bundle's metadata, with the image digest it must name.
fn refs_of(metadata: &Value) -> Vec<(&str, &str)> {
    let images = metadata["images"].as_array().map(Vec::as_slice).unwrap_or_default();
    images
        .iter()
        .flat_map(|image| {
            let digest = image["digest"].as_str().unwrap_or_default();
            let refs = image["refs"].as_array().map(Vec::as_slice).unwrap_or_default();
            refs.iter().map(move |r| (r.as_str().unwrap_or_default(), digest))
        })
        .collect()
}

/// A saved bundle: its metadata and the SHA-256 of the whole file.
pub struct Saved {
    pub metadata: Value,
    pub sha256: String,
}

/// Builds (a no-op when the cache is warm), saves every ref with `docker save`, and writes
/// that layout as the bundle. The bundle is written beside `output` and renamed into place,
/// so `output` never holds a partial bundle.
pub fn save(
    root: &Utf8Path,
    revision: &Revision,
    request: &SaveRequest,
    output: &Utf8Path,
) -> Result<Saved> {
    let dir = output.parent().filter(|d| !d.as_str().is_empty()).unwrap_or(Utf8Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {output}: {dir} is not a directory");
    }
    // Before the build: a wrong password stops the save before anything is written.
    let signer = match &request.sign {
        Some(source) => {
            let signer = Signer::new(root, revision, source, request.signing)?;
            let public = signer.prepare()?;
            Some((signer, public))
        }
        None => None,
    };
    let built = image::execute(&build_plan(root, revision, request))?;
    let (archive, partial) = partial_files(output);
    let result = (|| {
        let refs = built.iter().flat_map(|b| b.refs.iter().cloned());
        save_step(root, &archive, refs).run().context("docker save failed")?;
        let images: Vec<Value> = built
            .iter()
            .map(|b| json!({"image": b.image.as_str(), "digest": b.digest, "refs": b.refs}))
            .collect();
        let metadata = json!({
            "format": FORMAT,
            "version": revision.version.to_string(),
            "revision": revision.commit,
            "created": revision.created,
            "platforms": request.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "images": images,
        });
        let signature = match &signer {
            Some((signer, public)) => {
                let signed = serde_json::to_vec_pretty(&metadata).expect("JSON serialises");
                let signature =
                    signer.sign_blob(public, &signed).context("cannot sign the bundle")?;
                Some(json!({"signs": METADATA, "cosign": signature}))
            }
            None => None,
        };
        write_bundle(&archive, &partial, &metadata, signature.as_ref())?;
        let (_, sha256) = hash_file(&partial)?;
        std::fs::rename(&partial, output)
            .with_context(|| format!("cannot move the bundle into place at {output}"))?;
        Ok(Saved { metadata, sha256 })
    })();
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_file(&partial);
    result
}

/// The familiar form of a containerd image name: `docker.io/memories/server:1` is
/// `memories/server:1`, as our refs are written.
fn familiar(name: &str) -> &str {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
}

/// The ref an entry of `index.json` names: its containerd name, else its OCI ref name.
fn entry_ref(entry: &Descriptor) -> Option<&str> {
    let annotations = &entry.annotations;
    annotations.get(CONTAINERD_NAME).or(annotations.get(REF_NAME)).map(|name| familiar(name))
}

/// `docker save`'s `index.json` with each entry's OCI ref name set to its full ref (docker
/// writes only the tag, which is ambiguous once two images share one), after checking that
/// it holds every ref of `metadata` with the digest the build reported.
fn bundle_index(mut index: Document, metadata: &Value) -> Result<Document> {
    if index.manifests.is_empty() {
        bail!("docker save wrote no manifests");
    }
    for entry in &mut index.manifests {
        if let Some(reference) = entry_ref(entry).map(str::to_owned) {
            entry.annotations.insert(REF_NAME.to_owned(), reference);
        }
    }
    wanted_entries(&index, metadata).context("docker save did not write what was built")?;
    Ok(index)
}

/// Copies the layout `docker save` wrote at `archive` into the bundle at `path`: its
/// `index.json` rewritten by [`bundle_index`] and the metadata first (so a reader finds them
/// without reading the blobs), then every other entry as it is.
fn write_bundle(
    archive: &Utf8Path,
    path: &Utf8Path,
    metadata: &Value,
    signature: Option<&Value>,
) -> Result<()> {
    let saved = Archive::open(archive)?;
    let index = saved.get(INDEX)?;
    let index = index.with_context(|| format!("docker save wrote no {INDEX} into {archive}"))?;
    let index = Document::parse(&index, &format!("{INDEX} of {archive}"))?;
    let index = bundle_index(index, metadata)?;
    let file = File::create(path).with_context(|| format!("cannot create {path}"))?;
    let mut front = vec![(INDEX, pretty(&index)), (METADATA, pretty(metadata))];
    front.extend(signature.map(|s| (SIGNATURE, pretty(s))));
    let skip = [INDEX, METADATA, SIGNATURE];
    let what = format!("writing {path}");
    let written = copy_layout(archive, io::BufWriter::new(file), &front, &skip, &what)
        .and_then(|out| out.into_inner().map_err(io::IntoInnerError::into_error));
    let file = written.map_err(|e| interrupted(anyhow!(e)));
    let file = file.with_context(|| format!("cannot write {path} from {archive}"))?;
    file.sync_all().with_context(|| format!("cannot write {path}"))
}

/// A JSON document as a bundle holds it.
fn pretty(document: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(document).expect("JSON serialises")
}

/// Writes to `sink` a tar of the `front` entries (JSON documents), then every entry of the tar
/// file `source` but those named in `skip`, as it is; its progress is shown as `what`. Stops
/// on Ctrl-C.
fn copy_layout<W: Write>(
    source: &Utf8Path,
    sink: W,
    front: &[(&str, Vec<u8>)],
    skip: &[&str],
    what: &str,
) -> io::Result<W> {
    let total = std::fs::metadata(source)?.len();
    let progress = Arc::new(Progress::bytes(what, total));
    let mut tar = tar::Builder::new(sink);
    for (name, text) in front {
        tar.append_data(&mut oci::tar_header(text.len() as u64), name, text.as_slice())?;
    }
    let reader = Counted::new(BufReader::new(File::open(source)?), progress);
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        if skip.iter().any(|n| name.as_os_str() == *n) {
            continue;
        }
        let mut head = entry.header().clone();
        tar.append_data(&mut head, &name, &mut Interruptible(&mut entry))?;
    }
    tar.into_inner()
}

fn hash_file(path: &Utf8Path) -> Result<(u64, String)> {
    let file = File::open(path).with_context(|| format!("cannot open {path}"))?;
    let total = file.metadata().map_or(0, |m| m.len());
    let progress = Arc::new(Progress::bytes(&format!("hashing {path}"), total));
    copy_hashing(&mut Counted::new(file, progress), &mut io::sink())
        .with_context(|| format!("cannot read {path}"))
}

/// Copies `reader` into `writer` and returns the size and lowercase hex SHA-256 of what it
/// copied. Stops on Ctrl-C.
fn copy_hashing(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        if interrupt::is_set() {
            return Err(interrupt::interrupted_io());
        }
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        writer.write_all(&buffer[..n])?;
        size += n as u64;
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((size, hex))
}

/// Refuses a file whose SHA-256 is not the expected one; returns the SHA-256.
fn check_hash(file: &Utf8Path, checksum: &Checksum, sha256: String) -> Result<String> {
    match checksum {
        Checksum::Sha256(expected) if *expected != sha256 => bail!(
            "{file} has SHA-256 {sha256}, not the {expected} given with --sha256: it is not the \
             bundle that was saved (damaged, cut short or replaced); nothing was loaded"
        ),
        _ => Ok(sha256),
    }
}

/// Hashes `file` and checks it against `checksum`, reading it once.
fn check_file(file: &Utf8Path, checksum: &Checksum) -> Result<String> {
    let (_, sha256) = hash_file(file).map_err(interrupted)?;
    check_hash(file, checksum, sha256)
}

/// An error of a copy that Ctrl-C stopped is the interruption itself.
fn interrupted(err: anyhow::Error) -> anyhow::Error {
    if interrupt::is_set() { interrupt::Interrupted.into() } else { err }
}

/// What a bundle says of itself, checked: its metadata, and its `index.json` cut down to the
/// entries the metadata names.
struct Layout {
    index: Document,
    metadata: Value,
}

impl Layout {
    /// Reads both (the first two entries of a bundle `images save` wrote, else anywhere in
    /// the file) and checks them: the format, at least one image, and every ref of the
    /// metadata in the index with the digest the metadata gives. `shown` is the file's name in
    /// errors (`file` may be a private copy of it).
    fn read(archive: &Archive, shown: &Utf8Path) -> Result<Layout> {
        let damaged = |what: String| {
            anyhow!(
                "{shown} is not a complete memories bundle ({what}): nothing was loaded; save it \
                 again with `cargo xtask images save`"
            )
        };
        let read = |name: &str| -> Result<Vec<u8>> {
            let bytes = archive.get(name).map_err(|e| damaged(format!("{:#}", e.root_cause())))?;
            bytes.ok_or_else(|| damaged(format!("it has no {name}")))
        };
        let mut index =
            Document::parse(&read(INDEX)?, INDEX).map_err(|e| damaged(format!("{e:#}")))?;
        let metadata: Value = serde_json::from_slice(&read(METADATA)?)
            .map_err(|e| damaged(format!("{METADATA}: {e}")))?;
        if metadata["format"] != FORMAT {
            return Err(damaged(format!("{METADATA} is not {FORMAT}")));
        }
        let wanted = wanted_entries(&index, &metadata).map_err(|e| damaged(format!("{e:#}")))?;
        index.manifests = wanted;
        Ok(Layout { index, metadata })
    }
}

/// The entries of `index` that the metadata names, one per ref; an error when the metadata
/// names no image, or a ref the index lacks or gives another digest.
fn wanted_entries(index: &Document, metadata: &Value) -> Result<Vec<Descriptor>> {
    let refs = refs_of(metadata);
    if refs.is_empty() {
        bail!("{METADATA} lists no image");
    }
    let entries = &index.manifests;
    let mut wanted = Vec::new();
    for (reference, digest) in refs {
        let entry = entries
            .iter()
            .find(|e| entry_ref(e) == Some(reference))
            .with_context(|| format!("{INDEX} has no {reference}"))?;
        let found = &entry.digest;
        if found != digest {
            bail!("{INDEX} names {reference} as {found}, {METADATA} as {digest}");
        }
        // Made from the (signed) metadata, not copied: no annotation of the file's own (a second
        // name, say) reaches `docker load`.
        let annotations = [
            (CONTAINERD_NAME.to_owned(), oci::full_name(reference)?),
            (REF_NAME.to_owned(), reference.to_owned()),
        ];
        wanted.push(Descriptor {
            media_type: Some(entry.media_type.as_deref().unwrap_or(OCI_INDEX).to_owned()),
            digest: digest.to_owned(),
            size: Some(entry.size.context("an index entry without a size")?),
            annotations: annotations.into(),
            ..Descriptor::default()
        });
    }
    Ok(wanted)
}

/// Streams the bundle at `file` to `sink` as the layout `docker load` gets: `index.json` cut
/// down to the entries the metadata names, without the metadata and without docker's own
/// tag list (whose tags are not checked), every blob as it is.
fn write_for_load(file: &Utf8Path, layout: &Layout, sink: impl Write) -> Result<()> {
    let skip = [INDEX, METADATA, SIGNATURE, DOCKER_MANIFEST];
    let written = copy_layout(
        file,
        sink,
        &[(INDEX, pretty(&layout.index))],
        &skip,
        &format!("loading {file}"),
    )
    .and_then(|mut out| out.flush());
    written.map_err(|e| interrupted(anyhow!(e))).with_context(|| format!("cannot stream {file}"))
}

/// Where `images load` keeps its private copy of a bundle: `xtask-bundle-<run id>` in the
/// temporary directory (a load killed with `kill -9` leaves its copy, gigabytes, behind, and
/// the next load takes it away).
const PRIVATE_PREFIX: &str = "xtask-bundle-";

/// Copies the bundle into a private directory while hashing it, checks the hash and the
/// layout of that copy, and only then loads it; finally checks that every ref names the
/// digest the bundle gives. Nothing reads `file` after the copy.
/// Checks a bundle's signature with a public key, through cosign in the tools image.
pub struct SignatureCheck {
    key: Key,
    tools: image::BuildPlan,
    cosign: Cosign,
}

impl SignatureCheck {
    fn new(root: &Utf8Path, key: Key, signing: Options) -> Result<SignatureCheck> {
        let revision = Revision::read(root)?;
        let tools = Cosign::tools_build(root, &revision);
        let cosign = Cosign::new(root, &tools, signing);
        Ok(SignatureCheck { key, tools, cosign })
    }

    /// Whether the bundle at `copy` carries a signature of its metadata's bytes that the key
    /// verifies; `shown` is the file's name in errors.
    fn check(&self, archive: &Archive, shown: &Utf8Path) -> Result<()> {
        let metadata = archive.get(METADATA)?;
        let metadata = metadata.with_context(|| format!("{shown} has no {METADATA}"))?;
        let Some(signature) = archive.get(SIGNATURE)? else {
            bail!(
                "{shown} is not signed: nothing was loaded; save it with `cargo xtask images save \
                 --sign KEY`, or load it without --key"
            );
        };
        let signature: Value = serde_json::from_slice(&signature)
            .with_context(|| format!("{SIGNATURE} in {shown} is not JSON"))?;
        let signature = signature["cosign"]
            .as_str()
            .with_context(|| format!("{SIGNATURE} in {shown} holds no cosign signature"))?;
        image::execute(&self.tools).context("cannot build the tools image that runs cosign")?;
        if let Err(reason) = self.cosign.verify_blob(&self.key, signature, &metadata)? {
            bail!("{shown} is not signed by {}: {reason}: nothing was loaded", self.key.source());
        }
        Ok(())
    }
}

pub fn load(
    root: &Utf8Path,
    file: &Utf8Path,
    checksum: &Checksum,
    signature: Option<&SignatureCheck>,
) -> Result<Value> {
    docker::require_cli()?;
    let temp = Utf8PathBuf::try_from(std::env::temp_dir())
        .context("the temporary directory is not UTF-8")?;
    let private = RunDir::new(&temp, PRIVATE_PREFIX)?;
    let copy = private.path().join("bundle.tar");
    let copied = (|| -> Result<(u64, String)> {
        let source = File::open(file).with_context(|| format!("cannot open {file}"))?;
        let total = source.metadata().map_or(0, |m| m.len());
        let progress = Arc::new(Progress::bytes(&format!("copying and hashing {file}"), total));
        let mut target = File::create(&copy).with_context(|| format!("cannot create {copy}"))?;
        copy_hashing(&mut Counted::new(source, progress), &mut target)
            .with_context(|| format!("cannot copy {file} to {copy}"))
    })();
    let (_, sha256) = copied.map_err(interrupted)?;
    check_hash(file, checksum, sha256)?;
    // Every entry is checked before anything of the bundle is read or loaded.
    let archive = Archive::open_as(&copy, file)?;
    let layout = Layout::read(&archive, file)?;
    if let Some(check) = signature {
        check.check(&archive, file)?;
    }
    let load = load_step(root);
    say!("$ {load} <{file} (its refs only)");
    let streams = Streams { stdin: Stream::Piped, stdout: Stream::Null, stderr: Stream::Inherit };
    let mut loading = load.spawn(streams)?;
    let stdin = loading.stdin().expect("stdin is piped");
    let streamed = write_for_load(&copy, &layout, stdin);
    let status = loading.wait()?;
    streamed?;
    if !status.success() {
        bail!("`docker load` failed for {file}");
    }
    for (reference, digest) in refs_of(&layout.metadata) {
        let id = docker::cli(root)
            .args(["image", "inspect", "--format", "{{.Id}}", reference])
            .read()
            .with_context(|| format!("{reference} is not in the image store after loading"))?;
        if id.trim() != digest {
            bail!("{reference} loaded as {}, but the bundle says {digest}", id.trim());
        }
    }
    Ok(layout.metadata)
}

#[cfg(test)]
mod tests;
