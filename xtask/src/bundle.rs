//! `cargo xtask images save|load`: release images for a machine without a registry, as one
//! tar file holding `bundle.json` (refs, digests, platforms, and the size and SHA-256 of the
//! images) and `images.tar` (what `docker save` writes). Loading verifies before it loads.

use std::fs::File;
use std::io::{self, Read, Write};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::docker;
use crate::image::{self, BuildRequest, ImageName, Output};
use crate::plan::{Plan, Preview, Step, Stream, Streams};
use crate::platform::Platform;
use crate::version::Revision;

pub const FORMAT: &str = "memories-bundle/1";
const MANIFEST: &str = "bundle.json";
const IMAGES: &str = "images.tar";

/// What `cargo xtask images` does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Save a bundle to `output`; `memories-<version>-<sha>.tar` when `None`.
    Save { request: SaveRequest, output: Option<Utf8PathBuf> },
    /// Verify a bundle, then load it.
    Load { file: Utf8PathBuf },
}

pub fn run(root: &Utf8Path, action: Action, preview: Preview) -> Result<()> {
    match action {
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
            if preview.dry_run {
                save_plan(root, &revision, &request, &output).print(preview.json);
                return Ok(());
            }
            let manifest = save(root, &revision, &request, &output)?;
            report(&manifest, preview.json);
            say!("saved {output}");
            Ok(())
        }
        Action::Load { file } => {
            let file = absolute(&file)?;
            if preview.dry_run {
                load_plan(root, &file)?.print(preview.json);
                return Ok(());
            }
            let manifest = load(root, &file)?;
            report(&manifest, preview.json);
            Ok(())
        }
    }
}

fn report(manifest: &Value, json: bool) {
    if json {
        out!("{manifest:#}");
        return;
    }
    for (reference, digest) in refs_of(manifest) {
        out!("{reference} {digest}");
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
    };
    image::plan(root, revision, &build)
}

/// Where the images and the bundle are written before the bundle is renamed to `output`.
fn partial_files(output: &Utf8Path) -> (Utf8PathBuf, Utf8PathBuf) {
    let dir = output.parent().unwrap_or(Utf8Path::new("."));
    let name = output.file_name().unwrap_or("bundle");
    (dir.join(format!(".{name}.images.partial")), dir.join(format!(".{name}.partial")))
}

fn save_step(root: &Utf8Path, archive: &Utf8Path, refs: impl IntoIterator<Item = String>) -> Step {
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
            "hashes {archive} (SHA-256), writes {MANIFEST} and {IMAGES} into {partial}, renames it to {output}, and removes {archive}"
        ))
}

/// What `images load` would do, after verifying the bundle (which only reads it).
fn load_plan(root: &Utf8Path, file: &Utf8Path) -> Result<Plan> {
    let manifest = verify(file)?;
    let mut plan = Plan::new(format!("load the bundle {file}"))
        .note(format!("verified {file}: its {IMAGES} matches the size and SHA-256 of {MANIFEST}"))
        .step(load_step(root))
        .note(format!(
            "fed {IMAGES} of {file} on stdin; then checks that each ref names its digest:"
        ));
    for (reference, digest) in refs_of(&manifest) {
        plan = plan.note(format!("{reference} {digest}"));
    }
    Ok(plan)
}

fn load_step(root: &Utf8Path) -> Step {
    docker::cli(root).arg("load").quiet()
}

/// Every ref of a manifest, with the image digest it must name.
fn refs_of(manifest: &Value) -> Vec<(&str, &str)> {
    let images = manifest["images"].as_array().map(Vec::as_slice).unwrap_or_default();
    images
        .iter()
        .flat_map(|image| {
            let digest = image["digest"].as_str().unwrap_or_default();
            let refs = image["refs"].as_array().map(Vec::as_slice).unwrap_or_default();
            refs.iter().map(move |r| (r.as_str().unwrap_or_default(), digest))
        })
        .collect()
}

