//! Ctrl-C and SIGTERM: one flag that running steps and waits watch, so that a task stops what
//! it runs, tears down what it created, and exits 130.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler; later signals only set the flag again.
pub fn install() {
    // Without a handler the default action (exit at once) still applies: worse, not wrong.
    let _ = ctrlc::set_handler(|| {
        if !INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted: stopping, then cleaning up (this can take a few seconds)");
        }
    });
}

pub fn flag() -> &'static AtomicBool {
    &INTERRUPTED
}

pub fn is_set() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The error of a task stopped by Ctrl-C or SIGTERM; exits with status 130.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}
