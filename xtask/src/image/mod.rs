//! `cargo xtask build`: every image of the catalogue (`docker/images.toml`, see
//! [`crate::image::catalogue`]) rendered into one bake definition, so all images build in one BuildKit
//! session; then the refs and digests that came out.

pub mod bundle;
pub mod catalogue;
mod noop;
pub mod platform;
pub mod prune;
pub mod sign;
pub mod verify;
pub mod version;

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Map, Value, json};

use crate::image::platform::Platform;
use crate::image::version::{Revision, rfc3339_utc};
use crate::oci;
use crate::run::docker;
use crate::run::interrupt::{self, Interrupted};
use crate::run::label::{RunDir, RunId};
use crate::run::plan::{Plan, Step, Stream, Streams, Task};
use crate::run::term;

pub use crate::image::catalogue::{ImageName, ImageParser, load as load_catalogue};
pub use crate::oci::PlatformImage;

/// Where an image comes from: its Dockerfile and target, and its title label.
pub struct ImageSource {
    pub dockerfile: &'static str,
    pub target: &'static str,
    pub title: String,
}

/// What the catalogue (`docker/images.toml`) says an image is built from.
pub fn source(image: ImageName) -> ImageSource {
    let entry = image.entry();
    ImageSource {
        dockerfile: &entry.dockerfile,
        target: &entry.target,
        title: format!("memories-{image}"),
    }
}

/// `cargo xtask images list`: the catalogue, as a table or (with `json`) a JSON array.
pub fn list(json: bool) {
    let images = ImageName::all();
    if json {
        let listed: Vec<Value> = images
            .iter()
            .map(|image| {
                let entry = image.entry();
                json!({
                    "name": entry.name,
                    "release": entry.release,
                    "dockerfile": entry.dockerfile,
                    "target": entry.target,
                    "inputs": entry.inputs,
                    "platforms": if entry.build_platform_only { "build" } else { "requested" },
                    "about": entry.about,
                })
            })
            .collect();
        out!("{}", Value::from(listed));
        return;
    }
    out!("{:<12} {:<8} {:<28} {:<12} about", "image", "release", "dockerfile", "target");
    for image in images {
        let entry = image.entry();
        let release = if entry.release { "yes" } else { "no" };
        out!(
            "{:<12} {:<8} {:<28} {:<12} {}",
            entry.name,
            release,
            entry.dockerfile,
            entry.target,
            entry.about
        );
    }
}

/// The repository an image is named under: `<registry>/<image>`, or `memories/<image>` locally.
pub fn repository(registry: Option<&str>, image: ImageName) -> String {
    match registry {
        Some(registry) => format!("{registry}/{image}"),
        None => format!("memories/{image}"),
    }
}

/// How reproducible builds, and every cache export, compress layers: zstd, forced.
///
/// BuildKit reuses a layer's compressed blob when it has one of the asked type, whatever level
/// made it, so with gzip a layer first exported by a user's own `docker buildx build` (gzip at
/// its default level) would keep that blob, and the digest would depend on the cache. Nothing
/// else here makes zstd blobs, and `force-compression` converts every other layer (the base
/// image's too) from its content, so the same layers give the same blobs on any machine. A
/// converted blob is kept: the next export of a cached layer only writes it. The cache exports
/// compress alike, so an image export reuses the blobs a cache import brought and the other
/// way round, with no layer compressed twice. Pulling zstd layers takes Docker Engine 23 or
/// later.
const COMPRESSION: &str = "compression=zstd,compression-level=3,force-compression=true";

/// How dev builds (`type=docker`) store new layers: uncompressed. Their images go from BuildKit
/// to the local image store and no further, so compressing a layer only to unpack it at once is
/// waste: gzip took 12.8 s of a fresh db image's 15.9 s export. The store keeps each new layer's
/// tar beside its unpacked snapshot (the base image's layers stay as pulled). Reproducible
/// builds convert from the layers' content ([`COMPRESSION`]), so they are not affected.
const DEV_COMPRESSION: &str = "compression=uncompressed";

