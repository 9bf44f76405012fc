//! Progress of the operations that move gigabytes (pushes, bundle saves and loads, hashing), on
//! stderr: one bar per operation on a terminal (bytes done of the total, rate, time left),
//! a plain line every few seconds otherwise (a CI log), nothing at all under `--json`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Set under `--json`: nothing is said beyond the data.
static QUIET: AtomicBool = AtomicBool::new(false);

/// How often a plain line is said when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Says no progress from now on (for `--json`).
pub fn quiet() {
    QUIET.store(true, Ordering::SeqCst);
}

/// The progress of one operation on `total` bytes; cheap to share between threads.
pub struct Progress {
    what: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    shown: Shown,
}

enum Shown {
    Nothing,
    Bar(ProgressBar),
    /// When the last plain line was said.
    Lines(Mutex<Instant>),
}

impl Progress {
    /// Starts showing `what` (`pushing server`, `hashing bundle.tar`) as the kind of stderr
    /// allows.
    pub fn bytes(what: &str, total: u64) -> Progress {
        use std::io::IsTerminal;
        let shown = if QUIET.load(Ordering::SeqCst) || total == 0 {
            Shown::Nothing
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
            )
            .expect("the template is valid")
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.to_owned());
            Shown::Bar(bar)
        } else {
            Shown::Lines(Mutex::new(Instant::now()))
        };
        Progress {
            what: what.to_owned(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            shown,
        }
    }

    /// Counts `n` more bytes done.
    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::SeqCst) + n;
        self.show(done);
    }

    /// Takes back `n` bytes counted by an attempt that failed and will be made again.
    pub fn take_back(&self, n: u64) {
        let n = n.min(self.done.load(Ordering::SeqCst));
        let before = self.done.fetch_sub(n, Ordering::SeqCst);
        self.show(before.saturating_sub(n));
    }

    fn show(&self, done: u64) {
        match &self.shown {
            Shown::Nothing => {}
            Shown::Bar(bar) => bar.set_position(done),
            Shown::Lines(last) => {
                let mut last = last.lock().expect("not poisoned");
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    crate::say!("{}", self.line(done));
                }
            }
        }
    }

    /// `pushing server: 312.4 MB of 1.2 GB (25%), 41.0 MB/s, about 22 s left`.
    fn line(&self, done: u64) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / seconds;
        let percent = done as f64 * 100.0 / self.total.max(1) as f64;
        let left = match rate > 0.0 {
            true => format!(", about {:.0} s left", self.total.saturating_sub(done) as f64 / rate),
            false => String::new(),
        };
        format!(
            "{}: {} of {} ({percent:.0}%), {}/s{left}",
            self.what,
            size(done),
            size(self.total),
            size(rate as u64)
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
        }
    }
}

/// A reader that counts what passes through it into a [`Progress`], and into `attempt` (what
/// this one attempt counted, to take back if it fails).
pub struct Counted<R> {
    pub inner: R,
    pub progress: Arc<Progress>,
    pub attempt: Arc<AtomicU64>,
}

impl<R> Counted<R> {
    pub fn new(inner: R, progress: Arc<Progress>) -> Counted<R> {
        Counted { inner, progress, attempt: Arc::default() }
    }
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.progress.add(n as u64);
        self.attempt.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

/// A byte count for people: `812 B`, `31.4 MB`, `1.2 GB`.
pub fn size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.1} GB", bytes as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_says_done_of_total_rate_and_time_left() {
        let progress = Progress {
            what: "pushing server".into(),
            total: 1_200_000_000,
            done: AtomicU64::new(0),
            started: Instant::now() - Duration::from_secs(10),
            shown: Shown::Nothing,
        };
        let line = progress.line(300_000_000);
        assert!(line.starts_with("pushing server: 300.0 MB of 1.2 GB (25%), 30.0 MB/s, about "));
        assert!(line.ends_with(" s left"), "{line}");
        progress.add(10);
        progress.take_back(4);
        progress.take_back(100);
        assert_eq!(progress.done.load(Ordering::SeqCst), 0, "never below zero");
        assert_eq!(size(812), "812 B");
    }
}
