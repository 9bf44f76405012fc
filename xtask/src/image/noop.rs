//! No-op builds: a reproducible build into the image store of an image whose inputs have not
//! changed since an earlier one (its bake target, the bake command, every file it copies, and
//! the SBOM generator's definition and files) gives the same image, so when the store still
//! holds it under every ref, with the digest that build reported, it is what this build
//! returns, and the export (every layer written out again, most of a cached build's time) is not
//! paid again. The answer is per image: a build of `server` after one of `server db` (or of
//! every image, as `cargo xtask build` does) reuses what that build made. A build answers from
//! the store only when every image it asks for can be; `--no-cache` always builds.
//!
//! What a build reported is kept under `target/xtask/built/IMAGE/`, one file per image and set
//! of repositories its refs name (so a build under other names, `--registry`, does not
//! replace it), at most [`KEPT`] per image.

use std::collections::BTreeSet;

use anyhow::Result;
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::image::{BuildPlan, Built, ImageName, Output, PlannedImage, PlatformImage};
use crate::oci;
use crate::run::docker;
use crate::run::label::RunId;
use crate::run::{atomic, tree};

/// How many records are kept per image (the newest): one per set of names it was built under.
const KEPT: usize = 8;

/// Whether `plan` may be answered from earlier builds: a reproducible build into the store,
/// not asked to ignore the cache.
fn applies(plan: &BuildPlan) -> bool {
    plan.output == Output::Store && !plan.step.args.iter().any(|a| a == "--no-cache")
}

/// The fingerprint of everything that reaches `image` in `plan`: the bake command (without
/// this run's id and metadata file: they name only scratch files and the generator's
/// run-scoped ref), the image's own target in the bake definition (not the others': each
/// target is built on its own), the SBOM generator's definition, and the content of every
/// file under the image's inputs and the generator's.
pub fn fingerprint(plan: &BuildPlan, image: ImageName) -> Result<String> {
    let mut hasher = Sha256::new();
    let run = RunId::of_process(std::process::id()).map(|r| r.to_string());
    let normal = |text: &str| match &run {
        Some(run) => text.replace(run.as_str(), "<run>"),
        None => text.to_owned(),
    };
    let mut images = BTreeSet::from([image]);
    if let Some(generator) = &plan.generator {
        images.extend(generator.images.iter().map(|i| i.image));
        hasher.update(normal(&generator.bake.to_string()).as_bytes());
    }
    hasher.update(normal(&plan.step.program).as_bytes());
    // The metadata file is this process's scratch file.
    let mut args = plan.step.args.iter();
    while let Some(arg) = args.next() {
        if arg == "--metadata-file" {
            args.next();
            continue;
        }
        hasher.update(b"\0");
        hasher.update(normal(arg).as_bytes());
    }
    hasher.update(b"\0");
    hasher.update(normal(&plan.bake["target"][image.as_str()].to_string()).as_bytes());
    let mut paths = BTreeSet::from([".dockerignore".to_owned()]);
    for image in images {
        paths.extend(image.inputs().iter().cloned());
    }
    tree::hash_paths(&mut hasher, &plan.root, paths.iter().map(String::as_str))?;
    Ok(tree::hex(hasher))
}

/// The fingerprint of each image `plan` builds, in its order.
pub fn fingerprints(plan: &BuildPlan) -> Result<Vec<String>> {
    plan.images.iter().map(|planned| fingerprint(plan, planned.image)).collect()
}

/// Where the last build of `planned` under its refs' repositories is kept.
fn record_file(plan: &BuildPlan, planned: &PlannedImage) -> Utf8PathBuf {
    let repositories: BTreeSet<&str> = planned.refs.iter().map(|r| oci::repository_of(r)).collect();
    let mut hasher = Sha256::new();
    for repository in repositories {
        hasher.update(repository.as_bytes());
        hasher.update(b"\0");
    }
    let key = tree::hex(hasher);
    plan.root
        .join("target/xtask/built")
        .join(planned.image.as_str())
        .join(format!("{}.json", &key[..16]))
}

