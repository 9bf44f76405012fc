//! The one lifecycle every stack task follows (see [`crate::stack`]): up and wait with our
//! probes, act, and on failure `ps` and the logs, then the teardown its policy says, shielded
//! from signals; and the checks that watch a service while the stack comes up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::image::version::Revision;
use crate::run::interrupt;
use crate::run::plan::{Plan, Running, Step, Stream, Streams};
use crate::stack::services::{Model, Port, Service};
use crate::stack::{
    Stack, build, build_plan, down_step, planned_waits, require_images, require_own_kind, up_step,
};
use crate::wait::{self, Probe, WaitOptions};

/// Starts the stack and waits until every service is ready. On failure it prints `ps` and
/// the logs of the services that did not make it; tearing down is the caller's.
pub fn up_and_wait(
    stack: &Stack,
    model: &Model,
    timeout: Duration,
) -> Result<Vec<(String, Probe)>> {
    let up = up_step(stack);
    // Where the definition fixes every probed host port (dev, prod, run), the probes start
    // with `up` itself, and `up` is one more check of the same wait: its failure ends the wait
    // at once. Otherwise (test) the host ports are read once `up` is done.
    let fixed = model.services.iter().all(|s| s.probe_port().is_none_or(|p| p.published.is_some()));
    let (probes, up_check) = if fixed {
        (stack.probes(model, &|_, port| port.published), Some(UpCheck::start(&up)?))
    } else {
        up.run().context("cannot start the stack")?;
        let published = |service: &Service, port: Port| {
            port.published.or_else(|| stack.published_port(&service.name, port.target))
        };
        (stack.probes(model, &published), None)
    };
    say!(
        "waiting up to {timeout:?} for {}",
        probes.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    // Probes count only once `up` has exited: before that they may reach a container that
    // `up` is about to replace.
    let started = Arc::new(AtomicBool::new(up_check.is_none()));
    let mut checks: Vec<(String, Box<dyn wait::Check>)> = probes
        .iter()
        .map(|(service, probe)| {
            let check = ServiceCheck {
                project: stack.project.clone(),
                service: service.clone(),
                probe: wait::checks::for_probe(probe),
                started: started.clone(),
                looked: None,
            };
            (probe.to_string(), Box::new(check) as Box<dyn wait::Check>)
        })
        .collect();
    if let Some(mut up_check) = up_check {
        up_check.started = Some(started);
        checks.push(("docker compose up".to_owned(), Box::new(up_check)));
    }
    let outcome = wait::within_task(checks, WaitOptions { timeout, ..WaitOptions::default() });
    if let Err(err) = wait::outcome_result(&outcome, timeout) {
        if !interrupt::is_set() {
            let failing: Vec<&str> = probes
                .iter()
                .zip(&outcome.reports)
                .filter(|(_, r)| r.state != wait::State::Ready)
                .map(|((service, _), _)| service.as_str())
                .collect();
            dump(stack, &failing);
        }
        return Err(err.context(format!("stack {} did not become ready", stack.project)));
    }
    Ok(probes)
}

/// `docker compose up` running beside the probes: ready when it exits 0, failed when it exits
/// otherwise; stopped if the wait ends first.
struct UpCheck {
    up: Running,
    /// Set when `up` has exited 0: the service checks wait for it.
    started: Option<Arc<AtomicBool>>,
}

impl UpCheck {
    fn start(step: &Step) -> Result<UpCheck> {
        let streams =
            Streams { stdin: Stream::Null, stdout: Stream::Stderr, stderr: Stream::Inherit };
        Ok(UpCheck { up: step.spawn(streams)?, started: None })
    }
}

impl wait::Check for UpCheck {
    fn attempt(&mut self, _timeout: Duration) -> wait::Attempt {
        match self.up.try_wait() {
            Ok(Some(status)) if status.success() => {
                if let Some(started) = &self.started {
                    started.store(true, Ordering::SeqCst);
                }
                wait::Attempt::Ready
            }
            Ok(Some(status)) => wait::Attempt::Failed(format!(
                "cannot start the stack: docker compose up exited with {status}"
            )),
            Ok(None) => wait::Attempt::NotYet("starting the containers".into()),
            Err(e) => wait::Attempt::Failed(format!("cannot wait for docker compose up: {e}")),
        }
    }
}

/// `probe` of `service`, failed at once when the service's container has exited: for a
/// service that was just started or recreated.
pub fn service_check(stack: &Stack, service: &str, probe: &Probe) -> Box<dyn wait::Check> {
    Box::new(ServiceCheck {
        project: stack.project.clone(),
        service: service.to_owned(),
        probe: wait::checks::for_probe(probe),
        started: Arc::new(AtomicBool::new(true)),
        looked: None,
    })
}

/// A service's probe, counted only after `up` has started the containers, and failed at
/// once when the service's container has exited (or exited and is being restarted): a dead
/// server is not "not yet ready".
struct ServiceCheck {
    project: String,
    service: String,
    probe: Box<dyn wait::Check>,
    started: Arc<AtomicBool>,
    /// When the container's state was last looked at (at most every 500 ms).
    looked: Option<Instant>,
}

impl wait::Check for ServiceCheck {
    fn attempt(&mut self, timeout: Duration) -> wait::Attempt {
        if !self.started.load(Ordering::SeqCst) {
            return wait::Attempt::NotYet("waiting for docker compose up to start it".into());
        }
        let not_yet = match self.probe.attempt(timeout) {
            wait::Attempt::NotYet(error) => error,
            decided => return decided,
        };
        if self.looked.is_some_and(|at| at.elapsed() < Duration::from_millis(500)) {
            return wait::Attempt::NotYet(not_yet);
        }
        self.looked = Some(Instant::now());
        let states = wait::docker::compose_service_ps(
            &self.project,
            &self.service,
            "{{.State}}\t{{.Status}}",
            timeout,
        );
        let exited = states.as_deref().unwrap_or("").lines().find_map(|line| {
            let (state, status) = line.split_once('\t')?;
            // Restarting: it exited, and its restart policy starts it again (prod's do).
            matches!(state, "exited" | "dead" | "restarting").then(|| status.to_owned())
        });
        match exited {
            Some(status) => wait::Attempt::Failed(format!(
                "the {} container stopped before it was ready: {status}",
                self.service
            )),
            None => wait::Attempt::NotYet(not_yet),
        }
    }

    fn wait_for_change(&mut self, clock: &dyn wait::Clock, timeout: Duration) {
        self.probe.wait_for_change(clock, timeout);
    }

    fn max_interval(&self, configured: Duration) -> Duration {
        self.probe.max_interval(configured)
    }
}

/// Prints `ps` and the last 200 log lines of `services` (all of them when empty), on stderr.
pub fn dump(stack: &Stack, services: &[&str]) {
    say!("--- state of stack {} ---", stack.project);
    let _ = stack.compose_all_profiles().args(["ps", "--all"]).run_regardless();
    if services.is_empty() {
        say!("--- last 200 log lines of each service ---");
        let _ = stack
            .compose_all_profiles()
            .args(["logs", "--no-color", "--tail", "200"])
            .run_regardless();
    }
    for service in services {
        say!("--- last 200 log lines of {service} ---");
        let _ = stack
            .compose_all_profiles()
            .args(["logs", "--no-color", "--tail", "200", service])
            .run_regardless();
    }
}

/// `dev down`, `prod down`: [`down`] once the project is known to hold a stack of this kind
/// (or nothing), so a dev task never removes a prod stack's containers or volumes, nor the
/// reverse.
pub fn down_own(stack: &Stack, volumes: bool) -> Result<()> {
    require_own_kind(stack)?;
    down(stack, volumes)
}

/// The plan of [`down_own`].
pub fn down_own_plan(plan: Plan, stack: &Stack, volumes: bool) -> Plan {
    plan.note(format!(
        "refuses a project whose containers or volumes belong to a stack of another kind than {}",
        stack.mode.name()
    ))
    .step(down_step(stack, volumes))
}

/// Removes what the stack created: containers, networks and, with `volumes`, its volumes.
/// Runs even after Ctrl-C.
pub fn down(stack: &Stack, volumes: bool) -> Result<()> {
    let step = down_step(stack, volumes);
    step.run_regardless().map_err(|err| {
        err.context(format!(
            "cannot tear down stack {}; finish it from the repository root with `{step}`",
            stack.project
        ))
    })
}

/// What becomes of a stack when the task that started it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Removed with its volumes, whatever happened: an isolated test stack.
    Always,
    /// Stopped and removed, whatever happened, keeping its volumes: `run`, whose data
    /// outlives the container.
    Stop,
    /// Left running, whatever happened, with the command that removes it: `test --keep`.
    Keep,
    /// Left running when the task succeeds (dev, prod). A failed start takes down a stack
    /// that was not running before and leaves one that was, so that a failed update never
    /// takes down containers that served before it; a failed or interrupted task (Ctrl-C on
    /// `dev --attach`) stops it, keeping its data.
    LeaveRunning,
}

