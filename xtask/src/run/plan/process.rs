//! A started step and its supervision: where its streams go, the child it became, and how it
//! is stopped on Ctrl-C (SIGTERM, then SIGKILL after a grace period) or when dropped.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Captured;
use crate::run::interrupt::{self, Interrupted};

/// Where the streams of a spawned step go.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: Stream,
    pub stdout: Stream,
    pub stderr: Stream,
}

impl Streams {
    /// Nothing in, nothing shown: a process that is only timed or waited for.
    pub const SILENT: Streams =
        Streams { stdin: Stream::Null, stdout: Stream::Null, stderr: Stream::Null };
}

/// One stream of a spawned step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Null,
    /// A pipe the caller reads or writes: [`Running::stdin`], [`Running::stdout`].
    Piped,
    /// Ours.
    Inherit,
    /// Our stderr (for a child's stdout that is progress, not data).
    Stderr,
}

impl Stream {
    pub(super) fn stdio(self) -> std::process::Stdio {
        match self {
            Stream::Null => std::process::Stdio::null(),
            Stream::Piped => std::process::Stdio::piped(),
            Stream::Inherit => std::process::Stdio::inherit(),
            Stream::Stderr => std::io::stderr().into(),
        }
    }
}

/// A spawned step; stopped (SIGTERM, SIGKILL after 10 s) and reaped when dropped before it
/// finished.
pub struct Running {
    pub(super) child: std::process::Child,
    pub(super) name: String,
    pub(super) finished: bool,
}

impl Running {
    /// The write end of the child's stdin, once, when it was [`Stream::Piped`].
    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The read end of the child's stdout, once, when it was [`Stream::Piped`].
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's pid.
    #[cfg(test)]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let status =
            self.child.try_wait().with_context(|| format!("cannot wait for `{}`", self.name))?;
        self.finished |= status.is_some();
        Ok(status)
    }

    /// Waits for the child to exit; a signal to us stops it (SIGTERM, then SIGKILL after
    /// 10 s) and fails with [`Interrupted`].
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let mut stopping = Stopping::default();
        loop {
            if let Some(status) = self.try_wait()? {
                return match stopping.asked {
                    Some(_) => Err(Interrupted.into()),
                    None => Ok(status),
                };
            }
            if interrupt::is_set() {
                self.escalate(&mut stopping);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub(super) fn escalate(&mut self, stopping: &mut Stopping) {
        match stopping.next() {
            Some(Escalate::Terminate) => terminate(self.child.id()),
            Some(Escalate::Kill) => drop(self.child.kill()),
            None => {}
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut stopping = Stopping::default();
        while !self.finished && matches!(self.child.try_wait(), Ok(None)) {
            self.escalate(&mut stopping);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// How a process we stop is asked: SIGTERM first, SIGKILL once it has had 10 s.
#[derive(Default)]
pub(super) struct Stopping {
    pub(super) asked: Option<Instant>,
}

pub(super) enum Escalate {
    Terminate,
    Kill,
}

impl Stopping {
    /// What to send now, if anything.
    pub(super) fn next(&mut self) -> Option<Escalate> {
        match self.asked {
            None => {
                self.asked = Some(Instant::now());
                Some(Escalate::Terminate)
            }
            Some(at) if at.elapsed() > Duration::from_secs(10) => Some(Escalate::Kill),
            Some(_) => None,
        }
    }
}

pub(super) fn terminate(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// When [`Step::supervise`] stops the command early (besides its timeout).
pub(super) enum Stop {
    /// On the first interrupt.
    OnInterrupt,
    /// A clean-up step: only when the clean-up is abandoned.
    Shielded,
}

/// What [`Step::supervise`] keeps of the command's output.
#[derive(Debug)]
pub(super) enum Capture {
    /// Stdout goes to our stderr (or stdout for data), stderr passes through.
    Nothing,
    Stdout,
    Both,
    /// Stdout and stderr, in the order they were written, into one file.
    File(std::fs::File),
}

pub(super) struct Supervised {
    pub(super) output: std::process::Output,
    pub(super) timed_out: bool,
}

impl From<Supervised> for Captured {
    fn from(supervised: Supervised) -> Captured {
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        Captured {
            status: supervised.output.status,
            stdout: text(supervised.output.stdout),
            stderr: text(supervised.output.stderr),
            timed_out: supervised.timed_out,
        }
    }
}
