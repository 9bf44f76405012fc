//! The command line of the image tasks: `version`, `build`, `release`, `verify` and `images`,
//! and the conversion of what was given into their request values.

use clap::{Args, Subcommand};

use super::{PreviewArgs, ReadOnlyArgs, parse_registry};
use crate::image::bundle;
use crate::image::platform::PlatformList;
use crate::image::sign::KeySource;
use crate::image::{BuildRequest, Cache, ImageName, ImageParser, Output, StoreExport};
use crate::run::plan::Preview;
use crate::tasks::release::{Allowances, ReleaseRequest};

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub read_only: ReadOnlyArgs,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Images to build (docker/images.toml declares them); every released one when none is
    /// named.
    #[arg(value_parser = ImageParser)]
    pub images: Vec<ImageName>,
    /// Target platforms, comma-separated, e.g. `linux/amd64,linux/arm64`; `x86_64` and `aarch64`
    /// are accepted for amd64 and arm64. Default: the builder's own platform.
    #[arg(
        long,
        value_name = "LIST",
        value_parser = crate::image::platform::parse_list,
        env = "MEMORIES_PLATFORMS",
        hide_env_values = true
    )]
    pub platform: Option<PlatformList>,
    /// Push to the registry as well as loading into the local image store.
    #[arg(long, requires = "registry")]
    pub push: bool,
    /// Registry and namespace to name the images under, e.g. `127.0.0.1:5000/acme`.
    /// Default: local names `memories/<image>`.
    #[arg(long, value_name = "REG", value_parser = parse_registry)]
    pub registry: Option<String>,
    /// The buildx builder to use (default: `BUILDX_BUILDER`, else the current builder).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Build every step again, ignoring the build cache, with empty cache mounts of this run's
    /// own (package lists, pip's and uv's caches), as on a fresh machine; other builds' mounts
    /// stay as they are.
    #[arg(long)]
    pub no_cache: bool,
    #[arg(long, value_name = "CACHE", help = CACHE_HELP)]
    pub cache: Option<Cache>,
    #[command(flatten)]
    pub preview: PreviewArgs,
}

/// `--cache`, the same on build, release and ci.
const CACHE_HELP: &str = "Read the build cache from, and write it to, `registry=REPO` (tag \
    REPO:<image>), `local=DIR` (DIR/<image>) or `gha` (GitHub Actions, scope <image>); every \
    stage's layers (mode=max)";

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Images to release; every released one (`release = true` in docker/images.toml) when
    /// none is named.
    #[arg(value_parser = ImageParser)]
    pub images: Vec<ImageName>,
    /// Registry and namespace to push to, e.g. `ghcr.io/acme`.
    #[arg(
        long,
        value_name = "REG",
        value_parser = parse_registry,
        default_value = crate::tasks::release::DEFAULT_REGISTRY,
        env = "MEMORIES_REGISTRY",
        hide_env_values = true
    )]
    pub registry: String,
    #[command(flatten)]
    pub platforms: ReleasePlatforms,
    /// Release a work tree with uncommitted changes (tags and labels then say `-dirty`).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Overwrite a version that the registry holds from another build (never needed to finish
    /// an interrupted release: running it again does that).
    #[arg(long)]
    pub force: bool,
    /// Leave `latest` where it is (required for a pre-release, which never moves it).
    #[arg(long)]
    pub no_latest: bool,
    /// Fail unless app/pyproject.toml says this version; a release workflow passes its git
    /// tag (a leading `v` is ignored).
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<String>,
    /// The buildx builder to use (default: `BUILDX_BUILDER`, else the current builder).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    #[arg(long, value_name = "CACHE", help = CACHE_HELP)]
    pub cache: Option<Cache>,
    /// Sign every released index by digest with this cosign private key (a PEM file, or
    /// `env://NAME` for a variable holding it; its password in `COSIGN_PASSWORD`), and verify
    /// each signature when reading the release back.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<KeySource>,
    #[command(flatten)]
    pub transparency: TransparencyArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
}