/// Builds (a no-op when the cache is warm), saves every ref into one `docker save` archive and
/// wraps it with its manifest. The bundle is written beside `output` and renamed into place, so
/// `output` never holds a partial bundle.
pub fn save(
    root: &Utf8Path,
    revision: &Revision,
    request: &SaveRequest,
    output: &Utf8Path,
) -> Result<Value> {
    let dir = output.parent().filter(|d| !d.as_str().is_empty()).unwrap_or(Utf8Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {output}: {dir} is not a directory");
    }
    let built = image::execute(&build_plan(root, revision, request))?;
    let (archive, partial) = partial_files(output);
    let result = (|| {
        let refs = built.iter().flat_map(|b| b.refs.iter().cloned());
        save_step(root, &archive, refs).run().context("docker save failed")?;
        let (size, sha256) = hash_file(&archive)?;
        let images: Vec<Value> = built
            .iter()
            .map(|b| {
                json!({
                    "image": b.image.as_str(),
                    "digest": b.digest,
                    "refs": b.refs,
                })
            })
            .collect();
        let manifest = json!({
            "format": FORMAT,
            "version": revision.version.to_string(),
            "revision": revision.commit,
            "created": revision.created,
            "platforms": request.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "images": images,
            "file": { "path": IMAGES, "size": size, "sha256": sha256 },
        });
        write_bundle(&partial, &manifest, &archive, size)?;
        std::fs::rename(&partial, output)
            .with_context(|| format!("cannot move the bundle into place at {output}"))?;
        Ok(manifest)
    })();
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_file(&partial);
    result
}

fn hash_file(path: &Utf8Path) -> Result<(u64, String)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {path}"))?;
    hash_reader(&mut file).with_context(|| format!("cannot read {path}"))
}

/// Size and lowercase hex SHA-256 of everything `reader` yields.
fn hash_reader(reader: &mut impl Read) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((size, hex))
}

fn write_bundle(path: &Utf8Path, manifest: &Value, archive: &Utf8Path, size: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {path}"))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    let text = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
    tar.append_data(&mut header(text.len() as u64), MANIFEST, text.as_slice())
        .with_context(|| format!("cannot write {path}"))?;
    let images = File::open(archive).with_context(|| format!("cannot open {archive}"))?;
    tar.append_data(&mut header(size), IMAGES, images)
        .with_context(|| format!("cannot write {path}"))?;
    let mut out = tar.into_inner().with_context(|| format!("cannot write {path}"))?;
    out.flush().with_context(|| format!("cannot write {path}"))?;
    out.get_ref().sync_all().with_context(|| format!("cannot write {path}"))?;
    Ok(())
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header
}

/// Reads the manifest and checks the images against it; only then loads them, and finally
/// checks that every ref names the digest the manifest gives.
pub fn load(root: &Utf8Path, file: &Utf8Path) -> Result<Value> {
    let manifest = verify(file)?;
    docker::require_cli()?;
    let load = load_step(root);
    say!("$ {load} <{file}:{IMAGES}");
    let streams = Streams { stdin: Stream::Piped, stdout: Stream::Null, stderr: Stream::Inherit };
    let mut loading = load.spawn(streams)?;
    let mut stdin = loading.stdin().expect("stdin is piped");
    let copied = with_images(file, |entry| io::copy(entry, &mut stdin).map(|_| ()));
    drop(stdin);
    let status = loading.wait()?;
    copied?;
    if !status.success() {
        bail!("`docker load` failed for {file}");
    }
    for (reference, digest) in refs_of(&manifest) {
        let id = docker::cli(root)
            .args(["image", "inspect", "--format", "{{.Id}}", reference])
            .read()
            .with_context(|| format!("{reference} is not in the image store after loading"))?;
        if !digest.is_empty() && id.trim() != digest {
            bail!("{reference} loaded as {}, but the bundle's manifest says {digest}", id.trim());
        }
    }
    Ok(manifest)
}

