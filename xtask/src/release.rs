//! `cargo xtask release`: build every image for every platform, push only when all of them
//! built (immutable tags first, moving tags last), then read every index back from the registry
//! and check its platforms, labels and digest.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::{Value, json};
use xshell::Shell;

use crate::cli::{ImageName, ReleaseArgs};
use crate::docker;
use crate::image::{self, BuildPlan, BuildRequest, Output};
use crate::plan::{self, Step};
use crate::platform::Platform;
use crate::version::Revision;

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

/// A release, planned without side effects.
#[derive(Debug)]
pub struct ReleasePlan {
    pub revision: Revision,
    pub registry: String,
    pub platforms: Vec<Platform>,
    pub images: Vec<ReleaseImage>,
    /// One registry lookup per image: does its version tag exist already? Empty with `--force`.
    pub checks: Vec<Step>,
    pub build: BuildPlan,
    /// Every immutable ref of every image, then every moving ref.
    pub pushes: Vec<Step>,
    /// Reads each pushed ref back from the registry.
    pub verifies: Vec<Step>,
}

/// What a release needs to know, independent of the command line.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    pub images: Vec<ImageName>,
    pub registry: String,
    pub platforms: Vec<Platform>,
    pub builder: Option<String>,
    pub allow: Allowances,
}

impl From<&ReleaseArgs> for ReleaseRequest {
    fn from(args: &ReleaseArgs) -> ReleaseRequest {
        ReleaseRequest {
            images: args.images.clone(),
            registry: args.registry.clone(),
            platforms: args.platform.0.clone(),
            builder: args.builder.clone(),
            allow: Allowances {
                dirty: args.allow_dirty,
                overwrite: args.force,
                latest: !args.no_latest,
            },
        }
    }
}

pub fn plan(root: &Utf8Path, revision: &Revision, request: &ReleaseRequest) -> Result<ReleasePlan> {
    check_revision(revision, request.allow)?;
    let names = if request.images.is_empty() {
        ImageName::ALL.to_vec()
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
    let all_tags: Vec<String> = tags.immutable.iter().chain(&tags.moving).cloned().collect();
    let build = image::plan(
        root,
        revision,
        &BuildRequest {
            images: names,
            platforms: Some(request.platforms.clone()),
            output: Output::Store,
            tags: Some(all_tags),
            registry: Some(request.registry.clone()),
            builder: request.builder.clone(),
            no_cache: false,
        },
    );
    let imagetools = || docker::buildx(root, request.builder.as_deref()).args(["imagetools"]);
    let checks = if request.allow.overwrite {
        Vec::new()
    } else {
        images
            .iter()
            .map(|i| imagetools().args(["inspect", "--raw"]).arg(i.version_ref()))
            .collect()
    };
    let push = |reference: String| docker::cli(root).args(["push", "--quiet"]).arg(reference);
    let mut pushes = Vec::new();
    for image in &images {
        for tag in &image.tags.immutable {
            pushes.push(push(format!("{}:{tag}", image.repository)));
        }
    }
    for image in &images {
        for tag in &image.tags.moving {
            pushes.push(push(format!("{}:{tag}", image.repository)));
        }
    }
    let verifies = images
        .iter()
        .flat_map(|i| i.refs())
        .map(|reference| {
            imagetools().args(["inspect", "--format", "{{json .}}"]).arg(reference).stdout_is_data()
        })
        .collect();
    Ok(ReleasePlan {
        revision: revision.clone(),
        registry: request.registry.clone(),
        platforms: request.platforms.clone(),
        images,
        checks,
        build,
        pushes,
        verifies,
    })
}

impl ReleasePlan {
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = self.checks.clone();
        steps.push(self.build.step.clone());
        steps.extend(self.pushes.iter().cloned());
        steps.extend(self.verifies.iter().cloned());
        steps
    }

    pub fn to_json(&self) -> Value {
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
        json!({
            "version": self.revision.version.to_string(),
            "revision": self.revision.commit,
            "registry": self.registry,
            "platforms": self.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "images": images,
            "bake": self.build.bake,
            "steps": {
                "check": self.checks.iter().map(Step::to_json).collect::<Vec<_>>(),
                "build": [self.build.step.to_json()],
                "push": self.pushes.iter().map(Step::to_json).collect::<Vec<_>>(),
                "verify": self.verifies.iter().map(Step::to_json).collect::<Vec<_>>(),
            },
        })
    }
}

