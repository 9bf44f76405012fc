//! `cargo xtask dev --watch`: the running dev stack follows the working tree.
//!
//! The rules are the services' own `develop.watch` entries in the compose files (compose's
//! format, read through the service model), so `docker compose watch` and this loop read one
//! definition. File events come from the OS (the `notify` crate); a burst of them is debounced
//! into one batch, and each batch becomes at most one action per service:
//! - `sync` copies the changed files into the running container as a tar stream through the
//!   engine's API (`docker cp -`), and removes deleted ones: no bind mount, so a remote engine
//!   works as well as a local one;
//! - `sync+restart` then restarts the service: by its reload signal (`memories.reload`), which
//!   makes its main process start the app again in place, else `docker compose restart`;
//! - `rebuild` builds the service's image and recreates only that service.
//!
//! After each action the service's probe runs again, and one line says how long it took from
//! the first change to ready, or why it failed, with its last log lines. A failure never ends
//! the watch; the next change tries again. Ctrl-C ends the watch and leaves the stack running.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use notify::Watcher as _;
use serde_json::{Value, json};

use crate::image::version::Revision;
use crate::run::docker;
use crate::run::interrupt;
use crate::stack::services::{Model, Service, WatchAction, WatchRule};
use crate::stack::{self, Stack};
use crate::wait::{self, Attempt, Check, Probe, WaitOptions};

/// How long the tree must stay quiet before a batch of changes is acted on.
const QUIET: Duration = Duration::from_millis(40);
/// The longest a batch waits for quiet, so that a steady stream of writes still syncs.
const BATCH_LIMIT: Duration = Duration::from_millis(500);
/// How many log lines of a failed service are shown.
const LOG_LINES: usize = 20;

/// What [`watch`] needs besides the stack.
pub struct WatchOptions {
    /// How long a service may take to be ready after an action.
    pub timeout: Duration,
    /// Events as JSON lines on stdout, instead of nothing.
    pub json: bool,
}

/// Files never synced and never a reason to act: editor swap, backup and lock files, Python's
/// bytecode, VCS metadata.
fn always_ignored(name: &str) -> bool {
    matches!(name, "__pycache__" | ".git" | ".mypy_cache" | ".pytest_cache" | ".ruff_cache")
        || matches!(name, "4913" | ".DS_Store")
        || name.ends_with('~')
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
        || [".swp", ".swx", ".swo", ".tmp", ".pyc", ".pyo"].iter().any(|end| name.ends_with(end))
}

/// `*` and `?` wildcards over one path component.
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Whether `relative` (a path under a rule's path) is ignored by the rule's patterns or by
/// [`always_ignored`]. A pattern with a `/` inside matches from the rule's path down; one
/// without matches any component (`__pycache__/`, `*.log`).
fn ignored(relative: &Utf8Path, patterns: &[String]) -> bool {
    let components: Vec<&str> = relative.components().map(|c| c.as_str()).collect();
    if components.iter().any(|c| always_ignored(c)) {
        return true;
    }
    patterns.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('/');
        let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            [] => false,
            [one] => components.iter().any(|c| glob(one, c)),
            many => {
                many.len() <= components.len()
                    && many.iter().zip(&components).all(|(p, c)| glob(p, c))
            }
        }
    })
}

/// The path of `path` under `rule`'s path, when the rule covers it and does not ignore it.
fn covered<'a>(rule: &WatchRule, path: &'a Utf8Path) -> Option<&'a Utf8Path> {
    let relative = path.strip_prefix(&rule.path).ok()?;
    (!ignored(relative, &rule.ignore)).then_some(relative)
}

/// What one batch of changes asks of the services.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Services to rebuild and recreate.
    pub rebuild: BTreeSet<String>,
    /// Per service, the files to copy in: (host path, path in the container).
    pub sync: BTreeMap<String, Vec<(Utf8PathBuf, String)>>,
    /// Services to restart after their sync.
    pub restart: BTreeSet<String>,
}

