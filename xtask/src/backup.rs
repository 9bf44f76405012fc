//! `cargo xtask prod backup|backups|restore`: the prod stack's backups, made by pgBackRest in
//! the db container into the `backups` volume, with the WAL archived continuously
//! (`compose/prod.yaml`), so a database comes back as of its latest backup, as of any time
//! since the oldest one, or as of one backup alone.
//!
//! Every command runs inside the db service's containers (`docker compose exec` and `run`), so
//! nothing is needed on the host and pgBackRest always matches the server.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::plan::{Plan, Step};
use crate::stack::{self, Stack};

/// The database service of the prod definition.
const DB: &str = "db";
/// The services that write to the database, stopped while a restore runs.
const WRITERS: [&str; 1] = ["server"];

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

/// `pgbackrest ARGS` in the running db container.
fn pgbackrest(stack: &Stack, args: &[&str]) -> Step {
    stack.compose().args(["exec", "--no-TTY", DB, "pgbackrest"]).args(args.iter().copied())
}

/// `psql` in the running db container, one query, its rows unaligned.
fn query(stack: &Stack, sql: &str) -> Step {
    stack
        .compose()
        .args(["exec", "--no-TTY", DB, "psql", "--username=memories", "--dbname=memories"])
        .args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet", "--set=ON_ERROR_STOP=1"])
        .args(["--command", sql])
}

/// Creates the stanza (pgBackRest's record of this cluster) unless it exists: run once the
/// database is up, before the first backup; WAL archiving succeeds only after it.
pub fn stanza_step(stack: &Stack) -> Step {
    pgbackrest(stack, &["stanza-create"])
}