/// Where built images go.
///
/// Reproducible builds reach the store straight from BuildKit or through OCI layouts that
/// `docker load` takes in unchanged (same index, same digests), as [`StoreExport`] says; pushes
/// go through an OCI archive. The layers' file times are the Dockerfiles' own (every file dated
/// 2000-01-01, held by a repository check), and their compression ([`COMPRESSION`]) does not
/// depend on which build compressed a layer first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// Loaded into the local image store (`type=docker`), ready for `docker run`: the fast path
    /// of the dev loop, with the build's own file times and uncompressed layers
    /// ([`DEV_COMPRESSION`]).
    #[default]
    Load,
    /// Reproducible: whole multi-platform indexes in the engine's image store, to be pushed or
    /// saved later.
    Store,
    /// Reproducible, pushed from each archive to the registry under every ref (blobs on a few
    /// upload threads, each request retried on its own); not loaded.
    Push,
}

impl Output {
    /// The exporter of one image; `export` is where a reproducible build writes it: an OCI
    /// layout directory on its way into the store, an OCI archive on its way to a registry.
    fn exporter(self, store: StoreExport, export: &Utf8Path) -> String {
        match (self, store) {
            (Output::Load, _) => format!("type=docker,{DEV_COMPRESSION}"),
            (Output::Store, StoreExport::Direct) => {
                format!("type=image,oci-mediatypes=true,{COMPRESSION}")
            }
            (Output::Store, StoreExport::Load) => {
                format!("type=oci,tar=false,dest={export},{COMPRESSION}")
            }
            (Output::Push, _) => format!("type=oci,dest={export},{COMPRESSION}"),
        }
    }
}

/// How a reproducible build reaches the image store ([`Output::Store`]). Both give the same
/// images: the same manifest, config and layers for each platform (`tests/tests/images.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreExport {
    /// Through the client: BuildKit writes every image into one OCI layout in a directory of
    /// this run (a layer they share is written once), and one `docker load` takes them all in
    /// ([`oci::Loadable`]). Works with any builder and store.
    #[default]
    Load,
    /// Straight from BuildKit into the store (`type=image`), asked for with
    /// `MEMORIES_STORE_EXPORT=direct` where the builder is the engine's own over the containerd
    /// image store ([`docker::builds_into_store`]): nothing is sent to the client and loaded
    /// again, which was most of a warm build (every image for amd64 from a warm registry
    /// cache: the bake 14.3 s and the loads 5.8 s through an archive per image, the bake 5.0 s
    /// straight). Not the default: the engine (26.1 here) holds the build cache of every
    /// image exported so until it restarts, and `docker builder prune --all` frees none of it
    /// (94 GB after a day of builds on one machine, all freed after a restart). The bake
    /// reports each image's index digest only; its platforms are read from the store when
    /// asked for ([`execute_described`]).
    Direct,
}

impl StoreExport {
    /// The way `MEMORIES_STORE_EXPORT` asks for: [`Load`] unless it says `direct`, which
    /// `builder` (the current one when `None`) must be able to take.
    ///
    /// [`Load`]: StoreExport::Load
    pub fn detect(root: &Utf8Path, builder: Option<&str>) -> Result<StoreExport> {
        let value = std::env::var(STORE_EXPORT_VAR).unwrap_or_default();
        match value.as_str() {
            "" | "load" => Ok(StoreExport::Load),
            "direct" if docker::builds_into_store(root, builder) => Ok(StoreExport::Direct),
            "direct" => bail!(
                "{STORE_EXPORT_VAR}=direct needs the engine's own builder (buildx's `docker` \
                 driver of the current context) over the containerd image store: unset it to \
                 build through `docker load`"
            ),
            _ => bail!(
                "{STORE_EXPORT_VAR}={value} is not a way to export: use `direct` or `load` (the \
                 default)"
            ),
        }
    }
}

/// `direct`: reproducible builds into the store go straight from BuildKit where the builder
/// can ([`StoreExport::Direct`]); `load` (the default): through the client and `docker load`
/// ([`StoreExport::Load`]).
pub const STORE_EXPORT_VAR: &str = "MEMORIES_STORE_EXPORT";