impl Batch {
    /// The batch of `paths` (absolute) under `model`'s rules: each service takes the strongest
    /// action any of its rules asks for (a rebuild covers any sync).
    pub fn of(model: &Model, paths: &BTreeSet<Utf8PathBuf>) -> Batch {
        let mut batch = Batch::default();
        for service in &model.services {
            for path in paths {
                for rule in &service.watch {
                    let Some(relative) = covered(rule, path) else { continue };
                    match (rule.action, &rule.target) {
                        (WatchAction::Rebuild, _) => {
                            batch.rebuild.insert(service.name.clone());
                        }
                        (WatchAction::Sync | WatchAction::SyncRestart, Some(target)) => {
                            let inside = match relative.as_str() {
                                "" => target.clone(),
                                relative => format!("{}/{relative}", target.trim_end_matches('/')),
                            };
                            let files = batch.sync.entry(service.name.clone()).or_default();
                            if !files.iter().any(|(_, i)| *i == inside) {
                                files.push((path.clone(), inside));
                            }
                            if rule.action == WatchAction::SyncRestart {
                                batch.restart.insert(service.name.clone());
                            }
                        }
                        (_, None) => {}
                    }
                }
            }
        }
        for service in &batch.rebuild {
            batch.sync.remove(service);
            batch.restart.remove(service);
        }
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.rebuild.is_empty() && self.sync.is_empty()
    }
}

/// Where to watch for `model`'s rules: directories recursively, a file through its directory
/// (an editor that saves by renaming replaces the file's inode), and the parent of each
/// directory, so that a directory removed and made again (a branch switch, `git stash`) is
/// seen coming back.
fn watch_points(model: &Model) -> Vec<(Utf8PathBuf, notify::RecursiveMode)> {
    let mut points: BTreeMap<Utf8PathBuf, notify::RecursiveMode> = BTreeMap::new();
    let mut add = |point: Utf8PathBuf, mode| {
        let entry = points.entry(point).or_insert(mode);
        if mode == notify::RecursiveMode::Recursive {
            *entry = mode;
        }
    };
    for rule in model.services.iter().flat_map(|s| &s.watch) {
        let path = Utf8PathBuf::from(&rule.path);
        let parent = path.parent().map_or_else(|| path.clone(), Utf8Path::to_owned);
        if path.is_dir() {
            add(path, notify::RecursiveMode::Recursive);
        }
        add(parent, notify::RecursiveMode::NonRecursive);
    }
    // A directory under one watched recursively needs no watch of its own.
    let recursive: Vec<Utf8PathBuf> = points
        .iter()
        .filter(|(_, mode)| **mode == notify::RecursiveMode::Recursive)
        .map(|(p, _)| p.clone())
        .collect();
    points
        .into_iter()
        .filter(|(point, _)| !recursive.iter().any(|r| r != point && point.starts_with(r)))
        .collect()
}

/// The directories watched recursively that were removed, and their coming back: notify
/// forgets a directory once it is removed, so one made again is watched anew and synced whole.
struct Returning {
    points: Vec<Utf8PathBuf>,
    lost: BTreeSet<Utf8PathBuf>,
}

impl Returning {
    fn new(points: &[(Utf8PathBuf, notify::RecursiveMode)]) -> Returning {
        let points = points
            .iter()
            .filter(|(_, mode)| *mode == notify::RecursiveMode::Recursive)
            .map(|(p, _)| p.clone())
            .collect();
        Returning { points, lost: BTreeSet::new() }
    }

    /// Notes the directories gone since the last look; watches again each one that is back
    /// and adds it to `paths`, so that everything in it is synced.
    fn look(
        &mut self,
        watcher: &mut impl notify::Watcher,
        paths: &mut BTreeSet<Utf8PathBuf>,
    ) -> Result<()> {
        for point in &self.points {
            if !point.is_dir() {
                self.lost.insert(point.clone());
            } else if self.lost.remove(point) {
                let _ = watcher.unwatch(point.as_std_path());
                watcher
                    .watch(point.as_std_path(), notify::RecursiveMode::Recursive)
                    .with_context(|| format!("cannot watch {point} again"))?;
                say!("{point} is back: watching it again, and syncing all of it");
                paths.insert(point.clone());
            }
        }
        Ok(())
    }
}

