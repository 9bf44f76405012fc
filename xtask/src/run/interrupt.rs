//! SIGINT, SIGTERM and SIGHUP: one flag that running steps and waits watch, so that a task
//! stops what it runs, tears down what it created, and exits `128 + signal` (130 for Ctrl-C,
//! 143 for SIGTERM, 129 for a closed terminal).
//!
//! Teardown is shielded: its steps run in a process group of their own (a Ctrl-C at the
//! terminal does not reach them), a signal during teardown only says that it is still cleaning
//! up, and the one after that abandons it; see [`cleanup_abandoned`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The first signal received: it decides the exit status.
static FIRST: AtomicI32 = AtomicI32::new(0);
/// How many signals arrived, so that a shield can tell a new one from the one that started
/// the teardown.
static COUNT: AtomicUsize = AtomicUsize::new(0);

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Only async-signal-safe work: atomics and one `write(2)` whose failure (a closed stderr) is
/// ignored.
extern "C" fn on_signal(signal: nix::libc::c_int) {
    let _ = FIRST.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    INTERRUPTED.store(true, Ordering::SeqCst);
    if COUNT.fetch_add(1, Ordering::SeqCst) == 0 {
        let message = b"\ninterrupted: stopping, then cleaning up (this can take a few seconds)\n";
        let _ = nix::unistd::write(std::io::stderr(), message);
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() {
    let action =
        SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in SIGNALS {
        // SAFETY: the handler only touches atomics and calls write(2).
        // Without a handler the default action (exit at once) still applies: worse, not wrong.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

pub fn flag() -> &'static AtomicBool {
    &INTERRUPTED
}

pub fn is_set() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The exit status of an interrupted run: `128 + ` the first signal's number.
pub fn exit_code() -> u8 {
    match FIRST.load(Ordering::SeqCst) {
        0 => 130,
        signal => 128u8.saturating_add(signal as u8),
    }
}

/// The signal count when the run's clean-up began (`usize::MAX` before), and whether it has
/// said that it is still cleaning up.
static CLEANUP_START: AtomicUsize = AtomicUsize::new(usize::MAX);
static WARNED: AtomicBool = AtomicBool::new(false);

/// Marks the start of the run's clean-up phase, which lasts until the process ends; calls
/// after the first change nothing. Signals are counted from there by [`cleanup_abandoned`].
pub fn begin_cleanup() {
    let now = COUNT.load(Ordering::SeqCst);
    let _ = CLEANUP_START.compare_exchange(usize::MAX, now, Ordering::SeqCst, Ordering::SeqCst);
}

/// Whether the clean-up should be abandoned: the first signal after [`begin_cleanup`] only
/// says, once, that it is still cleaning up; from the second on, every clean-up step stops.
pub fn cleanup_abandoned() -> bool {
    let start = CLEANUP_START.load(Ordering::SeqCst);
    match COUNT.load(Ordering::SeqCst).saturating_sub(start) {
        0 => false,
        1 => {
            if !WARNED.swap(true, Ordering::SeqCst) {
                crate::say!("still cleaning up; interrupt once more to abandon the clean-up");
            }
            false
        }
        _ => true,
    }
}

/// The error of a task stopped by a signal; exits with [`exit_code`].
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The error of a clean-up step stopped by a second signal.
#[derive(Debug)]
pub struct Abandoned;

impl fmt::Display for Abandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("clean-up abandoned on a second interrupt")
    }
}

impl std::error::Error for Abandoned {}

/// A reader that stops on Ctrl-C: its next read fails with an error whose inner error is
/// [`Interrupted`]. Not [`std::io::ErrorKind::Interrupted`]: `std::io::copy` and
/// `read_to_end` retry that kind, so a copy would spin instead of stopping.
pub struct Interruptible<R>(pub R);

impl<R: std::io::Read> std::io::Read for Interruptible<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if is_set() {
            return Err(interrupted_io());
        }
        self.0.read(buffer)
    }
}

/// The I/O error of a read or write that Ctrl-C stopped (see [`Interruptible`]).
pub fn interrupted_io() -> std::io::Error {
    std::io::Error::other(Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_read_ends_a_copy_instead_of_being_retried() {
        // `read_to_end` retries `ErrorKind::Interrupted` forever; ours must end it.
        let error = interrupted_io();
        assert_ne!(error.kind(), std::io::ErrorKind::Interrupted);
        assert!(error.get_ref().is_some_and(|e| e.is::<Interrupted>()));
    }
}
