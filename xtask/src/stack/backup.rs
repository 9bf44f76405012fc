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
use serde_json::{Value, json};

use crate::run::docker;
use crate::run::plan::{Plan, Step};
use crate::stack::{self, Stack};

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
            Target::Compose(stack) => restore(stack, &to, force, timeout),
            Target::Swarm { stack, name } => restore_swarm(stack, name, &to, force, timeout),
        },
    }
}

/// The seconds since the epoch now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Everything known about a database's backups: what `prod backups` lists and `prod status`
/// sums up.
pub struct State {
    info: Info,
    archiver: Archiver,
    schedule: Schedule,
}

impl State {
    fn read(target: &Target, container: &str) -> Result<State> {
        let info = info(target, container)?;
        let archiver = parse_archiver(&query(target, container, ARCHIVER).quiet().read()?);
        // No file: the image has no schedule, or its first check has not run yet.
        let file = target.exec_in(container, &["cat", SCHEDULE_FILE]).quiet().capture()?;
        let schedule = match file.success() {
            true => parse_schedule(&file.stdout),
            false => Schedule::default(),
        };
        Ok(State { info, archiver, schedule })
    }

    /// How the backups stand at `now`.
    fn health(&self, now: i64) -> Health {
        if let Some(failure) = self.archiver.failing() {
            return Health::Failing(failure);
        }
        if let Some(failure) = self.schedule.failing() {
            return Health::Failing(failure);
        }
        let Some(newest) = self.info.backups.iter().rev().find(|b| b.kind == "full") else {
            return match self.info.backups.is_empty() {
                true => Health::NoBackup,
                false => Health::Ok,
            };
        };
        // A schedule runs late by at most its check and the backup's own time: half an
        // interval and five minutes of slack.
        let every = self.schedule.every as i64;
        let age = now - newest.started;
        if every > 0 && age > every + every / 2 + 300 {
            return Health::Stale(format!(
                "the newest full backup, {}, is {} old although the schedule takes one every {}: \
                 the db's log says why (`docker logs`)",
                newest.label,
                duration_text(age.max(0) as u64),
                duration_text(every as u64),
            ));
        }
        Health::Ok
    }

    fn to_json(&self, health: &Health) -> Value {
        let backups: Vec<Value> = self.info.backups.iter().map(Backup::to_json).collect();
        json!({
            "health": health.to_json(),
            "backups": backups,
            "archive": self.archiver.to_json(),
            "schedule": self.schedule.to_json(),
        })
    }
}

/// How a database's backups stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// No backup at all: nothing could be restored.
    NoBackup,
    /// WAL archiving or the scheduled backup fails, with why.
    Failing(String),
    /// The newest full backup is older than the schedule allows.
    Stale(String),
}

impl Health {
    fn to_json(&self) -> Value {
        let (status, problem) = match self {
            Health::Ok => ("ok", None),
            Health::NoBackup => ("none", Some("there is no backup yet")),
            Health::Failing(why) => ("failing", Some(why.as_str())),
            Health::Stale(why) => ("stale", Some(why.as_str())),
        };
        json!({"status": status, "problem": problem})
    }
}

/// The backups' health of swarm stack `name` for `prod status`: `{"health": ..., ...}`, or an
/// `unknown` health saying why it could not be read (the db task runs on another node).
pub fn swarm_summary(stack: &Stack, name: &str) -> Value {
    let target = Target::Swarm { stack: stack.clone(), name: name.to_owned() };
    let read = target.container().and_then(|container| State::read(&target, &container));
    match read {
        Ok(state) => {
            let health = state.health(now());
            let newest = state.info.backups.last();
            json!({
                "health": health.to_json(),
                "newest": newest.map(|b| b.label.clone()),
                "newest_finished": newest.map(|b| crate::image::version::rfc3339_utc(b.stopped)),
                "wal_archived_up_to": state.archiver.last_archived,
                "schedule_every_s": (state.schedule.every > 0).then_some(state.schedule.every),
            })
        }
        Err(e) => json!({"health": {"status": "unknown", "problem": format!("{e:#}")}}),
    }
}

