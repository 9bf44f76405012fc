//! The stack tasks `dev`, `test` and `run`, each a thin use of the one lifecycle in
//! [`crate::stack`] (`prod` is in [`crate::tasks::prod`]).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::Value;

use crate::image::version::Revision;
use crate::run::docker;
use crate::run::interrupt::{self, Interrupted};
use crate::run::label::{self, RunId};
use crate::run::plan::{Plan, Step, Task};
use crate::stack::services::Model;
use crate::stack::watch::{self, WatchOptions};
use crate::stack::{self, Lifecycle, Mode, Profile, Stack, Teardown};
use crate::tasks::changed::{Decision, Green, Tier, skipped_note};
use crate::tasks::ci;
use crate::tasks::reap;
use crate::wait::{self, Probe, WaitOptions};

/// What `cargo xtask dev` does with the dev stack.
#[derive(Debug, Clone)]
pub enum DevAction {
    Up(DevUp),
    /// Remove the containers and network; the volumes too with `volumes`.
    Down {
        volumes: bool,
    },
    Logs {
        service: Option<String>,
        follow: bool,
    },
    Ps,
    Exec {
        service: String,
        command: Vec<String>,
    },
    /// Restart one service and wait until the stack is ready again.
    Restart {
        service: String,
    },
}

/// How `dev up` starts the stack, and what it does once the stack is ready.
#[derive(Debug, Clone)]
pub struct DevUp {
    /// The services to start; every one when empty.
    pub services: Vec<String>,
    pub profiles: Vec<Profile>,
    /// Use the images as they are.
    pub no_build: bool,
    pub then: WhenReady,
    /// How long the stack may take to be ready.
    pub timeout: Duration,
}

/// What `dev up` does once the stack is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenReady {
    /// Print the URLs and exit, the stack left running.
    Exit,
    /// Follow the logs until Ctrl-C, which stops the stack.
    Attach,
    /// Follow the working tree (see [`crate::stack::watch`]) until Ctrl-C.
    Watch,
}

/// `cargo xtask dev ...`: the dev stack `action` works on.
pub fn dev(root: &Utf8Path, action: DevAction) -> Result<DevTask> {
    let revision = Revision::read(root)?;
    let project = stack::project_name("memories-dev");
    let profiles = match &action {
        DevAction::Up(up) => up.profiles.clone(),
        _ => Vec::new(),
    };
    let mut stack = Stack::new(root, Mode::Dev, project, &profiles, stack::tag(&revision));
    if let DevAction::Up(up) = &action {
        stack.services = up.services.clone();
    }
    Ok(DevTask { stack, revision, action })
}

/// A `dev` subcommand on its stack.
pub struct DevTask {
    stack: Stack,
    revision: Revision,
    action: DevAction,
}

impl Task for DevTask {
    fn plan(&self) -> Result<Plan> {
        dev_plan(&self.stack, &self.revision, &self.action)
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let DevTask { stack, revision, action } = *self;
        if json {
            refuse_json(&action)?;
        }
        dev_execute(stack, &revision, action, json)
    }
}