/// `--platform` of what is released (and verified, saved in a bundle, checked by `doctor`):
/// both platforms unless told otherwise, or `MEMORIES_PLATFORMS` when a team set it.
#[derive(Debug, Args)]
pub struct ReleasePlatforms {
    /// The platforms, comma-separated; `x86_64` and `aarch64` are accepted for amd64 and
    /// arm64, duplicates are dropped.
    #[arg(
        long,
        value_name = "LIST",
        value_parser = crate::image::platform::parse_list,
        default_value = crate::tasks::release::DEFAULT_PLATFORMS,
        env = "MEMORIES_PLATFORMS",
        hide_env_values = true
    )]
    pub platform: PlatformList,
}

#[derive(Debug, Args)]
pub struct TransparencyArgs {
    /// Record signatures in the public transparency log (Rekor), and require an entry there
    /// when verifying: cosign's own default, off here because no log is reachable offline.
    #[arg(long)]
    pub transparency_log: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The ref to check, e.g. `ghcr.io/acme/server:1.4.2`.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The cosign public key (a PEM file such as cosign.pub, or `env://NAME`).
    #[arg(long, value_name = "PUB")]
    pub key: KeySource,
    #[command(flatten)]
    pub platforms: ReleasePlatforms,
    #[command(flatten)]
    pub transparency: TransparencyArgs,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub read_only: ReadOnlyArgs,
}

impl From<&TransparencyArgs> for crate::image::sign::Options {
    fn from(args: &TransparencyArgs) -> crate::image::sign::Options {
        crate::image::sign::Options { transparency_log: args.transparency_log }
    }
}

