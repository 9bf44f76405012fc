//! `cargo xtask release`: build every image for every platform, push only when all of them
//! built (immutable tags first, moving tags last), then read every index back from the registry
//! and check its platforms, labels and digest.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use crate::image::ImageName;
use crate::image::platform::Platform;
use crate::image::sign::{self, KeySource, Signer};
use crate::image::version::Revision;
use crate::image::{self, BuildPlan, BuildRequest, Output, StoreExport};
use crate::oci;
use crate::run::docker;
use crate::run::plan::{Plan, Request, Task};

mod readback;

use readback::{Moves, Standing, check_attested, moves, standing, verify};

/// Where releases go unless `--registry` says otherwise: the local registry of a development
/// machine.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:5000/memories";
pub const DEFAULT_PLATFORMS: &str = "linux/amd64,linux/arm64";

/// What may bend the release rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowances {
    /// Release a tree with uncommitted changes (its tags and labels say `-dirty`).
    pub dirty: bool,
    /// Overwrite a version that the registry already holds.
    pub overwrite: bool,
    /// Move `latest` (stable versions only).
    pub latest: bool,
}

/// The tags of a release, in push order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseTags {
    /// `X.Y.Z` and `sha-<7 hex>`: they name one build for good.
    pub immutable: Vec<String>,
    /// `X.Y`, `X` and `latest`: they follow the newest stable release.
    pub moving: Vec<String>,
}

/// Tags by the usual conventions: a pre-release gets only its own version and the commit.
pub fn release_tags(revision: &Revision, latest: bool) -> ReleaseTags {
    let version = &revision.version;
    let immutable = vec![version.to_string(), format!("sha-{}", revision.short())];
    let mut moving = Vec::new();
    if !version.is_prerelease() {
        moving.push(format!("{}.{}", version.major, version.minor));
        moving.push(version.major.to_string());
        if latest {
            moving.push("latest".to_owned());
        }
    }
    ReleaseTags { immutable, moving }
}

/// Refuses what must never be released: checked before anything runs, dry runs included.
pub fn check_revision(revision: &Revision, allow: Allowances) -> Result<()> {
    if revision.dirty && !allow.dirty {
        bail!(
            "the work tree has uncommitted changes: commit or stash them (a release must name one \
             commit), or pass --allow-dirty"
        );
    }
    if revision.version.is_prerelease() && allow.latest {
        bail!(
            "{} is a pre-release and cannot be tagged `latest`: pass --no-latest, or set a stable \
             version in app/pyproject.toml",
            revision.version
        );
    }
    Ok(())
}

/// One image of a release: where it goes and under which refs.
#[derive(Debug, Clone)]
pub struct ReleaseImage {
    pub image: ImageName,
    pub repository: String,
    pub tags: ReleaseTags,
}

impl ReleaseImage {
    /// The ref that names this release for good: `<repository>:<version>`.
    pub fn version_ref(&self) -> String {
        format!("{}:{}", self.repository, self.tags.immutable[0])
    }

    pub fn refs(&self) -> Vec<String> {
        self.tags
            .immutable
            .iter()
            .chain(&self.tags.moving)
            .map(|tag| format!("{}:{tag}", self.repository))
            .collect()
    }
}

/// A release, planned without side effects. Which images are built and which refs are pushed,
/// copied or left alone is decided at run time from what the registry holds; the plan shows
/// the most a release does (every image built and pushed, every moving tag moved).
#[derive(Debug)]
pub struct ReleasePlan {
    pub revision: Revision,
    pub registry: String,
    pub platforms: Vec<Platform>,
    pub images: Vec<ReleaseImage>,
    pub request: ReleaseRequest,
    pub root: Utf8PathBuf,
    /// Every image, for every platform, built and pushed from its archive under its immutable
    /// tags (the moving tags come after every image is read back).
    pub build: BuildPlan,
    /// The signing key, read before anything runs, and the `tools` build cosign runs from.
    pub signer: Option<Signer>,
}

/// What a release needs to know, independent of the command line.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    pub images: Vec<ImageName>,
    pub registry: String,
    pub platforms: Vec<Platform>,
    pub builder: Option<String>,
    pub allow: Allowances,
    /// The version app/pyproject.toml must say (a release workflow's git tag; a leading `v`
    /// is ignored).
    pub expect_version: Option<String>,
    /// The cosign private key that signs every released index.
    pub sign: Option<KeySource>,
    /// The build cache to read and write beyond the builder's own.
    pub cache: Option<image::Cache>,
    pub signing: sign::Options,
    /// See [`image::CACHE_SPACE_VAR`].
    pub cache_space: Option<String>,
}

