//! Writing to our own stdout and stderr without ever panicking: a closed pipe (`| head`,
//! a closed terminal) must not skip a teardown, so every line goes through [`say!`] (stderr,
//! for people) or [`out!`] (stdout, the task's data), which ignore write errors.
//! `println!` and `eprintln!` panic on them; a repository check keeps them out. And
//! [`count`], how every message counts things.

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

/// `n` of `what`, plural unless `n` is one: `1 image`, `3 images`, `0 checks`.
pub fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(super::count(1, "image tag"), "1 image tag");
        assert_eq!(super::count(0, "check"), "0 checks");
        assert_eq!(super::count(3, "probe"), "3 probes");
    }
}
