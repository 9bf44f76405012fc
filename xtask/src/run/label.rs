//! Run labels: everything a test run creates in Docker carries the run's id, so that the run
//! removes it at the end whatever happened, and a later run removes what a run whose process
//! is gone left behind (as testcontainers' reaper does: [`crate::tasks::reap`]). Also the
//! run's private directories, removed the same way.
//!
//! The id is `t<host>-<pid>-<start>`: a hash of this machine's name and boot, the pid of the
//! process that owns the run, and that process's start time in clock ticks since boot (so a
//! reused pid is not mistaken for the run). It is lowercase letters, digits and dashes, so it
//! can also be part of a container, project or image repository name. Containers, networks,
//! volumes, and on a swarm services and secrets, carry it as the label `memories.run`;
//! throwaway image repositories carry it in their name.

use std::fmt;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// A directory of this process's run that only this user can enter, removed with everything
/// in it when dropped: `<parent>/<prefix><run id>`. Making one first removes the ones of
/// processes that are gone, so what a task killed with `kill -9` left behind (a bundle's copy,
/// image archives: gigabytes) goes with the next run of it.
pub struct RunDir(Utf8PathBuf);

impl RunDir {
    /// The path [`RunDir::new`] makes in this process, for plans.
    pub fn planned(parent: &Utf8Path, prefix: &str) -> Utf8PathBuf {
        let owner = RunId::name_of_this_process();
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

    /// This process's run id as text, or `pid<N>` where `/proc` cannot name it: for the names
    /// of what a run plans to make.
    pub fn name_of_this_process() -> String {
        RunId::of_process(std::process::id())
            .map_or_else(|| format!("pid{}", std::process::id()), |run| run.to_string())
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
pub fn ids_in(text: &str) -> Vec<RunId> {
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
        let mut child = crate::run::plan::Step::new("true", ".")
            .quiet()
            .spawn(crate::run::plan::Streams::SILENT)
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