/// Stands for a digest known only once the build has run, in plans.
const BUILT: &str = "sha256:<built>";

pub fn plan(root: &Utf8Path, revision: &Revision, request: &ReleaseRequest) -> Result<ReleasePlan> {
    check_revision(revision, request.allow)?;
    let names = if request.images.is_empty() {
        ImageName::released()
    } else {
        let mut names = request.images.clone();
        names.sort();
        names.dedup();
        names
    };
    let tags = release_tags(revision, request.allow.latest);
    let images: Vec<ReleaseImage> = names
        .iter()
        .map(|&image| ReleaseImage {
            image,
            repository: image::repository(Some(&request.registry), image),
            tags: tags.clone(),
        })
        .collect();
    let build = build_plan(root, revision, request, &names, &tags);
    let signer = match &request.sign {
        Some(source) => Some(Signer::new(root, revision, source, request.signing)?),
        None => None,
    };
    Ok(ReleasePlan {
        revision: revision.clone(),
        registry: request.registry.clone(),
        platforms: request.platforms.clone(),
        images,
        request: request.clone(),
        root: root.to_owned(),
        build,
        signer,
    })
}

/// Builds `names` reproducibly and pushes each from its archive under its immutable refs only:
/// moving tags are made in the registry, by manifest copy.
fn build_plan(
    root: &Utf8Path,
    revision: &Revision,
    request: &ReleaseRequest,
    names: &[ImageName],
    tags: &ReleaseTags,
) -> BuildPlan {
    image::plan(
        root,
        revision,
        &BuildRequest {
            images: names.to_vec(),
            platforms: Some(request.platforms.clone()),
            output: Output::Push,
            tags: Some(tags.immutable.clone()),
            registry: Some(request.registry.clone()),
            builder: request.builder.clone(),
            no_cache: false,
            cache: request.cache.clone(),
            overwrite: request.allow.overwrite,
            store: StoreExport::Load,
            cache_space: request.cache_space.clone(),
        },
    )
}

impl ReleasePlan {
    fn remote(&self) -> oci::Registry {
        oci::Registry::new(&self.root)
    }

    /// The release as a dry-run plan: every step it can take, in order (with [`BUILT`] for
    /// digests known only later), what it decides only when it runs as notes, and the images,
    /// tags and bake definition as facts.
    pub fn to_plan(&self) -> Plan {
        let copy = |image: &ReleaseImage, tags: &[String]| -> Vec<Request> {
            let source = format!("{}@{BUILT}", image.repository);
            let target = |tag: &String| format!("{}:{tag}", image.repository);
            tags.iter().map(|tag| oci::copy_request(&source, &target(tag))).collect()
        };
        let mut plan = Plan::new(format!(
            "release {} of {} to {}",
            self.revision.version,
            self.images.iter().map(|i| i.image.as_str()).collect::<Vec<_>>().join(" "),
            self.registry
        ))
        .note(
            "read every ref: a tag that holds this release is kept, one that holds another \
             build is refused",
        )
        .requests(self.images.iter().flat_map(|i| i.refs()).map(|r| oci::read_request(&r)))
        .note(
            "build the images the registry lacks, reproducibly (into OCI archives); nothing is \
             pushed unless every one built",
        )
        .steps(self.build.build_steps())
        .note(
            "push each from its archive under its immutable refs (an image an earlier run pushed \
             gets its missing refs by manifest copy instead)",
        )
        .requests(self.build.pushes.iter().map(|(archive, refs)| oci::push_request(archive, refs)));
        plan = plan.note(
            "read back every immutable ref and check its platforms, labels and digest, and that \
             each index carries provenance and an SBOM for every platform",
        );
        if let Some(signer) = &self.signer {
            plan = plan
                .note(
                    "sign each index the registry does not hold a valid signature of, by \
                     digest, and verify every signature with the key's public half",
                )
                .step(signer.tools.step.clone())
                .step(signer.cosign.public_key_step(&signer.key, &signer.password));
            for image in &self.images {
                let target = format!("{}@{BUILT}", image.repository);
                plan = plan.step(signer.cosign.sign_step(&signer.key, &signer.password, &target));
            }
        }
        plan = plan.note("move each moving tag whose image is older than this version, or absent");
        for image in &self.images {
            plan = plan.requests(copy(image, &image.tags.moving));
        }
        let images: Vec<Value> = self
            .images
            .iter()
            .map(|i| {
                json!({
                    "image": i.image.as_str(),
                    "repository": i.repository,
                    "immutable_tags": i.tags.immutable,
                    "moving_tags": i.tags.moving,
                })
            })
            .collect();
        plan.fact("version", self.revision.version.to_string().into())
            .fact("revision", self.revision.commit.clone().into())
            .fact("registry", self.registry.clone().into())
            .fact(
                "platforms",
                self.platforms.iter().map(ToString::to_string).collect::<Vec<_>>().into(),
            )
            .fact("images", images.into())
            .fact("bake", self.build.bake.clone())
            .fact("signed_with", self.signer.as_ref().map(|s| s.key.source().to_string()).into())
    }
}

