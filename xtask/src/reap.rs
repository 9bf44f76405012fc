//! Run labels and the reaper: everything a test run creates in Docker carries the run's id, so
//! that the run removes it at the end whatever happened, and a later run removes what a run
//! whose process is gone left behind (as testcontainers' reaper does).
//!
//! The id is `t<host>-<pid>-<start>`: a hash of this machine's name and boot, the pid of the
//! process that owns the run, and that process's start time in clock ticks since boot (so a
//! reused pid is not mistaken for the run). It is lowercase letters, digits and dashes, so it
//! can also be part of a container, project or image repository name. Containers, networks,
//! volumes, and on a swarm services and secrets, carry it as the label `memories.run`;
//! throwaway image repositories carry it in their name.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use crate::docker;
use crate::interrupt;
use crate::plan::Step;

/// A directory of this process's run that only this user can enter, removed with everything
/// in it when dropped: `<parent>/<prefix><run id>`. Making one first removes the ones of
/// processes that are gone, so what a task killed with `kill -9` left behind (a bundle's copy,
/// image archives: gigabytes) goes with the next run of it.
pub struct RunDir(Utf8PathBuf);

impl RunDir {
    /// The path [`RunDir::new`] makes in this process, for plans.
    pub fn planned(parent: &Utf8Path, prefix: &str) -> Utf8PathBuf {
        let owner = RunId::of_process(std::process::id())
            .map_or_else(|| format!("pid{}", std::process::id()), |run| run.to_string());
        parent.join(format!("{prefix}{owner}"))
    }