/// The schedule's state, as the db image writes it (`docker/db/entrypoint.sh`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Schedule {
    /// Seconds between full backups; 0 when there is no schedule.
    every: u64,
    last_attempt: Option<i64>,
    last_ok: Option<i64>,
    last_error: Option<String>,
}

fn parse_schedule(text: &str) -> Schedule {
    let mut schedule = Schedule::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        match key {
            "every" => schedule.every = value.parse().unwrap_or(0),
            "last_attempt" => schedule.last_attempt = value.parse().ok(),
            "last_ok" => schedule.last_ok = value.parse().ok(),
            "last_error" if !value.is_empty() => schedule.last_error = Some(value.to_owned()),
            _ => {}
        }
    }
    schedule
}

impl Schedule {
    /// Why the schedule fails, when its last attempt failed.
    fn failing(&self) -> Option<String> {
        let attempt = self.last_attempt?;
        if self.last_ok.is_some_and(|ok| ok >= attempt) {
            return None;
        }
        Some(format!(
            "the scheduled full backup at {} failed: {}",
            crate::image::version::rfc3339_utc(attempt),
            self.last_error.as_deref().unwrap_or("the db's log says why (`docker logs`)")
        ))
    }

    fn describe(&self) -> String {
        if self.every == 0 {
            return "no backup schedule (BACKUP_EVERY=off, or its first check has not run yet)"
                .into();
        }
        let every = duration_text(self.every);
        match self.last_ok {
            Some(ok) => format!(
                "a full backup every {every}; the last scheduled one at {}",
                crate::image::version::rfc3339_utc(ok)
            ),
            None => format!("a full backup every {every}; none scheduled yet"),
        }
    }

    fn to_json(&self) -> Value {
        let time = |t: Option<i64>| t.map(crate::image::version::rfc3339_utc);
        json!({
            "every_s": (self.every > 0).then_some(self.every),
            "last_attempt": time(self.last_attempt),
            "last_ok": time(self.last_ok),
            "last_error": self.last_error,
        })
    }
}

/// One backup, as `pgbackrest info --output=json` lists it.
#[derive(Debug, Clone)]
struct Backup {
    label: String,
    kind: String,
    /// When it started and stopped, as unix times.
    started: i64,
    stopped: i64,
    /// The database's size, and what the repository stores for this backup.
    size: u64,
    stored: u64,
}

impl Backup {
    fn to_json(&self) -> Value {
        json!({
            "label": self.label,
            "type": self.kind,
            "started": crate::image::version::rfc3339_utc(self.started),
            "finished": crate::image::version::rfc3339_utc(self.stopped),
            "size": self.size,
            "stored": self.stored,
        })
    }
}

struct Info {
    backups: Vec<Backup>,
}

/// Reads `pgbackrest info --output=json` (one stanza).
fn parse_info(text: &str) -> Result<Info> {
    let stanzas: Value =
        serde_json::from_str(text).context("pgbackrest info printed something that is not JSON")?;
    let Some(stanza) = stanzas.as_array().and_then(|s| s.first()) else {
        return Ok(Info { backups: Vec::new() });
    };
    let mut backups = Vec::new();
    for b in stanza["backup"].as_array().into_iter().flatten() {
        let (Some(label), Some(kind)) = (b["label"].as_str(), b["type"].as_str()) else {
            bail!("pgbackrest info lists a backup without a label or type: {b}");
        };
        backups.push(Backup {
            label: label.to_owned(),
            kind: kind.to_owned(),
            started: b["timestamp"]["start"].as_i64().unwrap_or(0),
            stopped: b["timestamp"]["stop"].as_i64().unwrap_or(0),
            size: b["info"]["size"].as_u64().unwrap_or(0),
            stored: b["info"]["repository"]["delta"].as_u64().unwrap_or(0),
        });
    }
    backups.sort_by_key(|b| b.stopped);
    Ok(Info { backups })
}

fn info(target: &Target, container: &str) -> Result<Info> {
    let text = pgbackrest(target, container, &["info", "--output=json"]).quiet().read()?;
    parse_info(&text)
}