/// What the registry holds for one released image, as read back.
#[derive(Debug)]
pub struct Released {
    pub image: ImageName,
    pub digest: String,
    pub refs: Vec<String>,
    /// Platform → the digest of its manifest.
    pub platforms: BTreeMap<String, String>,
}

pub fn run(sh: &Shell, root: &Utf8Path, args: &ReleaseArgs) -> Result<()> {
    let revision = Revision::read(sh, root)?;
    if let Some(expected) = &args.expect_version {
        let expected = expected.strip_prefix('v').unwrap_or(expected);
        if expected != revision.version.to_string() {
            bail!(
                "app/pyproject.toml says version {}, but {expected} was expected: tag the commit \
                 that sets it, or set it and commit",
                revision.version
            );
        }
    }
    let plan = plan(root, &revision, &ReleaseRequest::from(args))?;
    if args.output.dry_run {
        if args.output.json {
            println!("{:#}", plan.to_json());
        } else {
            plan::print_plan(&plan.steps());
        }
        return Ok(());
    }
    let released = execute(sh, &plan)?;
    if args.output.json {
        let images: Vec<Value> = released
            .iter()
            .map(|r| {
                json!({
                    "image": r.image.as_str(),
                    "digest": r.digest,
                    "refs": r.refs,
                    "platforms": r.platforms,
                })
            })
            .collect();
        println!(
            "{:#}",
            json!({
                "version": plan.revision.version.to_string(),
                "revision": plan.revision.commit,
                "registry": plan.registry,
                "images": images,
            })
        );
    } else {
        for r in &released {
            for reference in &r.refs {
                println!("{reference} {}", r.digest);
            }
        }
    }
    Ok(())
}

/// Checks, builds, pushes and verifies; pushes nothing unless every image built.
pub fn execute(sh: &Shell, plan: &ReleasePlan) -> Result<Vec<Released>> {
    docker::require_cli()?;
    refuse_existing_versions(plan)?;
    let built = match image::execute(sh, &plan.build) {
        Ok(built) => built,
        Err(err) => {
            untag_local(plan);
            return Err(err.context("release aborted before pushing anything"));
        }
    };
    for (done, step) in plan.pushes.iter().enumerate() {
        if let Err(err) = step.run() {
            let pushed: Vec<&str> = plan.pushes[..done]
                .iter()
                .filter_map(|s| s.args.last())
                .map(String::as_str)
                .collect();
            let pushed = if pushed.is_empty() { "none".to_owned() } else { pushed.join(", ") };
            return Err(err.context(format!(
                "push failed after {done} of {} refs (pushed: {pushed}); moving tags are pushed \
                 last, so they still name the previous release unless listed",
                plan.pushes.len()
            )));
        }
    }
    let mut released = Vec::new();
    for image in &plan.images {
        let digest_built =
            built.iter().find(|b| b.image == image.image).and_then(|b| b.digest.clone());
        released.push(verify(plan, image, digest_built.as_deref())?);
    }
    Ok(released)
}

