//! `cargo xtask build`: every image rendered into one bake definition from typed Rust, so all
//! images build in one BuildKit session; then the refs and digests that came out.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use clap::ValueEnum;
use serde_json::{Map, Value, json};

use crate::docker;
use crate::plan::{Plan, Preview, Step};
use crate::platform::Platform;
use crate::version::Revision;

/// The images this repository builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ImageName {
    /// The API server alone (Dockerfile target `runtime`).
    Server,
    /// The API server with its own PostgreSQL (Dockerfile target `standalone`).
    Standalone,
    /// PostgreSQL 17 + pgvector with the schema.
    Db,
    /// Redis, for the server's optional search cache.
    Redis,
    /// nginx in front of the server (prod).
    Proxy,
    /// A throwaway OCI registry for tests and `cargo xtask ci`; never released.
    Registry,
    /// Supply-chain tools from Debian (skopeo) for tests and checks; never released.
    Tools,
}

impl ImageName {
    /// Every image of the product: what `build` and `release` take when none is named.
    pub const ALL: [ImageName; 5] = [
        ImageName::Server,
        ImageName::Standalone,
        ImageName::Db,
        ImageName::Redis,
        ImageName::Proxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageName::Server => "server",
            ImageName::Standalone => "standalone",
            ImageName::Db => "db",
            ImageName::Redis => "redis",
            ImageName::Proxy => "proxy",
            ImageName::Registry => "registry",
            ImageName::Tools => "tools",
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an image comes from: its Dockerfile and target, and its title label.
pub struct ImageSource {
    pub dockerfile: &'static str,
    pub target: &'static str,
    pub title: &'static str,
}

pub fn source(image: ImageName) -> ImageSource {
    match image {
        ImageName::Server => ImageSource {
            dockerfile: "docker/server/Dockerfile",
            target: "runtime",
            title: "memories-server",
        },
        ImageName::Standalone => ImageSource {
            dockerfile: "docker/server/Dockerfile",
            target: "standalone",
            title: "memories-standalone",
        },
        ImageName::Proxy => ImageSource {
            dockerfile: "docker/proxy/Dockerfile",
            target: "proxy",
            title: "memories-proxy",
        },
        ImageName::Redis => ImageSource {
            dockerfile: "docker/redis/Dockerfile",
            target: "redis",
            title: "memories-redis",
        },
        ImageName::Registry => ImageSource {
            dockerfile: "docker/registry/Dockerfile",
            target: "registry",
            title: "memories-registry",
        },
        ImageName::Tools => ImageSource {
            dockerfile: "docker/tools/Dockerfile",
            target: "tools",
            title: "memories-tools",
        },
        ImageName::Db => {
            ImageSource { dockerfile: "docker/db/Dockerfile", target: "db", title: "memories-db" }
        }
    }
}

/// The repository an image is named under: `<registry>/<image>`, or `memories/<image>` locally.
pub fn repository(registry: Option<&str>, image: ImageName) -> String {
    match registry {
        Some(registry) => format!("{registry}/{image}"),
        None => format!("memories/{image}"),
    }
}

/// Where built images go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// Loaded into the local image store (`type=docker`), ready for `docker run`.
    #[default]
    Load,
    /// Kept in the engine's image store as whole multi-platform indexes (`type=image`), to be
    /// pushed or saved later.
    Store,
    /// Pushed to the registry as each target finishes (`type=registry`).
    Push,
}

impl Output {
    fn exporter(self) -> &'static str {
        match self {
            Output::Load => "type=docker",
            Output::Store => "type=image",
            Output::Push => "type=registry",
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
}

#[derive(Debug)]
pub struct PlannedImage {
    pub image: ImageName,
    pub refs: Vec<String>,
}

#[derive(Debug)]
pub struct BuildPlan {
    pub images: Vec<PlannedImage>,
    pub bake: Value,
    pub metadata_file: Utf8PathBuf,
    pub step: Step,
}

impl BuildPlan {
    /// The images and their refs, for `--json`.
    pub fn images_json(&self) -> Value {
        self.images.iter().map(|i| json!({"image": i.image.as_str(), "refs": i.refs})).collect()
    }

