//! Writing to our own stdout and stderr without ever panicking: a closed pipe (`| head`,
//! a closed terminal) must not skip a teardown, so every line goes through [`say!`] (stderr,
//! for people) or [`out!`] (stdout, the task's data), which ignore write errors.
//! `println!` and `eprintln!` panic on them; a repository check keeps them out.

/// Writes one line to stderr; a write error is ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes one line to stdout; a write error is ignored.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
