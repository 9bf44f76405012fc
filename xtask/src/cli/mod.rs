//! The command line: every task and flag, with doc comments as the only help text, and the
//! conversion of what was given into the tasks' request values (at the end of each file). The
//! stack tasks' commands are in [`stacks`], the image tasks' in [`images`]. No task module reads
//! these types.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::image::Cache;
use crate::image::platform::PlatformList;
use crate::run::plan::Preview;
use crate::tasks::ci::CiStep;
use crate::tasks::{ci, doctor};
use crate::wait;
use crate::wait::Probe;

mod images;
mod stacks;

pub use images::*;
pub use stacks::*;

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
    /// Build the images (all, or the named ones) in one buildx bake session, reproducibly: a
    /// rebuild of the same commit gives the same digest for each platform.
    Build(BuildArgs),
    /// Release the images to a registry: build every image the registry lacks for every
    /// platform, push only when all of them built, read every immutable ref back, then move
    /// `X.Y`, `X` and `latest`, only forward.
    ///
    /// Transient registry failures are retried; a release cut short finishes when run again.
    /// Refuses a dirty tree, a version the registry holds from another build, and `latest` for
    /// a pre-release. Credentials come from the docker config (`docker login`).
    Release(ReleaseArgs),
    /// Check a published ref in one report: the index it names, its platforms, its labels, its
    /// cosign signature (with a public key), and its provenance and SBOM attestations. Exits 1
    /// if any check fails.
    ///
    /// Example: `cargo xtask verify 127.0.0.1:5000/memories/server:0.1.0 --key cosign.pub`.
    Verify(VerifyArgs),
    /// Move release images without a registry: `save` writes one bundle (an OCI image layout)
    /// of every image for every platform and prints its SHA-256; `load --sha256` checks it and
    /// loads only the refs it names.
    Images(ImagesArgs),
    /// The local stack: build what changed, start it, wait until ready, print the URLs.
    ///
    /// With no subcommand, `dev up`. Ports are bound to 127.0.0.1 only; data survives `dev down`
    /// unless `--volumes` is given. `COMPOSE_PROJECT_NAME` names the project (default
    /// memories-dev).
    Dev(DevArgs),
    /// All the tests: unit and Docker-backed tests, then the end-to-end suite against an
    /// isolated stack that is always torn down (also on a signal: Ctrl-C exits 130, SIGTERM 143,
    /// SIGHUP 129; a second signal during the teardown abandons it and names the command that
    /// finishes it).
    Test(TestArgs),
    /// The production stack: validate it, start or stop it, or deploy it to Docker Swarm.
    Prod(ProdArgs),
    /// The dev stack's database: a psql shell, dumps, restores and a reset.
    ///
    /// Works on the running dev stack (`COMPOSE_PROJECT_NAME` names another one). The database
    /// service is the one probed as `postgres`; user and database come from its settings.
    Db(DbArgs),
    /// Try the service: the standalone image (with its own database) on 127.0.0.1, data in a
    /// named volume. Ctrl-C stops it cleanly.
    Run(RunArgs),
    /// Wait until services are ready: ports, HTTP endpoints, databases, containers, logs.
    ///
    /// Exit status: 0 when ready, 124 on timeout, 1 when a probe failed for good (an unhealthy
    /// or exited container, a refused password), 2 for a bad spec.
    #[command(after_help = crate::wait::spec::FORMS)]
    WaitFor(WaitForArgs),
    /// Everything CI checks, in order: fmt, clippy, unit, repo, hadolint, actionlint, build,
    /// docker (the Docker-backed tests), e2e, release (to a throwaway registry). Prints one
    /// summary table; exits 1 if a step failed.
    ///
    /// The linters come from PyPI, pinned in tools/requirements.txt, installed on first use
    /// into target/xtask/tools.
    Ci(CiArgs),
    /// Remove what test runs whose process is gone left in Docker: containers, networks and
    /// volumes labelled `memories.run=<run>`, and image tags whose repository names the run.
    /// `cargo xtask test` does this first; runs still going, and other machines' runs, are
    /// kept.
    ///
    /// Example: `cargo xtask reap --dry-run` lists what it would remove.
    Reap(ReapArgs),
    /// Check this machine: Rust, the docker CLI and engine, buildx and its platforms, compose
    /// v2, free disk, and a registry. One line each; exits 1 if anything fails.
    Doctor(DoctorArgs),
    /// Print a completion script for `cargo xtask` in a shell (it hooks into `cargo`'s own
    /// completion). Bash: `cargo xtask completions bash > ~/.cargo-xtask.bash`, then
    /// `source ~/.cargo-xtask.bash` in `~/.bashrc`; zsh: the same with `zsh`, sourced after
    /// `compinit`; fish: `cargo xtask completions fish > ~/.config/fish/conf.d/cargo-xtask.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        #[command(flatten)]
        read_only: ReadOnlyArgs,
    },
    /// A proxy in front of a registry that fails a share of requests (500, 429 with
    /// `Retry-After`, connection reset, delay), picked from a seed so that a failure can be
    /// reproduced: for trying releases against a flaky registry.
    ///
    /// Prints its address (`127.0.0.1:PORT`) on stdout, each fault on stderr, and on Ctrl-C or
    /// SIGTERM what it did as JSON on stdout.
    FaultProxy(FaultProxyArgs),
    /// Measure tasks against their peers in the same run and print the ratios: one benchmark,
    /// or with none named the quick ones (wait, stack, build, startup), in one table.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print every run found as JSON on stdout: its id, whether its process runs, what it
    /// left and whether that was removed.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The platforms the builder must be able to build for: those released.
    #[command(flatten)]
    pub platforms: images::ReleasePlatforms,
    /// The buildx builder to check (default: `BUILDX_BUILDER`, else the current builder).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// A registry to check, e.g. `127.0.0.1:5000` (it must answer the registry API).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub registry: Option<String>,
    #[command(flatten)]
    pub read_only: ReadOnlyArgs,
}