    /// The build as a dry-run plan: the one bake, with its definition as a fact.
    pub fn to_plan(&self) -> Plan {
        let names: Vec<&str> = self.images.iter().map(|i| i.image.as_str()).collect();
        Plan::new(format!("build {}", names.join(" ")))
            .step(self.step.clone())
            .fact("images", self.images_json())
            .fact("bake", self.bake.clone())
    }
}

/// Plans a build: no side effects, so tests can assert on it without Docker.
pub fn plan(root: &Utf8Path, revision: &Revision, request: &BuildRequest) -> BuildPlan {
    let images: Vec<ImageName> = if request.images.is_empty() {
        ImageName::ALL.to_vec()
    } else {
        request.images.iter().copied().collect::<BTreeSet<_>>().into_iter().collect()
    };
    let tags = request.tags.clone().unwrap_or_else(|| revision.build_tags());
    let mut targets = Map::new();
    let mut planned = Vec::new();
    for &image in &images {
        let source = source(image);
        let repository = repository(request.registry.as_deref(), image);
        let refs: Vec<String> = tags.iter().map(|tag| format!("{repository}:{tag}")).collect();
        let mut labels: Map<String, Value> =
            revision.labels().into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
        labels.insert("org.opencontainers.image.title".into(), source.title.into());
        let mut target = json!({
            "context": ".",
            "dockerfile": source.dockerfile,
            "target": source.target,
            "tags": refs,
            "labels": labels,
            "output": [request.output.exporter()],
        });
        if let Some(platforms) = &request.platforms {
            let platforms: Vec<String> = platforms.iter().map(ToString::to_string).collect();
            target["platforms"] = platforms.into();
        }
        targets.insert(image.as_str().into(), target);
        planned.push(PlannedImage { image, refs });
    }
    let names: Vec<&str> = images.iter().map(|i| i.as_str()).collect();
    let bake = json!({ "group": { "default": { "targets": names } }, "target": targets });
    // One file per process: builds running side by side must not read each other's digests.
    let metadata_file =
        root.join(format!("target/xtask/bake-metadata-{}.json", std::process::id()));
    let mut step = docker::buildx(root, request.builder.as_deref())
        .args(["bake", "--file", "-", "--metadata-file"])
        .arg(metadata_file.as_str());
    if request.no_cache {
        step = step.arg("--no-cache");
    }
    let step = step.stdin(serde_json::to_string_pretty(&bake).expect("bake JSON serialises"));
    BuildPlan { images: planned, bake, metadata_file, step }
}

/// A built image: its refs and the digest buildx reported.
#[derive(Debug)]
pub struct Built {
    pub image: ImageName,
    pub refs: Vec<String>,
    pub digest: Option<String>,
}

/// Runs a planned build and reads the digests back from buildx's metadata file.
pub fn execute(plan: &BuildPlan) -> Result<Vec<Built>> {
    docker::require_cli()?;
    let dir = plan.metadata_file.parent().expect("metadata file has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    let _ = std::fs::remove_file(&plan.metadata_file);
    plan.step.run().map_err(docker::explain_buildx_failure).context("image build failed")?;
    let metadata = std::fs::read_to_string(&plan.metadata_file)
        .with_context(|| format!("buildx wrote no metadata to {}", plan.metadata_file))?;
    let _ = std::fs::remove_file(&plan.metadata_file);
    let metadata: Value = serde_json::from_str(&metadata).context("buildx metadata is not JSON")?;
    Ok(plan
        .images
        .iter()
        .map(|planned| Built {
            image: planned.image,
            refs: planned.refs.clone(),
            digest: metadata[planned.image.as_str()]["containerimage.digest"]
                .as_str()
                .map(str::to_owned),
        })
        .collect())
}

pub fn run(root: &Utf8Path, request: &BuildRequest, preview: Preview) -> Result<()> {
    let revision = Revision::read(root)?;
    let plan = plan(root, &revision, request);
    if preview.dry_run {
        plan.to_plan().print(preview.json);
        return Ok(());
    }
    let built = execute(&plan)?;
    if preview.json {
        let images: Vec<Value> = built
            .iter()
            .map(|b| json!({"image": b.image.as_str(), "refs": b.refs, "digest": b.digest}))
            .collect();
        out!("{:#}", json!({ "images": images }));
    } else {
        for b in &built {
            for r in &b.refs {
                out!("{r} {}", b.digest.as_deref().unwrap_or("-"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{AppVersion, rfc3339_utc};

    fn revision() -> Revision {
        Revision {
            version: AppVersion::parse("0.4.2").unwrap(),
            commit: "abcdef0123456789abcdef0123456789abcdef01".into(),
            dirty: false,
            created: rfc3339_utc(1_700_000_000),
            source: Some("https://example.com/memories.git".into()),
        }
    }

    #[test]
    fn default_plan_builds_every_image_in_one_bake_and_loads() {
        let plan = plan(Utf8Path::new("/repo"), &revision(), &BuildRequest::default());
        assert_eq!(
            plan.step.args,
            [
                "buildx",
                "bake",
                "--file",
                "-",
                "--metadata-file",
                format!("/repo/target/xtask/bake-metadata-{}.json", std::process::id()).as_str()
            ]
        );
        assert_eq!(
            plan.bake["group"]["default"]["targets"],
            json!(["server", "standalone", "db", "redis", "proxy"])
        );
        let server = &plan.bake["target"]["server"];
        assert_eq!(server["dockerfile"], "docker/server/Dockerfile");
        assert_eq!(server["target"], "runtime");
        assert_eq!(server["output"], json!(["type=docker"]));
        assert_eq!(
            server["tags"],
            json!([
                "memories/server:0.4.2",
                "memories/server:0.4.2-abcdef0",
                "memories/server:sha-abcdef0"
            ])
        );
        assert!(server.get("platforms").is_none(), "the builder's own platform by default");
        let labels = &server["labels"];
        assert_eq!(labels["org.opencontainers.image.version"], "0.4.2");
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            "abcdef0123456789abcdef0123456789abcdef01"
        );
        assert_eq!(labels["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
        assert_eq!(labels["org.opencontainers.image.source"], "https://example.com/memories.git");
        assert_eq!(labels["org.opencontainers.image.title"], "memories-server");
        assert_eq!(plan.bake["target"]["standalone"]["target"], "standalone");
        assert_eq!(plan.bake["target"]["db"]["dockerfile"], "docker/db/Dockerfile");
        let stdin: Value = serde_json::from_str(plan.step.stdin.as_deref().unwrap()).unwrap();
        assert_eq!(stdin, plan.bake, "the bake file is exactly what goes to stdin");
    }

    #[test]
    fn flags_reach_the_plan() {
        let request = BuildRequest {
            images: vec![ImageName::Db, ImageName::Server, ImageName::Db],
            platforms: Some(crate::platform::parse_list("linux/amd64,linux/aarch64").unwrap().0),
            output: Output::Push,
            tags: None,
            registry: Some("127.0.0.1:5000/acme".into()),
            builder: Some("multi".into()),
            no_cache: true,
        };
        let plan = plan(Utf8Path::new("/repo"), &revision(), &request);
        assert_eq!(plan.step.args[..4], ["buildx", "--builder", "multi", "bake"]);
        assert_eq!(plan.step.args.last().unwrap(), "--no-cache");
        assert_eq!(plan.bake["group"]["default"]["targets"], json!(["server", "db"]));
        let db = &plan.bake["target"]["db"];
        assert_eq!(db["platforms"], json!(["linux/amd64", "linux/arm64"]));
        assert_eq!(db["output"], json!(["type=registry"]));
        assert_eq!(db["tags"][0], "127.0.0.1:5000/acme/db:0.4.2");
        assert!(plan.bake["target"].get("standalone").is_none());
    }
}