/// A name that keeps a build's cache apart: every step of a stage that declares `CACHE_SPACE`
/// (all the package and dependency work, and the cache mounts it uses) meets only the cache of
/// builds with the same name. Benchmarks set it so that a build "from an empty cache" meets
/// none of the cache that images built straight into the store hold (a prune leaves that).
pub const CACHE_SPACE_VAR: &str = "MEMORIES_CACHE_SPACE";

/// [`CACHE_SPACE_VAR`], checked: lowercase letters, digits and dashes, at most 40.
pub fn cache_space_from_env() -> Result<Option<String>> {
    let Ok(space) = std::env::var(CACHE_SPACE_VAR) else { return Ok(None) };
    if space.is_empty() {
        return Ok(None);
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if space.len() > 40 || !space.chars().all(allowed) {
        bail!(
            "{CACHE_SPACE_VAR}={space} is not a cache space: use at most 40 lowercase letters, \
             digits and dashes"
        );
    }
    Ok(Some(space))
}

/// Where BuildKit's cache lives between machines (`--cache`): read before a build
/// (`cache-from`) and written after it (`cache-to`, `mode=max`: every stage's layers), one
/// scope per image, so that a fresh CI runner builds from what the last run left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cache {
    /// `registry=REPO`: the tag `REPO:<image>` holds each image's cache.
    Registry(String),
    /// `local=DIR`: the directory `DIR/<image>` holds each image's cache.
    Local(Utf8PathBuf),
    /// `gha`: the GitHub Actions cache, scope `<image>` (buildx takes the cache service's URL
    /// and token from `ACTIONS_CACHE_URL` and `ACTIONS_RUNTIME_TOKEN`).
    Gha,
}

impl std::str::FromStr for Cache {
    type Err = String;

    fn from_str(raw: &str) -> Result<Cache, String> {
        let usage = "use `registry=REPO` (e.g. registry=ghcr.io/acme/cache), `local=DIR` or `gha`";
        match raw.split_once('=') {
            None if raw == "gha" => Ok(Cache::Gha),
            Some(("registry", repo)) if !repo.is_empty() => {
                if repo.contains(',') || repo.rsplit('/').next().is_some_and(|l| l.contains(':')) {
                    return Err(format!(
                        "`{repo}` is not a repository: give it without a tag (each image gets its \
                         own tag), e.g. registry=ghcr.io/acme/cache"
                    ));
                }
                Ok(Cache::Registry(repo.to_owned()))
            }
            Some(("local", dir)) if !dir.is_empty() && !dir.contains(',') => {
                // Relative to where the command was typed, not to the repository root that
                // buildx runs in.
                let dir = Utf8PathBuf::from(dir);
                if dir.is_absolute() {
                    return Ok(Cache::Local(dir));
                }
                let cwd = std::env::current_dir()
                    .ok()
                    .and_then(|cwd| Utf8PathBuf::try_from(cwd).ok())
                    .ok_or(
                        "the current directory cannot be read: give local=DIR as an absolute path",
                    )?;
                Ok(Cache::Local(cwd.join(dir)))
            }
            _ => Err(format!("`{raw}` is not a cache: {usage}")),
        }
    }
}

impl fmt::Display for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cache::Registry(repo) => write!(f, "registry={repo}"),
            Cache::Local(dir) => write!(f, "local={dir}"),
            Cache::Gha => f.write_str("gha"),
        }
    }
}

impl Cache {
    /// The `cache-from` and `cache-to` entries of one image. A local cache is read only when it
    /// exists: buildx would warn about a missing one, and a first run has none.
    pub fn entries(&self, image: ImageName) -> (Vec<String>, Vec<String>) {
        match self {
            Cache::Registry(repo) => {
                let reference = format!("{repo}:{image}");
                (
                    vec![format!("type=registry,ref={reference}")],
                    vec![format!(
                        "type=registry,ref={reference},mode=max,image-manifest=true,\
                         oci-mediatypes=true,{COMPRESSION}"
                    )],
                )
            }
            Cache::Local(dir) => {
                let dir = dir.join(image.as_str());
                let from = if dir.join("index.json").is_file() {
                    vec![format!("type=local,src={dir}")]
                } else {
                    Vec::new()
                };
                (from, vec![format!("type=local,dest={dir},mode=max,{COMPRESSION}")])
            }
            Cache::Gha => (
                vec![format!("type=gha,scope={image}")],
                vec![format!("type=gha,scope={image},mode=max,{COMPRESSION}")],
            ),
        }
    }
}