#[derive(Debug, Args)]
pub struct FaultProxyArgs {
    /// The registry to forward to, e.g. `127.0.0.1:5000`.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: String,
    /// The share of requests that fail: `0.2` or `20%`.
    #[arg(long, default_value = "0.2", value_parser = crate::tasks::faults::parse_rate)]
    pub rate: f64,
    /// Picks which requests fail: the same seed fails the same requests (by arrival order).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long a delayed request is held before it is forwarded.
    #[arg(long, default_value = "2s", value_parser = crate::wait::parse_duration)]
    pub delay: Duration,
    /// Print what the proxy would do and exit, listening on nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct WaitForArgs {
    /// What to wait for, e.g. `tcp://127.0.0.1:5432` or `http://127.0.0.1:8283/v1/health`.
    #[arg(required = true, value_name = "PROBE", value_parser = ProbeParser)]
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
    /// Trust the CA certificates of this PEM file for https:// probes, instead of Mozilla's
    /// roots (a private CA, or a test CA such as pebble's).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<String>,
    /// Print the result as JSON on stdout: per probe, when it was ready, attempts, last error.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on stderr but errors.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub read_only: ReadOnlyArgs,
}

/// Parses the command line, `--version` printing `version` for every command.
pub fn parse(version: &str) -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    // clap takes a version it keeps for the whole run: leaked once, at start.
    let version: &'static str = Box::leak(version.to_owned().into_boxed_str());
    let command = full_names(Cli::command().version(version), "cargo xtask");
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Names every subcommand of `command` by its whole command line (`cargo xtask dev`), which
/// `--version` prints; clap's own would be `cargo xtask-dev`.
fn full_names(command: clap::Command, prefix: &str) -> clap::Command {
    let names: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_owned()).collect();
    names.into_iter().fold(command, |command, name| {
        let full = format!("{prefix} {name}");
        command.mut_subcommand(&name, |sub| full_names(sub.display_name(full.clone()), &full))
    })
}