/// One line of `--json` output, or nothing.
struct Events {
    json: bool,
}

impl Events {
    fn emit(&self, event: Value) {
        if self.json {
            out!("{event}");
        }
    }
}

/// Watches until Ctrl-C; the stack (already up and ready) is left running.
pub fn watch(
    stack: &Stack,
    model: &Model,
    revision: &Revision,
    options: &WatchOptions,
) -> Result<()> {
    let watched = Model { services: watched(model).into_iter().cloned().collect() };
    if watched.services.is_empty() {
        bail!(
            "no service of stack {} has `develop.watch` rules: add them to compose/dev.yaml",
            stack.project
        );
    }
    let (sender, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(sender).context("cannot watch files")?;
    let points = watch_points(&watched);
    for (point, mode) in &points {
        watcher
            .watch(point.as_std_path(), *mode)
            .with_context(|| format!("cannot watch {point}"))?;
    }
    let out = Events { json: options.json };
    let relative =
        |path: &Utf8Path| -> String { path.strip_prefix(&stack.root).unwrap_or(path).to_string() };
    say!(
        "watching {} for {}; Ctrl-C stops watching (the stack keeps running)",
        points.iter().map(|(p, _)| relative(p)).collect::<Vec<_>>().join(", "),
        watched.names().join(", ")
    );
    out.emit(json!({
        "event": "watching",
        "project": stack.project,
        "services": watched.names(),
        "paths": points.iter().map(|(p, _)| relative(p)).collect::<Vec<_>>(),
    }));
    let mut updater = Updater::new(stack, model, revision, options, &out);
    // Looked up now, so that the first edit does not pay for it.
    for service in watched.services.iter().filter(|s| s.watch.iter().any(|r| r.target.is_some())) {
        updater.container(&service.name)?;
    }
    let mut returning = Returning::new(&points);
    // The changes of services that failed: part of every batch until they are served, so that
    // "ready" always means every saved change is running.
    let mut pending: BTreeSet<Utf8PathBuf> = BTreeSet::new();
    loop {
        let Some((first, mut paths)) = next_batch(&events)? else {
            say!("stopped watching; the stack keeps running (`cargo xtask dev down` stops it)");
            return Ok(());
        };
        returning.look(&mut watcher, &mut paths)?;
        let fresh = Batch::of(&watched, &paths);
        if fresh.is_empty() {
            continue;
        }
        out.emit(json!({
            "event": "change",
            "paths": paths.iter().map(|p| relative(p)).collect::<Vec<_>>(),
        }));
        paths.append(&mut pending);
        let batch = Batch::of(&watched, &paths);
        match updater.apply(&batch, first) {
            Ok(failed) => {
                let failed = watched.only(&failed.iter().map(String::as_str).collect::<Vec<_>>());
                pending = paths
                    .into_iter()
                    .filter(|path| !Batch::of(&failed, &BTreeSet::from([path.clone()])).is_empty())
                    .collect();
            }
            Err(_) if interrupt::is_set() => {
                say!(
                    "stopped watching during an update; `cargo xtask dev` brings every service \
                     back to the working tree"
                );
                return Ok(());
            }
            Err(err) => return Err(err),
        }
    }
}

/// Waits for changes, then collects them until the tree is quiet: the time of the first
/// event and every path touched. `None` on Ctrl-C.
fn next_batch(
    events: &mpsc::Receiver<notify::Result<notify::Event>>,
) -> Result<Option<(Instant, BTreeSet<Utf8PathBuf>)>> {
    let mut paths = BTreeSet::new();
    let mut first: Option<Instant> = None;
    loop {
        if interrupt::is_set() {
            return Ok(None);
        }
        let pause = match first {
            None => Duration::from_millis(100),
            Some(at) if at.elapsed() >= BATCH_LIMIT => return Ok(Some((at, paths))),
            Some(_) => QUIET,
        };
        match events.recv_timeout(pause) {
            Ok(Ok(event)) => {
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    continue;
                }
                let mut any = false;
                for path in event.paths {
                    if let Ok(path) = Utf8PathBuf::from_path_buf(path) {
                        any |= !path.components().any(|c| always_ignored(c.as_str()));
                        paths.insert(path);
                    }
                }
                if any && first.is_none() {
                    first = Some(Instant::now());
                }
            }
            Ok(Err(err)) => say!("warning: a file event was lost: {err}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(at) = first {
                    return Ok(Some((at, paths)));
                }
                paths.clear();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the file watcher stopped"),
        }
    }
}