/// What PostgreSQL says about archiving the WAL.
#[derive(Debug, Default)]
struct Archiver {
    last_archived: Option<String>,
    last_failed: Option<String>,
    last_failed_wal: Option<String>,
    failing: bool,
}

impl Archiver {
    fn to_json(&self) -> Value {
        json!({
            "last_archived": self.last_archived,
            "last_failed": self.last_failed,
            "last_failed_wal": self.last_failed_wal,
            "failing": self.failing,
        })
    }

    /// Why archiving is broken, when its last attempt failed.
    fn failing(&self) -> Option<String> {
        self.failing.then(|| {
            format!(
                "WAL archiving is failing: the last attempt, for {} at {}, failed (the db's log \
                 says why); until it works again, no restore reaches past {}",
                self.last_failed_wal.as_deref().unwrap_or("?"),
                self.last_failed.as_deref().unwrap_or("?"),
                self.last_archived.as_deref().unwrap_or("the latest backup")
            )
        })
    }
}

const ARCHIVER: &str = "SELECT coalesce(to_char(last_archived_time AT TIME ZONE 'UTC', \
    'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') || '|' || coalesce(to_char(last_failed_time AT TIME ZONE \
    'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') || '|' || coalesce(last_failed_wal, '') || '|' || \
    (coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false))::text \
    FROM pg_stat_archiver";

fn parse_archiver(line: &str) -> Archiver {
    let mut parts = line.trim().split('|');
    let mut next = || parts.next().filter(|p| !p.is_empty()).map(str::to_owned);
    let (last_archived, last_failed, last_failed_wal) = (next(), next(), next());
    let failing = next().as_deref() == Some("true");
    Archiver { last_archived, last_failed, last_failed_wal, failing }
}

/// A duration for people, in its largest whole unit: `24h`, `90m`, `30s`.
fn duration_text(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s if s >= 3600 => format!("{:.1}h", s as f64 / 3600.0),
        s => format!("{s}s"),
    }
}

/// Bytes for people: `1.2 MB`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} kB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Whether the database's volume (`<project>_db-data`) exists.
fn data_volume_exists(stack: &Stack) -> Result<bool> {
    let name = format!("^{}_{DATA_VOLUME}$", stack.project);
    let listed = crate::run::docker::cli(&stack.root)
        .args(["volume", "ls", "--quiet", "--filter", &format!("name={name}")])
        .quiet()
        .read()?;
    Ok(!listed.trim().is_empty())
}

/// The database's volume in the definition.
const DATA_VOLUME: &str = "db-data";

/// The steps of a restore, in order, as the plan shows them.
fn restore_steps(stack: &Stack, target: &RestoreTarget) -> Vec<Step> {
    let stop = stack.compose().args(["stop", "--timeout", "10"]).args(WRITERS).arg(DB);
    let restore = stack
        .compose()
        .args(["run", "--rm", "--no-deps", "--no-TTY", "--entrypoint", "pgbackrest", DB])
        .args(restore_args(target));
    vec![stop, restore]
}