/// What to build, independent of how the command line spelled it.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub images: Vec<ImageName>,
    pub platforms: Option<Vec<Platform>>,
    pub output: Output,
    /// The tags each image gets; `None` for the build tags of the revision.
    pub tags: Option<Vec<String>>,
    pub registry: Option<String>,
    pub builder: Option<String>,
    pub no_cache: bool,
    /// Where to read the build cache from and write it to, beyond the builder's own.
    pub cache: Option<Cache>,
    /// Pushes may replace a tag that names another image (`release --force`); otherwise each
    /// tag is read just before it is written and such a tag is refused.
    pub overwrite: bool,
    /// How an [`Output::Store`] build reaches the store.
    pub store: StoreExport,
    /// See [`CACHE_SPACE_VAR`]; `--no-cache` gives the run one of its own.
    pub cache_space: Option<String>,
}

#[derive(Debug)]
pub struct PlannedImage {
    pub image: ImageName,
    pub refs: Vec<String>,
    /// Where a reproducible build writes it before it is loaded or pushed: the build's one
    /// OCI layout directory ([`Output::Store`]) or an OCI archive of its own ([`Output::Push`]);
    /// none when it goes straight into the store.
    pub export: Option<Utf8PathBuf>,
}

#[derive(Debug)]
pub struct BuildPlan {
    pub images: Vec<PlannedImage>,
    pub bake: Value,
    pub metadata_file: Utf8PathBuf,
    pub step: Step,
    pub output: Output,
    /// The run's directory for the layouts or archives of a reproducible build not exported
    /// straight into the store (removed afterwards).
    pub exports: Option<Utf8PathBuf>,
    /// The one `docker load` of the build's layout, after the bake ([`Output::Store`] through
    /// the client): its stdin is that layout, each image named by its refs ([`oci::Loadable`]).
    pub load: Option<Step>,
    /// Each archive and the refs it is pushed as, after the bake ([`Output::Push`]).
    pub pushes: Vec<(Utf8PathBuf, Vec<String>)>,
    /// See [`BuildRequest::overwrite`].
    pub overwrite: bool,
    pub root: Utf8PathBuf,
    /// The SBOM generator's own build, first, for a reproducible build; its ref is this run's
    /// alone (so builds side by side never name one image at once) and is removed afterwards.
    pub generator: Option<Box<BuildPlan>>,
}

/// The prefix of a build's directory of layouts or archives in `target/xtask`.
const EXPORTS_PREFIX: &str = "exports-";

/// The one OCI layout in a build's exports directory that images on their way into the store
/// are written to.
const LAYOUT: &str = "layout";

impl BuildPlan {
    /// The images and their refs, for `--json`.
    pub fn images_json(&self) -> Value {
        self.images.iter().map(|i| json!({"image": i.image.as_str(), "refs": i.refs})).collect()
    }

    /// What builds the images, in order: the SBOM generator's build, the one bake, the loads.
    pub fn build_steps(&self) -> Vec<Step> {
        let generator = self.generator.iter().map(|g| g.step.clone());
        generator.chain([self.step.clone()]).chain(self.load.iter().cloned()).collect()
    }

    /// The build as a dry-run plan: the one bake (with its definition as a fact), then the
    /// load or pushes of a reproducible build.
    pub fn to_plan(&self) -> Plan {
        let names: Vec<&str> = self.images.iter().map(|i| i.image.as_str()).collect();
        let mut plan = Plan::new(format!("build {}", names.join(" "))).steps(self.build_steps());
        if let (Some(_), Some(exports)) = (&self.load, &self.exports) {
            plan = plan.note(format!(
                "`docker load` reads the images from the OCI layout {exports}/{LAYOUT}, each \
                 named by its refs"
            ));
        }
        plan.requests(self.pushes.iter().map(|(archive, refs)| oci::push_request(archive, refs)))
            .fact("images", self.images_json())
            .fact("bake", self.bake.clone())
    }
}