/// What the registry holds for one released image, as read back.
#[derive(Debug)]
pub struct Released {
    pub image: ImageName,
    pub digest: String,
    /// Every ref that now names this release.
    pub refs: Vec<String>,
    /// Platform → the digest of its manifest.
    pub platforms: BTreeMap<String, String>,
    /// Its signature was verified with the signing key's public half.
    pub signed: bool,
}

/// A moving tag that names a newer release and was left where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftAlone {
    pub reference: String,
    pub names: String,
}

/// What a release did.
#[derive(Debug)]
pub struct Outcome {
    pub released: Vec<Released>,
    pub left_alone: Vec<LeftAlone>,
    /// Registry operations retried after a transient failure.
    pub retries: u64,
}

/// `cargo xtask release`: the release of this revision that `request` asks for, refused when
/// the version is not the one expected.
pub fn task(root: &Utf8Path, request: &ReleaseRequest) -> Result<ReleasePlan> {
    let revision = Revision::read(root)?;
    if let Some(expected) = &request.expect_version {
        let expected = expected.strip_prefix('v').unwrap_or(expected);
        if expected != revision.version.to_string() {
            bail!(
                "app/pyproject.toml says version {}, but {expected} was expected: tag the commit \
                 that sets it, or set it and commit",
                revision.version
            );
        }
    }
    let request = ReleaseRequest { cache_space: image::cache_space_from_env()?, ..request.clone() };
    plan(root, &revision, &request)
}

impl Task for ReleasePlan {
    fn plan(&self) -> Result<Plan> {
        Ok(self.to_plan())
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let outcome = execute(&self)?;
        print_outcome(&self, &outcome, json);
        Ok(())
    }
}

/// What a release did: refs and digests as lines, or the whole outcome as JSON.
fn print_outcome(plan: &ReleasePlan, outcome: &Outcome, json: bool) {
    for left in &outcome.left_alone {
        say!(
            "left alone: {} names {}, newer than {}",
            left.reference,
            left.names,
            plan.revision.version
        );
    }
    if json {
        let images: Vec<Value> = outcome
            .released
            .iter()
            .map(|r| {
                json!({
                    "image": r.image.as_str(),
                    "digest": r.digest,
                    "refs": r.refs,
                    "platforms": r.platforms,
                    "signed": r.signed,
                })
            })
            .collect();
        let left: Vec<Value> = outcome
            .left_alone
            .iter()
            .map(|l| json!({"ref": l.reference, "names": l.names}))
            .collect();
        out!(
            "{:#}",
            json!({
                "version": plan.revision.version.to_string(),
                "revision": plan.revision.commit,
                "registry": plan.registry,
                "images": images,
                "left_alone": left,
                "retries": outcome.retries,
            })
        );
    } else {
        for r in &outcome.released {
            for reference in &r.refs {
                out!("{reference} {}", r.digest);
            }
        }
    }
}