    pub fn new(parent: &Utf8Path, prefix: &str) -> Result<RunDir> {
        use std::os::unix::fs::DirBuilderExt;
        sweep_run_dirs(parent, prefix);
        let owner = RunId::of_process(std::process::id())
            .context("cannot name a run's directory: /proc is needed")?;
        let dir = parent.join(format!("{prefix}{owner}"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the directory {dir}"))?;
        Ok(RunDir(dir))
    }

    pub fn path(&self) -> &Utf8Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the run directories `<parent>/<prefix><run id>` whose process is gone.
fn sweep_run_dirs(parent: &Utf8Path, prefix: &str) {
    let Ok(entries) = parent.read_dir_utf8() else { return };
    for entry in entries.flatten() {
        let owner = entry.file_name().strip_prefix(prefix).and_then(RunId::parse);
        if owner.is_some_and(|run| run.owner() == Owner::Gone) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The label that names the run a container, network or volume belongs to.
pub const LABEL: &str = "memories.run";
/// The variable that hands the run's id to what the run starts: the test binaries, compose
/// (which puts it into [`LABEL`]) and the xtask commands the tests run.
pub const ENV: &str = "MEMORIES_RUN";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunId {
    host: u32,
    pid: u32,
    start: u64,
}

/// Whether the process that owns a run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Alive,
    Gone,
    /// Another machine's run, or one this machine cannot judge: never reaped from here.
    Unknown,
}

impl RunId {
    /// The id of a run owned by process `pid` of this machine.
    pub fn of_process(pid: u32) -> Option<RunId> {
        Some(RunId { host: host_hash()?, pid, start: process_start(pid)? })
    }

    pub fn parse(text: &str) -> Option<RunId> {
        RunId::parse_prefix(text).filter(|(_, length)| *length == text.len()).map(|(id, _)| id)
    }

    /// The id at the start of `text`, and how many bytes it takes.
    fn parse_prefix(text: &str) -> Option<(RunId, usize)> {
        let host = text.strip_prefix('t')?.get(..8)?;
        if !host.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let host = u32::from_str_radix(host, 16).ok()?;
        // `-` and digits from `at`: the number and where it ends.
        let number = |at: usize| -> Option<(u64, usize)> {
            let digits = text.get(at..)?.strip_prefix('-')?;
            let length = digits.bytes().take_while(u8::is_ascii_digit).count();
            let value = digits[..length].parse().ok()?;
            Some((value, at + 1 + length))
        };
        let (pid, at) = number(9)?;
        let (start, end) = number(at)?;
        Some((RunId { host, pid: u32::try_from(pid).ok()?, start }, end))
    }

    pub fn owner(&self) -> Owner {
        if host_hash() != Some(self.host) {
            return Owner::Unknown;
        }
        match process_start(self.pid) {
            Some(start) if start == self.start => Owner::Alive,
            // The pid is free, or names a process that started later.
            _ if std::fs::metadata("/proc/self/stat").is_ok() => Owner::Gone,
            _ => Owner::Unknown,
        }
    }
}

/// `--label memories.run=<run>` inside a test run (one named by `MEMORIES_RUN`), for what a
/// task creates with `docker run` or `docker volume create`; nothing outside one.
pub fn label_args() -> Vec<String> {
    match inherited() {
        Some(run) => vec!["--label".to_owned(), format!("{LABEL}={run}")],
        None => Vec::new(),
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{:08x}-{}-{}", self.host, self.pid, self.start)
    }
}

/// Every run id written inside `text` (an image repository, a project name).
fn ids_in(text: &str) -> Vec<RunId> {
    let found = text.match_indices('t').filter_map(|(at, _)| RunId::parse_prefix(&text[at..]));
    found.map(|(id, _)| id).collect()
}

/// The run named by `MEMORIES_RUN`: what this process creates belongs to it.
pub fn inherited() -> Option<RunId> {
    std::env::var(ENV).ok().and_then(|run| RunId::parse(&run))
}

/// A hash of this machine's name and boot: pids and start times mean something only there.
fn host_hash() -> Option<u32> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    // FNV-1a: stable across builds and Rust versions, unlike the standard hasher.
    let hash = format!("{}/{}", name.trim(), boot.trim())
        .bytes()
        .fold(0x811c_9dc5u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    Some(hash)
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// What one run left in Docker.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Swarm services (whose tasks are among the containers).
    pub services: Vec<String>,
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    /// Swarm secrets.
    pub secrets: Vec<String>,
    pub tags: Vec<String>,
}

impl Leftovers {
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.containers.is_empty()
            && self.networks.is_empty()
            && self.volumes.is_empty()
            && self.secrets.is_empty()
            && self.tags.is_empty()
    }

    fn to_json(&self) -> Value {
        json!({
            "services": self.services,
            "containers": self.containers,
            "networks": self.networks,
            "volumes": self.volumes,
            "secrets": self.secrets,
            "tags": self.tags,
        })
    }

    fn bucket(&mut self, kind: Kind) -> &mut Vec<String> {
        match kind {
            Kind::Service => &mut self.services,
            Kind::Container => &mut self.containers,
            Kind::Network => &mut self.networks,
            Kind::Volume => &mut self.volumes,
            Kind::Secret => &mut self.secrets,
        }
    }
}

/// The labelled kinds of Docker object.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    Container,
    Network,
    Volume,
    Secret,
}

/// Lists what every run left, by run: labelled containers, networks and volumes, and image
/// tags whose repository names a run.
pub fn inventory(root: &Utf8Path, when: When) -> Result<BTreeMap<RunId, Leftovers>> {
    let mut runs: BTreeMap<RunId, Leftovers> = BTreeMap::new();
    let label = format!("{{{{.Label \"{LABEL}\"}}}}");
    let listings = [
        (Kind::Container, ["ps", "--all", "--no-trunc"].as_slice(), "{{.ID}}"),
        (Kind::Network, &["network", "ls", "--no-trunc"], "{{.ID}}"),
        (Kind::Volume, &["volume", "ls"], "{{.Name}}"),
    ];
    for (kind, command, id) in listings {
        let listing = docker::cli(root).args(command.iter().copied()).args([
            "--filter".to_owned(),
            format!("label={LABEL}"),
            "--format".to_owned(),
            format!("{id}\t{label}"),
        ]);
        let listed =
            query(listing, when).with_context(|| format!("cannot list labelled {}", command[0]))?;
        add_labelled(&mut runs, kind, &listed);
    }
    if is_swarm_manager(root, when)? {
        for (kind, what) in [(Kind::Service, "service"), (Kind::Secret, "secret")] {
            // Neither listing can show a label's value: inspect what it found.
            let found = docker::cli(root)
                .args([what, "ls", "--quiet", "--filter"])
                .arg(format!("label={LABEL}"));
            let found = query(found, when).with_context(|| format!("cannot list {what}s"))?;
            let ids: Vec<&str> = found.split_whitespace().collect();
            if ids.is_empty() {
                continue;
            }
            let format = format!("{{{{.ID}}}}\t{{{{index .Spec.Labels \"{LABEL}\"}}}}");
            let inspect =
                docker::cli(root).args([what, "inspect", "--format", &format]).args(ids.clone());
            // One that went away between the two calls is no leftover.
            let listed = match query(inspect, when) {
                Ok(listed) => listed,
                Err(_) if interrupt::is_set() => return Err(interrupt::Interrupted.into()),
                Err(_) => continue,
            };
            add_labelled(&mut runs, kind, &listed);
        }
    }
    // The listing shows `repository:tag`, but an image a swarm task pulled by `tag@digest` is
    // named `repository:tag@sha256:...`, which only that full name removes: the names come
    // from inspecting the images whose repository names a run.
    let listing = docker::cli(root).args(["image", "ls", "--no-trunc", "--format"]);
    let listing = listing.arg("{{.ID}}\t{{.Repository}}");
    let listed = query(listing, when).context("cannot list image tags")?;
    let mut ids: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, repository)| !ids_in(repository).is_empty())
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        let format = "{{range .RepoTags}}{{println .}}{{end}}";
        let inspect = docker::cli(root).args(["image", "inspect", "--format", format]).args(ids);
        // An image removed between the two calls makes inspect fail for it alone: the others'
        // names are still on its stdout.
        let inspect = inspect.quiet();
        let named = match when {
            When::Before => inspect.capture()?,
            When::Cleanup => inspect.capture_regardless()?,
        };
        for name in named.stdout.lines().filter(|n| !n.is_empty()) {
            for run in ids_in(crate::oci::repository_of(name)) {
                let tags = &mut runs.entry(run).or_default().tags;
                if !tags.iter().any(|t| t == name) {
                    tags.push(name.to_owned());
                }
            }
        }
    }
    Ok(runs)
}