/// Parses a probe spec. Its error is clap's own error with our message: clap's usual
/// "invalid value '...'" would print the spec, password and all.
#[derive(Clone)]
struct ProbeParser;

impl clap::builder::TypedValueParser for ProbeParser {
    type Value = Probe;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Probe, clap::Error> {
        let invalid = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{message}\n\n{}\n", crate::wait::spec::FORMS),
            )
        };
        let raw = value.to_str().ok_or_else(|| invalid("a probe spec is not UTF-8".into()))?;
        Probe::parse(raw).map_err(invalid)
    }
}

/// `--dry-run` and `--json`, the same on every task that starts or changes something.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct PreviewArgs {
    /// Print what would run (each command, what it then waits for) and exit; needs no
    /// Docker engine. Secrets are shown as ***.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Print the result (with --dry-run, the plan) as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--dry-run` of a task that only reads: every task takes it, and this one says so.
#[derive(Debug, Args)]
pub struct ReadOnlyArgs {
    /// Say that this task changes nothing (it only reads, so there is nothing to plan) and
    /// exit without running it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CiArgs {
    /// Steps to run (in CI's order whatever the order given); all of them when none is named.
    #[arg(value_enum)]
    pub steps: Vec<CiStep>,
    /// Run the remaining steps after a failure (the default stops at the first).
    #[arg(long)]
    pub keep_going: bool,
    /// The build cache for the build and release steps (see `cargo xtask build --help`).
    #[arg(long, value_name = "CACHE")]
    pub cache: Option<Cache>,
    /// With the docker step: only this Docker-backed test suite (`tests/tests/NAME.rs`, e.g.
    /// `images`), repeatable; a CI job of its own per suite runs them side by side.
    #[arg(long = "suite", value_name = "NAME")]
    pub suites: Vec<String>,
    #[command(flatten)]
    pub preview: PreviewArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// One benchmark; with none, the quick ones (wait, stack, build, startup), with default
    /// runs, in one table.
    #[command(subcommand)]
    pub bench: Option<Bench>,
    /// Print JSON on stdout instead of the table (when running every benchmark).
    #[arg(long)]
    pub json: bool,
    /// Print which benchmarks would run and what each measures, and exit.
    #[arg(long, global = true)]
    pub dry_run: bool,
}

impl Bench {
    /// The benchmark's name, as on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Bench::Stack { .. } => "stack",
            Bench::Wait { .. } => "wait",
            Bench::Release { .. } => "release",
            Bench::Cache { .. } => "cache",
            Bench::Devloop { .. } => "devloop",
            Bench::Deploy { .. } => "deploy",
            Bench::Flaky { .. } => "flaky",
            Bench::Startup { .. } => "startup",
            Bench::Build { .. } => "build",
        }
    }
}