fn dev_execute(stack: Stack, revision: &Revision, action: DevAction, json: bool) -> Result<()> {
    match action {
        DevAction::Up(up) => dev_up(&stack, revision, &up, json),
        DevAction::Down { volumes } => stack::down_own(&stack, volumes),
        DevAction::Logs { service, follow } => {
            if let Some(service) = &service {
                stack.all_profiles().model()?.require(service)?;
            }
            logs_step(&stack, service.as_deref(), follow).stdout_is_data().run()
        }
        DevAction::Ps => ps_step(&stack, json).stdout_is_data().run(),
        DevAction::Exec { service, command } => {
            stack.all_profiles().model()?.require(&service)?;
            exec_step(&stack, &service, &command).stdout_is_data().run()
        }
        DevAction::Restart { service } => {
            let model = stack.all_profiles().model()?;
            model.require(&service)?;
            stack.compose_all_profiles().args(["restart", &service]).run()?;
            let running = running_services(&stack, &model);
            let probes = stack.probes(&running, &|_, port| port.published);
            let checks = wait::checks(&probes.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
            wait::until_ready(
                checks,
                WaitOptions { timeout: Duration::from_secs(120), ..WaitOptions::default() },
            )?;
            if json {
                print_endpoints(&stack, &probes, true);
            }
            Ok(())
        }
    }
}

/// `--json` where a subcommand's output is a stream of its own (logs, a command's output):
/// refused rather than ignored.
fn refuse_json(action: &DevAction) -> Result<()> {
    let name = match action {
        DevAction::Logs { .. } => "logs",
        DevAction::Exec { .. } => "exec",
        _ => return Ok(()),
    };
    bail!(
        "`dev {name}` prints the service's own output, which is not JSON: drop --json (with \
         --dry-run, --json prints the plan)"
    )
}

fn logs_step(stack: &Stack, service: Option<&str>, follow: bool) -> Step {
    let step = stack.compose_all_profiles().arg("logs");
    let step = if follow { step.arg("--follow") } else { step };
    step.args(service)
}

fn ps_step(stack: &Stack, json: bool) -> Step {
    let step = stack.compose_all_profiles().args(["ps", "--all"]);
    if json { step.args(["--format", "json"]) } else { step }
}

/// `compose exec`, without a TTY when our stdin is not a terminal (a pipe, CI, a plan).
fn exec_step(stack: &Stack, service: &str, command: &[String]) -> Step {
    let step = stack.compose_all_profiles().arg("exec");
    let step = if std::io::stdin().is_terminal() { step } else { step.arg("-T") };
    step.arg(service).args(command.iter().cloned())
}

/// The lifecycle of `dev up` and `prod up`: a stack left running.
pub fn long_lived(timeout: Duration, no_build: bool) -> Lifecycle {
    Lifecycle { timeout, build: !no_build, teardown: Teardown::LeaveRunning, release_phase: None }
}

/// What `dev ACTION` would run.
fn dev_plan(stack: &Stack, revision: &Revision, action: &DevAction) -> Result<Plan> {
    let plan = Plan::new(format!("dev on project {}", stack.project));
    let plan = match action {
        DevAction::Up(up) => {
            let model = stack.model()?;
            let how = long_lived(up.timeout, up.no_build);
            stack::lifecycle_plan(plan, stack, &model, revision, how, |plan| {
                match up.then {
                    WhenReady::Exit => return plan,
                    WhenReady::Attach => {
                        return plan
                            .step(stack.compose().args(["logs", "--follow", "--since", "1s"]))
                            .note("Ctrl-C then stops the stack (its data is kept)");
                    }
                    WhenReady::Watch => {}
                }
                watch::watched(&model).into_iter().fold(
                    plan.note("then watches the working tree until Ctrl-C, by these rules:"),
                    |plan, service| {
                        service.watch.iter().fold(plan, |plan, rule| {
                            plan.note(format!("{}: {}", service.name, rule.describe(&stack.root)))
                        })
                    },
                )
            })
        }
        DevAction::Down { volumes } => stack::down_own_plan(plan, stack, *volumes),
        DevAction::Logs { service, follow } => {
            plan.step(logs_step(stack, service.as_deref(), *follow))
        }
        DevAction::Ps => plan.step(ps_step(stack, false)),
        DevAction::Exec { service, command } => plan.step(exec_step(stack, service, command)),
        DevAction::Restart { service } => {
            let model = stack.all_profiles().model()?;
            plan.step(stack.compose_all_profiles().args(["restart", service]))
                .note("then waits for those of these services that run:")
                .wait_for(stack::planned_waits(stack, &model))
        }
    };
    Ok(plan)
}

fn dev_up(stack: &Stack, revision: &Revision, up: &DevUp, json: bool) -> Result<()> {
    let how = long_lived(up.timeout, up.no_build);
    stack::lifecycle(stack, revision, how, |model, probes| {
        // With --json and --watch, stdout is a stream of events, the endpoints the first.
        if !(json && up.then == WhenReady::Watch) {
            print_endpoints(stack, probes, json);
        }
        say!(
            "the dev stack {} is ready; stop it with `cargo xtask dev down` (data is kept)",
            stack.project
        );
        match up.then {
            WhenReady::Exit => return Ok(()),
            WhenReady::Watch => {
                let options = WatchOptions { timeout: up.timeout, json };
                return watch::watch(stack, model, revision, &options);
            }
            WhenReady::Attach => {}
        }
        let followed =
            stack.compose().args(["logs", "--follow", "--since", "1s"]).stdout_is_data().run();
        if interrupt::is_set() {
            // The lifecycle stops the stack (a failed task), keeping its data.
            return Err(Interrupted.into());
        }
        followed
    })
}

/// The services of `model` that run now, so that a restart waits for what is there.
fn running_services(stack: &Stack, model: &Model) -> Model {
    let services = stack::running_services(stack).unwrap_or_default();
    model.only(&services.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Prints where each service answers, on stdout: one line each, or one JSON document.
pub fn print_endpoints(stack: &Stack, probes: &[(String, Probe)], json: bool) {
    if json {
        let services: serde_json::Map<String, Value> = probes
            .iter()
            .map(|(service, probe)| (service.clone(), Value::from(probe.to_string())))
            .collect();
        out!("{}", serde_json::json!({"project": stack.project, "services": services}));
        return;
    }
    for (service, probe) in probes {
        match probe {
            Probe::Http { host, port, .. } => out!("{service:<8} http://{host}:{port}"),
            Probe::Redis { host, port, .. } => out!("{service:<8} redis://{host}:{port}"),
            Probe::Postgres { host, port, user, database, .. } => out!(
                "{service:<8} postgresql://{user}@{host}:{port}/{database} (password in compose/{}.env)",
                stack.mode.name()
            ),
            _ => out!("{service:<8} {probe}"),
        }
    }
}

/// What `cargo xtask test` runs, and on which project.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// Leave the stack running afterwards.
    pub keep: bool,
    /// Only the end-to-end suite.
    pub e2e_only: bool,
    /// The compose project; a unique one per run when `None`.
    pub project: Option<String>,
    /// How long the stack may take to be ready.
    pub timeout: Duration,
    /// Only the workspace tests whose names contain this.
    pub tests: Option<String>,
    /// Only the end-to-end tests whose names contain these.
    pub filter: Vec<String>,
    /// Skip each tier whose inputs are unchanged since it last passed here
    /// ([`crate::tasks::changed`]).
    pub changed: bool,
    /// How many Docker-backed tests of one binary run at once, as `ci` runs them
    /// ([`crate::tasks::ci::suite_threads`]); `None` leaves it to the test harness.
    pub threads: Option<usize>,
}

impl TestRequest {
    /// The tiers this run covers, in order.
    fn tiers(&self) -> Vec<Tier> {
        if self.e2e_only { vec![Tier::E2e] } else { vec![Tier::Unit, Tier::Docker, Tier::E2e] }
    }

    /// Whether a pass of this run makes its tiers green: only a run of every test does.
    fn complete(&self) -> bool {
        self.tests.is_none() && self.filter.is_empty()
    }

    /// What each tier does: runs (with its inputs' fingerprint), or is skipped (`--changed`
    /// and nothing under its inputs changed since it last passed).
    fn decisions(&self, root: &Utf8Path, green: &Green) -> Result<Vec<(Tier, Decision)>> {
        self.tiers()
            .into_iter()
            .map(|tier| {
                let fingerprint = tier.fingerprint(root)?;
                let decision = match green.passed_at(tier, &fingerprint) {
                    Some(passed_at) if self.changed => Decision::Skip { passed_at },
                    _ => Decision::Run { fingerprint },
                };
                Ok((tier, decision))
            })
            .collect()
    }
}

fn test_stack(root: &Utf8Path, args: &TestRequest, revision: &Revision) -> Stack {
    let project = args.project.clone().unwrap_or_else(|| stack::unique_project("memories-test"));
    Stack::new(root, Mode::Test, project, &[Profile::Cache], stack::tag(revision))
}

/// The `cargo test` of a workspace tier: the unit and repository tests (`xtask`), or the
/// Docker-backed ones (`tests`), those as many at once as `ci` runs them.
fn workspace_tests(root: &Utf8Path, cargo: &str, args: &TestRequest, tier: Tier) -> Step {
    let package = if tier == Tier::Unit { "xtask" } else { "tests" };
    let threads = if tier == Tier::Docker { args.threads } else { None };
    Step::new(cargo, root)
        .args(["test", "--package", package])
        .args(ci::harness_args(args.tests.as_deref(), threads))
}

/// The `cargo test` of the end-to-end suite.
fn e2e_tests(root: &Utf8Path, cargo: &str, args: &TestRequest) -> Step {
    Step::new(cargo, root)
        .args(["test", "--package", "tests", "--test", "e2e", "--"])
        .args(args.filter.iter().cloned())
}

/// The lifecycle of the end-to-end suite's stack.
fn test_lifecycle(args: &TestRequest) -> Lifecycle {
    let teardown = if args.keep { Teardown::Keep } else { Teardown::Always };
    Lifecycle { timeout: args.timeout, build: true, teardown, release_phase: None }
}

/// What `cargo xtask test` would run.
fn test_plan(root: &Utf8Path, args: &TestRequest, cargo: &str) -> Result<Plan> {
    let revision = Revision::read(root)?;
    let stack = test_stack(root, args, &revision);
    let model = stack.model()?;
    let mut plan = Plan::new(format!("test on project {}", stack.project))
        .note("first removes what test runs whose process is gone left (`cargo xtask reap`)");
    let mut e2e_runs = false;
    for (tier, decision) in args.decisions(root, &Green::read(root))? {
        match (tier, decision) {
            (_, Decision::Skip { passed_at }) => plan = plan.note(skipped_note(tier, &passed_at)),
            (Tier::E2e, Decision::Run { .. }) => e2e_runs = true,
            (_, Decision::Run { .. }) => plan = plan.step(workspace_tests(root, cargo, args, tier)),
        }
    }
    if !e2e_runs {
        return Ok(plan);
    }
    let e2e = e2e_tests(root, cargo, args).env("MEMORIES_URL", "http://127.0.0.1:<server port>");
    Ok(stack::lifecycle_plan(plan, &stack, &model, &revision, test_lifecycle(args), |plan| {
        plan.step(e2e)
    }))
}

/// `cargo xtask test`.
pub fn test(root: &Utf8Path, args: TestRequest) -> TestTask<'_> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    TestTask { root, args, cargo }
}

/// A `test` run: its request and the cargo that runs the tests.
pub struct TestTask<'a> {
    root: &'a Utf8Path,
    args: TestRequest,
    cargo: String,
}