/// The images earlier builds of the same inputs made, when every image `plan` asks for was
/// built so and the store still holds each under every ref with the digest reported then;
/// `None` otherwise (and always when the build does not qualify).
pub fn reuse(plan: &BuildPlan, fingerprints: &[String]) -> Result<Option<Vec<Built>>> {
    if !applies(plan) {
        return Ok(None);
    }
    let mut built = Vec::new();
    for (planned, fingerprint) in plan.images.iter().zip(fingerprints) {
        let Ok(text) = std::fs::read_to_string(record_file(plan, planned)) else { return Ok(None) };
        let Ok(kept) = serde_json::from_str::<Value>(&text) else { return Ok(None) };
        if kept["fingerprint"] != fingerprint.as_str() {
            return Ok(None);
        }
        let Some(image) = read_built(&kept["built"], planned) else { return Ok(None) };
        built.push(image);
    }
    let refs: Vec<&str> = built.iter().flat_map(|b| b.refs.iter().map(String::as_str)).collect();
    let ids = docker::cli(&plan.root)
        .args(["image", "inspect", "--format", "{{.Id}}"])
        .args(refs.iter().copied())
        .quiet()
        .capture()?;
    if !ids.success() {
        return Ok(None);
    }
    let want = built.iter().flat_map(|b| b.refs.iter().map(|_| b.digest.as_deref()));
    let same = ids.stdout.lines().map(str::trim).map(Some).eq(want);
    Ok(same.then_some(built))
}

/// `planned` as kept: `None` unless it is there with its refs.
fn read_built(entry: &Value, planned: &PlannedImage) -> Option<Built> {
    if entry["image"] != planned.image.as_str() {
        return None;
    }
    let refs: Vec<String> = entry["refs"]
        .as_array()?
        .iter()
        .map(|r| r.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    if refs != planned.refs {
        return None;
    }
    let digest = entry["digest"].as_str()?.to_owned();
    let mut platforms = Vec::new();
    for p in entry["platforms"].as_array()? {
        let layers = p["layers"].as_array()?.iter().map(|l| l.as_str().map(str::to_owned));
        platforms.push(PlatformImage {
            platform: p["platform"].as_str()?.to_owned(),
            digest: p["digest"].as_str()?.to_owned(),
            layers: layers.collect::<Option<_>>()?,
        });
    }
    Some(Built { image: planned.image, refs, digest: Some(digest), platforms })
}

/// Keeps what a build of `plan` made, image by image, for the next build of the same inputs.
/// A build that does not qualify keeps nothing and forgets what was kept for its images under
/// their names; so does an image with no digest reported.
pub fn record(plan: &BuildPlan, fingerprints: &[String], built: &[Built]) -> Result<()> {
    for ((planned, fingerprint), image) in plan.images.iter().zip(fingerprints).zip(built) {
        let file = record_file(plan, planned);
        if !applies(plan) || image.digest.is_none() || image.image != planned.image {
            let _ = std::fs::remove_file(&file);
            continue;
        }
        let platforms: Vec<Value> = image.platforms.iter().map(PlatformImage::to_json).collect();
        let entry = json!({"image": image.image.as_str(), "refs": image.refs, "digest": image.digest, "platforms": platforms});
        let kept = json!({"fingerprint": fingerprint, "built": entry});
        // Replaced whole, so a build killed meanwhile leaves the old record or none.
        atomic::write(&file, format!("{kept:#}\n").as_bytes())?;
        prune(&file);
    }
    // What the one-file-per-set records of earlier versions left.
    let _ = std::fs::remove_dir_all(plan.root.join("target/xtask/builds"));
    Ok(())
}

/// Removes all but the [`KEPT`] newest records beside `file`.
fn prune(file: &Utf8Path) {
    let Some(dir) = file.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut records: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    records.sort_by_key(|record| std::cmp::Reverse(record.0));
    for (_, old) in records.into_iter().skip(KEPT) {
        let _ = std::fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use camino::Utf8PathBuf;

    use super::{KEPT, prune};

    #[test]
    fn only_the_newest_records_of_an_image_are_kept() {
        let dir = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("noop-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let start = SystemTime::now() - Duration::from_secs(3600);
        for n in 0..KEPT + 3 {
            let file = std::fs::File::create(dir.join(format!("{n:02}.json"))).unwrap();
            file.set_modified(start + Duration::from_secs(n as u64)).unwrap();
        }
        prune(&dir.join("00.json"));
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let newest: Vec<String> = (3..KEPT + 3).map(|n| format!("{n:02}.json")).collect();
        assert_eq!(left, newest);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
