//! `cargo xtask prod backup|backups|restore`: the prod database's backups, made by pgBackRest
//! in the db container into the `backups` volume, with the WAL archived continuously
//! (`compose/prod.yaml`) and a full backup on a schedule (`BACKUP_EVERY`, run by the db
//! image), so a database comes back as of its latest backup, as of any time since the oldest
//! one, or as of one backup alone. The compose prod stack by default; a swarm stack's with
//! `--stack NAME`.
//!
//! Every command runs inside the db service's containers (`docker compose exec` and `run`, or
//! `docker exec` into the swarm task and `docker run` with its service's image, settings and
//! mounts), so nothing is needed on the host and pgBackRest always matches the server.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::run::docker;
use crate::run::plan::{Plan, Step};
use crate::stack::{self, Stack};

mod restore;
mod status;

use restore::{restore_args, restore_steps, restore_swarm, scale_step};
pub use status::swarm_summary;
use status::{ARCHIVER, Health, State, bytes, info, now};

/// The database service of the prod definition.
const DB: &str = "db";
/// The services that write to the database, stopped while a restore runs.
const WRITERS: [&str; 1] = ["server"];

/// Every row of every table outside the system schemas, counted exactly (in one query), but
/// for the migrations' bookkeeping (`alembic_version`: every migrated database has its row).
pub const COUNT_ROWS: &str = "SELECT coalesce(sum((xpath('/row/c/text()', query_to_xml(format(\
    'SELECT count(*) AS c FROM %I.%I', schemaname, tablename), false, true, '')))[1]::text::bigint), 0) \
    FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
    AND tablename <> 'alembic_version'";

/// Where the db image keeps pgBackRest's repository, and the schedule's state in it.
const SCHEDULE_FILE: &str = "/var/lib/pgbackrest/schedule";

/// What `prod backup|backups|restore` does.
#[derive(Debug, Clone)]
pub enum BackupAction {
    /// A new backup: full, or only what changed since the last (`diff`, `incr`).
    Backup { kind: String },
    /// The backups there are, and how far the archived WAL reaches.
    List,
    /// Replace the database with a restored one.
    Restore { target: RestoreTarget, force: bool, timeout: Duration },
}

/// What a restore brings back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Everything archived: the latest backup and every WAL segment after it.
    Latest,
    /// The database as it was at this time (`2026-12-05 13:40:00+00`): the newest backup
    /// before it, then the WAL up to it.
    Time(String),
    /// One backup alone, by its label (`prod backups` lists them), without the WAL after it.
    Backup(String),
}

impl RestoreTarget {
    fn args(&self) -> Vec<String> {
        match self {
            RestoreTarget::Latest => Vec::new(),
            RestoreTarget::Time(time) => {
                vec![
                    "--type=time".into(),
                    format!("--target={time}"),
                    "--target-action=promote".into(),
                ]
            }
            RestoreTarget::Backup(label) => {
                vec![
                    format!("--set={label}"),
                    "--type=immediate".into(),
                    "--target-action=promote".into(),
                ]
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            RestoreTarget::Latest => "the latest backup and all the WAL archived after it".into(),
            RestoreTarget::Time(time) => format!("the database as it was at {time}"),
            RestoreTarget::Backup(label) => format!("backup {label} alone"),
        }
    }
}

/// Where the database runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// The `db` service of the compose prod stack.
    Compose(Stack),
    /// The `db` service of the swarm stack `name`, through its task's container on this
    /// engine. `stack` gives the repository and the settings.
    Swarm { stack: Stack, name: String },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Compose(stack) => format!("stack {}", stack.project),
            Target::Swarm { name, .. } => format!("swarm stack {name}"),
        }
    }

    /// `args` run in the db container: `container` is the swarm task's (see [`Self::container`]).
    fn exec_in(&self, container: &str, args: &[&str]) -> Step {
        match self {
            Target::Compose(stack) => {
                stack.compose().args(["exec", "--no-TTY", DB]).args(args.iter().copied())
            }
            Target::Swarm { stack, .. } => docker::cli(&stack.root)
                .args(["exec", "--interactive", container])
                .args(args.iter().copied()),
        }
    }

    /// The running db container, by id: none for compose (it execs by service), the swarm
    /// task's container on this engine otherwise.
    fn container(&self) -> Result<String> {
        match self {
            Target::Compose(stack) => {
                if !stack::running_services(stack)?.iter().any(|s| s == DB) {
                    bail!(
                        "the {DB} service of stack {} is not running: start it with `cargo xtask prod up`",
                        stack.project
                    );
                }
                Ok(String::new())
            }
            Target::Swarm { stack, name } => {
                let found = swarm_db_containers(stack, name)?;
                match found.first() {
                    Some(id) => Ok(id.clone()),
                    None => bail!(
                        "no running {name}_{DB} task on this engine: run this on the node that \
                         runs it (`docker service ps {name}_{DB}`), or deploy the stack with \
                         `cargo xtask prod deploy --swarm --stack {name}`"
                    ),
                }
            }
        }
    }

    /// The container name plans show for the swarm task, which is found when the step runs.
    fn planned_container(&self) -> String {
        match self {
            Target::Compose(_) => String::new(),
            Target::Swarm { name, .. } => format!("<the running {name}_{DB} task>"),
        }
    }
}