impl Task for TestTask<'_> {
    fn plan(&self) -> Result<Plan> {
        test_plan(self.root, &self.args, &self.cargo)
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        test_execute(self.root, &self.args, &self.cargo, json)
    }
}

fn test_execute(root: &Utf8Path, args: &TestRequest, cargo: &str, json: bool) -> Result<()> {
    if let Some(project) = &args.project {
        // The test stack is torn down with its volumes: it must be one this run creates.
        if stack::exists(project)? {
            bail!(
                "project {project} already exists (containers, volumes or networks carry its \
                 label), and `test` removes the volumes of its stack: name a new project, or \
                 drop --project"
            );
        }
    }
    // This run's id labels what it and its tests create; whatever a signal or a failure
    // leaves of it is removed at the end, and what dead runs left is removed first.
    reap::as_run(root, |run| {
        let skipped = test_run(root, args, cargo, run)?;
        if json {
            let skipped: Vec<&str> = skipped.iter().map(|t| t.name()).collect();
            out!(
                "{}",
                serde_json::json!({"run": run.to_string(), "passed": true, "skipped": skipped})
            );
        }
        Ok(())
    })
}

/// Runs the tiers that must run, each made green once it passes; returns those skipped.
fn test_run(root: &Utf8Path, args: &TestRequest, cargo: &str, run: RunId) -> Result<Vec<Tier>> {
    let mut green = Green::read(root);
    let mut skipped = Vec::new();
    for (tier, decision) in args.decisions(root, &green)? {
        let fingerprint = match decision {
            Decision::Skip { passed_at } => {
                say!("{}", skipped_note(tier, &passed_at));
                skipped.push(tier);
                continue;
            }
            Decision::Run { fingerprint } => fingerprint,
        };
        match tier {
            Tier::E2e => e2e_run(root, args, cargo, run)?,
            _ => workspace_tests(root, cargo, args, tier)
                .env(label::ENV, &run.to_string())
                .run()
                .with_context(|| format!("the {} tests failed", tier.name()))?,
        }
        if args.complete() {
            green.passed(tier, &fingerprint)?;
        }
    }
    Ok(skipped)
}

