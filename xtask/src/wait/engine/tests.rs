//! Unit tests of `crate::wait::engine`, kept beside it so that the module reads as code.

use super::*;
use std::sync::Condvar;

/// Virtual time that moves only when every probe thread sleeps, to the earliest wake-up:
/// deterministic however the threads are scheduled, and instant.
#[derive(Default)]
struct FakeClock {
    state: Mutex<FakeState>,
    changed: Condvar,
}

#[derive(Default)]
struct FakeState {
    now: Duration,
    active: usize,
    wakes: Vec<Duration>,
}

impl FakeState {
    fn advance_if_all_asleep(&mut self) {
        if self.active > 0 && self.wakes.len() == self.active {
            self.now = self.now.max(*self.wakes.iter().min().unwrap());
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.state.lock().unwrap().now
    }

    fn sleep(&self, duration: Duration) {
        let mut state = self.state.lock().unwrap();
        let wake = state.now + duration;
        state.wakes.push(wake);
        state.advance_if_all_asleep();
        self.changed.notify_all();
        while state.now < wake {
            state = self.changed.wait(state).unwrap();
        }
        let at = state.wakes.iter().position(|w| *w == wake).unwrap();
        state.wakes.swap_remove(at);
    }

    fn threads_started(&self, count: usize) {
        self.state.lock().unwrap().active += count;
    }

    fn thread_finished(&self) {
        let mut state = self.state.lock().unwrap();
        state.active -= 1;
        state.advance_if_all_asleep();
        self.changed.notify_all();
    }
}

/// Ready on attempt `ready_on`, or failed on `fails_on`; records each attempt's time.
struct Scripted<'a> {
    ready_on: Option<u32>,
    fails_on: Option<u32>,
    attempts: u32,
    clock: &'a FakeClock,
    log: &'a Mutex<Vec<Duration>>,
}

impl Check for Scripted<'_> {
    fn attempt(&mut self, _timeout: Duration) -> Attempt {
        self.attempts += 1;
        self.log.lock().unwrap().push(self.clock.now());
        if self.fails_on == Some(self.attempts) {
            return Attempt::Failed("unhealthy".into());
        }
        if self.ready_on == Some(self.attempts) {
            return Attempt::Ready;
        }
        Attempt::NotYet(format!("attempt {}", self.attempts))
    }
}

fn scripted<'a>(
    clock: &'a FakeClock,
    log: &'a Mutex<Vec<Duration>>,
    ready_on: Option<u32>,
    fails_on: Option<u32>,
) -> (String, Box<dyn Check + 'a>) {
    ("scripted".into(), Box::new(Scripted { ready_on, fails_on, attempts: 0, clock, log }))
}

fn options(timeout_ms: u64) -> WaitOptions {
    WaitOptions { timeout: Duration::from_millis(timeout_ms), ..WaitOptions::default() }
}

#[test]
fn ready_probe_reports_attempts_and_time() {
    let clock = FakeClock::default();
    let log = Mutex::new(Vec::new());
    let outcome =
        wait(vec![scripted(&clock, &log, Some(4), None)], options(1000), &clock, |_, _| {});
    assert_eq!(outcome.verdict, Verdict::Ready);
    let report = &outcome.reports[0];
    assert_eq!((report.state, report.attempts), (State::Ready, 4));
    assert!(report.ready_at.unwrap() < Duration::from_millis(60), "{report:?}");
}

#[test]
fn backoff_starts_small_doubles_and_stays_under_the_cap() {
    let clock = FakeClock::default();
    let log = Mutex::new(Vec::new());
    wait(vec![scripted(&clock, &log, Some(12), None)], options(10_000), &clock, |_, _| {});
    let times = log.lock().unwrap();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] <= Duration::from_millis(6), "first pause {:?}", gaps[0]);
    assert!(gaps.iter().all(|g| *g <= Duration::from_millis(25)), "{gaps:?}");
    assert!(gaps[1] > gaps[0] && gaps[2] > gaps[1], "grows: {gaps:?}");
    assert!(gaps[8] >= Duration::from_millis(20), "reaches the cap: {gaps:?}");
}