/// Plans a build: no side effects, so tests can assert on it without Docker.
pub fn plan(root: &Utf8Path, revision: &Revision, request: &BuildRequest) -> BuildPlan {
    let images: Vec<ImageName> = if request.images.is_empty() {
        ImageName::released()
    } else {
        request.images.iter().copied().collect::<BTreeSet<_>>().into_iter().collect()
    };
    let tags = request.tags.clone().unwrap_or_else(|| revision.build_tags());
    let reproducible = request.output != Output::Load;
    let direct = request.output == Output::Store && request.store == StoreExport::Direct;
    // Into the store through one layout and `docker load` ([`StoreExport::Load`]).
    let loaded = request.output == Output::Store && !direct;
    let exports = (reproducible && !direct)
        .then(|| RunDir::planned(&root.join("target/xtask"), EXPORTS_PREFIX));
    let generator = reproducible.then(|| {
        let run = RunId::name_of_this_process();
        let request = BuildRequest {
            images: vec![ImageName::SBOM],
            tags: Some(vec![revision.build_tags()[1].clone()]),
            registry: Some(format!("memories/run-{run}")),
            builder: request.builder.clone(),
            cache: request.cache.clone(),
            cache_space: request.cache_space.clone(),
            ..BuildRequest::default()
        };
        Box::new(plan(root, revision, &request))
    });
    let generator_ref = generator.as_ref().map(|g| g.images[0].refs[0].clone());
    let builder = request.builder.as_deref();
    let cache_space =
        request.no_cache.then(RunId::name_of_this_process).or_else(|| request.cache_space.clone());
    let mut targets = Map::new();
    let mut planned = Vec::new();
    for &image in &images {
        let source = source(image);
        let repository = repository(request.registry.as_deref(), image);
        let refs: Vec<String> = tags.iter().map(|tag| format!("{repository}:{tag}")).collect();
        let epoch = revision.epoch_of(image);
        let mut labels: Map<String, Value> =
            revision.labels().into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
        labels.insert("org.opencontainers.image.title".into(), source.title.clone().into());
        labels.insert("org.opencontainers.image.created".into(), rfc3339_utc(epoch).into());
        // One layout for every image on its way into the store: an export finds the layers
        // another wrote there already and skips them.
        let export = exports.as_ref().map(|dir| match request.output {
            Output::Push => dir.join(format!("{image}.tar")),
            _ => dir.join(LAYOUT),
        });
        let exporter =
            request.output.exporter(request.store, export.as_deref().unwrap_or(Utf8Path::new("")));
        // BuildKit's own build argument: the image config's times (files are dated by the
        // Dockerfiles). No stage declares it, so it never reaches a `RUN` step's environment
        // or cache key. It is the image's own epoch, not the commit's: an image whose inputs
        // did not change keeps its layers, so a deploy keeps it running.
        let mut target = json!({
            "context": ".",
            "dockerfile": source.dockerfile,
            "target": source.target,
            "tags": refs,
            "labels": labels,
            "args": { "SOURCE_DATE_EPOCH": epoch.to_string() },
            "output": [exporter],
        });
        // `--no-cache` builds as a fresh machine does: the Dockerfiles name their cache mounts
        // with `CACHE_SPACE` appended, so this run's mounts start empty and no other build's
        // are touched. Only build stages declare it; no image's files or config depend on it.
        if let Some(space) = &cache_space {
            target["args"]["CACHE_SPACE"] = format!("-{space}").into();
        }
        if let Some(generator) = &generator_ref {
            target["attest"] =
                json!(["type=provenance,mode=max", format!("type=sbom,generator={generator}")]);
        }
        // An image for this machine (the catalogue's `platforms = "build"`) is built for the
        // builder's own platform, whatever was asked.
        let requested = request.platforms.as_ref().filter(|_| !image.entry().build_platform_only);
        if let Some(platforms) = requested {
            let platforms: Vec<String> = platforms.iter().map(ToString::to_string).collect();
            target["platforms"] = platforms.into();
        }
        if let Some(cache) = &request.cache {
            let (from, to) = cache.entries(image);
            target["cache-from"] = from.into();
            target["cache-to"] = to.into();
        }
        targets.insert(image.as_str().into(), target);
        planned.push(PlannedImage { image, refs, export });
    }
    let names: Vec<&str> = images.iter().map(|i| i.as_str()).collect();
    let bake = json!({ "group": { "default": { "targets": names } }, "target": targets });
    // One file per process: builds running side by side must not read each other's digests.
    let metadata_file =
        root.join(format!("target/xtask/bake-metadata-{}.json", std::process::id()));
    // Images on their way into the store are written to one layout, and a layer several of
    // them share is written by one export while the others wait for its lock, then find it
    // there. buildx logs each wait as `ERROR: (*service).Write failed: ... locked for ...`,
    // though nothing failed. Only its log is quieted; a failed build still says why and exits
    // non-zero.
    let mut step = if loaded {
        docker::cli(root).args(["--log-level", "fatal"]).args(docker::buildx_args(builder))
    } else {
        docker::buildx(root, builder)
    };
    step = step.args(["bake", "--file", "-", "--metadata-file"]).arg(metadata_file.as_str());
    if request.no_cache {
        step = step.arg("--no-cache");
    }
    let step = step.stdin(serde_json::to_string_pretty(&bake).expect("bake JSON serialises"));
    let exported = planned.iter().filter_map(|p| Some((p.export.clone()?, p.refs.clone())));
    let load = loaded.then(|| docker::cli(root).args(["load", "--quiet"]));
    let pushes = match request.output {
        Output::Push => exported.collect(),
        Output::Load | Output::Store => Vec::new(),
    };
    BuildPlan {
        images: planned,
        bake,
        metadata_file,
        step,
        output: request.output,
        exports,
        load,
        pushes,
        overwrite: request.overwrite,
        root: root.to_owned(),
        generator,
    }
}