pub fn run(stack: &Stack, action: BackupAction, json: bool) -> Result<()> {
    stack::require_own_kind(stack)?;
    match action {
        BackupAction::Backup { kind } => {
            require_db(stack)?;
            stanza_step(stack).quiet().run().context("cannot create pgBackRest's stanza")?;
            let started = std::time::Instant::now();
            pgbackrest(stack, &["backup", &format!("--type={kind}")])
                .run()
                .context("the backup failed; the backups made before it are unchanged")?;
            let info = info(stack)?;
            let newest =
                info.backups.last().context("pgBackRest lists no backup after one was made")?;
            say!(
                "backup {} ({}) of stack {}: {} of data, {} stored, in {:.1} s",
                newest.label,
                newest.kind,
                stack.project,
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
            require_db(stack)?;
            let info = info(stack)?;
            let archiver = archiver(stack)?;
            if json {
                let backups: Vec<Value> = info.backups.iter().map(Backup::to_json).collect();
                out!("{:#}", json!({"backups": backups, "archive": archiver.to_json()}));
            } else {
                out!(
                    "{:<26} {:<5} {:<25} {:>10} {:>10}",
                    "LABEL",
                    "TYPE",
                    "FINISHED",
                    "DATA",
                    "STORED"
                );
                for b in &info.backups {
                    out!(
                        "{:<26} {:<5} {:<25} {:>10} {:>10}",
                        b.label,
                        b.kind,
                        crate::version::rfc3339_utc(b.stopped),
                        bytes(b.size),
                        bytes(b.stored)
                    );
                }
                match &archiver.last_archived {
                    Some(at) => out!("WAL archived up to {at}: a restore reaches that time"),
                    None => out!("no WAL archived yet"),
                }
            }
            if let Some(failure) = archiver.failing() {
                bail!("{failure}");
            }
            if info.backups.is_empty() {
                bail!(
                    "stack {} has no backup yet: `cargo xtask prod backup` makes one",
                    stack.project
                );
            }
            Ok(())
        }
        BackupAction::Restore { target, force, timeout } => restore(stack, &target, force, timeout),
    }
}

fn require_db(stack: &Stack) -> Result<()> {
    if !stack::running_services(stack)?.iter().any(|s| s == DB) {
        bail!(
            "the {DB} service of stack {} is not running: start it with `cargo xtask prod up`",
            stack.project
        );
    }
    Ok(())
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
            "started": crate::version::rfc3339_utc(self.started),
            "finished": crate::version::rfc3339_utc(self.stopped),
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

fn info(stack: &Stack) -> Result<Info> {
    let text = pgbackrest(stack, &["info", "--output=json"]).quiet().read()?;
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

fn archiver(stack: &Stack) -> Result<Archiver> {
    Ok(parse_archiver(&query(stack, ARCHIVER).quiet().read()?))
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
    let listed = crate::docker::cli(&stack.root)
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
        .args(["restore", "--delta"])
        .args(target.args());
    vec![stop, restore]
}

fn restore(stack: &Stack, target: &RestoreTarget, force: bool, timeout: Duration) -> Result<()> {
    let running = stack::running_services(stack)?;
    if running.iter().any(|s| s == DB) {
        let rows = crate::db::count_rows_step(stack, DB).quiet().read()?;
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
    let rows = crate::db::count_rows_step(stack, DB).quiet().read()?;
    say!(
        "restored {} into stack {}: {} rows, the database ready {:.1} s after the writers stopped",
        target.describe(),
        stack.project,
        rows.trim(),
        restored.as_secs_f64()
    );
    Ok(())
}

/// What `prod backup|backups|restore` would run.
pub fn plan(stack: &Stack, action: &BackupAction) -> Plan {
    let plan = Plan::new(format!("prod backups of stack {}", stack.project)).note(
        "first refuses a project whose containers or volumes belong to a stack of another kind",
    );
    match action {
        BackupAction::Backup { kind } => plan
            .step(stanza_step(stack))
            .step(pgbackrest(stack, &["backup", &format!("--type={kind}")]))
            .step(pgbackrest(stack, &["info", "--output=json"])),
        BackupAction::List => plan
            .step(pgbackrest(stack, &["info", "--output=json"]))
            .step(query(stack, ARCHIVER))
            .note("fails when WAL archiving is failing, or when there is no backup"),
        BackupAction::Restore { target, force, .. } => {
            let plan = match force {
                true => plan.note("--force: replaces what the database holds"),
                false => plan.note("refuses a database that holds rows (--force replaces them)"),
            };
            plan.note(format!("restores {}:", target.describe()))
                .steps(restore_steps(stack, target))
                .note("then starts the database, waits until it has recovered and is ready, then the rest of the stack")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbackrest_info_is_read_oldest_first() {
        let text = r#"[{"name":"memories","backup":[
            {"label":"20261205-134000F_20261205-135000I","type":"incr",
             "timestamp":{"start":1796481000,"stop":1796481002},
             "info":{"size":31000000,"repository":{"delta":120000,"size":3000000}}},
            {"label":"20261205-134000F","type":"full",
             "timestamp":{"start":1796480400,"stop":1796480405},
             "info":{"size":30000000,"repository":{"delta":2900000,"size":2900000}}}]}]"#;
        let info = parse_info(text).unwrap();
        assert_eq!(info.backups[0].label, "20261205-134000F");
        assert_eq!(info.backups[1].kind, "incr");
        assert_eq!(info.backups[0].stored, 2_900_000);
        assert!(parse_info("[]").unwrap().backups.is_empty());
        assert!(parse_info("not json").is_err());
    }

    #[test]
    fn a_failing_archiver_is_an_error_that_says_how_far_a_restore_reaches() {
        let ok = parse_archiver("2026-12-05T13:40:00Z|||false\n");
        assert_eq!(ok.last_archived.as_deref(), Some("2026-12-05T13:40:00Z"));
        assert!(ok.failing().is_none());
        let failing = parse_archiver(
            "2026-12-05T13:40:00Z|2026-12-05T13:45:00Z|00000001000000000000000A|true",
        );
        let why = failing.failing().unwrap();
        assert!(why.contains("00000001000000000000000A") && why.contains("13:40:00Z"), "{why}");
    }

    #[test]
    fn a_restore_target_becomes_pgbackrest_options() {
        assert!(RestoreTarget::Latest.args().is_empty());
        let time = RestoreTarget::Time("2026-12-05 13:40:00+00".into()).args();
        assert_eq!(
            time,
            ["--type=time", "--target=2026-12-05 13:40:00+00", "--target-action=promote"]
        );
        let one = RestoreTarget::Backup("20261205-134000F".into()).args();
        assert_eq!(one, ["--set=20261205-134000F", "--type=immediate", "--target-action=promote"]);
        assert_eq!(bytes(1536), "1.5 kB");
        assert_eq!(bytes(3 << 20), "3.0 MB");
    }
}