/// Applies batches to the running stack.
struct Updater<'a> {
    stack: &'a Stack,
    model: &'a Model,
    revision: &'a Revision,
    options: &'a WatchOptions,
    out: &'a Events,
    /// Each service's container, looked up once and again after a recreate.
    containers: BTreeMap<String, Container>,
}

/// A running container and the pid of its main process (its init), as the engine sees them.
#[derive(Debug, Clone)]
struct Container {
    id: String,
    init: u32,
}

impl<'a> Updater<'a> {
    fn new(
        stack: &'a Stack,
        model: &'a Model,
        revision: &'a Revision,
        options: &'a WatchOptions,
        out: &'a Events,
    ) -> Updater<'a> {
        Updater { stack, model, revision, options, out, containers: BTreeMap::new() }
    }

    /// Applies one batch: rebuilds, then syncs and restarts, then waits for every service it
    /// touched and reports each; returns the services that failed. Only an interrupt or a
    /// broken engine is an error; a service that fails is reported and the watch goes on.
    fn apply(&mut self, batch: &Batch, first: Instant) -> Result<BTreeSet<String>> {
        let mut failures = BTreeSet::new();
        let mut waits: Vec<(String, Box<dyn Check>)> = Vec::new();
        let mut failed: Vec<(String, String)> = Vec::new();
        if !batch.rebuild.is_empty() {
            match self.rebuild(&batch.rebuild) {
                Ok(()) => {
                    for name in &batch.rebuild {
                        self.containers.remove(name);
                        if let Some(probe) = self.probe(name) {
                            waits.push((
                                name.clone(),
                                stack::service_check(self.stack, name, &probe),
                            ));
                        }
                    }
                }
                Err(err) if interrupt::is_set() => return Err(err),
                Err(err) => {
                    let reason = format!("{err:#}");
                    failed.extend(batch.rebuild.iter().map(|name| (name.clone(), reason.clone())));
                }
            }
        }
        for (name, files) in &batch.sync {
            let restart = batch.restart.contains(name);
            match self.sync_and_restart(name, files, restart) {
                Ok(check) => {
                    if let Some(check) = check {
                        waits.push((name.clone(), check));
                    }
                }
                Err(err) if interrupt::is_set() => return Err(err),
                Err(err) => failed.push((name.clone(), format!("{err:#}"))),
            }
        }
        for (name, reason) in failed {
            self.report_failure(&name, first, &reason);
            failures.insert(name);
        }
        for (name, check) in waits {
            let outcome = wait::wait(
                vec![(name.clone(), check)],
                WaitOptions {
                    timeout: self.options.timeout,
                    cancel: Some(interrupt::flag()),
                    ..WaitOptions::default()
                },
                &wait::SystemClock::new(),
                |_, _| {},
            );
            match wait::outcome_result(&outcome, self.options.timeout) {
                Ok(()) => {
                    let ms = first.elapsed().as_millis();
                    say!("{name} ready in {ms} ms");
                    self.out.emit(json!({"event": "ready", "service": name, "ms": ms}));
                }
                Err(err) if interrupt::is_set() => return Err(err),
                Err(_) => {
                    let reason = outcome
                        .reports
                        .first()
                        .and_then(|r| r.last_error.clone())
                        .unwrap_or_else(|| "not ready".to_owned());
                    self.containers.remove(&name);
                    self.report_failure(&name, first, &reason);
                    failures.insert(name);
                }
            }
        }
        Ok(failures)
    }

    fn report_failure(&self, name: &str, first: Instant, reason: &str) {
        let ms = first.elapsed().as_millis();
        say!("{name} failed after {ms} ms: {reason}");
        let logs = self
            .stack
            .compose_all_profiles()
            .args(["logs", "--no-color", "--no-log-prefix", "--tail", &LOG_LINES.to_string(), name])
            .quiet()
            .read()
            .unwrap_or_default();
        let logs = without_escapes(&logs);
        let lines: Vec<&str> = logs.lines().collect();
        if !lines.is_empty() {
            say!("--- last {} log lines of {name} ---", lines.len());
            for line in &lines {
                say!("{line}");
            }
            say!("--- the watch goes on: save a fix and {name} starts again ---");
        }
        self.out.emit(json!({
            "event": "failed", "service": name, "ms": ms, "error": reason, "logs": lines,
        }));
    }

    fn probe(&self, name: &str) -> Option<Probe> {
        let service = self.model.service(name)?;
        let only = Model { services: vec![service.clone()] };
        self.stack.probes(&only, &|_, port| port.published).into_iter().next().map(|(_, p)| p)
    }

    /// Builds the services' images and recreates those services alone.
    fn rebuild(&self, services: &BTreeSet<String>) -> Result<()> {
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        for name in &names {
            self.out.emit(json!({"event": "action", "action": "rebuild", "service": name}));
        }
        say!("rebuilding {}", names.join(", "));
        let only = self.model.only(&names);
        if !self.stack.images(&only).is_empty() {
            stack::build(self.stack, &only, self.revision)?;
        }
        let up = ["up", "--detach", "--no-deps", "--force-recreate", "--no-build"];
        self.stack
            .compose()
            .args(up)
            .args(["--pull", "never"])
            .args(names.iter().copied())
            .run()
            .context("cannot recreate the rebuilt services")
    }

    /// Copies `files` into `name`'s container (removing those that are gone), then restarts
    /// it when asked. Returns the check that says when it is ready again.
    fn sync_and_restart(
        &mut self,
        name: &str,
        files: &[(Utf8PathBuf, String)],
        restart: bool,
    ) -> Result<Option<Box<dyn Check>>> {
        let service = self.model.require(name)?.clone();
        let container = self.container(name)?;
        let (present, gone): (Vec<_>, Vec<_>) = files.iter().partition(|(host, _)| host.exists());
        self.out.emit(json!({
            "event": "action",
            "action": if restart { "sync+restart" } else { "sync" },
            "service": name,
            "files": files.iter().map(|(_, inside)| inside).collect::<Vec<_>>(),
        }));
        if !present.is_empty() {
            copy_in(&self.stack.root, &container.id, &present)?;
        }
        if !gone.is_empty() {
            docker::cli(&self.stack.root)
                .args(["exec", "--user", "0", &container.id, "rm", "-rf", "--"])
                .args(gone.iter().map(|(_, inside)| inside.clone()))
                .quiet()
                .read()
                .with_context(|| format!("cannot remove deleted files from {name}"))?;
        }
        let probe = self.probe(name);
        if !restart {
            return Ok(probe.map(|p| stack::service_check(self.stack, name, &p)));
        }
        match &service.reload {
            Some(signal) => {
                let before = app_processes(&self.stack.root, &container)?;
                docker::cli(&self.stack.root)
                    .args(["kill", "--signal", signal, &container.id])
                    .quiet()
                    .read()
                    .with_context(|| format!("cannot signal {name} to reload"))?;
                Ok(Some(Box::new(Reloaded {
                    root: self.stack.root.clone(),
                    container,
                    before,
                    probe: probe.as_ref().map(wait::checks::for_probe),
                    gone_at: None,
                    looked: None,
                })))
            }
            None => {
                self.stack.compose().args(["restart", name]).quiet().read()?;
                self.containers.remove(name);
                Ok(probe.map(|p| stack::service_check(self.stack, name, &p)))
            }
        }
    }

    fn container(&mut self, name: &str) -> Result<Container> {
        if let Some(container) = self.containers.get(name) {
            return Ok(container.clone());
        }
        let id = self.stack.compose().args(["ps", "--quiet", name]).quiet().read()?;
        let Some(id) = id.lines().next().map(str::to_owned) else {
            bail!("{name} has no running container: `cargo xtask dev` starts it");
        };
        let init = docker::cli(&self.stack.root)
            .args(["inspect", "--format", "{{.State.Pid}}", &id])
            .quiet()
            .read()?;
        let init = init.trim().parse().with_context(|| format!("{name}: no process id"))?;
        let container = Container { id, init };
        self.containers.insert(name.to_owned(), container.clone());
        Ok(container)
    }
}