/// The context of a build's error once every image was built and a push failed: some images
/// or refs may be in the registry already.
#[derive(Debug)]
pub struct PushCutShort;

impl fmt::Display for PushCutShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("every image was built, but the push was cut short")
    }
}

/// A built image: its refs, the digest buildx reported and, for a reproducible build, what
/// each platform's manifest is.
#[derive(Debug)]
pub struct Built {
    pub image: ImageName,
    pub refs: Vec<String>,
    pub digest: Option<String>,
    /// Empty for an image built straight into the store, until [`execute_described`] reads
    /// them.
    pub platforms: Vec<PlatformImage>,
}

/// Runs a planned build and reads the digests back from buildx's metadata file; a
/// reproducible build's layout is then loaded into the image store, or for [`Output::Push`]
/// its archives pushed to the registry instead, and removed whatever happens. An image
/// built straight into the store ([`StoreExport::Direct`]) comes without its platforms.
pub fn execute(plan: &BuildPlan) -> Result<Vec<Built>> {
    execute_as(plan, false)
}

/// [`execute`], with every image's platforms: those the bake did not report are read from
/// the store.
pub fn execute_described(plan: &BuildPlan) -> Result<Vec<Built>> {
    execute_as(plan, true)
}

fn execute_as(plan: &BuildPlan, described: bool) -> Result<Vec<Built>> {
    docker::require_cli()?;
    let fingerprints = noop::fingerprints(plan)?;
    if let Some(mut built) = noop::reuse(plan, &fingerprints)? {
        let names: Vec<&str> = plan.images.iter().map(|i| i.image.as_str()).collect();
        say!(
            "nothing that reaches {} changed since it was built, and the image store holds \
             every ref with the digest built then: nothing to build (--no-cache builds anyway)",
            names.join(", ")
        );
        if described && describe_from_store(&plan.root, &mut built)? {
            noop::record(plan, &fingerprints, &built)?;
        }
        return Ok(built);
    }
    let mut built = build(plan)?;
    if described {
        describe_from_store(&plan.root, &mut built)?;
    }
    // A file changed while the build ran may or may not be in it: kept only when the inputs
    // are the ones fingerprinted before.
    if noop::fingerprints(plan)? == fingerprints {
        noop::record(plan, &fingerprints, &built)?;
    }
    Ok(built)
}