/// Checks a bundle without loading anything: the manifest's format, and the images' size and
/// SHA-256. Returns the manifest.
pub fn verify(file: &Utf8Path) -> Result<Value> {
    let damaged = |what: String| {
        anyhow::anyhow!(
            "{file} is not a complete memories bundle ({what}): nothing was loaded; save it again with `cargo xtask images save`"
        )
    };
    let reader = File::open(file).with_context(|| format!("cannot open {file}"))?;
    let mut archive = tar::Archive::new(io::BufReader::new(reader));
    let mut entries = archive.entries().map_err(|e| damaged(e.to_string()))?;
    let mut first = entries
        .next()
        .ok_or_else(|| damaged("it is empty".into()))?
        .map_err(|e| damaged(e.to_string()))?;
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
        return Err(damaged(format!("its first entry is not {MANIFEST}")));
    }
    let mut text = String::new();
    first.read_to_string(&mut text).map_err(|e| damaged(format!("{MANIFEST}: {e}")))?;
    let manifest: Value =
        serde_json::from_str(&text).map_err(|e| damaged(format!("{MANIFEST}: {e}")))?;
    if manifest["format"] != FORMAT {
        return Err(damaged(format!("{MANIFEST} is not {FORMAT}")));
    }
    let want_size = manifest["file"]["size"].as_u64();
    let want_sha = manifest["file"]["sha256"].as_str().unwrap_or_default().to_owned();
    let mut images = entries
        .next()
        .ok_or_else(|| damaged(format!("{IMAGES} is missing")))?
        .map_err(|e| damaged(e.to_string()))?;
    if images.path_bytes().as_ref() != IMAGES.as_bytes() {
        return Err(damaged(format!("its second entry is not {IMAGES}")));
    }
    let (size, sha) = hash_reader(&mut images).map_err(|e| damaged(format!("{IMAGES}: {e}")))?;
    if Some(size) != want_size {
        return Err(damaged(format!(
            "{IMAGES} has {size} bytes, its manifest says {}",
            want_size.map_or("none".into(), |s| s.to_string())
        )));
    }
    if sha != want_sha {
        return Err(damaged(format!("{IMAGES} has SHA-256 {sha}, its manifest says {want_sha}")));
    }
    Ok(manifest)
}

/// Runs `f` on the bundle's `images.tar` entry.
fn with_images(file: &Utf8Path, f: impl FnOnce(&mut dyn Read) -> io::Result<()>) -> Result<()> {
    let reader = File::open(file).with_context(|| format!("cannot open {file}"))?;
    let mut archive = tar::Archive::new(io::BufReader::new(reader));
    for entry in archive.entries().with_context(|| format!("cannot read {file}"))? {
        let mut entry = entry.with_context(|| format!("cannot read {file}"))?;
        if entry.path_bytes().as_ref() == IMAGES.as_bytes() {
            return f(&mut entry).with_context(|| format!("cannot stream {IMAGES} of {file}"));
        }
    }
    bail!("{file} has no {IMAGES}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(dir: &Utf8Path, images: &[u8], manifest_sha: Option<&str>) -> Utf8PathBuf {
        let archive = dir.join("images");
        std::fs::write(&archive, images).unwrap();
        let (size, sha) = hash_file(&archive).unwrap();
        let manifest = json!({
            "format": FORMAT,
            "images": [],
            "file": {"path": IMAGES, "size": size, "sha256": manifest_sha.unwrap_or(&sha)},
        });
        let path = dir.join("bundle.tar");
        write_bundle(&path, &manifest, &archive, size).unwrap();
        path
    }

    fn scratch(name: &str) -> Utf8PathBuf {
        let dir = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_intact_bundle_verifies() {
        let dir = scratch("intact");
        let path = bundle_with(&dir, b"layers and indexes", None);
        let manifest = verify(&path).unwrap();
        assert_eq!(manifest["file"]["size"], 18);
        let mut seen = Vec::new();
        with_images(&path, |r| r.read_to_end(&mut seen).map(|_| ())).unwrap();
        assert_eq!(seen, b"layers and indexes");
    }

    #[test]
    fn truncated_altered_or_foreign_bundles_are_refused() {
        let dir = scratch("bad");
        let path = bundle_with(&dir, &vec![7u8; 5000], None);
        let full = std::fs::read(&path).unwrap();

        std::fs::write(&path, &full[..3000]).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("not a complete memories bundle"), "{err}");
        assert!(err.contains("nothing was loaded"), "{err}");

        let mut altered = full.clone();
        let at = full.windows(4).position(|w| w == [7, 7, 7, 7]).unwrap() + 100;
        altered[at] = 8;
        std::fs::write(&path, &altered).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("images.tar has SHA-256"), "{err}");

        let wrong = bundle_with(&dir, b"x", Some("00"));
        assert!(verify(&wrong).unwrap_err().to_string().contains("its manifest says 00"));

        std::fs::write(&path, b"").unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("not a complete memories bundle"));
    }
}