/// The running containers of stack `name`'s db service on this engine.
fn swarm_db_containers(stack: &Stack, name: &str) -> Result<Vec<String>> {
    crate::stack::swarm::task_containers(&stack.root, &format!("{name}_{DB}"))
}

/// `pgbackrest ARGS` in the running db container.
fn pgbackrest(target: &Target, container: &str, args: &[&str]) -> Step {
    target.exec_in(container, &[&["pgbackrest"], args].concat())
}

/// `psql` in the running db container, one query, its rows unaligned.
fn query(target: &Target, container: &str, sql: &str) -> Step {
    let psql = ["psql", "--username=memories", "--dbname=memories", "--no-psqlrc", "--no-align"];
    let options = ["--tuples-only", "--quiet", "--set=ON_ERROR_STOP=1", "--command", sql];
    target.exec_in(container, &[&psql[..], &options[..]].concat())
}

/// Creates the stanza (pgBackRest's record of this cluster) unless it exists: run once the
/// database is up, before the first backup; WAL archiving succeeds only after it. An existing
/// stanza is seen with `info`, which takes no lock: `stanza-create` would wait on the lock of
/// a backup running meanwhile (the schedule's) and fail.
fn ensure_stanza(target: &Target, container: &str) -> Result<()> {
    let text = pgbackrest(target, container, &["info", "--output=json"]).quiet().read()?;
    if stanza_exists(&text) {
        return Ok(());
    }
    pgbackrest(target, container, &["stanza-create"]).quiet().run()
}

/// Whether `pgbackrest info --output=json` lists a usable stanza: status 0 ("ok") or 2 ("no
/// valid backups"); any other (1 "missing stanza path", 3 "missing stanza data", ...) is left
/// to `stanza-create`, which makes it or says what is wrong.
fn stanza_exists(info: &str) -> bool {
    let stanzas: Value = serde_json::from_str(info).unwrap_or(Value::Null);
    let first = stanzas.as_array().and_then(|s| s.first());
    first.is_some_and(|s| matches!(s["status"]["code"].as_i64(), Some(0 | 2)))
}

/// [`ensure_stanza`] in the db service of the compose stack.
pub fn ensure_compose_stanza(stack: &Stack) -> Result<()> {
    ensure_stanza(&Target::Compose(stack.clone()), "")
}

/// [`ensure_stanza`] in the db task of swarm stack `name` on this engine.
pub fn create_swarm_stanza(stack: &Stack, name: &str) -> Result<()> {
    let target = Target::Swarm { stack: stack.clone(), name: name.to_owned() };
    let container = target.container()?;
    ensure_stanza(&target, &container)
}

