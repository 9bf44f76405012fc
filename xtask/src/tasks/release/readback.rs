//! What a release finds in the registry and checks there: which immutable refs another build
//! holds, which moving tags go forward, and each pushed index read back, labelled and attested.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::{LeftAlone, ReleaseImage, ReleasePlan};
use crate::image::ImageName;
use crate::image::platform::Platform;
use crate::image::verify;
use crate::image::version::Revision;
use crate::oci;
use crate::oci::{FoundIndex, Inspected};

/// Where one image of the release stands in the registry before anything is pushed.
#[derive(Debug)]
pub(super) enum Standing {
    /// No immutable ref exists: build and push it.
    New,
    /// Some immutable refs hold this release (same version and commit) under `digest`, from an
    /// earlier run: copy the missing ones from it, build nothing.
    Resumed { digest: String, missing: Vec<String> },
}

/// Reads an image's immutable refs: absent (new), held by this release (resumed), or held by
/// another build (added to `foreign`, refused by the caller).
pub(super) fn standing(
    remote: &oci::Registry,
    plan: &ReleasePlan,
    image: &ReleaseImage,
    foreign: &mut Vec<String>,
) -> Result<Standing> {
    let mut held: Option<String> = None;
    let mut missing = Vec::new();
    for tag in &image.tags.immutable {
        let reference = format!("{}:{tag}", image.repository);
        let Some(inspected) = remote.inspect(&reference)? else {
            missing.push(tag.clone());
            continue;
        };
        let found = inspected.found();
        let ours = check_index(&inspected, &plan.revision, &plan.platforms).is_ok();
        match &held {
            _ if !ours => foreign.push(reference),
            Some(digest) if *digest != found.digest => foreign.push(reference),
            _ => held = Some(found.digest),
        }
    }
    Ok(match held {
        None => Standing::New,
        Some(digest) => Standing::Resumed { digest, missing },
    })
}

/// Reads every moving tag and sorts them: to move (absent, or naming an older release), left
/// alone (naming a newer one), or already in place. `digests` holds each image's release
/// digest where known (a new image's moving tags cannot already be in place).
pub(super) fn moves<'a>(
    remote: &oci::Registry,
    plan: &'a ReleasePlan,
    digests: &BTreeMap<ImageName, String>,
) -> Result<Moves<'a>> {
    let mut moves = Moves::default();
    for image in &plan.images {
        let digest = digests.get(&image.image).map(String::as_str);
        for tag in &image.tags.moving {
            let reference = format!("{}:{tag}", image.repository);
            let current = remote.inspect(&reference)?.map(|inspected| inspected.found());
            match decide_move(&plan.revision, digest, current.as_ref()) {
                Move::Forward => moves.to_move.push((image, reference)),
                Move::InPlace => moves.in_place.push((image, reference)),
                Move::Keep(names) => moves.left_alone.push(LeftAlone { reference, names }),
            }
        }
    }
    Ok(moves)
}

/// Moving tags sorted by what a release does with them.
#[derive(Debug, Default)]
pub(super) struct Moves<'a> {
    pub(super) to_move: Vec<(&'a ReleaseImage, String)>,
    pub(super) in_place: Vec<(&'a ReleaseImage, String)>,
    pub(super) left_alone: Vec<LeftAlone>,
}

/// What to do with one moving tag.
#[derive(Debug, PartialEq, Eq)]
pub enum Move {
    /// It is absent, or names an older (or unlabelled) release: copy ours there.
    Forward,
    /// It already names this release.
    InPlace,
    /// It names a newer release (the version it names).
    Keep(String),
}

/// Moving tags only move forward: PEP 440 order of the `version` labels.
pub fn decide_move(revision: &Revision, ours: Option<&str>, current: Option<&FoundIndex>) -> Move {
    let Some(current) = current else { return Move::Forward };
    if ours == Some(current.digest.as_str()) {
        return Move::InPlace;
    }
    let theirs = current.version.as_deref().and_then(|v| v.parse::<pep440_rs::Version>().ok());
    match theirs {
        Some(theirs) if theirs > revision.version.pep440 => {
            Move::Keep(current.version.clone().unwrap_or_default())
        }
        _ => Move::Forward,
    }
}

/// Reads `reference` back and checks that it is this release's index under `digest`.
/// Reads `reference` back and checks that it is this release's index under `digest`: what was
/// found, and the registry's answer.
pub(super) fn verify(
    remote: &oci::Registry,
    plan: &ReleasePlan,
    reference: &str,
    digest: &str,
) -> Result<(FoundIndex, Inspected)> {
    let inspected = remote
        .inspect(reference)?
        .with_context(|| format!("{reference} is not in the registry after it was pushed"))?;
    let found = check_index(&inspected, &plan.revision, &plan.platforms)
        .with_context(|| format!("{reference} in the registry is not what was released"))?;
    if found.digest != digest {
        bail!("{reference} is {} in the registry, but the release is {digest}", found.digest);
    }
    Ok((found, inspected))
}

/// Checks that the index read back as `inspected` carries a provenance attestation and an SBOM
/// for every platform.
pub(super) fn check_attested(
    remote: &oci::Registry,
    repository: &str,
    reference: &str,
    inspected: &Inspected,
    found: &FoundIndex,
) -> Result<()> {
    let types = verify::predicate_types(remote, repository, inspected, &found.platforms)?;
    let (provenance, sbom) = verify::check_attestations(&types);
    match provenance.and(sbom) {
        Ok(_) => Ok(()),
        Err(reason) => bail!("{reference} in the registry is not what was released: {reason}"),
    }
}

/// Checks an index as read back: every wanted platform, each image labelled with the release's
/// version and revision.
pub fn check_index(
    inspected: &Inspected,
    revision: &Revision,
    wanted: &[Platform],
) -> Result<FoundIndex> {
    let found = inspected.found();
    let missing: Vec<String> = wanted
        .iter()
        .map(ToString::to_string)
        .filter(|p| !found.platforms.contains_key(p))
        .collect();
    if !missing.is_empty() {
        bail!("platforms missing: {} (found: {})", missing.join(", "), join_keys(&found.platforms));
    }
    let labels = revision.labels();
    for (key, have) in [
        ("org.opencontainers.image.version", &found.version),
        ("org.opencontainers.image.revision", &found.revision),
    ] {
        let want = &labels.iter().find(|(k, _)| *k == key).expect("a release label").1;
        let have = have.as_deref().unwrap_or("(none or differing between platforms)");
        if have != want {
            bail!("label {key} is `{have}`, expected `{want}`");
        }
    }
    Ok(found)
}

pub(super) fn join_keys(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        "none".to_owned()
    } else {
        map.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}