/// Reads the registry, builds what it lacks, pushes the immutable refs (building and pushing
/// nothing if an image failed to build), verifies every one of every image, and only then moves
/// each moving tag that names an older release. Safe to run again after any interruption.
pub fn execute(plan: &ReleasePlan) -> Result<Outcome> {
    docker::require_cli()?;
    let remote = plan.remote();
    let retries_before = oci::retries();
    let overwrite = plan.request.allow.overwrite;
    // Before anything is pushed: the tools image, and the key opened with its password.
    let public = match &plan.signer {
        Some(signer) => Some(signer.prepare()?),
        None => None,
    };

    let mut standings = Vec::new();
    let mut foreign = Vec::new();
    for image in &plan.images {
        let standing =
            if overwrite { Standing::New } else { standing(&remote, plan, image, &mut foreign)? };
        standings.push(standing);
    }
    if !foreign.is_empty() {
        bail!(
            "{} already in the registry from another build, and released tags are immutable: \
             bump `version` in app/pyproject.toml, or pass --force to overwrite",
            foreign.join(", ")
        );
    }
    // Each image's release digest: known now for what an earlier run pushed, after the build
    // for the rest.
    let mut digests: BTreeMap<ImageName, String> = plan
        .images
        .iter()
        .zip(&standings)
        .filter_map(|(image, standing)| match standing {
            Standing::Resumed { digest, .. } => Some((image.image, digest.clone())),
            Standing::New => None,
        })
        .collect();
    let complete = standings
        .iter()
        .all(|s| matches!(s, Standing::Resumed { missing, .. } if missing.is_empty()));
    if complete && moves(&remote, plan, &digests)?.to_move.is_empty() {
        bail!(
            "{} {} already in the registry with every tag in place, and released tags are \
             immutable: bump `version` in app/pyproject.toml, or pass --force to overwrite",
            plan.images.iter().map(ReleaseImage::version_ref).collect::<Vec<_>>().join(", "),
            if plan.images.len() == 1 { "is" } else { "are" },
        );
    }

    let to_build: Vec<ImageName> = plan
        .images
        .iter()
        .zip(&standings)
        .filter(|(_, s)| matches!(s, Standing::New))
        .map(|(i, _)| i.image)
        .collect();
    if !to_build.is_empty() {
        let tags = release_tags(&plan.revision, plan.request.allow.latest);
        let build = build_plan(&plan.root, &plan.revision, &plan.request, &to_build, &tags);
        let built = match image::execute(&build) {
            Ok(built) => built,
            Err(err) if err.is::<image::PushCutShort>() => {
                return Err(err.context(
                    "the release stopped before moving any tag: run it again to finish it",
                ));
            }
            Err(err) => return Err(err.context("release aborted before pushing anything")),
        };
        for b in built {
            let digest =
                b.digest.with_context(|| format!("buildx reported no digest for {}", b.image))?;
            digests.insert(b.image, digest);
        }
    }
    for (image, standing) in plan.images.iter().zip(&standings) {
        let digest = &digests[&image.image];
        let source = format!("{}@{digest}", image.repository);
        // The build pushed every immutable ref of a new image. A resumed one may miss its
        // version tag itself (only its sha tag was written before the interruption): it is
        // copied like any other.
        let Standing::Resumed { missing, .. } = standing else { continue };
        for tag in missing {
            let target = format!("{}:{tag}", image.repository);
            remote
                .copy(&source, &target)
                .context("the release stopped before moving any tag: run it again to finish it")?;
        }
    }

    let mut released = Vec::new();
    for image in &plan.images {
        let digest = &digests[&image.image];
        let mut refs = Vec::new();
        let mut platforms = BTreeMap::new();
        for (n, tag) in image.tags.immutable.iter().enumerate() {
            let reference = format!("{}:{tag}", image.repository);
            let (found, inspected) = verify(&remote, plan, &reference, digest)?;
            // Every immutable ref names this one index: its attestations are read once.
            if n == 0 {
                check_attested(&remote, &image.repository, &reference, &inspected, &found)?;
            }
            platforms = found.platforms;
            refs.push(reference);
        }
        released.push(Released {
            image: image.image,
            digest: digest.clone(),
            refs,
            platforms,
            signed: false,
        });
    }
    if let (Some(signer), Some(public)) = (&plan.signer, &public) {
        for entry in &mut released {
            let target = format!(
                "{}@{}",
                image::repository(Some(&plan.registry), entry.image),
                entry.digest
            );
            // A re-run after an interruption finds the signature already there: one per index.
            if signer.cosign.verify(public, &target)?.is_err() {
                signer.cosign.sign(&signer.key, &signer.password, &target).context(
                    "every immutable ref is released, but not every signature: run the release \
                     again to sign the rest",
                )?;
            }
            if let Err(reason) = signer.cosign.verify(public, &target)? {
                bail!("the signature of {target} does not verify after signing: {reason}");
            }
            entry.signed = true;
        }
    }

    let Moves { to_move, in_place, left_alone } = moves(&remote, plan, &digests)?;
    for (image, reference) in &to_move {
        let source = format!("{}@{}", image.repository, digests[&image.image]);
        remote.copy(&source, reference).context(
            "every immutable ref is released and verified, but moving tags were cut short: run \
             the release again to move the rest",
        )?;
    }
    for (image, reference) in to_move.iter().chain(&in_place) {
        verify(&remote, plan, reference, &digests[&image.image])?;
        let entry = released.iter_mut().find(|r| r.image == image.image).expect("a released image");
        entry.refs.push(reference.clone());
    }
    Ok(Outcome { released, left_alone, retries: oci::retries() - retries_before })
}

#[cfg(test)]
mod tests;
