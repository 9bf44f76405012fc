//! The command line: every task and flag, with doc comments as the only help text, and the
//! conversion of what was given into the tasks' request values (at the end of this file). No
//! task module reads these types.

use std::time::Duration;

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand};

use crate::image::bundle;
use crate::image::platform::PlatformList;
use crate::image::sign::KeySource;
use crate::image::{BuildRequest, Cache, ImageName, ImageParser, Output};
use crate::run::plan::Preview;
use crate::stack::Profile;
use crate::stack::backup::{BackupAction, RestoreTarget};
use crate::tasks::ci::CiStep;
use crate::tasks::dev::{DevUp, RunRequest, TestRequest, WhenReady};
use crate::tasks::release::{Allowances, ReleaseRequest};
use crate::tasks::{ci, db, dev, doctor, prod};
use crate::wait;
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
    /// Print a completion script for a shell, e.g.
    /// `cargo xtask completions bash > ~/.local/share/bash-completion/completions/cargo-xtask`.
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
    /// Platforms the builder must be able to build for.
    #[arg(long, value_name = "LIST", value_parser = crate::image::platform::parse_list,
          default_value = "linux/amd64,linux/arm64")]
    pub platform: PlatformList,
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
    let command = Cli::command().version(version);
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    #[command(subcommand)]
    pub action: Option<DevAction>,
    #[command(flatten)]
    pub up: DevUpArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
}

