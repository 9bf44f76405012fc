//! The wait itself: every check in a thread of its own, one global deadline, a per-attempt
//! timeout, a jittered backoff, and a verdict as soon as it is decided (all ready, any ready
//! with `--any`, a definite failure, the deadline, or Ctrl-C).
//!
//! Time is injected through [`Clock`], so the loop's rules are tested in milliseconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

/// What one attempt of a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Ready,
    /// Not ready yet; the observation is kept as the probe's last error.
    NotYet(String),
    /// It will not become ready by waiting (an unhealthy container, a wrong password).
    Failed(String),
}

/// One readiness check that can be attempted again and again.
pub trait Check: Send {
    fn attempt(&mut self, timeout: Duration) -> Attempt;

    /// Blocks until the source reports a change or `timeout` passes. Sources that push events
    /// (the Docker engine) override this to wake early instead of polling; the default sleeps.
    fn wait_for_change(&mut self, clock: &dyn Clock, timeout: Duration) {
        clock.sleep(timeout);
    }

    /// The longest pause between attempts this source needs, given the configured one.
    fn max_interval(&self, configured: Duration) -> Duration {
        configured
    }
}

/// Time, injected: the real clock, or a fake one in tests.
pub trait Clock: Sync {
    /// Time since an arbitrary fixed start.
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration);

    /// Told before `count` probe threads start, so that a fake clock can let time pass only
    /// when every one of them sleeps.
    fn threads_started(&self, _count: usize) {}

    /// Told as each probe thread ends.
    fn thread_finished(&self) {}
}

/// Calls [`Clock::thread_finished`] however the thread ends.
struct Finished<'a>(&'a dyn Clock);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.thread_finished();
    }
}

pub struct SystemClock(Instant);

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// The one deadline for all probes, from the start of the wait.
    pub timeout: Duration,
    /// The cap of the backoff between attempts of one probe.
    pub max_interval: Duration,
    /// The first pause between attempts.
    pub min_interval: Duration,
    /// The longest one attempt may take (less when the deadline is nearer).
    pub attempt_timeout: Duration,
    /// Done when any probe is ready, rather than all.
    pub any: bool,
    /// Set from outside (Ctrl-C) to give up at once.
    pub cancel: Option<&'static AtomicBool>,
}

impl Default for WaitOptions {
    fn default() -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_secs(60),
            max_interval: Duration::from_millis(25),
            min_interval: Duration::from_millis(5),
            attempt_timeout: Duration::from_secs(2),
            any: false,
            cancel: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Pending,
    Failed,
}

#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The spec without secrets.
    pub probe: String,
    pub state: State,
    pub ready_at: Option<Duration>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl ProbeReport {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "probe": self.probe,
            "state": match self.state { State::Ready => "ready", State::Pending => "pending", State::Failed => "failed" },
            "ready_at_ms": self.ready_at.map(|d| d.as_millis() as u64),
            "attempts": self.attempts,
            "last_error": self.last_error,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    TimedOut,
    Failed,
    Interrupted,
}

#[derive(Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub elapsed: Duration,
    pub reports: Vec<ProbeReport>,
}

/// A change in one probe, as it happens: for live status output.
#[derive(Debug, Clone)]
pub enum Event {
    NotYet { index: usize, attempts: u32, error: String },
    Ready { index: usize, at: Duration, attempts: u32 },
    Failed { index: usize, attempts: u32, error: String },
}

/// Doubles from `min_interval` up to the cap, with ±20% jitter so that many waiters do not
/// poll in step.
struct Backoff {
    next: Duration,
    cap: Duration,
    seed: u64,
}

impl Backoff {
    fn new(min: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff { next: min.min(cap), cap, seed: seed | 1 }
    }

    fn pause(&mut self) -> Duration {
        // xorshift64: plenty for jitter, and no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let factor = 0.8 + (self.seed % 4001) as f64 / 10_000.0;
        let pause = self.next.mul_f64(factor).min(self.cap);
        self.next = (self.next * 2).min(self.cap);
        pause
    }
}

/// What the probe threads know together: each probe's report, and the verdict once known.
/// Each thread records its own outcome before it ends, so the verdict never waits on the
/// thread that prints progress.
struct Shared {
    reports: Vec<ProbeReport>,
    verdict: Option<Verdict>,
}

impl Shared {
    /// Records an event and returns whether the wait is decided.
    fn record(&mut self, event: &Event, any: bool) -> bool {
        match event {
            Event::NotYet { index, attempts, error } => {
                self.reports[*index].attempts = *attempts;
                self.reports[*index].last_error = Some(error.clone());
            }
            Event::Ready { index, at, attempts } => {
                let report = &mut self.reports[*index];
                report.state = State::Ready;
                report.ready_at = Some(*at);
                report.attempts = *attempts;
                if any || self.reports.iter().all(|r| r.state == State::Ready) {
                    self.verdict.get_or_insert(Verdict::Ready);
                }
            }
            Event::Failed { index, attempts, error } => {
                let report = &mut self.reports[*index];
                report.state = State::Failed;
                report.attempts = *attempts;
                report.last_error = Some(error.clone());
                // With --any, another probe may still make it, unless none is left.
                if !any || self.reports.iter().all(|r| r.state == State::Failed) {
                    self.verdict.get_or_insert(Verdict::Failed);
                }
            }
        }
        self.verdict.is_some()
    }
}

