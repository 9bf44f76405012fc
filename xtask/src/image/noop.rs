//! No-op builds: a reproducible build into the image store whose inputs have not changed since
//! an earlier one (the bake definition, every file its images copy, and the SBOM generator's)
//! gives the same images, so when the store still holds them under every ref, with the digests
//! that build reported, they are what this build returns, and the export (the layers'
//! recompression, most of a cached build's time) is not paid again. `--no-cache` always builds.
//!
//! What a build reported is kept under `target/xtask/builds/`, one file per set of images,
//! with the fingerprint of its inputs.

use std::collections::BTreeSet;

use anyhow::Result;
use camino::Utf8PathBuf;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::image::{BuildPlan, Built, ImageName, PlatformImage};
use crate::run::docker;
use crate::run::label::RunId;
use crate::run::{atomic, tree};

/// Whether `plan` may be answered from an earlier build: a reproducible build into the store,
/// not asked to ignore the cache.
fn applies(plan: &BuildPlan) -> bool {
    !plan.loads.is_empty()
        && plan.pushes.is_empty()
        && !plan.step.args.iter().any(|a| a == "--no-cache")
}

/// The fingerprint of everything that reaches `plan`'s images: the bake command and definition
/// (without this run's id and metadata file: they name only scratch files and the generator's
/// run-scoped ref), and the content of every file under each image's inputs, the SBOM
/// generator's included.
pub fn fingerprint(plan: &BuildPlan) -> Result<String> {
    let mut hasher = Sha256::new();
    let run = RunId::of_process(std::process::id()).map(|r| r.to_string());
    let normal = |text: &str| match &run {
        Some(run) => text.replace(run.as_str(), "<run>"),
        None => text.to_owned(),
    };
    let mut images: BTreeSet<ImageName> = plan.images.iter().map(|i| i.image).collect();
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
    hasher.update(normal(&plan.bake.to_string()).as_bytes());
    let mut paths = BTreeSet::from([".dockerignore".to_owned()]);
    for image in images {
        paths.extend(image.inputs().iter().cloned());
    }
    tree::hash_paths(&mut hasher, &plan.root, paths.iter().map(String::as_str))?;
    Ok(tree::hex(hasher))
}

/// Where the last build of `plan`'s set of images is kept.
fn record_file(plan: &BuildPlan) -> Utf8PathBuf {
    let names: Vec<&str> = plan.images.iter().map(|i| i.image.as_str()).collect();
    plan.root.join("target/xtask/builds").join(format!("{}.json", names.join("+")))
}

/// The images an earlier build of the same inputs made, when the store still holds each of
/// them under every ref with the digest that build reported; `None` otherwise (and always when
/// the build does not qualify, or nothing was kept).
pub fn reuse(plan: &BuildPlan, fingerprint: &str) -> Result<Option<Vec<Built>>> {
    if !applies(plan) {
        return Ok(None);
    }
    let Ok(text) = std::fs::read_to_string(record_file(plan)) else { return Ok(None) };
    let Ok(kept) = serde_json::from_str::<Value>(&text) else { return Ok(None) };
    if kept["fingerprint"] != fingerprint {
        return Ok(None);
    }
    let Some(built) = read_built(&kept["built"], plan) else { return Ok(None) };
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

/// The images `plan` planned, as kept: `None` unless every one is there with its refs.
fn read_built(kept: &Value, plan: &BuildPlan) -> Option<Vec<Built>> {
    let mut built = Vec::new();
    for planned in &plan.images {
        let entry = kept.as_array()?.iter().find(|e| e["image"] == planned.image.as_str())?;
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
        built.push(Built { image: planned.image, refs, digest: Some(digest), platforms });
    }
    Some(built)
}

/// Keeps what a build of `plan` made, for the next build of the same inputs. A build that
/// does not qualify, or reported no digest, keeps nothing (and forgets an earlier one).
pub fn record(plan: &BuildPlan, fingerprint: &str, built: &[Built]) -> Result<()> {
    let file = record_file(plan);
    if !applies(plan) || built.iter().any(|b| b.digest.is_none()) {
        let _ = std::fs::remove_file(&file);
        return Ok(());
    }
    let entries: Vec<Value> = built
        .iter()
        .map(|b| {
            let platforms: Vec<Value> = b.platforms.iter().map(PlatformImage::to_json).collect();
            json!({"image": b.image.as_str(), "refs": b.refs, "digest": b.digest, "platforms": platforms})
        })
        .collect();
    let kept = json!({"fingerprint": fingerprint, "built": entries});
    // Replaced whole, so a build killed meanwhile leaves the old record or none.
    atomic::write(&file, format!("{kept:#}\n").as_bytes())
}