/// `text` without terminal escape sequences (compose erases each line before it writes it).
fn without_escapes(text: &str) -> String {
    let mut clean = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            clean.push(c);
            continue;
        }
        // CSI: ESC [ parameters, then one final byte in @..~.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    clean
}

/// Copies files into a container: one tar stream through the engine (`docker cp -`), each
/// entry at its absolute path in the container, owned by root and readable by all. What
/// cannot be copied is said and left out, never a reason to fail the others: a socket, a fifo
/// or a device is skipped; a link is followed only to a file or directory inside the project
/// (`root`), and one that leads outside is copied as the link it is, so that nothing outside
/// the project reaches the container.
fn copy_in(root: &Utf8Path, container: &str, files: &[&(Utf8PathBuf, String)]) -> Result<()> {
    let mut archive = tar::Builder::new(Vec::new());
    archive.mode(tar::HeaderMode::Deterministic);
    let root = root.canonicalize_utf8().with_context(|| format!("cannot read {root}"))?;
    let mut skipped = Vec::new();
    for (host, inside) in files {
        let inside = inside.trim_start_matches('/');
        add_entry(&mut archive, &root, host, inside, 0, &mut skipped)?;
    }
    for note in &skipped {
        say!("not synced: {note}");
    }
    let bytes = archive.into_inner().context("cannot write the sync archive")?;
    docker::cli(root.as_path())
        .args(["cp", "-", &format!("{container}:/")])
        .stdin_bytes(bytes)
        .quiet()
        .read()
        .with_context(|| format!("cannot copy the changed files into {container}"))?;
    Ok(())
}

