//! How a wait shows its progress on stderr: a live line per probe on a terminal, plain lines
//! otherwise.

use std::time::{Duration, Instant};

use crate::run::term;

use super::engine::{Event, ProbeReport, State};

/// Progress on stderr: a live line per probe on a terminal, plain lines otherwise (under `CI`,
/// with `NO_COLOR`, or when stderr is not a terminal).
pub struct Status {
    quiet: bool,
    live: bool,
    drawn: usize,
    last_draw: Option<Instant>,
    last_plain: Instant,
}

impl Status {
    pub fn new(quiet: bool, count: usize) -> Status {
        use std::io::IsTerminal;
        let plain = std::env::var_os("CI").is_some()
            || std::env::var_os("NO_COLOR").is_some()
            || !std::io::stderr().is_terminal();
        if !quiet && plain {
            say!("waiting for {}", term::count(count, "probe"));
        }
        Status { quiet, live: !plain, drawn: 0, last_draw: None, last_plain: Instant::now() }
    }

    pub fn update(&mut self, event: &Event, reports: &[ProbeReport]) {
        if self.quiet {
            return;
        }
        if self.live {
            let due = self.last_draw.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due || !matches!(event, Event::NotYet { .. }) {
                self.draw(reports);
            }
            return;
        }
        match event {
            Event::Ready { index, at, attempts } => {
                say!(
                    "ready: {} after {} ms ({attempts} attempts)",
                    reports[*index].probe,
                    at.as_millis()
                );
            }
            Event::Failed { index, error, .. } => {
                say!("failed: {}: {error}", reports[*index].probe)
            }
            Event::NotYet { .. } if self.last_plain.elapsed() >= Duration::from_secs(5) => {
                self.last_plain = Instant::now();
                for r in reports.iter().filter(|r| r.state == State::Pending) {
                    say!(
                        "waiting: {}: {}",
                        r.probe,
                        r.last_error.as_deref().unwrap_or("no answer yet")
                    );
                }
            }
            Event::NotYet { .. } => {}
        }
    }

    fn draw(&mut self, reports: &[ProbeReport]) {
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for r in reports {
            let line = match r.state {
                State::Ready => format!(
                    "\x1b[32mready\x1b[0m   {} ({} ms)",
                    r.probe,
                    r.ready_at.unwrap_or_default().as_millis()
                ),
                State::Failed => format!(
                    "\x1b[31mfailed\x1b[0m  {}: {}",
                    r.probe,
                    r.last_error.as_deref().unwrap_or("")
                ),
                State::Pending => format!(
                    "\x1b[33mwaiting\x1b[0m {} [{}] {}",
                    r.probe,
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("")
                ),
            };
            out.push_str("\x1b[2K");
            out.push_str(&line);
            out.push('\n');
        }
        let _ = std::io::Write::write_all(&mut std::io::stderr(), out.as_bytes());
        self.drawn = reports.len();
        self.last_draw = Some(Instant::now());
    }

    pub fn finish(&mut self, reports: &[ProbeReport]) {
        if self.live && !self.quiet {
            self.draw(reports);
        }
    }
}