/// Files `id<TAB>run` lines under their runs.
fn add_labelled(runs: &mut BTreeMap<RunId, Leftovers>, kind: Kind, listed: &str) {
    for line in listed.lines() {
        let Some((id, run)) = line.split_once('\t') else { continue };
        if let Some(run) = RunId::parse(run.trim()) {
            runs.entry(run).or_default().bucket(kind).push(id.to_owned());
        }
    }
}

/// Whether the engine manages a swarm, and so can hold services and secrets.
fn is_swarm_manager(root: &Utf8Path, when: When) -> Result<bool> {
    let info = docker::cli(root).args(["info", "--format", "{{.Swarm.ControlAvailable}}"]);
    Ok(query(info, when).context("cannot ask the engine about swarm mode")?.trim() == "true")
}

/// When the reaper runs: the two differ in how a signal is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before a run's own work (or as `cargo xtask reap`): a signal stops it.
    Before,
    /// In a run's clean-up: shielded like every clean-up step (see [`Step::run_regardless`]).
    Cleanup,
}

/// Runs a listing or a removal quietly and returns its stdout.
fn query(step: Step, when: When) -> Result<String> {
    let step = step.quiet();
    let answer = match when {
        When::Before => step.capture()?,
        When::Cleanup => step.capture_regardless()?,
    };
    answer.stdout_of(&step)
}

