//! What the backups are: pgBackRest's `info`, the db image's schedule and the WAL archiver,
//! read as data, and the health of the whole (`prod backups`, `prod status`).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{SCHEDULE_FILE, Target, pgbackrest, query};
use crate::stack::Stack;

/// The seconds since the epoch now.
pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Everything known about a database's backups: what `prod backups` lists and `prod status`
/// sums up.
pub struct State {
    pub(super) info: Info,
    pub(super) archiver: Archiver,
    pub(super) schedule: Schedule,
}

impl State {
    pub(super) fn read(target: &Target, container: &str) -> Result<State> {
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
    pub(super) fn health(&self, now: i64) -> Health {
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

    pub(super) fn to_json(&self, health: &Health) -> Value {
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
    pub(super) fn to_json(&self) -> Value {
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
pub(super) struct Schedule {
    /// Seconds between full backups; 0 when there is no schedule.
    pub(super) every: u64,
    pub(super) last_attempt: Option<i64>,
    pub(super) last_ok: Option<i64>,
    pub(super) last_error: Option<String>,
}

pub(super) fn parse_schedule(text: &str) -> Schedule {
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
    pub(super) fn failing(&self) -> Option<String> {
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

    pub(super) fn describe(&self) -> String {
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

    pub(super) fn to_json(&self) -> Value {
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
pub(super) struct Backup {
    pub(super) label: String,
    pub(super) kind: String,
    /// When it started and stopped, as unix times.
    pub(super) started: i64,
    pub(super) stopped: i64,
    /// The database's size, and what the repository stores for this backup.
    pub(super) size: u64,
    pub(super) stored: u64,
}

impl Backup {
    pub(super) fn to_json(&self) -> Value {
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

pub(super) struct Info {
    pub(super) backups: Vec<Backup>,
}

/// Reads `pgbackrest info --output=json` (one stanza).
pub(super) fn parse_info(text: &str) -> Result<Info> {
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

pub(super) fn info(target: &Target, container: &str) -> Result<Info> {
    let text = pgbackrest(target, container, &["info", "--output=json"]).quiet().read()?;
    parse_info(&text)
}

/// What PostgreSQL says about archiving the WAL.
#[derive(Debug, Default)]
pub(super) struct Archiver {
    pub(super) last_archived: Option<String>,
    pub(super) last_failed: Option<String>,
    pub(super) last_failed_wal: Option<String>,
    pub(super) failing: bool,
}

impl Archiver {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "last_archived": self.last_archived,
            "last_failed": self.last_failed,
            "last_failed_wal": self.last_failed_wal,
            "failing": self.failing,
        })
    }

    /// Why archiving is broken, when its last attempt failed.
    pub(super) fn failing(&self) -> Option<String> {
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

pub(super) const ARCHIVER: &str = "SELECT coalesce(to_char(last_archived_time AT TIME ZONE 'UTC', \
    'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') || '|' || coalesce(to_char(last_failed_time AT TIME ZONE \
    'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') || '|' || coalesce(last_failed_wal, '') || '|' || \
    (coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false))::text \
    FROM pg_stat_archiver";

pub(super) fn parse_archiver(line: &str) -> Archiver {
    let mut parts = line.trim().split('|');
    let mut next = || parts.next().filter(|p| !p.is_empty()).map(str::to_owned);
    let (last_archived, last_failed, last_failed_wal) = (next(), next(), next());
    let failing = next().as_deref() == Some("true");
    Archiver { last_archived, last_failed, last_failed_wal, failing }
}

/// A duration for people, in its largest whole unit: `24h`, `90m`, `30s`.
pub(super) fn duration_text(secs: u64) -> String {
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
pub(super) fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} kB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