/// Reads the platforms of the images in `built` that lack them from the store: `docker save`
/// of each image by the digest the build reported (its id in the containerd store), not by a
/// tag, which another build of the same commit may move meanwhile (a dev stack's build tags
/// the same names), into this run's directory, then each index. An image gone from the store
/// since is an error, never another image's platforms. Returns whether it read any (every
/// image has one platform at least, so an empty list means unread).
fn describe_from_store(root: &Utf8Path, built: &mut [Built]) -> Result<bool> {
    let mut wanted: Vec<&mut Built> = built.iter_mut().filter(|b| b.platforms.is_empty()).collect();
    if wanted.is_empty() {
        return Ok(false);
    }
    let mut digests = Vec::new();
    for image in &wanted {
        let digest = image.digest.clone().with_context(|| {
            format!(
                "the build reported no digest for {}, so its platforms are unknown",
                image.image
            )
        })?;
        digests.push(digest);
    }
    let dir = RunDir::new(&root.join("target/xtask"), SAVED_PREFIX)?;
    let archive = dir.path().join("images.tar");
    let save = bundle::save_step(root, &archive, digests.iter().cloned());
    save.run().context("cannot read the built images' platforms from the image store")?;
    let layout = oci::Archive::open(&archive)?;
    for (image, digest) in wanted.iter_mut().zip(&digests) {
        image.platforms = oci::platform_images_in(&layout, digest)
            .with_context(|| format!("cannot read the platforms of {} ({digest})", image.image))?;
    }
    Ok(true)
}

/// The prefix of the run directory [`describe_from_store`] saves images into.
const SAVED_PREFIX: &str = "saved-";

fn build(plan: &BuildPlan) -> Result<Vec<Built>> {
    let dir = plan.metadata_file.parent().expect("metadata file has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    let _generator = match &plan.generator {
        Some(generator) => {
            execute(generator).context("cannot build the SBOM generator")?;
            Some(Untag { root: &plan.root, refs: &generator.images[0].refs })
        }
        None => None,
    };
    let exports = match &plan.exports {
        Some(planned) => {
            let made = RunDir::new(dir, EXPORTS_PREFIX)?;
            assert_eq!(made.path(), planned, "the export directory is the planned one");
            Some(made)
        }
        None => None,
    };
    let _ = std::fs::remove_file(&plan.metadata_file);
    plan.step.run().map_err(docker::explain_buildx_failure).context("image build failed")?;
    let metadata = std::fs::read_to_string(&plan.metadata_file)
        .with_context(|| format!("buildx wrote no metadata to {}", plan.metadata_file))?;
    let _ = std::fs::remove_file(&plan.metadata_file);
    let metadata: Value = serde_json::from_str(&metadata).context("buildx metadata is not JSON")?;
    let digest_of = |image: ImageName| {
        metadata[image.as_str()]["containerimage.digest"].as_str().map(str::to_owned)
    };
    let mut platforms = Vec::new();
    let mut loaded = Vec::new();
    for planned in &plan.images {
        let Some(export) = &planned.export else { continue };
        let read = match plan.output {
            Output::Push => oci::platform_images(&oci::Archive::open(export)?),
            _ => {
                let digest = digest_of(planned.image).with_context(|| {
                    format!("the build reported no digest for {}", planned.image)
                })?;
                let read = oci::platform_images_in(&oci::LayoutDir::new(export), &digest);
                loaded.push((digest, planned.refs.as_slice()));
                read
            }
        };
        platforms.push(read.with_context(|| format!("cannot read {}'s export", planned.image))?);
    }
    if let (Some(load), Some(export)) =
        (&plan.load, plan.images.iter().find_map(|i| i.export.as_ref()))
    {
        load_layout(load, &oci::LayoutDir::new(export), &loaded)
            .context("cannot load the built images into the image store")?;
    }
    if !plan.pushes.is_empty() {
        let remote = oci::Registry::new(&plan.root);
        for (planned, (archive, refs)) in plan.images.iter().zip(&plan.pushes) {
            let pushed = remote
                .push_archive(archive, refs, plan.overwrite)
                .with_context(|| format!("cannot push {} as {}", planned.image, refs.join(", ")))
                .context(PushCutShort)?;
            if let Some(built) = digest_of(planned.image).filter(|built| *built != pushed) {
                bail!("{} was built as {built} but its archive holds {pushed}", planned.image);
            }
            say!("pushed {} as {} ({pushed})", planned.image, refs.join(", "));
        }
    }
    drop(exports);
    let mut platforms = platforms.into_iter();
    Ok(plan
        .images
        .iter()
        .map(|planned| Built {
            image: planned.image,
            refs: planned.refs.clone(),
            digest: digest_of(planned.image),
            platforms: platforms.next().unwrap_or_default(),
        })
        .collect())
}