/// How deep links inside the project may lead before a loop is assumed.
const LINK_DEPTH: usize = 16;

/// Adds `host` to `archive` as `inside`: a file, a directory with what it holds, or a link
/// (see [`copy_in`]); what is left out is said in `skipped`.
fn add_entry(
    archive: &mut tar::Builder<Vec<u8>>,
    root: &Utf8Path,
    host: &Utf8Path,
    inside: &str,
    depth: usize,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let metadata = match host.symlink_metadata() {
        Ok(metadata) => metadata,
        // Removed since the event: the next batch removes it in the container.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {host}")),
    };
    let kind = metadata.file_type();
    if kind.is_symlink() {
        let target = host.canonicalize_utf8().ok().filter(|t| t.starts_with(root));
        match target {
            Some(target) if depth < LINK_DEPTH => {
                return add_entry(archive, root, &target, inside, depth + 1, skipped);
            }
            _ => {
                let link = host.read_link_utf8().with_context(|| format!("cannot read {host}"))?;
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                archive
                    .append_link(&mut header, inside, &link)
                    .with_context(|| format!("cannot add {host}"))?;
                skipped.push(format!(
                    "{host} links outside the project (or too deep): copied as a link to {link}, \
                     not what it points to"
                ));
                return Ok(());
            }
        }
    }
    if kind.is_dir() {
        archive.append_dir(inside, host).with_context(|| format!("cannot read {host}"))?;
        let mut children: Vec<_> = host
            .read_dir_utf8()
            .with_context(|| format!("cannot read {host}"))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read {host}"))?;
        children.sort_by(|a, b| a.file_name().cmp(b.file_name()));
        for child in children {
            if always_ignored(child.file_name()) {
                continue;
            }
            let name = format!("{inside}/{}", child.file_name());
            add_entry(archive, root, child.path(), &name, depth, skipped)?;
        }
        return Ok(());
    }
    if !kind.is_file() {
        skipped.push(format!("{host} is not a file, a directory or a link (a socket, say)"));
        return Ok(());
    }
    let mut file = std::fs::File::open(host).with_context(|| format!("cannot read {host}"))?;
    archive.append_file(inside, &mut file).with_context(|| format!("cannot read {host}"))
}