/// Removes what `leftovers` lists: services first (so that swarm starts no new task), then
/// containers (with their anonymous volumes), then the networks, volumes and secrets they
/// used, then the tags.
pub fn remove(root: &Utf8Path, leftovers: &Leftovers, when: When) -> Result<()> {
    let mut failures = Vec::new();
    let mut each = |args: &[&str], ids: &[String]| {
        if ids.is_empty() {
            return;
        }
        let removed = query(docker::cli(root).args(args.iter().copied()).args(ids), when);
        if let Err(err) = removed {
            failures.push(format!("{err:#}"));
        }
    };
    each(&["service", "rm"], &leftovers.services);
    // Swarm stops a removed service's tasks after `service rm` returns; their network can go
    // only once they have.
    let tasks = ["ps", "--all", "--quiet"];
    until_gone(root, when, &tasks, "label=com.docker.swarm.service.id", &leftovers.services);
    each(&["rm", "--force", "--volumes"], &leftovers.containers);
    each(&["network", "rm"], &leftovers.networks);
    // A swarm network outlives its `network rm` for a moment, too.
    until_gone(root, when, &["network", "ls", "--quiet"], "id", &leftovers.networks);
    each(&["volume", "rm", "--force"], &leftovers.volumes);
    each(&["secret", "rm"], &leftovers.secrets);
    each(&["image", "rm"], &leftovers.tags);
    if !failures.is_empty() {
        anyhow::bail!("cannot remove all of a run's leftovers: {}", failures.join("; "));
    }
    Ok(())
}

