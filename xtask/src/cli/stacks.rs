//! The command line of the stack tasks: `dev`, `test`, `run`, `prod` and `db`, and the
//! conversion of what was given into their request values.

use std::time::Duration;

use camino::Utf8PathBuf;
use clap::{Args, Subcommand};

use super::{PreviewArgs, parse_registry};
use crate::stack::Profile;
use crate::stack::backup::{BackupAction, RestoreTarget};
use crate::tasks::dev::{DevUp, RunRequest, TestRequest, WhenReady};
use crate::tasks::{db, dev, prod};

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
    /// Skip the unit, repository and Docker-backed tests; run only the end-to-end suite.
    #[arg(long)]
    pub e2e_only: bool,
    /// The compose project name (default: unique per run, so parallel runs never collide).
    #[arg(long, value_name = "NAME", value_parser = parse_project)]
    pub project: Option<String>,
    /// How long to wait for the stack to be ready.
    #[arg(long, default_value = "180s", value_parser = crate::wait::parse_duration)]
    pub timeout: Duration,
    /// Only the unit, repository and Docker-backed tests whose names contain this (passed to
    /// `cargo test -- FILTER`).
    #[arg(long, value_name = "FILTER", conflicts_with = "e2e_only")]
    pub tests: Option<String>,
    /// Skip each tier (unit, docker, e2e) whose inputs are unchanged since it last passed on
    /// this machine, saying why (`ci` always runs everything).
    #[arg(long)]
    pub changed: bool,
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
    /// The prod stack's services (compose: `compose ps`; with --stack, a swarm stack's
    /// desired and running replicas, images by digest, update states and backups' health),
    /// and, when monitoring runs (MONITORING=on), the last five minutes' request rate, error
    /// rate and p99 per scrape job and the alerts, e.g. `cargo xtask prod status --stack
    /// memories --json`.
    Status {
        /// The swarm stack; the compose prod stack on this engine when not given.
        #[arg(long, value_parser = parse_project)]
        stack: Option<String>,
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
            changed: args.changed,
            threads: crate::tasks::ci::suite_threads(),
        }
    }
}

impl From<RunArgs> for RunRequest {
    fn from(args: RunArgs) -> RunRequest {
        RunRequest { no_build: args.no_build, port: args.port, volume: args.volume }
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
