//! The command line: every task and flag, with doc comments as the only help text.

use std::fmt;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::platform::PlatformList;
use crate::wait::Probe;

/// Typed build-and-ship tasks for the memories service.
///
/// Every task plans first and then runs; `--dry-run` prints the plan and runs nothing.
/// Progress and echoed commands go to stderr; results go to stdout (JSON with `--json`).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the app version, the git revision and the image tags derived from them.
    Version(VersionArgs),
    /// Build the images (all, or the named ones) in one buildx bake session.
    Build(BuildArgs),
    /// Wait until services are ready: ports, HTTP endpoints, databases, containers, logs.
    ///
    /// Exit status: 0 when ready, 124 on timeout, 1 when a probe failed for good (an unhealthy
    /// or exited container, a refused password), 2 for a bad spec.
    #[command(after_help = crate::wait::spec::FORMS)]
    WaitFor(WaitForArgs),
    /// Measure a task against its peer in the same run and print the ratio.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct WaitForArgs {
    /// What to wait for, e.g. `tcp://127.0.0.1:5432` or `http://127.0.0.1:8283/v1/health`.
    #[arg(required = true, value_name = "PROBE", value_parser = parse_probe)]
    pub probes: Vec<Probe>,
    /// The one deadline for all probes (e.g. 500ms, 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = crate::wait::parse_duration)]
    pub timeout: Duration,
    /// The longest pause between two attempts of one probe.
    #[arg(long, default_value = "25ms", value_parser = crate::wait::parse_duration)]
    pub max_interval: Duration,
    /// Done when any probe is ready, instead of all.
    #[arg(long)]
    pub any: bool,
    /// Print the result as JSON on stdout: per probe, when it was ready, attempts, last error.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on stderr but errors.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_probe(raw: &str) -> Result<Probe, String> {
    Probe::parse(raw).map_err(|e| format!("{e}\n\n{}", crate::wait::spec::FORMS))
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Images to build; all of them when none is named.
    #[arg(value_enum)]
    pub images: Vec<ImageName>,
    /// Target platforms, comma-separated, e.g. `linux/amd64,linux/arm64`; `x86_64` and `aarch64`
    /// are accepted for amd64 and arm64. Default: the builder's own platform.
    #[arg(long, value_name = "LIST", value_parser = crate::platform::parse_list)]
    pub platform: Option<PlatformList>,
    /// Push to the registry instead of loading into the local image store.
    #[arg(long, requires = "registry")]
    pub push: bool,
    /// Registry and namespace to name the images under, e.g. `127.0.0.1:5000/acme`.
    /// Default: local names `memories/<image>`.
    #[arg(long, value_name = "REG", value_parser = parse_registry)]
    pub registry: Option<String>,
    /// The buildx builder to use (default: `BUILDX_BUILDER`, else the current builder).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Build every step again, ignoring the build cache.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How a task reports: a plan without side effects, and/or JSON on stdout.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Print the exact commands (and their inputs) on stdout and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON on stdout: the plan with `--dry-run`, else the result.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub bench: Bench,
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Detection lag after a port opens at a random moment: `cargo xtask wait-for` against a
    /// `nc -z; sleep 1` loop, interleaved.
    Wait {
        /// Runs of each side.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=500))]
        runs: u32,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A no-op `cargo xtask build server` against a bare `docker buildx build` of the same
    /// Dockerfile and target, interleaved, with warm caches.
    Build {
        /// Timed runs of each side (after one warm-up run each).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
}

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
}

impl ImageName {
    pub const ALL: [ImageName; 4] =
        [ImageName::Server, ImageName::Standalone, ImageName::Db, ImageName::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageName::Server => "server",
            ImageName::Standalone => "standalone",
            ImageName::Db => "db",
            ImageName::Redis => "redis",
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts `HOST[:PORT][/NAMESPACE...]`, lowercase, as a docker image name prefix.
pub fn parse_registry(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("empty registry: use HOST[:PORT]/NAMESPACE, e.g. 127.0.0.1:5000/acme".into());
    }
    if trimmed.contains("://") {
        return Err(format!(
            "`{raw}` has a scheme: drop it, e.g. `127.0.0.1:5000/acme` rather than `http://127.0.0.1:5000/acme`"
        ));
    }
    let mut parts = trimmed.split('/');
    let host = parts.next().unwrap_or_default();
    let host_ok = !host.is_empty()
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !host_ok {
        return Err(format!("`{host}` is not a registry host: use HOST[:PORT]"));
    }
    for part in parts {
        let ok = !part.is_empty()
            && part.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if !ok {
            return Err(format!(
                "`{part}` is not a repository namespace: use lowercase letters, digits, `.`, `_` and `-`"
            ));
        }
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_forms() {
        assert_eq!(parse_registry("127.0.0.1:5000/acme/").unwrap(), "127.0.0.1:5000/acme");
        assert_eq!(parse_registry("ghcr.io").unwrap(), "ghcr.io");
        assert!(parse_registry("http://127.0.0.1:5000").unwrap_err().contains("scheme"));
        assert!(parse_registry("reg/Acme").unwrap_err().contains("namespace"));
        assert!(parse_registry("").is_err());
        assert!(parse_registry("reg//x").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