#[derive(Debug, Subcommand)]
pub enum DevAction {
    /// Build what changed, start the stack (or only the named services), wait until it is
    /// ready, print the URLs.
    ///
    /// `cargo xtask dev up db` starts only the database, e.g. for running the app on the host.
    Up(DevUpCommand),
    /// Stop and remove the stack's containers and network; data volumes are kept.
    Down {
        /// Also remove the data volumes (the database's rows are lost).
        #[arg(long)]
        volumes: bool,
    },
    /// Show the logs of the stack, or of one service.
    Logs {
        /// A service of the stack (`db`, `server`, ...; `cargo xtask dev ps` lists them).
        service: Option<String>,
        /// Keep following new lines until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// List the stack's containers and their health.
    Ps,
    /// Run a command in a service's container, e.g. `cargo xtask dev exec db -- psql -U memories`.
    Exec {
        /// A service of the stack (`db`, `server`, ...; `cargo xtask dev ps` lists them).
        service: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Restart one service and wait until the stack is ready again.
    Restart {
        /// A service of the stack (`db`, `server`, ...; `cargo xtask dev ps` lists them).
        service: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DevUpCommand {
    #[command(flatten)]
    pub up: DevUpArgs,
    /// Start only these services (`db`, `server`, ...); the others are left as they are.
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DevUpArgs {
    /// Use the images as they are; do not build.
    #[arg(long)]
    pub no_build: bool,
    /// Optional parts: `cache` (Redis), `otel` (an OpenTelemetry collector); repeat or
    /// separate with commas.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub profile: Vec<Profile>,
    /// After the stack is ready, follow its logs; Ctrl-C then stops the stack (data is kept).
    #[arg(long, conflicts_with = "watch")]
    pub attach: bool,
    /// After the stack is ready, follow the working tree: a source edit is copied into the
    /// running server, which restarts in place (about a second); a change to the dependencies
    /// or a Dockerfile rebuilds and recreates only the services it belongs to. The rules are
    /// the `develop.watch` entries of compose/dev.yaml. Ctrl-C stops watching and leaves the
    /// stack running; with --json, one event per line on stdout.
    #[arg(long)]
    pub watch: bool,
    /// How long to wait for the stack to be ready.
    #[arg(long, default_value = "120s", value_parser = crate::wait::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Leave the stack running afterwards, for a look (it says how to remove it).
    #[arg(long)]
    pub keep: bool,
    /// Skip `cargo test --workspace`; run only the end-to-end suite.
    #[arg(long)]
    pub e2e_only: bool,
    /// The compose project name (default: unique per run, so parallel runs never collide).
    #[arg(long, value_name = "NAME", value_parser = parse_project)]
    pub project: Option<String>,
    /// How long to wait for the stack to be ready.
    #[arg(long, default_value = "180s", value_parser = crate::wait::parse_duration)]
    pub timeout: Duration,
    /// Only the unit, repository and Docker-backed tests whose names contain this (passed to
    /// `cargo test --workspace -- FILTER`).
    #[arg(long, value_name = "FILTER", conflicts_with = "e2e_only")]
    pub tests: Option<String>,
    #[command(flatten)]
    pub preview: PreviewArgs,
    /// Only the end-to-end tests whose names contain this, after `--`.
    #[arg(last = true)]
    pub filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProdArgs {
    #[command(subcommand)]
    pub action: ProdAction,
    /// An env file with the stack's secrets (POSTGRES_PASSWORD=...), read after compose/prod.env.
    #[arg(long, value_name = "FILE", global = true)]
    pub env_file: Vec<camino::Utf8PathBuf>,
    #[command(flatten)]
    pub preview: PreviewArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProdAction {
    /// Validate the merged prod definition and print it.
    Config,
    /// Build, start the prod stack (proxy published, two server replicas), wait until ready.
    Up {
        #[arg(long)]
        no_build: bool,
        #[arg(long, default_value = "180s", value_parser = crate::wait::parse_duration)]
        timeout: Duration,
    },
    /// Stop and remove the prod stack; volumes are kept unless `--volumes`.
    Down {
        #[arg(long)]
        volumes: bool,
    },
    /// Deploy the prod definition to Docker Swarm, every image by its digest, and wait until
    /// every service has converged; an update that fails is rolled back by swarm and fails
    /// the deploy.
    #[command(disable_version_flag = true)]
    Deploy {
        /// Deploy with `docker stack deploy` (the engine must be a swarm manager).
        #[arg(long, required = true)]
        swarm: bool,
        /// The stack name.
        #[arg(long, default_value = "memories", value_parser = parse_project)]
        stack: String,
        #[command(flatten)]
        source: DeploySource,
        /// With --registry: the version to deploy (default: app/pyproject.toml's).
        #[arg(long, value_name = "V", requires = "registry")]
        version: Option<String>,
        /// With --local: check that the images are in the local store instead of building.
        #[arg(long, requires = "local")]
        no_build: bool,
        #[arg(long, default_value = "300s", value_parser = crate::wait::parse_duration)]
        timeout: Duration,
    },
    /// Per service of a swarm stack: desired and running replicas, image (by digest), update
    /// state.
    Status {
        /// The stack name.
        #[arg(long, default_value = "memories", value_parser = parse_project)]
        stack: String,
    },
    /// Return services of a swarm stack to their previous spec (every one that has one when
    /// none is named), and wait until they have.
    Rollback {
        /// The stack name.
        #[arg(long, default_value = "memories", value_parser = parse_project)]
        stack: String,
        /// Services to roll back, by their name in the definition (`server`).
        services: Vec<String>,
        #[arg(long, default_value = "300s", value_parser = crate::wait::parse_duration)]
        timeout: Duration,
    },
    /// Back up the prod stack's database now (pgBackRest, into the `backups` volume), e.g.
    /// `cargo xtask prod backup --json`. The WAL is archived continuously, and a full backup
    /// is made on a schedule (`BACKUP_EVERY`, default 24h).
    Backup {
        /// `full`, or only what changed since the last backup (`diff`) or the last of any
        /// kind (`incr`).
        #[arg(long = "type", default_value = "full", value_parser = ["full", "diff", "incr"])]
        kind: String,
        #[command(flatten)]
        on: SwarmStack,
    },
    /// List the backups (sizes, when each finished), how far the archived WAL reaches and the
    /// schedule; exits 1 when there is no backup, when archiving or the scheduled backup
    /// fails, or when the newest full backup is older than the schedule allows, e.g. `cargo
    /// xtask prod backups --json`.
    Backups {
        #[command(flatten)]
        on: SwarmStack,
    },
    /// Replace the prod database with a restored one: the latest state archived, the state at
    /// `--time`, or one backup alone with `--backup`. Refuses a database that holds rows
    /// unless `--force`; stops the servers while it runs, e.g. `cargo xtask prod restore
    /// --time '2026-12-05 13:40:00+00'`.
    Restore {
        /// A time PostgreSQL reads, with its zone: `2026-12-05 13:40:00+00`.
        #[arg(long, conflicts_with = "backup")]
        time: Option<String>,
        /// A backup's label, from `prod backups`.
        #[arg(long)]
        backup: Option<String>,
        /// Replace a database that holds rows.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "180s", value_parser = crate::wait::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        on: SwarmStack,
    },
    /// The certificates the proxy got over ACME (names, expiry), or with `--renew` a renewal
    /// now whatever their age, served at once with no failed request, e.g. `cargo xtask prod
    /// certs --renew`. A certificate given as files is renewed by giving new files.
    Certs {
        /// Renew now (and reload the proxy) instead of listing.
        #[arg(long)]
        renew: bool,
        /// The swarm stack (its proxy task must run on this engine) instead of the compose
        /// prod stack.
        #[arg(long, value_name = "NAME", value_parser = parse_project)]
        stack: Option<String>,
    },
    /// The API's keys: create (printed once), revoke, list. The file (`--file`, else
    /// `API_KEYS_FILE`) keeps only their SHA-256; `prod up` and `prod deploy` give it to the
    /// servers, which then answer 401 to a request without a valid `Authorization: Bearer KEY`.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        /// The key file (default: the `API_KEYS_FILE` setting).
        #[arg(long, value_name = "FILE", global = true)]
        file: Option<camino::Utf8PathBuf>,
    },
}

/// What `prod keys` does with the key file.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Make a key, keep its hash in the file and print the key once, e.g. `cargo xtask prod
    /// keys create ci --file /secure/api-keys`.
    Create {
        /// Its name: letters, digits, `.`, `_` or `-`.
        name: String,
    },
    /// Remove a key from the file, e.g. `cargo xtask prod keys revoke ci`.
    Revoke { name: String },
    /// The keys in the file: names, hash prefixes, when each was made.
    List,
}

/// The swarm stack whose database a backup task works on; the compose prod stack without it.
#[derive(Debug, Clone, Args)]
pub struct SwarmStack {
    /// The swarm stack (its db task must run on this engine) instead of the compose prod stack.
    #[arg(long, value_name = "NAME", value_parser = parse_project)]
    pub stack: Option<String>,
}

/// Where `prod deploy --swarm` takes its images from: exactly one.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct DeploySource {
    /// Deploy REG/NAME:VERSION of every image by the digest the registry holds (e.g.
    /// `127.0.0.1:5000/memories`); a missing image is refused before anything changes.
    #[arg(long, value_name = "REG", value_parser = parse_registry)]
    pub registry: Option<String>,
    /// Deploy the images a `cargo xtask release --json` printed, by their digests.
    #[arg(long, value_name = "FILE")]
    pub from: Option<camino::Utf8PathBuf>,
    /// Deploy this engine's own images (built first unless --no-build): other nodes cannot
    /// pull them, so for a one-node swarm only.
    #[arg(long)]
    pub local: bool,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub action: DbAction,
    #[command(flatten)]
    pub preview: PreviewArgs,
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// A psql shell on the database, e.g. `cargo xtask db psql -- -c 'select count(*) from
    /// memories'`.
    Psql {
        /// Arguments for psql, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Dump the database in PostgreSQL's custom format to a file on the host. The dump is
    /// written to a temporary file beside it and renamed when complete: an interrupted dump
    /// never leaves a file under the final name.
    Dump {
        /// Where to write it (refused if it exists); default `<project>-<UTC time>.dump`.
        #[arg(long, short)]
        output: Option<Utf8PathBuf>,
    },
    /// Restore a dump made by `db dump` (in one transaction: all or nothing). Refuses a
    /// database that already holds rows unless `--clean`.
    Restore {
        /// The dump file.
        file: Utf8PathBuf,
        /// Replace what the database holds: the dump's tables are dropped and recreated.
        #[arg(long)]
        clean: bool,
    },
    /// Drop the database's data volume and start the stack again, empty (asks first).
    Reset {
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
        /// How long to wait for the stack to be ready again.
        #[arg(long, default_value = "120s", value_parser = crate::wait::parse_duration)]
        timeout: Duration,
    },
    /// Migrate the dev database to the newest revision (or `--to REV`, down as well as up), in
    /// one transaction, e.g. `cargo xtask db migrate`. A database made before migrations is
    /// stamped with the baseline. With `--dry-run`, prints the SQL (Alembic's offline mode).
    Migrate {
        /// The revision to end at (see `db history`).
        #[arg(long, value_name = "REV")]
        to: Option<String>,
    },
    /// The revision the dev database is at, e.g. `cargo xtask db current --json`.
    Current,
    /// Every revision, oldest first, from `app/src/memories/migrations/versions` (no Docker),
    /// e.g. `cargo xtask db history`.
    History,
    /// Write a new revision after the newest one, from the template, e.g. `cargo xtask db
    /// revision "add a tags column"`.
    Revision {
        /// What the revision does, one line: its docstring and file name.
        message: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Use the image as it is; do not build.
    #[arg(long)]
    pub no_build: bool,
    /// The port on 127.0.0.1.
    #[arg(long, default_value_t = 8283)]
    pub port: u16,
    /// The named volume that keeps the data between runs (created if missing).
    #[arg(long, default_value = "memories-standalone-data", value_parser = parse_volume)]
    pub volume: String,
    #[command(flatten)]
    pub preview: PreviewArgs,
}

/// Docker volume names: letters, digits, `_`, `.` and `-`, starting with a letter or digit, at
/// least two characters. A path is refused: `run` keeps its data in a named volume.
fn parse_volume(raw: &str) -> Result<String, String> {
    let ok = raw.len() >= 2
        && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "`{raw}` is not a volume name: use letters, digits, `_`, `.` and `-` (a path is not \
             accepted; the data lives in a named volume)"
        ))
    }
}

/// Compose project names: lowercase letters, digits, `-` and `_`, starting with a letter or digit.
fn parse_project(raw: &str) -> Result<String, String> {
    let ok = raw.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!("`{raw}` is not a project name: use lowercase letters, digits, `-` and `_`"))
    }
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub read_only: ReadOnlyArgs,
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
pub struct BuildArgs {
    /// Images to build (docker/images.toml declares them); every released one when none is
    /// named.
    #[arg(value_parser = ImageParser)]
    pub images: Vec<ImageName>,
    /// Target platforms, comma-separated, e.g. `linux/amd64,linux/arm64`; `x86_64` and `aarch64`
    /// are accepted for amd64 and arm64. Default: the builder's own platform.
    #[arg(long, value_name = "LIST", value_parser = crate::image::platform::parse_list)]
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
    /// Build every step again, ignoring the build cache.
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
        default_value = crate::tasks::release::DEFAULT_REGISTRY
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

/// `--platform` of what is released (and verified): both platforms unless told otherwise.
#[derive(Debug, Args)]
pub struct ReleasePlatforms {
    /// The platforms, comma-separated; `x86_64` and `aarch64` are accepted for amd64 and
    /// arm64, duplicates are dropped.
    #[arg(
        long,
        value_name = "LIST",
        value_parser = crate::image::platform::parse_list,
        default_value = crate::tasks::release::DEFAULT_PLATFORMS
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
    #[command(flatten)]
    pub preview: PreviewArgs,
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
        /// Platforms to include, comma-separated.
        #[arg(
            long,
            value_name = "LIST",
            value_parser = crate::image::platform::parse_list,
            default_value = crate::tasks::release::DEFAULT_PLATFORMS
        )]
        platform: PlatformList,
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
    /// `nc -z; sleep 1` loop, interleaved.
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
    /// `cargo xtask build` of every image for linux/amd64 and linux/arm64 from an empty BuildKit
    /// cache with a warm registry cache (`--cache registry=...`) against the same with no
    /// cache, interleaved, to a throwaway registry. Clears this machine's build cache before
    /// every run.
    Cache {
        /// Runs of each side (each run is two builds from an empty cache: minutes).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
        runs: u32,
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
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "cargo-xtask", &mut std::io::stdout());
    Ok(())
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

impl DevUpArgs {
    fn into_up(self, services: Vec<String>) -> DevUp {
        let then = match (self.watch, self.attach) {
            (true, _) => WhenReady::Watch,
            (false, true) => WhenReady::Attach,
            (false, false) => WhenReady::Exit,
        };
        DevUp {
            services,
            profiles: self.profile,
            no_build: self.no_build,
            then,
            timeout: self.timeout,
        }
    }
}

impl From<DevArgs> for dev::DevAction {
    fn from(args: DevArgs) -> dev::DevAction {
        match args.action {
            None => dev::DevAction::Up(args.up.into_up(Vec::new())),
            Some(DevAction::Up(command)) => {
                dev::DevAction::Up(command.up.into_up(command.services))
            }
            Some(DevAction::Down { volumes }) => dev::DevAction::Down { volumes },
            Some(DevAction::Logs { service, follow }) => dev::DevAction::Logs { service, follow },
            Some(DevAction::Ps) => dev::DevAction::Ps,
            Some(DevAction::Exec { service, command }) => dev::DevAction::Exec { service, command },
            Some(DevAction::Restart { service }) => dev::DevAction::Restart { service },
        }
    }
}

impl From<TestArgs> for TestRequest {
    fn from(args: TestArgs) -> TestRequest {
        TestRequest {
            keep: args.keep,
            e2e_only: args.e2e_only,
            project: args.project,
            timeout: args.timeout,
            tests: args.tests,
            filter: args.filter,
            preview: args.preview.into(),
        }
    }
}

impl From<RunArgs> for RunRequest {
    fn from(args: RunArgs) -> RunRequest {
        RunRequest {
            no_build: args.no_build,
            port: args.port,
            volume: args.volume,
            preview: args.preview.into(),
        }
    }
}

impl From<ProdAction> for prod::ProdAction {
    fn from(action: ProdAction) -> prod::ProdAction {
        match action {
            ProdAction::Config => prod::ProdAction::Config,
            ProdAction::Up { no_build, timeout } => prod::ProdAction::Up { no_build, timeout },
            ProdAction::Down { volumes } => prod::ProdAction::Down { volumes },
            ProdAction::Deploy { swarm: _, stack, source, version, no_build, timeout } => {
                let source = match (source.registry, source.from) {
                    (Some(registry), _) => prod::DeploySource::Registry { registry, version },
                    (None, Some(file)) => prod::DeploySource::Release(file),
                    (None, None) => prod::DeploySource::Local { build: !no_build },
                };
                prod::ProdAction::Deploy { stack, source, timeout }
            }
            ProdAction::Status { stack } => prod::ProdAction::Status { stack },
            ProdAction::Rollback { stack, services, timeout } => {
                prod::ProdAction::Rollback { stack, services, timeout }
            }
            ProdAction::Backup { kind, on } => {
                prod::ProdAction::Backups(on.stack, BackupAction::Backup { kind })
            }
            ProdAction::Backups { on } => prod::ProdAction::Backups(on.stack, BackupAction::List),
            ProdAction::Certs { renew, stack } => prod::ProdAction::Certs { renew, stack },
            ProdAction::Keys { action, file } => prod::ProdAction::Keys(
                file,
                match action {
                    KeysAction::Create { name } => {
                        crate::stack::api_keys::KeysAction::Create { name }
                    }
                    KeysAction::Revoke { name } => {
                        crate::stack::api_keys::KeysAction::Revoke { name }
                    }
                    KeysAction::List => crate::stack::api_keys::KeysAction::List,
                },
            ),
            ProdAction::Restore { time, backup, force, timeout, on } => {
                let target = match (time, backup) {
                    (Some(time), _) => RestoreTarget::Time(time),
                    (None, Some(label)) => RestoreTarget::Backup(label),
                    (None, None) => RestoreTarget::Latest,
                };
                prod::ProdAction::Backups(
                    on.stack,
                    BackupAction::Restore { target, force, timeout },
                )
            }
        }
    }
}

impl From<DbAction> for db::DbAction {
    fn from(action: DbAction) -> db::DbAction {
        match action {
            DbAction::Psql { args } => db::DbAction::Psql { args },
            DbAction::Dump { output } => db::DbAction::Dump { output },
            DbAction::Restore { file, clean } => db::DbAction::Restore { file, clean },
            DbAction::Reset { yes, timeout } => db::DbAction::Reset { yes, timeout },
            DbAction::Migrate { to } => db::DbAction::Migrate { to },
            DbAction::Current => db::DbAction::Current,
            DbAction::History => db::DbAction::History,
            DbAction::Revision { message } => db::DbAction::Revision { message },
        }
    }
}

impl ImagesAction {
    pub fn into_request(self) -> (bundle::Action, Preview) {
        match self {
            ImagesAction::Save {
                images,
                output,
                platform,
                builder,
                sign,
                transparency,
                preview,
            } => {
                let request = bundle::SaveRequest {
                    images,
                    platforms: platform.0,
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
        }
    }
}

impl From<CiArgs> for ci::Request {
    fn from(args: CiArgs) -> ci::Request {
        ci::Request {
            steps: args.steps,
            keep_going: args.keep_going,
            cache: args.cache,
            preview: args.preview.into(),
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
            platforms: args.platform.0,
            builder: args.builder,
            registry: args.registry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI reference, `docs/cli.md`: every command's long help in the order of `--help`,
    /// as clap renders it (unwrapped: clap's `wrap_help` is off, so every terminal sees the same).
    fn reference() -> String {
        use clap::CommandFactory;
        fn walk(command: &mut clap::Command, path: &str, out: &mut String) {
            let help = command.render_long_help().to_string();
            let help: Vec<&str> = help.lines().map(str::trim_end).collect();
            out.push_str(&format!(
                "\n## `{path}`\n\n```text\n{}\n```\n",
                help.join("\n").trim_end()
            ));
            for sub in command.get_subcommands_mut() {
                if sub.get_name() != "help" && !sub.is_hide_set() {
                    let path = format!("{path} {}", sub.get_name());
                    walk(sub, &path, out);
                }
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut out = String::from(
            "# CLI reference\n\nEvery command's `--help`, generated from the command line's \
             definition (`xtask/src/cli.rs`). Do not edit: `cargo test --package xtask \
             the_cli_reference_is_current` rewrites it when the definition changed (and fails, so \
             that the change is seen and committed).\n",
        );
        walk(&mut command, "cargo xtask", &mut out);
        out
    }

    fn repo_root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
    }

    /// Every command takes `--dry-run`: one that changes something prints its plan, one that
    /// only reads says so (the command-line tests run them all without Docker).
    #[test]
    fn every_command_takes_dry_run() {
        use clap::CommandFactory;
        fn leaves(command: &clap::Command, path: String, out: &mut Vec<(String, bool)>) {
            let subcommands: Vec<&clap::Command> =
                command.get_subcommands().filter(|c| c.get_name() != "help").collect();
            let has = command.get_arguments().any(|a| a.get_long() == Some("dry-run"));
            if subcommands.is_empty() || has {
                out.push((path.clone(), has));
            }
            for sub in subcommands {
                leaves(sub, format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut found = Vec::new();
        leaves(&command, "cargo xtask".into(), &mut found);
        let missing: Vec<&str> =
            found.iter().filter(|(_, has)| !has).map(|(path, _)| path.as_str()).collect();
        assert!(found.len() > 40, "{found:?}");
        assert!(missing.is_empty(), "no --dry-run: {missing:?}");
    }

    /// rust-analyzer's "sourcegen" way: a test that regenerates the file and fails when it
    /// was out of date (under CI it only fails).
    #[test]
    fn the_cli_reference_is_current() {
        let path = repo_root().join("docs/cli.md");
        let want = reference();
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            let ci = std::env::var_os("CI").is_some();
            if !ci {
                std::fs::write(&path, &want).unwrap();
            }
            panic!(
                "docs/cli.md is not the command line's help{}",
                if ci {
                    ": run this test outside CI to regenerate it"
                } else {
                    ": rewritten now, commit it"
                }
            );
        }
    }

    /// The words of one shell command line: quotes removed, a trailing `# comment`, redirects
    /// and pipes cut off.
    fn shell_words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quote = None;
        let mut in_word = false;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    in_word = true;
                }
                (None, c) if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                (None, '#') if !in_word => break,
                (None, c) => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            words.push(word);
        }
        let end = words
            .iter()
            .position(|w| [">", "|", "&&", ";", "2>&1", "<", "&"].contains(&w.as_str()));
        words.truncate(end.unwrap_or(words.len()));
        words
    }

    /// The arguments of a code line that runs `cargo xtask`: after an optional `$ ` prompt and
    /// `NAME=value` settings; `None` for any other line (output, a file listing, a table row).
    fn command_of(line: &str) -> Option<&str> {
        let mut rest = line.trim_start();
        rest = rest.strip_prefix("$ ").unwrap_or(rest);
        loop {
            let (word, after) = rest.split_once(' ')?;
            let setting = word.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            });
            if !setting {
                break;
            }
            rest = after.trim_start();
        }
        let command = rest.strip_prefix("cargo xtask ")?;
        // A benchmark's table row starts like a command; its columns are aligned by spaces.
        let code = command.split_once(" #").map_or(command, |(code, _)| code);
        (!code.trim_end().contains("   ")).then_some(command)
    }

    /// Every `cargo xtask ...` line in the README's and the docs' code blocks (and the examples
    /// of the README's task table) parses with this command line.
    #[test]
    fn every_command_line_in_the_docs_parses() {
        let root = repo_root();
        let mut files = vec![root.join("README.md")];
        let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md") && !p.ends_with("cli.md"))
            .collect();
        docs.sort();
        files.extend(docs);
        let (mut checked, mut failures) = (0, Vec::new());
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let mut fenced = false;
            let mut pending = String::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("```") {
                    fenced = !fenced;
                    continue;
                }
                let mut commands = Vec::new();
                if fenced || line.starts_with("    ") || !pending.is_empty() {
                    let joined = format!("{pending}{line}");
                    if let Some(continued) = joined.strip_suffix('\\') {
                        pending = format!("{continued} ");
                        continue;
                    }
                    pending.clear();
                    commands.extend(command_of(&joined).map(str::to_owned));
                } else if line.starts_with('|') {
                    for span in line.split('`').skip(1).step_by(2) {
                        commands.extend(span.strip_prefix("cargo xtask ").map(str::to_owned));
                    }
                }
                for command in commands {
                    let args = shell_words(&command);
                    checked += 1;
                    let argv = std::iter::once("cargo xtask".to_owned()).chain(args);
                    if let Err(e) = Cli::try_parse_from(argv) {
                        let e = e.to_string();
                        let why = e.lines().next().unwrap_or_default();
                        failures.push(format!("{}:{}: {command}: {why}", file.display(), n + 1));
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} command lines found");
        assert!(failures.is_empty(), "{} do not parse:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn registry_forms() {
        assert_eq!(parse_registry("127.0.0.1:5000/acme/").unwrap(), "127.0.0.1:5000/acme");
        assert_eq!(parse_registry("ghcr.io").unwrap(), "ghcr.io");
        assert!(parse_registry("http://127.0.0.1:5000").unwrap_err().contains("scheme"));
        assert!(parse_registry("reg.example/Acme").unwrap_err().contains("namespace"));
        let hub = parse_registry("acme").unwrap_err();
        assert!(hub.contains("Docker Hub") && hub.contains("`docker.io/acme`"), "{hub}");
        assert!(parse_registry("acme/team").unwrap_err().contains("`docker.io/acme/team`"));
        assert_eq!(parse_registry("localhost/acme").unwrap(), "localhost/acme");
        assert_eq!(parse_registry("localhost:5000").unwrap(), "localhost:5000");
        assert_eq!(parse_registry("docker.io/acme").unwrap(), "docker.io/acme");
        assert!(parse_registry("").is_err());
        assert!(parse_registry("reg//x").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