fn restore(stack: &Stack, target: &RestoreTarget, force: bool, timeout: Duration) -> Result<()> {
    let running = stack::running_services(stack)?;
    if running.iter().any(|s| s == DB) {
        let rows = query(&Target::Compose(stack.clone()), "", COUNT_ROWS).quiet().read()?;
        let rows: u64 = rows.trim().parse().with_context(|| {
            format!("cannot read a row count from `{}`; nothing was changed", rows.trim())
        })?;
        if rows > 0 && !force {
            bail!(
                "database memories of stack {} holds {rows} rows: pass --force to replace them with \
                 {} (nothing was changed)",
                stack.project,
                target.describe()
            );
        }
    } else if !force && data_volume_exists(stack)? {
        bail!(
            "the {DB} service of stack {} is not running but its volume is there, so its rows \
             cannot be counted: start it with `cargo xtask prod up`, or pass --force to replace \
             whatever the volume holds",
            stack.project
        );
    }
    // After `prod down` the secret files are gone; the containers of the restore need them.
    stack::write_secrets(stack, &stack::merged_definition(stack)?)?;
    say!(
        "restoring {} into stack {}; its writers stop meanwhile",
        target.describe(),
        stack.project
    );
    let started = std::time::Instant::now();
    let [stop, restore] = <[Step; 2]>::try_from(restore_steps(stack, target)).expect("two steps");
    stop.run().context("cannot stop the writers and the database; nothing was restored")?;
    restore.run().context(
        "the restore failed and the database is stopped: run the same `cargo xtask prod \
         restore` again with --force, or `cargo xtask prod up` to start what the volume holds",
    )?;
    let db_only = Stack { services: vec![DB.to_owned()], ..stack.clone() };
    stack::up_and_wait(&db_only, &db_only.model()?, timeout)
        .context("the restored database did not become ready")?;
    let restored = Duration::from_secs_f64(started.elapsed().as_secs_f64());
    stack::up_and_wait(stack, &stack.model()?, timeout).context("the stack did not come back")?;
    let rows = query(&Target::Compose(stack.clone()), "", COUNT_ROWS).quiet().read()?;
    say!(
        "restored {} into stack {}: {} rows, the database ready {:.1} s after the writers stopped",
        target.describe(),
        stack.project,
        rows.trim(),
        restored.as_secs_f64()
    );
    Ok(())
}

/// A swarm stack's service, as `docker service inspect` gives it.
fn inspect_service(stack: &Stack, service: &str) -> Result<Value> {
    let text = docker::cli(&stack.root)
        .args(["service", "inspect", service])
        .quiet()
        .read()
        .with_context(|| format!("cannot inspect service {service}: is the stack deployed?"))?;
    let list: Value =
        serde_json::from_str(&text).context("docker service inspect printed no JSON")?;
    list.get(0).cloned().with_context(|| format!("docker service inspect lists no {service}"))
}