/// The end-to-end suite on a stack of its own.
fn e2e_run(root: &Utf8Path, args: &TestRequest, cargo: &str, run: RunId) -> Result<()> {
    let revision = Revision::read(root)?;
    let mut stack = test_stack(root, args, &revision);
    // A kept stack outlives the run, so it must not carry its label (the next run would reap
    // it).
    stack.run = if args.keep { None } else { Some(run) };
    say!("end-to-end tests on stack {}", stack.project);
    stack::lifecycle(&stack, &revision, test_lifecycle(args), |_, probes| {
        let url = probes
            .iter()
            .find_map(|(service, probe)| match (service.as_str(), probe) {
                ("server", Probe::Http { host, port, .. }) => Some(format!("http://{host}:{port}")),
                _ => None,
            })
            .context("the test stack publishes no server port")?;
        e2e_tests(root, cargo, args)
            .env("MEMORIES_URL", &url)
            .env("MEMORIES_PROJECT", &stack.project)
            .env(label::ENV, &run.to_string())
            .run()
            .context("the end-to-end tests failed")
    })
}

/// `cargo xtask prod ...`.
/// `cargo xtask run`.
/// How `cargo xtask run` starts the standalone image.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Use the image as it is.
    pub no_build: bool,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The named volume that keeps the data between runs.
    pub volume: String,
}