/// Fails when the registry already holds a version tag, naming every one; any other registry
/// error (unreachable, unauthorised) stops the release too.
fn refuse_existing_versions(plan: &ReleasePlan) -> Result<()> {
    let mut existing = Vec::new();
    for (image, step) in plan.images.iter().zip(&plan.checks) {
        eprintln!("$ {step}");
        let output = step.command().output().with_context(|| format!("cannot run `{step}`"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            existing.push(image.version_ref());
        } else if !stderr.contains("not found") {
            bail!(
                "cannot look up {} in the registry: {}: check that it is up and that you are \
                 logged in (`docker login`)",
                image.version_ref(),
                last_line(&stderr)
            );
        }
    }
    if !existing.is_empty() {
        bail!(
            "{} already in the registry, and released tags are immutable: bump `version` in \
             app/pyproject.toml, or pass --force to overwrite",
            if existing.len() == 1 {
                format!("{} is", existing[0])
            } else {
                format!("{} are", existing.join(", "))
            }
        );
    }
    Ok(())
}

/// Removes the local release refs after a failed build, so a failed release leaves no tags.
fn untag_local(plan: &ReleasePlan) {
    for image in &plan.images {
        let step = docker::cli(&plan.build.step.cwd).args(["image", "rm"]).args(image.refs());
        let _ = step
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn verify(plan: &ReleasePlan, image: &ReleaseImage, built: Option<&str>) -> Result<Released> {
    let refs = image.refs();
    let mut digest: Option<String> = None;
    let mut platforms = BTreeMap::new();
    for reference in &refs {
        let step = plan
            .verifies
            .iter()
            .find(|s| s.args.last() == Some(reference))
            .expect("every ref has a verify step");
        let text = step
            .read()
            .with_context(|| format!("cannot read {reference} back from the registry"))?;
        let inspected: Value = serde_json::from_str(&text)
            .with_context(|| format!("the registry's answer for {reference} is not JSON"))?;
        let found = check_index(&inspected, &plan.revision, &plan.platforms)
            .with_context(|| format!("{reference} in the registry is not what was released"))?;
        match &digest {
            None => {
                if let Some(built) = built {
                    if built != found.digest {
                        bail!(
                            "{reference} is {} in the registry, but the build made {built}",
                            found.digest
                        );
                    }
                }
                digest = Some(found.digest.clone());
                platforms = found.platforms;
            }
            Some(first) if *first != found.digest => {
                bail!(
                    "{reference} is {} in the registry, but {} is {first}",
                    found.digest,
                    refs[0]
                );
            }
            Some(_) => {}
        }
    }
    Ok(Released {
        image: image.image,
        digest: digest.expect("a release has refs"),
        refs,
        platforms,
    })
}

/// An index as read back: its digest and each platform's manifest digest.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundIndex {
    pub digest: String,
    pub platforms: BTreeMap<String, String>,
}

/// Checks `docker buildx imagetools inspect --format '{{json .}}'` output: an index holding every
/// wanted platform, each image labelled with the release's version and revision.
pub fn check_index(
    inspected: &Value,
    revision: &Revision,
    wanted: &[Platform],
) -> Result<FoundIndex> {
    let manifest = &inspected["manifest"];
    let digest = manifest["digest"].as_str().context("no digest in the answer")?.to_owned();
    let mut platforms = BTreeMap::new();
    for entry in manifest["manifests"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let p = &entry["platform"];
        let (Some(os), Some(arch)) = (p["os"].as_str(), p["architecture"].as_str()) else {
            continue;
        };
        if os == "unknown" {
            continue; // An attestation manifest, not an image.
        }
        let mut name = format!("{os}/{arch}");
        if let Some(variant) = p["variant"].as_str() {
            name = format!("{name}/{variant}");
        }
        platforms.insert(name, entry["digest"].as_str().unwrap_or_default().to_owned());
    }
    let missing: Vec<String> =
        wanted.iter().map(ToString::to_string).filter(|p| !platforms.contains_key(p)).collect();
    if !missing.is_empty() {
        bail!("platforms missing: {} (found: {})", missing.join(", "), join_keys(&platforms));
    }
    let labels = revision.labels();
    for platform in wanted {
        let platform = platform.to_string();
        // With one image in the index, `.Image` is that image's config rather than a map.
        let image = match inspected["image"].get(&platform) {
            Some(image) => image,
            None if platforms.len() == 1 => &inspected["image"],
            None => &Value::Null,
        };
        let config = &image["config"]["Labels"];
        for key in ["org.opencontainers.image.version", "org.opencontainers.image.revision"] {
            let want = &labels.iter().find(|(k, _)| *k == key).expect("a release label").1;
            let have = config[key].as_str().unwrap_or("(none)");
            if have != want {
                bail!("{platform}: label {key} is `{have}`, expected `{want}`");
            }
        }
    }
    Ok(FoundIndex { digest, platforms })
}

fn join_keys(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        "none".to_owned()
    } else {
        map.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::parse_list;
    use crate::version::{AppVersion, rfc3339_utc};

    fn revision(version: &str, dirty: bool) -> Revision {
        Revision {
            version: AppVersion::parse(version).unwrap(),
            commit: "abcdef0123456789abcdef0123456789abcdef01".into(),
            dirty,
            created: rfc3339_utc(1_700_000_000),
            source: None,
        }
    }

    fn request(allow: Allowances) -> ReleaseRequest {
        ReleaseRequest {
            images: vec![ImageName::Db, ImageName::Server],
            registry: "127.0.0.1:5000/acme".into(),
            platforms: parse_list("linux/amd64,linux/aarch64,linux/x86_64").unwrap().0,
            builder: None,
            allow,
        }
    }

    const STABLE: Allowances = Allowances { dirty: false, overwrite: false, latest: true };

    #[test]
    fn stable_versions_get_semver_tags_and_latest_last() {
        let tags = release_tags(&revision("1.4.2", false), true);
        assert_eq!(tags.immutable, ["1.4.2", "sha-abcdef0"]);
        assert_eq!(tags.moving, ["1.4", "1", "latest"]);
        assert_eq!(release_tags(&revision("1.4.2", false), false).moving, ["1.4", "1"]);
        let post = release_tags(&revision("1.4.2.post1", false), true);
        assert_eq!(post.immutable, ["1.4.2.post1", "sha-abcdef0"]);
        assert_eq!(post.moving, ["1.4", "1", "latest"], "a post-release is stable");
    }

    #[test]
    fn prereleases_move_nothing_and_refuse_latest() {
        let tags = release_tags(&revision("2.0.0rc1", false), false);
        assert_eq!(tags.immutable, ["2.0.0rc1", "sha-abcdef0"]);
        assert!(tags.moving.is_empty());
        let err = check_revision(&revision("2.0.0rc1", false), STABLE).unwrap_err().to_string();
        assert!(err.contains("2.0.0rc1 is a pre-release") && err.contains("--no-latest"), "{err}");
        check_revision(&revision("2.0.0rc1", false), Allowances { latest: false, ..STABLE })
            .unwrap();
    }

    #[test]
    fn a_dirty_tree_is_refused_unless_allowed() {
        let err = check_revision(&revision("1.0.0", true), STABLE).unwrap_err().to_string();
        assert!(err.contains("uncommitted changes") && err.contains("--allow-dirty"), "{err}");
        check_revision(&revision("1.0.0", true), Allowances { dirty: true, ..STABLE }).unwrap();
        let tags = release_tags(&revision("1.0.0", true), true);
        assert_eq!(
            tags.immutable[1], "sha-abcdef0-dirty",
            "a dirty build never takes the clean sha tag"
        );
    }

    #[test]
    fn plan_builds_everything_before_pushing_immutable_tags_first() {
        let plan =
            plan(Utf8Path::new("/repo"), &revision("1.4.2", false), &request(STABLE)).unwrap();
        assert_eq!(
            plan.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["linux/amd64", "linux/arm64"]
        );
        let server = &plan.build.bake["target"]["server"];
        assert_eq!(server["platforms"], json!(["linux/amd64", "linux/arm64"]));
        assert_eq!(server["output"], json!(["type=image"]), "nothing is pushed by the build");
        assert_eq!(
            server["tags"],
            json!([
                "127.0.0.1:5000/acme/server:1.4.2",
                "127.0.0.1:5000/acme/server:sha-abcdef0",
                "127.0.0.1:5000/acme/server:1.4",
                "127.0.0.1:5000/acme/server:1",
                "127.0.0.1:5000/acme/server:latest"
            ])
        );
        let checks: Vec<&String> = plan.checks.iter().map(|s| s.args.last().unwrap()).collect();
        assert_eq!(checks, ["127.0.0.1:5000/acme/server:1.4.2", "127.0.0.1:5000/acme/db:1.4.2"]);
        let pushed: Vec<&str> =
            plan.pushes.iter().map(|s| s.args.last().unwrap().as_str()).collect();
        assert_eq!(
            pushed,
            [
                "127.0.0.1:5000/acme/server:1.4.2",
                "127.0.0.1:5000/acme/server:sha-abcdef0",
                "127.0.0.1:5000/acme/db:1.4.2",
                "127.0.0.1:5000/acme/db:sha-abcdef0",
                "127.0.0.1:5000/acme/server:1.4",
                "127.0.0.1:5000/acme/server:1",
                "127.0.0.1:5000/acme/server:latest",
                "127.0.0.1:5000/acme/db:1.4",
                "127.0.0.1:5000/acme/db:1",
                "127.0.0.1:5000/acme/db:latest",
            ]
        );
        assert!(plan.pushes.iter().all(|s| s.args[..2] == ["push", "--quiet"]));
        assert_eq!(plan.verifies.len(), 10, "every pushed ref is read back");
        let steps = plan.steps();
        let build_at = steps.iter().position(|s| s.args.contains(&"bake".to_owned())).unwrap();
        let first_push =
            steps.iter().position(|s| s.args.first().map(String::as_str) == Some("push")).unwrap();
        assert!(build_at < first_push);
    }

    #[test]
    fn force_skips_the_existence_check_and_every_image_is_the_default() {
        let mut request = request(Allowances { overwrite: true, ..STABLE });
        request.images.clear();
        let plan = plan(Utf8Path::new("/repo"), &revision("1.4.2", false), &request).unwrap();
        assert!(plan.checks.is_empty());
        let names: Vec<&str> = plan.images.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(names, ["server", "standalone", "db", "redis", "proxy"]);
    }

    fn inspected(platforms: &[(&str, &str)], version: &str, revision: &str) -> Value {
        let mut manifests: Vec<Value> = platforms
            .iter()
            .map(|(os, arch)| json!({"digest": format!("sha256:{arch}"), "platform": {"os": os, "architecture": arch}}))
            .collect();
        manifests.push(json!({"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}}));
        let mut image = serde_json::Map::new();
        for (os, arch) in platforms {
            image.insert(
                format!("{os}/{arch}"),
                json!({"config": {"Labels": {
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.revision": revision,
                }}}),
            );
        }
        json!({"name": "x", "manifest": {"digest": "sha256:index", "manifests": manifests}, "image": image})
    }

    #[test]
    fn a_pushed_index_must_hold_every_platform_with_the_release_labels() {
        let rev = revision("1.4.2", false);
        let wanted = parse_list("linux/amd64,linux/arm64").unwrap().0;
        let good = inspected(&[("linux", "amd64"), ("linux", "arm64")], "1.4.2", &rev.commit);
        let found = check_index(&good, &rev, &wanted).unwrap();
        assert_eq!(found.digest, "sha256:index");
        assert_eq!(found.platforms.keys().collect::<Vec<_>>(), ["linux/amd64", "linux/arm64"]);

        let one = inspected(&[("linux", "amd64")], "1.4.2", &rev.commit);
        let err = check_index(&one, &rev, &wanted).unwrap_err().to_string();
        assert_eq!(err, "platforms missing: linux/arm64 (found: linux/amd64)");

        let mut single = inspected(&[("linux", "amd64")], "1.4.2", &rev.commit);
        single["image"] = single["image"]["linux/amd64"].clone();
        let amd64 = parse_list("linux/amd64").unwrap().0;
        assert_eq!(check_index(&single, &rev, &amd64).unwrap().platforms.len(), 1);

        let stale = inspected(&[("linux", "amd64"), ("linux", "arm64")], "1.4.1", &rev.commit);
        let err = check_index(&stale, &rev, &wanted).unwrap_err().to_string();
        assert!(
            err.contains("org.opencontainers.image.version is `1.4.1`, expected `1.4.2`"),
            "{err}"
        );
    }
}