/// How [`lifecycle`] treats a stack.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    /// How long the stack may take to be ready.
    pub timeout: Duration,
    /// Build the stack's images first; else only check that they are in the local store
    /// (`--no-build`).
    pub build: bool,
    pub teardown: Teardown,
    /// A release phase to run before `up` (prod's: the database alone, then the new server
    /// image's migrations as a one-off container, [`crate::stack::migrations::RELEASE_PHASE`]); dev
    /// and test servers migrate on start.
    pub release_phase: Option<ReleasePhase>,
}

/// What a task runs between the build and `up`, and how its plan shows it.
#[derive(Debug, Clone, Copy)]
pub struct ReleasePhase {
    pub run: fn(&Stack, &Model, Duration) -> Result<()>,
    pub plan: fn(Plan, &Stack, &Model) -> Plan,
}

/// The one lifecycle of every stack task: refuse a project of another kind -> read the
/// service model -> build (or check the images) -> up -> wait (our probes) -> `act` -> on
/// failure, `ps` and the logs -> the teardown the policy says -> the first error.
pub fn lifecycle(
    stack: &Stack,
    revision: &Revision,
    how: Lifecycle,
    act: impl FnOnce(&Model, &[(String, Probe)]) -> Result<()>,
) -> Result<()> {
    // Two independent queries (the engine's containers, the CLI's reading of the files):
    // side by side, since every task waits for both.
    let (before, model) = std::thread::scope(|scope| {
        let model = scope.spawn(|| stack.model());
        let before = require_own_kind(stack);
        (before, model.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (before, model) = (before?, model?);
    if how.build {
        build(stack, &model, revision)?;
    } else {
        require_images(stack, &model)?;
    }
    let released = match how.release_phase {
        Some(phase) => (phase.run)(stack, &model, how.timeout),
        None => Ok(()),
    };
    let started = released.and_then(|()| up_and_wait(stack, &model, how.timeout));
    let result = match &started {
        Ok(probes) => {
            let result = act(&model, probes);
            if result.is_err() && !interrupt::is_set() {
                dump(stack, &[]);
            }
            result
        }
        Err(_) => Ok(()),
    };
    let start_failed = started.is_err();
    let result = started.and(result);
    let teardown = match how.teardown {
        Teardown::Always => down(stack, true),
        Teardown::Stop => down(stack, false),
        Teardown::Keep => {
            say!(
                "kept stack {}: remove it with `docker compose --project-name {} down --volumes`",
                stack.project,
                stack.project
            );
            Ok(())
        }
        Teardown::LeaveRunning if result.is_ok() => Ok(()),
        Teardown::LeaveRunning if start_failed && before.running => {
            say!(
                "left stack {} as it is: it was running before this run; see `docker compose \
                 --project-name {} ps --all`",
                stack.project,
                stack.project
            );
            Ok(())
        }
        Teardown::LeaveRunning => down(stack, false),
    };
    match (result, teardown) {
        (Err(err), Err(teardown)) => {
            say!("error: {teardown:#}");
            Err(err)
        }
        (result, teardown) => result.and(teardown),
    }
}

/// The plan of [`lifecycle`], as `--dry-run` shows it: `act` adds what the task does once
/// the stack is ready.
pub fn lifecycle_plan(
    plan: Plan,
    stack: &Stack,
    model: &Model,
    revision: &Revision,
    how: Lifecycle,
    act: impl FnOnce(Plan) -> Plan,
) -> Plan {
    let plan = plan.note(format!(
        "refuses a project that holds a stack of another kind than {}",
        stack.mode.name()
    ));
    let plan = match how.build {
        true => plan.step(build_plan(stack, model, revision).step),
        false => plan.note("--no-build: first checks that every image is in the local store"),
    };
    let plan = match how.release_phase {
        Some(phase) => (phase.plan)(plan, stack, model),
        None => plan,
    };
    let plan = act(plan.step(up_step(stack)).wait_for(planned_waits(stack, model)));
    match how.teardown {
        Teardown::Always => plan
            .note("then tears the stack down with its volumes, whatever happened:")
            .step(down_step(stack, true)),
        Teardown::Stop => plan
            .note("then stops the stack, whatever happened (its volumes are kept):")
            .step(down_step(stack, false)),
        Teardown::Keep => plan.note("--keep: the stack is left running"),
        Teardown::LeaveRunning => plan.note(
            "the stack is left running; a failed start takes it down only if it was not \
             running before",
        ),
    }
}