/// `cargo xtask run`: the standalone image's stack, its volume and the logs it follows.
pub fn run(root: &Utf8Path, args: RunRequest) -> Result<RunTask> {
    let revision = Revision::read(root)?;
    let project = format!("memories-run-{}", args.port);
    let mut stack = Stack::new(root, Mode::Run, project, &[], stack::tag(&revision));
    stack.vars = vec![
        ("RUN_PORT".into(), args.port.to_string()),
        ("RUN_VOLUME".into(), args.volume.clone()),
    ];
    // Created here rather than by compose, so that it outlives the stack and can carry a test
    // run's label; an existing volume (data from an earlier run) is left as it is.
    let volume =
        docker::cli(root).args(["volume", "create"]).args(label::label_args()).arg(&args.volume);
    let logs = stack.compose().args(["logs", "--follow", "--since", "1s"]);
    let how = Lifecycle {
        timeout: Duration::from_secs(60),
        build: !args.no_build,
        teardown: Teardown::Stop,
        release_phase: None,
    };
    Ok(RunTask { revision, stack, volume, logs, how, args })
}

/// A `run` of the standalone image.
pub struct RunTask {
    revision: Revision,
    stack: Stack,
    volume: Step,
    logs: Step,
    how: Lifecycle,
    args: RunRequest,
}