impl From<&VerifyArgs> for crate::image::verify::Request {
    fn from(args: &VerifyArgs) -> crate::image::verify::Request {
        crate::image::verify::Request {
            reference: args.reference.clone(),
            key: args.key.clone(),
            platforms: args.platforms.platform.0.clone(),
            options: (&args.transparency).into(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub action: ImagesAction,
}

#[derive(Debug, Subcommand)]
pub enum ImagesAction {
    /// The images of ours, as `docker/images.toml` declares them: name, whether it is
    /// released, Dockerfile and target, what it is for, e.g. `cargo xtask images list --json`.
    /// Read-only: nothing to plan.
    List {
        /// Print a JSON array on stdout instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        read_only: ReadOnlyArgs,
    },
    /// Build (from cache when nothing changed) and save images for every platform into one
    /// bundle: an OCI image layout in a tar file (skopeo, crane, `ctr import` and `docker load`
    /// read it), whose `memories-bundle.json` lists each image's refs and digest. Prints the
    /// file's SHA-256 (as `sha256sum` does), which `images load --sha256` checks.
    Save {
        /// Images to save; every released one (`release = true` in docker/images.toml) when none
        /// is named.
        #[arg(value_parser = ImageParser)]
        images: Vec<ImageName>,
        /// The bundle to write (default: `memories-<version>-<sha>.tar` in the current
        /// directory). It appears only when complete.
        #[arg(long, short, value_name = "FILE")]
        output: Option<camino::Utf8PathBuf>,
        /// The platforms to include: those released.
        #[command(flatten)]
        platforms: ReleasePlatforms,
        /// The buildx builder to use (default: `BUILDX_BUILDER`, else the current builder).
        #[arg(long, value_name = "NAME")]
        builder: Option<String>,
        /// Sign the bundle's list of refs and digests with this cosign private key (a PEM
        /// file, or `env://NAME`; its password in `COSIGN_PASSWORD`), for `images load --key`.
        #[arg(long, value_name = "KEY")]
        sign: Option<KeySource>,
        #[command(flatten)]
        transparency: TransparencyArgs,
        /// With --json, the saved manifest (refs, digests, checksum) is printed on stdout.
        #[command(flatten)]
        preview: PreviewArgs,
    },
    /// Check a bundle and only then load it: its SHA-256 against the one `images save`
    /// printed (on a private copy, so the file cannot change between the check and the load),
    /// then only the refs the bundle names, each checked for its digest afterwards. A
    /// truncated, altered or replaced bundle loads nothing.
    ///
    /// Example: `cargo xtask images load memories-0.1.0-abc1234.tar --sha256 9f86d0...`
    Load {
        /// The bundle `images save` wrote.
        file: camino::Utf8PathBuf,
        /// The SHA-256 `images save` printed (64 hex digits, `sha256:` optional).
        #[arg(long, value_name = "HASH", value_parser = bundle::Checksum::parse,
              required_unless_present = "skip_checksum")]
        sha256: Option<bundle::Checksum>,
        /// Load without checking the file's SHA-256 (a bundle you made yourself); its layout
        /// and digests are still checked.
        #[arg(long, conflicts_with = "sha256")]
        skip_checksum: bool,
        /// Load only if the bundle is signed by this cosign public key (a PEM file, or
        /// `env://NAME`): its list of refs and digests, which every loaded ref is checked
        /// against.
        #[arg(long, value_name = "PUB")]
        key: Option<KeySource>,
        #[command(flatten)]
        transparency: TransparencyArgs,
        /// With --dry-run, the bundle is still checked (it is only read); with --json, the
        /// loaded bundle's metadata (refs and digests) is printed on stdout.
        #[command(flatten)]
        preview: PreviewArgs,
    },
    /// Remove the images older commits' builds left in the local image store: the tags of
    /// our images (`memories/NAME:...`) built from another commit than this checkout's, unless a
    /// container uses them. The build cache keeps their layers, so building an older commit
    /// again stays fast. Every build leaves one set of images, and each listing of the image
    /// store slows with their number. Do not prune while `cargo xtask test` runs: the copies
    /// its tests build are other commits.
    ///
    /// Example: `cargo xtask images prune --dry-run`, then `cargo xtask images prune`
    Prune {
        /// Prune the images named under this registry and namespace (as `build --registry`
        /// names them) instead of the local names `memories/<image>`.
        #[arg(long, value_name = "REG", value_parser = parse_registry)]
        registry: Option<String>,
        /// Also remove this checkout's commit's images (those a container uses stay).
        #[arg(long)]
        all: bool,
        /// With --dry-run, what would be removed and kept is listed (the store is only read);
        /// with --json, what was removed and kept is printed on stdout.
        #[command(flatten)]
        preview: PreviewArgs,
    },
}

impl ImagesAction {
    pub fn into_request(self) -> (bundle::Action, Preview) {
        match self {
            ImagesAction::Save {
                images,
                output,
                platforms,
                builder,
                sign,
                transparency,
                preview,
            } => {
                let request = bundle::SaveRequest {
                    images,
                    platforms: platforms.platform.0,
                    builder,
                    sign,
                    signing: (&transparency).into(),
                };
                (bundle::Action::Save { request, output }, preview.into())
            }
            ImagesAction::List { json, read_only } => {
                (bundle::Action::List, Preview { dry_run: read_only.dry_run, json })
            }
            ImagesAction::Load { file, sha256, skip_checksum: _, key, transparency, preview } => {
                let checksum = sha256.unwrap_or(bundle::Checksum::Skip);
                let signing = (&transparency).into();
                (bundle::Action::Load { file, checksum, key, signing }, preview.into())
            }
            ImagesAction::Prune { registry, all, preview } => (
                bundle::Action::Prune(crate::image::prune::PruneRequest { registry, all }),
                preview.into(),
            ),
        }
    }
}

impl From<&BuildArgs> for BuildRequest {
    fn from(args: &BuildArgs) -> BuildRequest {
        BuildRequest {
            images: args.images.clone(),
            platforms: args.platform.clone().map(|list| list.0),
            output: if args.push { Output::Push } else { Output::Store },
            tags: None,
            registry: args.registry.clone(),
            builder: args.builder.clone(),
            no_cache: args.no_cache,
            cache: args.cache.clone(),
            // A developer's push moves the build tags of the commit, as `docker push` did;
            // only releases hold their tags immutable.
            overwrite: true,
            // Decided by `image::task`, from the builder and the environment.
            store: StoreExport::Load,
            cache_space: None,
        }
    }
}

impl From<&ReleaseArgs> for ReleaseRequest {
    fn from(args: &ReleaseArgs) -> ReleaseRequest {
        ReleaseRequest {
            images: args.images.clone(),
            registry: args.registry.clone(),
            platforms: args.platforms.platform.0.clone(),
            builder: args.builder.clone(),
            allow: Allowances {
                dirty: args.allow_dirty,
                overwrite: args.force,
                latest: !args.no_latest,
            },
            expect_version: args.expect_version.clone(),
            sign: args.sign.clone(),
            signing: (&args.transparency).into(),
            cache: args.cache.clone(),
            // From the environment, in `release::task`.
            cache_space: None,
        }
    }
}