/// Runs every check concurrently until the verdict is known.
pub fn wait(
    checks: Vec<(String, Box<dyn Check + '_>)>,
    options: WaitOptions,
    clock: &dyn Clock,
    mut on_event: impl FnMut(&Event, &[ProbeReport]),
) -> Outcome {
    let start = clock.now();
    let deadline = start + options.timeout;
    let stop = AtomicBool::new(false);
    let reports = checks
        .iter()
        .map(|(probe, _)| ProbeReport {
            probe: probe.clone(),
            state: State::Pending,
            ready_at: None,
            attempts: 0,
            last_error: None,
        })
        .collect();
    let shared = Mutex::new(Shared { reports, verdict: None });
    let (sender, receiver) = mpsc::channel::<Event>();
    clock.threads_started(checks.len());
    std::thread::scope(|scope| {
        for (index, (_, mut check)) in checks.into_iter().enumerate() {
            let sender = sender.clone();
            let (stop, shared) = (&stop, &shared);
            scope.spawn(move || {
                let _finished = Finished(clock);
                let report = |event: Event| {
                    if shared.lock().unwrap().record(&event, options.any) {
                        stop.store(true, Ordering::SeqCst);
                    }
                    let _ = sender.send(event);
                };
                let seed = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ u64::from(std::process::id());
                let mut backoff = Backoff::new(
                    options.min_interval,
                    check.max_interval(options.max_interval),
                    seed,
                );
                let mut attempts = 0;
                // What the last attempt that ran its course saw: one the deadline cut short
                // says less (it saw nothing, for want of time), so the report keeps this.
                let mut telling: Option<String> = None;
                let cancelled = || options.cancel.is_some_and(|c| c.load(Ordering::SeqCst));
                loop {
                    let now = clock.now();
                    if stop.load(Ordering::SeqCst) || cancelled() || now >= deadline {
                        return;
                    }
                    attempts += 1;
                    let budget =
                        options.attempt_timeout.min(deadline - now).max(Duration::from_millis(1));
                    match check.attempt(budget) {
                        Attempt::Ready => {
                            return report(Event::Ready {
                                index,
                                at: clock.now() - start,
                                attempts,
                            });
                        }
                        Attempt::Failed(error) => {
                            return report(Event::Failed { index, attempts, error });
                        }
                        Attempt::NotYet(error) => {
                            let error = match telling.take() {
                                Some(earlier) if clock.now() >= deadline => earlier,
                                _ => error,
                            };
                            telling = Some(error.clone());
                            report(Event::NotYet { index, attempts, error });
                        }
                    }
                    let now = clock.now();
                    if now >= deadline || stop.load(Ordering::SeqCst) || cancelled() {
                        return;
                    }
                    check.wait_for_change(clock, backoff.pause().min(deadline - now));
                }
            });
        }
        drop(sender);
        // Every probe thread ends by the deadline, and with them the senders.
        while let Ok(event) = receiver.recv() {
            let reports = shared.lock().unwrap().reports.clone();
            on_event(&event, &reports);
        }
    });
    let shared = shared.into_inner().unwrap();
    let interrupted = options.cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    let fallback = if interrupted { Verdict::Interrupted } else { Verdict::TimedOut };
    Outcome {
        verdict: shared.verdict.unwrap_or(fallback),
        elapsed: clock.now() - start,
        reports: shared.reports,
    }
}

/// A wait that ran out of time; exits with status 124.
#[derive(Debug)]
pub struct TimedOut(pub String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// A wait inside another task: it stops on Ctrl-C and says on stderr as each probe is ready.
pub fn within_task(checks: Vec<(String, Box<dyn Check + '_>)>, options: WaitOptions) -> Outcome {
    let options = WaitOptions { cancel: Some(crate::run::interrupt::flag()), ..options };
    wait(checks, options, &SystemClock::new(), |event, reports| {
        if let Event::Ready { index, at, .. } = event {
            say!("ready: {} after {} ms", reports[*index].probe, at.as_millis());
        }
    })
}

/// [`within_task`] for callers that need only the result: ready, or why not.
pub fn until_ready(checks: Vec<(String, Box<dyn Check + '_>)>, options: WaitOptions) -> Result<()> {
    let timeout = options.timeout;
    outcome_result(&within_task(checks, options), timeout)
}

/// The outcome of a wait as a task result: timeouts and interrupts as their own errors, so
/// they exit 124 and 130.
pub fn outcome_result(outcome: &Outcome, timeout: Duration) -> Result<()> {
    let describe = |state: State| {
        outcome
            .reports
            .iter()
            .filter(|r| r.state == state)
            .map(|r| {
                format!(
                    "{} ({})",
                    r.probe,
                    r.last_error.as_deref().unwrap_or("no attempt finished")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match outcome.verdict {
        Verdict::Interrupted => Err(crate::run::interrupt::Interrupted.into()),
        Verdict::Ready => Ok(()),
        Verdict::Failed => {
            bail!("not ready, and waiting will not help: {}", describe(State::Failed))
        }
        Verdict::TimedOut => Err(TimedOut(format!(
            "timed out after {:?} waiting for {}",
            timeout,
            describe(State::Pending)
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests;