impl Task for RunTask {
    fn plan(&self) -> Result<Plan> {
        let model = self.stack.model()?;
        let plan = Plan::new("run the standalone image").step(self.volume.clone());
        let logs = self.logs.clone();
        Ok(stack::lifecycle_plan(plan, &self.stack, &model, &self.revision, self.how, |plan| {
            plan.step(logs).note("until Ctrl-C")
        }))
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let RunTask { revision, stack, volume, logs, how, args } = *self;
        docker::require_cli()?;
        volume.quiet().read().with_context(|| format!("cannot create volume {}", args.volume))?;
        let url = format!("http://127.0.0.1:{}", args.port);
        stack::lifecycle(&stack, &revision, how, |_, _| {
            if json {
                out!(
                    "{}",
                    serde_json::json!({"url": url, "project": stack.project, "volume": args.volume})
                );
            } else {
                out!("{url}");
            }
            say!("memories is ready (data in volume {}); Ctrl-C stops it", args.volume);
            let followed = logs.stdout_is_data().run();
            if interrupt::is_set() {
                return Err(Interrupted.into());
            }
            followed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(changed: bool, e2e_only: bool) -> TestRequest {
        TestRequest {
            keep: false,
            e2e_only,
            project: None,
            timeout: Duration::from_secs(1),
            tests: None,
            filter: Vec::new(),
            changed,
            threads: Some(4),
        }
    }

    #[test]
    fn the_docker_tier_runs_as_many_tests_at_once_as_ci_and_the_unit_tier_as_cargo_does() {
        let root = Utf8Path::new("/repo");
        let shown =
            |args: &TestRequest, tier| workspace_tests(root, "cargo", args, tier).to_string();
        let all = request(false, false);
        assert_eq!(shown(&all, Tier::Unit), "cargo test --package xtask");
        assert_eq!(shown(&all, Tier::Docker), "cargo test --package tests -- --test-threads 4");
        let filtered = TestRequest { tests: Some("wait".into()), ..request(false, false) };
        assert_eq!(shown(&filtered, Tier::Unit), "cargo test --package xtask -- wait");
        assert_eq!(
            shown(&filtered, Tier::Docker),
            "cargo test --package tests -- wait --test-threads 4"
        );
        let harness = TestRequest { threads: None, ..request(false, false) };
        assert_eq!(shown(&harness, Tier::Docker), "cargo test --package tests");
    }

    #[test]
    fn only_changed_skips_and_only_a_green_tier() {
        let root = camino::Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("dev-changed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/api.py"), "v1").unwrap();
        let mut green = Green::read(&root);
        let fingerprint = Tier::E2e.fingerprint(&root).unwrap();
        green.passed(Tier::E2e, &fingerprint).unwrap();
        let green = Green::read(&root);

        let kinds = |request: &TestRequest| -> Vec<(&str, bool)> {
            let decisions = request.decisions(&root, &green).unwrap();
            decisions.iter().map(|(t, d)| (t.name(), matches!(d, Decision::Skip { .. }))).collect()
        };
        assert_eq!(
            kinds(&request(true, false)),
            [("unit", false), ("docker", false), ("e2e", true)],
            "--changed skips the green tier only"
        );
        assert_eq!(kinds(&request(false, false)).iter().filter(|(_, s)| *s).count(), 0);
        assert_eq!(kinds(&request(true, true)), [("e2e", true)]);
        let filtered = TestRequest { tests: Some("x".into()), ..request(false, false) };
        assert!(!filtered.complete(), "a filtered run makes nothing green");
        let _ = std::fs::remove_dir_all(&root);
    }
}