/// The processes whose parent is the container's main process: the app a reload replaces.
/// (Healthchecks and `exec`s are children of the runtime, not of the main process.)
fn app_processes(root: &Utf8Path, container: &Container) -> Result<BTreeSet<u32>> {
    let listing = docker::cli(root)
        .args(["top", &container.id, "-o", "pid,ppid"])
        .quiet()
        .timeout(Duration::from_secs(10))
        .read()
        .context("cannot list the container's processes")?;
    Ok(listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace().map(str::parse::<u32>);
            match (words.next(), words.next()) {
                (Some(Ok(pid)), Some(Ok(ppid))) if ppid == container.init => Some(pid),
                _ => None,
            }
        })
        .collect())
}

/// Ready after a reload signal: once the app that ran before has exited (so the probe cannot
/// reach it), when the probe answers. Failed when no app runs for a while (the new one
/// exited: a broken edit).
struct Reloaded {
    root: Utf8PathBuf,
    container: Container,
    /// The app's processes before the signal.
    before: BTreeSet<u32>,
    probe: Option<Box<dyn Check>>,
    /// When no app process was first seen.
    gone_at: Option<Instant>,
    looked: Option<Instant>,
}

/// How long no app process may be seen before the reload counts as failed: much longer than
/// the supervisor takes between one app's exit and the next one's fork.
const NO_APP_GRACE: Duration = Duration::from_millis(300);

impl Check for Reloaded {
    fn attempt(&mut self, timeout: Duration) -> Attempt {
        let now = Instant::now();
        let look = !self.before.is_empty()
            || self.looked.is_none_or(|at| now - at >= Duration::from_millis(150));
        if look {
            self.looked = Some(now);
            let apps = match app_processes(&self.root, &self.container) {
                Ok(apps) => apps,
                Err(err) => return Attempt::Failed(format!("{err:#}")),
            };
            if !self.before.is_empty() {
                if apps.iter().any(|pid| self.before.contains(pid)) {
                    return Attempt::NotYet("the app that ran before is stopping".into());
                }
                self.before.clear();
            }
            if apps.is_empty() {
                let since = *self.gone_at.get_or_insert(now);
                if now - since >= NO_APP_GRACE {
                    return Attempt::Failed("the app exited after the reload".into());
                }
            } else {
                self.gone_at = None;
            }
        }
        match &mut self.probe {
            Some(probe) => probe.attempt(timeout),
            None if self.gone_at.is_none() => Attempt::Ready,
            None => Attempt::NotYet("no app process yet".into()),
        }
    }
}

/// The services of `model` the watch acts on, for the plan.
pub fn watched(model: &Model) -> Vec<&Service> {
    model.services.iter().filter(|s| !s.watch.is_empty()).collect()
}

#[cfg(test)]
mod tests;