fn replicas(service: &Value) -> u64 {
    service["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(1)
}

/// `docker run` of a one-off container with the db service's image, pgBackRest settings and
/// mounts (data, backups, /tmp), running `pgbackrest ARGS` with no network.
fn swarm_oneoff(stack: &Stack, name: &str, db: &Value, args: &[String]) -> Result<Step> {
    let spec = &db["Spec"]["TaskTemplate"]["ContainerSpec"];
    let image = spec["Image"].as_str().context("the db service names no image")?;
    let mut step = docker::cli(&stack.root)
        .args(["run", "--rm", "--name", &format!("{name}_restore"), "--network", "none"])
        .args(["--label", &format!("com.docker.stack.namespace={name}")]);
    for env in spec["Env"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if env.starts_with("PGBACKREST_") {
            step = step.args(["--env", env]);
        }
    }
    for mount in spec["Mounts"].as_array().into_iter().flatten() {
        step = step.args(["--mount", &mount_option(mount)?]);
    }
    Ok(step.args(["--entrypoint", "pgbackrest", image]).args(args))
}

/// One of a service's mounts as `docker run --mount`'s value, with the labels its volume is
/// created with (when a lost volume is created anew, it still belongs to the stack).
fn mount_option(mount: &Value) -> Result<String> {
    let field = |key: &str| mount[key].as_str().unwrap_or_default();
    let (kind, source, target) = (field("Type"), field("Source"), field("Target"));
    if [kind, source, target].iter().any(|f| f.contains(',') || f.contains('"')) {
        bail!(
            "the db service's mount {mount} has a comma or quote in it, which `--mount` cannot carry"
        );
    }
    let mut option = format!("type={kind},target={target}");
    if !source.is_empty() {
        option.push_str(&format!(",source={source}"));
    }
    if mount["ReadOnly"].as_bool() == Some(true) {
        option.push_str(",readonly");
    }
    let labels = mount["VolumeOptions"]["Labels"].as_object().into_iter().flatten();
    for (key, value) in labels {
        option.push_str(&format!(",volume-label={key}={}", value.as_str().unwrap_or_default()));
    }
    Ok(option)
}

/// `docker service scale --detach SERVICE=N ...`.
fn scale_step(stack: &Stack, scales: &[(String, u64)]) -> Step {
    docker::cli(&stack.root)
        .args(["service", "scale", "--detach"])
        .args(scales.iter().map(|(service, n)| format!("{service}={n}")))
}

/// A restore on a swarm: the writers and the db scaled to 0, `pgbackrest restore` in a
/// one-off container made from the db service, then the db and the writers scaled back.
fn restore_swarm(
    stack: &Stack,
    name: &str,
    to: &RestoreTarget,
    force: bool,
    timeout: Duration,
) -> Result<()> {
    crate::stack::swarm::require_manager(stack)?;
    let target = Target::Swarm { stack: stack.clone(), name: name.to_owned() };
    let db_service = format!("{name}_{DB}");
    let db = inspect_service(stack, &db_service)?;
    let mut writers = Vec::new();
    for writer in WRITERS {
        let service = format!("{name}_{writer}");
        writers.push((service.clone(), replicas(&inspect_service(stack, &service)?)));
    }
    match swarm_db_containers(stack, name)?.first() {
        Some(container) => {
            let rows = query(&target, container, COUNT_ROWS).quiet().read()?;
            let rows: u64 = rows.trim().parse().with_context(|| {
                format!("cannot read a row count from `{}`; nothing was changed", rows.trim())
            })?;
            if rows > 0 && !force {
                bail!(
                    "database memories of swarm stack {name} holds {rows} rows: pass --force to \
                     replace them with {} (nothing was changed)",
                    to.describe()
                );
            }
        }
        None if !force => bail!(
            "no running {db_service} task on this engine, so its rows cannot be counted: run \
             this on the node that runs it, or pass --force to replace whatever its volume holds"
        ),
        None => {}
    }
    let restore = swarm_oneoff(stack, name, &db, &restore_args(to))?;
    say!("restoring {} into swarm stack {name}; its writers stop meanwhile", to.describe());
    let started = std::time::Instant::now();
    let stopped: Vec<(String, u64)> =
        writers.iter().map(|(s, _)| (s.clone(), 0)).chain([(db_service.clone(), 0)]).collect();
    scale_step(stack, &stopped)
        .run()
        .context("cannot scale the writers and the database to 0; nothing was restored")?;
    // The volume is the restore's only once the database's container has exited.
    let deadline = std::time::Instant::now() + timeout;
    while !swarm_db_containers(stack, name)?.is_empty() {
        if std::time::Instant::now() > deadline {
            bail!(
                "{db_service}'s container still runs {timeout:?} after it was scaled to 0: \
                 nothing was restored; `docker service scale {db_service}={}` starts it again",
                replicas(&db)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let scale_back = format!(
        "`docker service scale {db_service}={} {}` starts what the volume holds",
        replicas(&db),
        writers.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(" ")
    );
    restore.run().with_context(|| {
        format!(
            "the restore failed and the database is scaled to 0: run the same `cargo xtask prod \
             restore` again with --force, or {scale_back}"
        )
    })?;
    let before = crate::stack::swarm::task_templates(&stack.root, name)?;
    scale_step(stack, &[(db_service.clone(), replicas(&db))]).run()?;
    crate::stack::swarm::wait(&stack.root, name, &[], &before, timeout)
        .context("the restored database did not become ready")?;
    let restored = started.elapsed();
    scale_step(stack, &writers).run()?;
    crate::stack::swarm::wait(&stack.root, name, &[], &before, timeout)
        .context("the writers did not come back")?;
    let container = target.container()?;
    let rows = query(&target, &container, COUNT_ROWS).quiet().read()?;
    say!(
        "restored {} into swarm stack {name}: {} rows, the database ready {:.1} s after the \
         writers stopped",
        to.describe(),
        rows.trim(),
        restored.as_secs_f64()
    );
    Ok(())
}

fn restore_args(to: &RestoreTarget) -> Vec<String> {
    [vec!["restore".to_owned(), "--delta".to_owned()], to.args()].concat()
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