/// Waits, at most a minute, until the docker listing `list` filtered to `key=ID` for each of
/// `ids` lists nothing.
fn until_gone(root: &Utf8Path, when: When, list: &[&str], key: &str, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let filters = ids.iter().flat_map(|id| ["--filter".to_owned(), format!("{key}={id}")]);
    let listing = docker::cli(root).args(list.iter().copied()).args(filters);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let stopped = match when {
            When::Before => interrupt::is_set(),
            When::Cleanup => interrupt::cleanup_abandoned(),
        };
        let listed = query(listing.clone(), when);
        if stopped || listed.is_ok_and(|l| l.trim().is_empty()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Removes everything of run `run`: in the clean-up at the end of the run itself.
pub fn remove_run(root: &Utf8Path, run: RunId) -> Result<()> {
    let mut runs = inventory(root, When::Cleanup)?;
    match runs.remove(&run) {
        Some(leftovers) if !leftovers.is_empty() => {
            say!("removing what test run {run} left: {}", summary(&leftovers));
            remove(root, &leftovers, When::Cleanup)
        }
        _ => Ok(()),
    }
}

/// Runs `work` as a test run: first removes what dead runs left, then runs `work` with this
/// process's run id (for it to hand on in [`ENV`]), then removes everything labelled with the
/// id, whatever `work` returned. The first error wins.
pub fn as_run(root: &Utf8Path, work: impl FnOnce(RunId) -> Result<()>) -> Result<()> {
    let run = RunId::of_process(std::process::id())
        .context("cannot name this test run: /proc is needed to tell live runs from dead ones")?;
    if let Err(err) = reap(root, false, false) {
        say!("warning: cannot remove what earlier test runs left: {err:#}");
    }
    say!("test run {run} (Docker objects it creates carry the label {LABEL}={run})");
    let result = work(run);
    let removed = remove_run(root, run);
    result.and(removed)
}

/// `cargo xtask reap`, also the start of every `cargo xtask test`: removes what runs whose
/// process is gone left behind, and says what it removed (or, with `dry_run`, would remove).
pub fn reap(root: &Utf8Path, dry_run: bool, json: bool) -> Result<()> {
    let runs = inventory(root, When::Before)?;
    let mut report = Vec::new();
    let mut result = Ok(());
    for (run, leftovers) in &runs {
        let owner = run.owner();
        report.push(json!({
            "run": run.to_string(),
            "owner": format!("{owner:?}").to_lowercase(),
            "removed": owner == Owner::Gone && !dry_run,
            "leftovers": leftovers.to_json(),
        }));
        match owner {
            Owner::Gone if dry_run => {
                say!("would remove what run {run} left: {}", summary(leftovers))
            }
            Owner::Gone => {
                say!("removing what run {run} left (its process is gone): {}", summary(leftovers));
                if let Err(err) = remove(root, leftovers, When::Before) {
                    result = Err(err);
                }
            }
            Owner::Alive => say!("keeping run {run}: its process still runs"),
            Owner::Unknown => say!("keeping run {run}: it belongs to another machine"),
        }
    }
    if json {
        out!("{}", Value::from(report));
    } else if runs.is_empty() {
        say!("no run left anything behind");
    }
    result
}

fn summary(leftovers: &Leftovers) -> String {
    let parts = [
        (leftovers.services.len(), "service"),
        (leftovers.containers.len(), "container"),
        (leftovers.networks.len(), "network"),
        (leftovers.volumes.len(), "volume"),
        (leftovers.secrets.len(), "secret"),
        (leftovers.tags.len(), "image tag"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directories_of_processes_that_are_gone_are_removed() {
        let parent = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("reap-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let ours = RunId::of_process(std::process::id()).unwrap().to_string();
        // This machine's part of a run id, with a pid and start time no live process has.
        let gone = format!("{}-4194000-1", &ours[..9]);
        for name in [&ours, &gone, &"not-a-run".to_owned()] {
            std::fs::create_dir_all(parent.join(format!("p-{name}/x"))).unwrap();
        }
        sweep_run_dirs(&parent, "p-");
        assert!(parent.join(format!("p-{ours}")).exists(), "a live process keeps it");
        assert!(!parent.join(format!("p-{gone}")).exists(), "a dead one's goes");
        assert!(parent.join("p-not-a-run").exists(), "not ours: kept");
        let made = RunDir::new(&parent, "q-").unwrap();
        assert_eq!(made.path(), parent.join(format!("q-{ours}")));
        let mode = std::fs::metadata(made.path()).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
        drop(made);
        assert!(!parent.join(format!("q-{ours}")).exists(), "removed when dropped");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn ids_round_trip_and_are_found_inside_names() {
        let own = RunId::of_process(std::process::id()).expect("linux has /proc");
        assert_eq!(RunId::parse(&own.to_string()), Some(own));
        assert_eq!(own.owner(), Owner::Alive);
        for bad in ["", "t123-1-2", "tzzzzzzzz-1-2", "t0000000a-1", "t0000000a--2", "x0000000a-1-2"]
        {
            assert_eq!(RunId::parse(bad), None, "{bad}");
        }
        let repository = format!("localhost/arm64-test-{own}-42-0/server");
        assert_eq!(ids_in(&repository), [own]);
        assert_eq!(ids_in("memories/server"), []);
    }

    #[test]
    fn a_run_whose_process_is_gone_or_was_replaced_is_gone() {
        let mut child = crate::plan::Step::new("true", ".")
            .quiet()
            .spawn(crate::plan::Streams::SILENT)
            .unwrap();
        let id = RunId::of_process(child.id());
        child.wait().unwrap();
        // The child may have exited before its start time could be read.
        if let Some(id) = id {
            assert_eq!(id.owner(), Owner::Gone);
        }
        let own = RunId::of_process(std::process::id()).unwrap();
        let reused = RunId { start: own.start + 1, ..own };
        assert_eq!(reused.owner(), Owner::Gone);
        let elsewhere = RunId { host: own.host.wrapping_add(1), ..own };
        assert_eq!(elsewhere.owner(), Owner::Unknown);
    }
}