/// Runs `load` (`docker load`) with the `images` (each an index digest and its refs) of the
/// build's `layout` on its stdin, each named by its refs ([`oci::Loadable`]): every manifest is
/// checked and every blob opened before it starts. A failure or Ctrl-C while streaming ends
/// its stdin early, so it loads nothing.
fn load_layout(load: &Step, layout: &oci::LayoutDir, images: &[(String, &[String])]) -> Result<()> {
    let loadable = oci::Loadable::read(layout, images)?;
    let streams = Streams { stdin: Stream::Piped, stdout: Stream::Null, stderr: Stream::Inherit };
    let mut loading = load.spawn(streams)?;
    let stdin = loading.stdin().expect("stdin is piped");
    let what = format!("loading {}", term::count(images.len(), "image"));
    let streamed = loadable.write(stdin, &what);
    let status = loading.wait()?;
    if interrupt::is_set() {
        return Err(Interrupted.into());
    }
    // A load that stopped reading closed the pipe: its own error says why, ours would not.
    match streamed {
        Err(e) if status.success() || e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot stream the images' layout to `docker load`")
        }
        _ if !status.success() => bail!("`docker load` failed (its error is above)"),
        _ => Ok(()),
    }
}

/// Removes local tags when dropped.
struct Untag<'a> {
    root: &'a Utf8Path,
    refs: &'a [String],
}

impl Drop for Untag<'_> {
    fn drop(&mut self) {
        let step = docker::cli(self.root).args(["image", "rm"]).args(self.refs).quiet();
        let _ = step.capture();
    }
}

/// `cargo xtask build`: the build of this revision that `request` asks for.
pub fn task(root: &Utf8Path, request: &BuildRequest) -> Result<BuildPlan> {
    let revision = Revision::read(root)?;
    let mut request = request.clone();
    request.cache_space = cache_space_from_env()?;
    if request.output == Output::Store {
        request.store = StoreExport::detect(root, request.builder.as_deref())?;
    }
    Ok(plan(root, &revision, &request))
}

impl Task for BuildPlan {
    fn plan(&self) -> Result<Plan> {
        Ok(self.to_plan())
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let built = if json { execute_described(&self)? } else { execute(&self)? };
        print_built(&built, json);
        Ok(())
    }
}

/// What a build made: refs and digests, as lines or as JSON.
fn print_built(built: &[Built], json: bool) {
    if json {
        let images: Vec<Value> = built
            .iter()
            .map(|b| {
                let platforms: Vec<Value> = b.platforms.iter().map(PlatformImage::to_json).collect();
                json!({"image": b.image.as_str(), "refs": b.refs, "digest": b.digest, "platforms": platforms})
            })
            .collect();
        out!("{:#}", json!({ "images": images }));
    } else {
        for b in built {
            for r in &b.refs {
                out!("{r} {}", b.digest.as_deref().unwrap_or("-"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