pub fn run(target: &Target, action: BackupAction, json: bool) -> Result<()> {
    if let Target::Compose(stack) = target {
        stack::require_own_kind(stack)?;
    }
    match action {
        BackupAction::Backup { kind } => {
            let container = target.container()?;
            ensure_stanza(target, &container).context("cannot create pgBackRest's stanza")?;
            let started = std::time::Instant::now();
            pgbackrest(target, &container, &["backup", &format!("--type={kind}")])
                .run()
                .context("the backup failed; the backups made before it are unchanged")?;
            let info = info(target, &container)?;
            let newest =
                info.backups.last().context("pgBackRest lists no backup after one was made")?;
            say!(
                "backup {} ({}) of {}: {} of data, {} stored, in {:.1} s",
                newest.label,
                newest.kind,
                target.describe(),
                bytes(newest.size),
                bytes(newest.stored),
                started.elapsed().as_secs_f64()
            );
            if json {
                out!("{}", newest.to_json());
            }
            Ok(())
        }
        BackupAction::List => {
            let container = target.container()?;
            let state = State::read(target, &container)?;
            let health = state.health(now());
            if json {
                out!("{:#}", state.to_json(&health));
            } else {
                out!(
                    "{:<26} {:<5} {:<25} {:>10} {:>10}",
                    "LABEL",
                    "TYPE",
                    "FINISHED",
                    "DATA",
                    "STORED"
                );
                for b in &state.info.backups {
                    out!(
                        "{:<26} {:<5} {:<25} {:>10} {:>10}",
                        b.label,
                        b.kind,
                        crate::image::version::rfc3339_utc(b.stopped),
                        bytes(b.size),
                        bytes(b.stored)
                    );
                }
                match &state.archiver.last_archived {
                    Some(at) => out!("WAL archived up to {at}: a restore reaches that time"),
                    None => out!("no WAL archived yet"),
                }
                out!("{}", state.schedule.describe());
            }
            match health {
                Health::Ok => Ok(()),
                Health::NoBackup => bail!(
                    "{} has no backup yet: `cargo xtask prod backup` makes one",
                    target.describe()
                ),
                Health::Failing(why) | Health::Stale(why) => bail!("{why}"),
            }
        }
        BackupAction::Restore { target: to, force, timeout } => match target {
            Target::Compose(stack) => restore::restore(stack, &to, force, timeout),
            Target::Swarm { stack, name } => restore_swarm(stack, name, &to, force, timeout),
        },
    }
}

/// What `prod backup|backups|restore` would run.
pub fn plan(target: &Target, action: &BackupAction) -> Plan {
    let mut plan = Plan::new(format!("prod backups of {}", target.describe()));
    plan = match target {
        Target::Compose(_) => plan.note(
            "first refuses a project whose containers or volumes belong to a stack of another kind",
        ),
        Target::Swarm { name, .. } => {
            plan.note(format!("runs in the container of the {name}_{DB} task on this engine"))
        }
    };
    let container = target.planned_container();
    let container = container.as_str();
    match action {
        BackupAction::Backup { kind } => plan
            .step(pgbackrest(target, container, &["stanza-create"]))
            .step(pgbackrest(target, container, &["backup", &format!("--type={kind}")]))
            .step(pgbackrest(target, container, &["info", "--output=json"])),
        BackupAction::List => plan
            .step(pgbackrest(target, container, &["info", "--output=json"]))
            .step(query(target, container, ARCHIVER))
            .step(target.exec_in(container, &["cat", SCHEDULE_FILE]))
            .note(
                "fails when there is no backup, when WAL archiving or the scheduled backup \
                 fails, or when the newest full backup is older than the schedule allows",
            ),
        BackupAction::Restore { target: to, force, .. } => {
            let plan = match force {
                true => plan.note("--force: replaces what the database holds"),
                false => plan.note("refuses a database that holds rows (--force replaces them)"),
            };
            let plan = plan.note(format!("restores {}:", to.describe()));
            match target {
                Target::Compose(stack) => plan
                    .steps(restore_steps(stack, to))
                    .note("then starts the database, waits until it has recovered and is ready, then the rest of the stack"),
                Target::Swarm { stack, name } => {
                    let writers: Vec<(String, u64)> =
                        WRITERS.iter().map(|w| (format!("{name}_{w}"), 0)).collect();
                    let db = format!("{name}_{DB}");
                    let stopped = [writers, vec![(db.clone(), 0)]].concat();
                    plan.step(scale_step(stack, &stopped))
                        .note(format!("waits until {db}'s container has exited, then runs in a one-off container of {db}'s image, pgBackRest settings and mounts:"))
                        .step(Step::new("pgbackrest", stack.root.clone()).args(restore_args(to)))
                        .note(format!("then scales {db} back, waits until it has recovered and is ready, then scales the writers back"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