#[test]
fn one_deadline_ends_the_wait_and_keeps_the_last_error() {
    let clock = FakeClock::default();
    let log = Mutex::new(Vec::new());
    let outcome = wait(
        vec![scripted(&clock, &log, None, None), scripted(&clock, &log, Some(2), None)],
        options(300),
        &clock,
        |_, _| {},
    );
    assert_eq!(outcome.verdict, Verdict::TimedOut);
    let pending = &outcome.reports[0];
    assert_eq!(pending.state, State::Pending);
    assert!(pending.last_error.as_deref().unwrap().starts_with("attempt "));
    assert_eq!(outcome.reports[1].state, State::Ready);
    assert!(outcome.elapsed >= Duration::from_millis(300));
    assert!(outcome.elapsed < Duration::from_millis(330), "{:?}", outcome.elapsed);
}

/// Sees a telling refusal three times, then hangs until the deadline ends its attempt.
struct RefusesThenHangs<'a> {
    attempts: u32,
    clock: &'a FakeClock,
}

impl Check for RefusesThenHangs<'_> {
    fn attempt(&mut self, timeout: Duration) -> Attempt {
        self.attempts += 1;
        if self.attempts <= 3 {
            return Attempt::NotYet("the server asks for 2000000000 SCRAM iterations".into());
        }
        self.clock.sleep(timeout);
        Attempt::NotYet("no complete answer within the attempt timeout".into())
    }
}

#[test]
fn an_attempt_the_deadline_cut_short_does_not_hide_what_the_others_saw() {
    let clock = FakeClock::default();
    let check = RefusesThenHangs { attempts: 0, clock: &clock };
    let checks: Vec<(String, Box<dyn Check + '_>)> = vec![("pg".into(), Box::new(check))];
    let outcome = wait(checks, options(300), &clock, |_, _| {});
    assert_eq!(outcome.verdict, Verdict::TimedOut);
    let report = &outcome.reports[0];
    assert_eq!(report.attempts, 4);
    let last = report.last_error.as_deref().unwrap();
    assert!(last.contains("SCRAM iterations"), "{last}");
}

#[test]
fn any_is_done_with_the_first_ready_probe() {
    let clock = FakeClock::default();
    let log = Mutex::new(Vec::new());
    let outcome = wait(
        vec![scripted(&clock, &log, None, None), scripted(&clock, &log, Some(3), None)],
        WaitOptions { any: true, ..options(60_000) },
        &clock,
        |_, _| {},
    );
    assert_eq!(outcome.verdict, Verdict::Ready);
    assert!(outcome.elapsed < Duration::from_secs(1), "{:?}", outcome.elapsed);
}

#[test]
fn a_definite_failure_stops_the_wait_at_once() {
    let clock = FakeClock::default();
    let log = Mutex::new(Vec::new());
    let outcome = wait(
        vec![scripted(&clock, &log, None, Some(2)), scripted(&clock, &log, None, None)],
        options(60_000),
        &clock,
        |_, _| {},
    );
    assert_eq!(outcome.verdict, Verdict::Failed);
    assert_eq!(outcome.reports[0].last_error.as_deref(), Some("unhealthy"));
    assert!(outcome.elapsed < Duration::from_secs(1), "{:?}", outcome.elapsed);
}

#[test]
fn with_any_a_failure_waits_for_the_others() {
    let clock = FakeClock::default();
    let log = Mutex::new(Vec::new());
    let outcome = wait(
        vec![scripted(&clock, &log, None, Some(1)), scripted(&clock, &log, Some(5), None)],
        WaitOptions { any: true, ..options(60_000) },
        &clock,
        |_, _| {},
    );
    assert_eq!(outcome.verdict, Verdict::Ready);
    let clock = FakeClock::default();
    let outcome = wait(
        vec![scripted(&clock, &log, None, Some(1)), scripted(&clock, &log, None, Some(3))],
        WaitOptions { any: true, ..options(60_000) },
        &clock,
        |_, _| {},
    );
    assert_eq!(outcome.verdict, Verdict::Failed);
}