/// What `bench NAME --help` says the benchmark measures.
pub fn bench_about(name: &str) -> String {
    use clap::CommandFactory;
    let cli = Cli::command();
    let bench = cli.find_subcommand("bench").and_then(|b| b.find_subcommand(name));
    bench.and_then(|b| b.get_about()).map(ToString::to_string).unwrap_or_default()
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Time-to-ready of the dev stack from warm images: `cargo xtask dev` against
    /// `docker compose up --detach --wait` on the same files, interleaved; also how long after
    /// the slowest service's own start each side noticed.
    Stack {
        /// Runs of each side.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detection lag after a port opens at a random moment: `cargo xtask wait-for` against a
    /// `nc -z; sleep 1` loop (bash's `/dev/tcp` where nc is missing), interleaved.
    Wait {
        /// Runs of each side.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=500))]
        runs: u32,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A release of every image for linux/amd64 and linux/arm64 against the same release for
    /// linux/amd64 alone, each from a cold BuildKit cache, pushed to a throwaway registry.
    /// Clears this machine's build cache before every run.
    Release {
        /// Runs of each side (each run is two cold releases: minutes).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
        runs: u32,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// `cargo xtask build` of every image (for linux/amd64 and linux/arm64 unless `--platform`
    /// says otherwise) from an empty BuildKit cache with a warm registry cache
    /// (`--cache registry=...`) against the same with no cache, interleaved, to a throwaway
    /// registry. Clears this machine's build cache before every run.
    Cache {
        /// Runs of each side (each run is two builds from an empty cache: minutes).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
        runs: u32,
        /// The platforms both sides build, comma-separated, e.g. `linux/amd64`.
        #[arg(
            long,
            value_name = "LIST",
            value_parser = crate::image::platform::parse_list,
            default_value = crate::tasks::release::DEFAULT_PLATFORMS
        )]
        platform: PlatformList,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Edit-to-serving time of a one-line change in a server source file: `dev --watch`
    /// against `docker compose watch` (sync+restart) and against `cargo xtask dev` after the
    /// edit, interleaved, each on a copy of the repository with a dev stack of its own.
    Devloop {
        /// Timed runs of each side (after one warm-up edit each).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Requests that fail, and their p99 latency, during an update of the prod stack on a
    /// swarm from version A to B under 50 requests a second over HTTPS through the proxy:
    /// `prod deploy --swarm` against a `docker stack deploy` of the same images without our
    /// update settings, interleaved. Starts a one-node swarm if the engine is in none (and
    /// leaves it after).
    Deploy {
        /// Updates of each side (each is a fresh stack: minutes).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
        runs: u32,
        /// Measure what monitoring costs instead: `prod deploy --swarm` with MONITORING=on
        /// (Prometheus scraping every replica, the servers pushing over OTLP every 5 s) against
        /// the same with it off.
        #[arg(long)]
        monitoring: bool,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Releases of server and db for linux/amd64 and linux/arm64 through the fault-injecting
    /// proxy (a seed per run) against the same releases straight to the registry, interleaved,
    /// each to its own namespace of a throwaway registry, from a warm build cache. Every tag is
    /// then read back directly; the note gives retries per release.
    Flaky {
        /// Releases of each side.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// The share of requests the proxy fails: 0.2 or 20%.
        #[arg(long, default_value = "20%", value_parser = crate::tasks::faults::parse_rate)]
        rate: f64,
        /// Print JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Warm start: `cargo xtask --help` against `docker compose --help`, interleaved.
    Startup {
        /// Timed runs of each side (after one warm-up run each).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
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

/// `cargo xtask completions SHELL`: the script for `shell`, on stdout.
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    out!("{}", completion_script(shell).trim_end());
    Ok(())
}

/// The completion script for `shell`. clap writes one for a program named `cargo-xtask`; for
/// bash, zsh and fish it is hooked into `cargo`'s completion, so that `cargo xtask <TAB>`
/// completes (the words after `xtask` are ours, everything else stays cargo's).
pub fn completion_script(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut script = Vec::new();
    let mut command = Cli::command().name("cargo-xtask");
    clap_complete::generate(shell, &mut command, "cargo-xtask", &mut script);
    // The subcommands keep the derived bin name, `cargo xtask ...`, whose space clap's bash
    // script spells `__subcmd__` where its walk over the words spells `__`: one spelling, so
    // that the two meet.
    let script = String::from_utf8(script)
        .expect("clap writes UTF-8")
        .replace("cargo__subcmd__xtask", "cargo__xtask");
    match shell {
        Shell::Bash => script + BASH_HOOK,
        Shell::Zsh => script + ZSH_HOOK,
        // Each line completes `cargo` once its second word is `xtask`; the helpers drop both
        // words where clap's drop the program's name.
        Shell::Fish => {
            let script = script.replace("set -e cmd[1]\n", "set -e cmd[1..2]\n").replace(
                "complete -c cargo-xtask -n \"",
                "complete -c cargo -n \"__fish_cargo_xtask_active; and ",
            );
            FISH_HOOK.to_owned() + &script
        }
        _ => script,
    }
}

/// Completes `cargo xtask ...` with clap's `_cargo__xtask`, and anything else of `cargo` with
/// the completion `cargo` had when this was sourced (rustup's, if loaded).
const BASH_HOOK: &str = r#"
_cargo_xtask_complete() {
    if [[ ${COMP_CWORD} -ge 2 && ${COMP_WORDS[1]} == xtask ]]; then
        _cargo__xtask "$@"
        return
    fi
    if [[ -z ${_cargo_xtask_fallback} ]] && declare -F _completion_loader >/dev/null; then
        # bash-completion loads cargo's own completion on first use: load it now, keep ours.
        complete -r cargo
        _completion_loader cargo
        _cargo_xtask_fallback=$(complete -p cargo 2>/dev/null | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
        complete -F _cargo_xtask_complete -o bashdefault -o default cargo
    fi
    if [[ -n ${_cargo_xtask_fallback} && ${_cargo_xtask_fallback} != _cargo_xtask_complete ]]; then
        "${_cargo_xtask_fallback}" "$@"
    fi
}
_cargo_xtask_fallback=$(complete -p cargo 2>/dev/null | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
complete -F _cargo_xtask_complete -o bashdefault -o default cargo
"#;

/// The same for zsh: `words` shifted so that clap's `_cargo-xtask` sees `cargo-xtask ...`.
const ZSH_HOOK: &str = r#"
_cargo_xtask_complete() {
    if (( CURRENT > 2 )) && [[ ${words[2]} == xtask ]]; then
        words=(cargo-xtask "${(@)words[3,-1]}")
        (( CURRENT -= 1 ))
        _cargo-xtask "$@"
    elif (( $+functions[_cargo] )); then
        _cargo "$@"
    fi
}
compdef _cargo_xtask_complete cargo
"#;

/// fish adds completions to `cargo`'s own: these apply once the second word is `xtask`.
const FISH_HOOK: &str = "function __fish_cargo_xtask_active
    set -l cmd (commandline -opc)
    test (count $cmd) -ge 2; and test \"$cmd[2]\" = xtask
end
";

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
    // Docker reads a first component without a dot or a port as a Docker Hub namespace.
    if !host.contains(['.', ':']) && host != "localhost" {
        return Err(format!(
            "`{host}` is not a registry host, and docker would send `{trimmed}/...` to Docker \
             Hub: write `docker.io/{trimmed}` if Docker Hub is meant, or HOST[:PORT]/{trimmed} \
             (e.g. ghcr.io/{trimmed})"
        ));
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

// The tasks' request values, from what the command line gave.

impl From<PreviewArgs> for Preview {
    fn from(args: PreviewArgs) -> Preview {
        Preview { dry_run: args.dry_run, json: args.json }
    }
}

impl From<CiArgs> for ci::Request {
    fn from(args: CiArgs) -> ci::Request {
        ci::Request {
            steps: args.steps,
            keep_going: args.keep_going,
            cache: args.cache,
            suites: args.suites,
        }
    }
}

impl From<WaitForArgs> for wait::Request {
    fn from(args: WaitForArgs) -> wait::Request {
        wait::Request {
            probes: args.probes,
            timeout: args.timeout,
            max_interval: args.max_interval,
            any: args.any,
            ca: args.ca,
            json: args.json,
            quiet: args.quiet,
        }
    }
}

impl From<DoctorArgs> for doctor::Request {
    fn from(args: DoctorArgs) -> doctor::Request {
        doctor::Request {
            platforms: args.platforms.platform.0,
            builder: args.builder,
            registry: args.registry,
        }
    }
}

#[cfg(test)]
mod tests;
