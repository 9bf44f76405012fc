//! `cargo xtask ci`: every check CI makes, in order, as xtask steps, so "green locally" means
//! "green in CI"; then one summary table (or JSON) with each step's status and time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::image::Cache;
use crate::image::prune;
use crate::image::version::Revision;
use crate::run::docker;
use crate::run::interrupt;
use crate::run::label::{self, RunId};
use crate::run::plan::{self, Plan, Step, Task};
use crate::tasks::reap;
use crate::tasks::registry::Throwaway;
use crate::tasks::tools;

/// The steps of `cargo xtask ci`, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CiStep {
    /// `cargo fmt --check`.
    Fmt,
    /// clippy with `-D warnings`, every target.
    Clippy,
    /// The tests that need no Docker: plans, parsing, the command line.
    Unit,
    /// Repository rules: Dockerfiles, .dockerignore, the lock file, compose files.
    Repo,
    /// hadolint on every Dockerfile.
    Hadolint,
    /// actionlint on .github/workflows.
    Actionlint,
    /// The app's own checks: ruff (lint and format), mypy and the unit tests, in the server
    /// Dockerfile's `check` target (nothing on the host but Docker).
    Python,
    /// `cargo xtask build`: every image.
    Build,
    /// The Docker-backed tests: images, waits, stacks, releases, bundles.
    Docker,
    /// `cargo xtask test --e2e-only`: the end-to-end suite on an isolated stack.
    E2e,
    /// `cargo xtask release` of every image for amd64 and arm64 to a throwaway registry.
    Release,
}

/// What `cargo xtask ci` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The steps to run, in any order; every one when empty.
    pub steps: Vec<CiStep>,
    /// Run the remaining steps after a failure.
    pub keep_going: bool,
    /// The build cache the build and release steps read and write.
    pub cache: Option<Cache>,
    /// The Docker-backed test binaries (`tests/tests/NAME.rs`) the docker step runs; every one
    /// when empty.
    pub suites: Vec<String>,
}

impl CiStep {
    pub const ALL: [CiStep; 11] = [
        CiStep::Fmt,
        CiStep::Clippy,
        CiStep::Unit,
        CiStep::Repo,
        CiStep::Hadolint,
        CiStep::Actionlint,
        CiStep::Python,
        CiStep::Build,
        CiStep::Docker,
        CiStep::E2e,
        CiStep::Release,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CiStep::Fmt => "fmt",
            CiStep::Clippy => "clippy",
            CiStep::Unit => "unit",
            CiStep::Repo => "repo",
            CiStep::Hadolint => "hadolint",
            CiStep::Actionlint => "actionlint",
            CiStep::Python => "python",
            CiStep::Build => "build",
            CiStep::Docker => "docker",
            CiStep::E2e => "e2e",
            CiStep::Release => "release",
        }
    }
}

/// Makes each step's commands: cargo, this xtask binary and the linters, at the repository
/// root. The linters and the throwaway registry are set up by [`execute`] just before their step.
struct Commands {
    root: Utf8PathBuf,
    cargo: String,
    xtask: String,
    cache: Option<Cache>,
    suites: Vec<String>,
    /// How many tests of one suite run at once ([`test_threads`]); `None` leaves it to the
    /// test harness (`RUST_TEST_THREADS`, when set).
    test_threads: Option<usize>,
}

/// How many tests of one Docker-backed suite run at once: twice the machine's cores, unless
/// `RUST_TEST_THREADS` says otherwise (then the harness reads it). The harness's own default
/// is one per core, but these tests spend most of their time waiting on containers (a stack
/// coming up, a healthcheck's interval, a scrape, swarm's update window), so one per core
/// leaves the CPU idle: run alone on 2 cores, the stacks suite took 258 s with 2 at once
/// (382 CPU-seconds, 74 % of the machine) and 187 s with 4 (6 at once: 180 s), release 151 s
/// against 119 s, images 82 s against 72 s. A suite of one test is not changed.
/// `cargo xtask test` runs its Docker tier so too ([`suite_threads`]).
fn test_threads(env: Option<String>, cores: usize) -> Option<usize> {
    match env {
        Some(_) => None,
        None => Some(2 * cores.max(1)),
    }
}

/// What `cargo test` passes to the test harness (after `--`, which it includes when there is
/// anything to pass): `filter`, then `--test-threads N`.
pub fn harness_args(filter: Option<&str>, threads: Option<usize>) -> Vec<String> {
    let mut args: Vec<String> = filter.into_iter().map(str::to_owned).collect();
    if let Some(n) = threads {
        args.extend(["--test-threads".to_owned(), n.to_string()]);
    }
    if !args.is_empty() {
        args.insert(0, "--".to_owned());
    }
    args
}

/// [`test_threads`] on this machine, in its environment.
pub fn suite_threads() -> Option<usize> {
    test_threads(
        std::env::var("RUST_TEST_THREADS").ok(),
        std::thread::available_parallelism().map_or(1, usize::from),
    )
}

/// Stands in for the throwaway registry's address in a printed plan.
const THROWAWAY: &str = "127.0.0.1:PORT";

impl Commands {
    fn cargo(&self) -> Step {
        Step::new(&self.cargo, &self.root)
    }

    fn xtask(&self) -> Step {
        Step::new(&self.xtask, &self.root)
    }

    /// `--cache CACHE`, when one is given.
    fn cache_args(&self) -> Vec<String> {
        self.cache.iter().flat_map(|c| ["--cache".to_owned(), c.to_string()]).collect()
    }

    /// The commands of `step`; `linters` and `registry` are where those live once set up.
    fn of(&self, step: CiStep, linters: Option<&tools::Tools>, registry: &str) -> Vec<Step> {
        let clippy = ["--", "-D", "warnings"];
        match step {
            CiStep::Fmt => vec![self.cargo().args(["fmt", "--all", "--check"])],
            CiStep::Clippy => vec![
                self.cargo().args(["clippy", "--workspace", "--all-targets"]).args(clippy),
                // The end-to-end suite is not a default test target, so --all-targets skips it.
                self.cargo().args(["clippy", "--package", "tests", "--test", "e2e"]).args(clippy),
            ],
            CiStep::Unit => {
                vec![self.cargo().args([
                    "test",
                    "--package",
                    "xtask",
                    "--bin",
                    "xtask",
                    "--test",
                    "cli",
                ])]
            }
            CiStep::Repo => vec![
                self.cargo().args(["test", "--package", "xtask", "--test", "repo"]),
                self.cargo().args(["test", "--package", "tests", "--test", "compose"]),
            ],
            CiStep::Hadolint => {
                let program =
                    linters.map_or_else(|| Utf8PathBuf::from("hadolint"), tools::Tools::hadolint);
                vec![
                    Step::new(program.as_str(), &self.root)
                        .args(["--config", ".hadolint.yaml"])
                        .args(dockerfiles(&self.root)),
                ]
            }
            CiStep::Actionlint => {
                let program = linters
                    .map_or_else(|| Utf8PathBuf::from("actionlint"), tools::Tools::actionlint);
                vec![Step::new(program.as_str(), &self.root).arg("-no-color")]
            }
            CiStep::Python => vec![
                docker::cli(&self.root)
                    .args(["buildx", "build", "--file", "docker/server/Dockerfile"])
                    .args(["--target", "check", "--output", "type=cacheonly", "."]),
            ],
            CiStep::Build => vec![self.xtask().arg("build").args(self.cache_args())],
            CiStep::Docker => {
                let [builds, stacks] = lanes(&self.suites());
                let mut steps = vec![self.compile_docker_tests()];
                steps.extend(builds.iter().chain(&stacks).map(|suite| self.docker_suite(suite)));
                steps
            }
            CiStep::E2e => vec![self.xtask().args(["test", "--e2e-only"])],
            CiStep::Release => vec![
                self.xtask()
                    .args(["release", "--registry"])
                    .arg(format!("{registry}/ci"))
                    // Local runs happen on work in progress; the release path is what is tested.
                    .arg("--allow-dirty")
                    .args(self.cache_args()),
            ],
        }
    }

    /// The suites the docker step runs: those named with `--suite`, or every one.
    fn suites(&self) -> Vec<String> {
        if self.suites.is_empty() { docker_suites(&self.root) } else { self.suites.clone() }
    }

    /// Builds the Docker-backed test binaries once, before the lanes run them.
    fn compile_docker_tests(&self) -> Step {
        self.cargo()
            .args(["test", "--package", "tests", "--no-run"])
            .args(self.suites.iter().flat_map(|s| ["--test", s.as_str()]))
    }

    /// One Docker-backed suite, `tests/tests/SUITE.rs`.
    fn docker_suite(&self, suite: &str) -> Step {
        self.cargo()
            .args(["test", "--package", "tests", "--test", suite])
            .args(harness_args(None, self.test_threads))
    }
}

/// The suites of the docker step's first lane: those that build only under names of their
/// own (`localhost/repro-*`) and start no container on a network of the engine. The second
/// lane runs every other suite. Some of those write this checkout's own tags (the release
/// tests remove and load a bundle of them, the benchmarks build them), and two writers of one
/// tag at once make one of them find the other's image: a CI run with `release` and `doctor` in
/// this lane failed on exactly that, a bundle's `memories/db:<version>` loaded while the swarm
/// test rebuilt it (that test now builds under names of its own). A new suite goes to the
/// second lane unless it is named here.
///
/// The reproducibility test spends its time on CPU (two builds of every image for two
/// platforms, one with every step run again, arm64 under emulation); the swarm suites mostly
/// wait (two thirds of their time: swarm's update windows, `monitor` and `delay` in
/// `compose/prod.yaml`). So the second lane starts with [`SWARM_SUITES`], which run beside
/// the reproducibility test and nothing else. Those two kinds can share the machine where the
/// swarm suites and the stacks cannot: `swarm init` and `swarm leave` break the name
/// resolution of containers that run on bridge networks at that moment (moby/moby#45144,
/// #51491), and the reproducibility test runs none (its build steps resolve names through the
/// host's resolver, as every BuildKit step does). Beside suites that are themselves busy on
/// CPU a lane gains nothing on 2 cores: with `reproducible` beside the stacks, db, doctor and
/// images suites (a CI run of 37db5c5), those took 1,032 s beside its 1,012 s, where one after
/// another all five took about 960 s. The same held for `release` and `images` run in this
/// lane after the swarm suites, beside `stacks` (a CI run of 70bb8da, where the bundle test
/// saved from a copy at a version of its own): they took 277 s and 143 s, `stacks` 339 s
/// (about 180, 80 and 230 s one after another), the CPU 0 to 5 % idle, and the step 955 s, no
/// faster than in one lane.
const BUILDS_LANE: [&str; 1] = ["reproducible"];

/// The suites that turn swarm mode on and off: the second lane runs them first, while the
/// first lane runs only [`BUILDS_LANE`], so no compose stack runs beside them.
const SWARM_SUITES: [&str; 2] = ["swarm", "swarm_nodes"];

/// `suites` split into the two lanes the docker step runs at once, each in the order it runs:
/// the builds lane in [`BUILDS_LANE`]'s order; the other with [`SWARM_SUITES`] first (in that
/// order), then `stacks` (its longest), then the rest alphabetically.
fn lanes(suites: &[String]) -> [Vec<String>; 2] {
    let builds: Vec<String> = BUILDS_LANE
        .iter()
        .filter(|name| suites.iter().any(|s| s == *name))
        .map(|name| (*name).to_owned())
        .collect();
    let mut stacks: Vec<String> = suites.iter().filter(|s| !builds.contains(s)).cloned().collect();
    stacks.sort_by_key(|s| {
        let swarm = SWARM_SUITES.iter().position(|name| name == s);
        (swarm.unwrap_or(SWARM_SUITES.len()), s != "stacks", s.clone())
    });
    [builds, stacks]
}

/// Every Docker-backed test binary, `tests/tests/NAME.rs` but the end-to-end suite (the e2e
/// step's), sorted.
fn docker_suites(root: &Utf8Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root.join("tests/tests"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok()?.strip_suffix(".rs").map(str::to_owned))
        .filter(|name| name != "e2e")
        .collect();
    found.sort();
    found
}

/// The suites named with `--suite`, each a Docker-backed test binary of `tests/tests` (the
/// end-to-end suite is the e2e step's).
fn checked_suites(root: &Utf8Path, suites: &[String]) -> Result<Vec<String>> {
    let known = docker_suites(root);
    for suite in suites {
        if !known.contains(suite) {
            bail!("no Docker-backed test suite {suite}: use one of {}", known.join(", "));
        }
    }
    Ok(suites.to_vec())
}

/// Every Dockerfile under docker/, sorted, relative to the root.
fn dockerfiles(root: &Utf8Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root.join("docker"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let path = format!("docker/{name}/Dockerfile");
            root.join(&path).is_file().then_some(path)
        })
        .collect();
    found.sort();
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passed,
    Failed,
    /// Not run because an earlier step failed (without `--keep-going`) or on Ctrl-C.
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "ok",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
        }
    }
}

pub struct Outcome {
    pub step: CiStep,
    pub status: Status,
    pub duration: Duration,
    pub error: Option<String>,
}

/// The steps to run, in CI's order whatever order they were named in, each once.
pub fn selected(named: &[CiStep]) -> Vec<CiStep> {
    CiStep::ALL.into_iter().filter(|s| named.is_empty() || named.contains(s)).collect()
}

/// `cargo xtask ci`: the steps `args` selects, with the commands each runs.
pub fn task(root: &Utf8Path, args: &Request) -> Result<CiTask> {
    let commands = Commands {
        root: root.to_owned(),
        cargo: std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        xtask: plan::this_xtask()?,
        cache: args.cache.clone(),
        suites: checked_suites(root, &args.suites)?,
        test_threads: suite_threads(),
    };
    Ok(CiTask { commands, steps: selected(&args.steps), keep_going: args.keep_going })
}

/// A `ci` run: its steps in order.
pub struct CiTask {
    commands: Commands,
    steps: Vec<CiStep>,
    keep_going: bool,
}

impl Task for CiTask {
    fn plan(&self) -> Result<Plan> {
        let mut plan = Plan::new("ci");
        for &step in &self.steps {
            plan = plan.note(step.name()).steps(self.commands.of(step, None, THROWAWAY));
        }
        let names: Vec<&str> = self.steps.iter().map(|s| s.name()).collect();
        Ok(plan.fact("steps", json!(names)))
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        run(&self.commands, &self.steps, self.keep_going, json)
    }
}

fn run(commands: &Commands, steps: &[CiStep], keep_going: bool, json: bool) -> Result<()> {
    let outcomes = run_steps(steps, keep_going, |step| execute(commands, step, keep_going));
    print_summary(&outcomes, json);
    if interrupt::is_set() {
        return Err(interrupt::Interrupted.into());
    }
    let failures: Vec<&str> =
        outcomes.iter().filter(|o| o.status == Status::Failed).map(|o| o.step.name()).collect();
    if !failures.is_empty() {
        bail!(
            "ci failed at: {} (logs above; rerun one with `cargo xtask ci STEP`)",
            failures.join(", ")
        );
    }
    Ok(())
}

/// Runs each step with `execute`, timing it; after a failure the rest are skipped unless
/// `keep_going`, and after Ctrl-C they are skipped whatever it says.
fn run_steps(
    steps: &[CiStep],
    keep_going: bool,
    mut execute: impl FnMut(CiStep) -> Result<()>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut failed = false;
    for &step in steps {
        if (failed && !keep_going) || interrupt::is_set() {
            outcomes.push(Outcome {
                step,
                status: Status::Skipped,
                duration: Duration::ZERO,
                error: None,
            });
            continue;
        }
        say!("==> ci: {}", step.name());
        let start = Instant::now();
        let result = execute(step);
        let duration = start.elapsed();
        let (status, error) = match result {
            Ok(()) => (Status::Passed, None),
            Err(err) => {
                failed = true;
                say!("==> ci: {} failed: {err:#}", step.name());
                (Status::Failed, Some(format!("{err:#}")))
            }
        };
        outcomes.push(Outcome { step, status, duration, error });
    }
    outcomes
}

fn execute(commands: &Commands, step: CiStep, keep_going: bool) -> Result<()> {
    let linters = match step {
        CiStep::Hadolint | CiStep::Actionlint => Some(tools::ensure(&commands.root)?),
        _ => None,
    };
    let registry = match step {
        CiStep::Release => Some(Throwaway::start(&commands.root)?),
        _ => None,
    };
    let address = registry.as_ref().map_or(THROWAWAY, |r| r.address.as_str());
    let steps = commands.of(step, linters.as_ref(), address);
    let result = match step {
        // The Docker-backed tests are a test run: what they leave is removed at the end.
        CiStep::Docker => {
            let before = engine_objects(&commands.root)?;
            let result =
                reap::as_run(&commands.root, |run| docker_lanes(commands, run, keep_going));
            result.and_then(|()| check_unlabelled(&before, &engine_objects(&commands.root)?))
        }
        _ => steps.iter().try_for_each(Step::run),
    };
    if let Some(registry) = &registry {
        registry.untag_local(&format!("{}/ci", registry.address));
    }
    result
}

/// The engine's containers, networks and volumes ([`reap::objects`]) and its image tags, each
/// keyed by an id and said as what it is and its name. This checkout's own tags
/// (`memories/NAME:<version>`, `:<version>-<sha>`, `:sha-<sha>`) are left out: the suites build
/// the images the `build` step does not (`node`, `registry`, `tools`) and keep them, as that
/// step keeps its own, for the next build to answer from the store.
fn engine_objects(root: &Utf8Path) -> Result<BTreeMap<String, String>> {
    let ours = Revision::read(root)?.build_tags();
    let own = |name: &str| {
        let tag = name.rsplit_once(':').map_or("", |(_, tag)| tag);
        prune::under("memories", name) && ours.iter().any(|t| t == tag)
    };
    let mut objects = reap::objects(root, reap::When::Before)?;
    let listing =
        docker::cli(root).args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]).quiet();
    let tags = docker::image_listing(&listing, Step::capture).context("cannot list image tags")?;
    for tag in tags.lines().filter(|t| !t.is_empty() && !t.contains("<none>") && !own(t)) {
        objects.insert(format!("tag {tag}"), format!("image tag {tag}"));
    }
    Ok(objects)
}

/// What is in `after` and was not in `before`, said in one line: what the docker step left
/// although its run's objects were removed, so none of it carries the run label (a test that
/// creates it without the label, and does not remove it).
fn unlabelled(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Option<String> {
    let left: Vec<&str> =
        after.iter().filter(|(id, _)| !before.contains_key(*id)).map(|(_, o)| o.as_str()).collect();
    if left.is_empty() {
        return None;
    }
    Some(format!(
        "the Docker-backed suites left {} object(s) that carry no run label ({}): find the test \
         that creates them and label them ({}=RUN) or remove them in its clean-up (an image \
         tag, which has no label: remove it)",
        left.len(),
        left.join(", "),
        label::LABEL
    ))
}

/// Fails the docker step on [`unlabelled`] objects under CI (`CI` set), where nothing else
/// runs on the machine; elsewhere only warns, since a stack the developer started meanwhile
/// would be listed too.
fn check_unlabelled(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Result<()> {
    match unlabelled(before, after) {
        Some(message) if std::env::var_os("CI").is_some() => bail!("{message}"),
        Some(message) => {
            say!("warning: {message} (unless you made them while the suites ran)");
            Ok(())
        }
        None => Ok(()),
    }
}

/// How one suite of the docker step went.
struct SuiteOutcome {
    suite: String,
    lane: &'static str,
    status: Status,
    duration: Duration,
}

/// The docker step: the test binaries built once, then the two [`lanes`] at the same time.
/// Each suite's output goes to `target/xtask/ci/SUITE.log` and is shown whole when the suite
/// ends, so the lanes' outputs never mix; a table of each suite's time ends the step. After a
/// failure neither lane starts another suite, unless `keep_going`.
fn docker_lanes(commands: &Commands, run: RunId, keep_going: bool) -> Result<()> {
    let run = run.to_string();
    commands.compile_docker_tests().env(label::ENV, &run).run()?;
    let logs = commands.root.join("target/xtask/ci");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {logs}"))?;
    let failed = AtomicBool::new(false);
    let showing = Mutex::new(());
    let started = Instant::now();
    let lane = |name: &'static str, suites: &[String]| {
        let mut outcomes = Vec::new();
        for suite in suites {
            let stop = interrupt::is_set() || (failed.load(Ordering::SeqCst) && !keep_going);
            if stop {
                let duration = Duration::ZERO;
                let (suite, status) = (suite.clone(), Status::Skipped);
                outcomes.push(SuiteOutcome { suite, lane: name, status, duration });
                continue;
            }
            let log = logs.join(format!("{suite}.log"));
            let begun = Instant::now();
            let result = commands.docker_suite(suite).env(label::ENV, &run).run_logged(&log);
            let duration = begun.elapsed();
            let status = if result.is_ok() { Status::Passed } else { Status::Failed };
            if result.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            let _shown = showing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            say!("==> ci: docker: {suite} ({name} lane), its output ({log}):");
            let text = std::fs::read(&log).unwrap_or_default();
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &text);
            say!(
                "==> ci: docker: {suite} {} in {:.1}s{}",
                status.as_str(),
                duration.as_secs_f64(),
                result.err().map(|e| format!(": {e:#}")).unwrap_or_default()
            );
            outcomes.push(SuiteOutcome { suite: suite.clone(), lane: name, status, duration });
        }
        outcomes
    };
    let [builds, stacks] = lanes(&commands.suites());
    let outcomes: Vec<SuiteOutcome> = std::thread::scope(|scope| {
        let first = scope.spawn(|| lane("builds", &builds));
        let second = lane("stacks", &stacks);
        let mut first = first.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        first.extend(second);
        first
    });
    let wall = started.elapsed();
    say!("{:<14} {:<7} {:<8} {:>9}", "suite", "lane", "status", "time");
    for o in &outcomes {
        let time = format!("{:.1}s", o.duration.as_secs_f64());
        say!("{:<14} {:<7} {:<8} {:>9}", o.suite, o.lane, o.status.as_str(), time);
    }
    let sum: Duration = outcomes.iter().map(|o| o.duration).sum();
    say!(
        "the suites took {:.1}s one after another, {:.1}s in two lanes",
        sum.as_secs_f64(),
        wall.as_secs_f64()
    );
    if interrupt::is_set() {
        return Err(interrupt::Interrupted.into());
    }
    let failures: Vec<&str> =
        outcomes.iter().filter(|o| o.status == Status::Failed).map(|o| o.suite.as_str()).collect();
    if !failures.is_empty() {
        bail!("the Docker-backed suites {} failed (their output is above)", failures.join(", "));
    }
    Ok(())
}

fn print_summary(outcomes: &[Outcome], json: bool) {
    let total: Duration = outcomes.iter().map(|o| o.duration).sum();
    if json {
        let steps: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "step": o.step.name(),
                    "status": o.status.as_str().to_lowercase(),
                    "seconds": (o.duration.as_secs_f64() * 10.0).round() / 10.0,
                    "error": o.error,
                })
            })
            .collect();
        let passed = outcomes.iter().all(|o| o.status == Status::Passed);
        out!(
            "{:#}",
            json!({"passed": passed, "seconds": (total.as_secs_f64() * 10.0).round() / 10.0, "steps": steps})
        );
        return;
    }
    out!("{:<12} {:<8} {:>9}", "step", "status", "time");
    for o in outcomes {
        let time = if o.status == Status::Skipped {
            "-".to_owned()
        } else {
            format!("{:.1}s", o.duration.as_secs_f64())
        };
        out!("{:<12} {:<8} {:>9}", o.step.name(), o.status.as_str(), time);
    }
    out!("{:<12} {:<8} {:>9}", "total", "", format!("{:.1}s", total.as_secs_f64()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands() -> Commands {
        Commands {
            root: "/repo".into(),
            cargo: "cargo".into(),
            xtask: "/bin/xtask".into(),
            cache: None,
            suites: Vec::new(),
            test_threads: Some(4),
        }
    }

    fn repo() -> &'static Utf8Path {
        Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
    }

    #[test]
    fn suites_narrow_the_docker_step_to_their_test_binaries() {
        let shown = |commands: &Commands| -> Vec<String> {
            commands.of(CiStep::Docker, None, THROWAWAY).iter().map(|s| s.to_string()).collect()
        };
        let two = Commands {
            root: repo().to_owned(),
            suites: vec!["images".into(), "reproducible".into()],
            ..commands()
        };
        assert_eq!(
            shown(&two),
            [
                "cargo test --package tests --no-run --test images --test reproducible",
                "cargo test --package tests --test reproducible -- --test-threads 4",
                "cargo test --package tests --test images -- --test-threads 4",
            ]
        );
        let harness = Commands { test_threads: None, ..two };
        assert_eq!(shown(&harness)[1], "cargo test --package tests --test reproducible");
        let all = shown(&Commands { root: repo().to_owned(), ..commands() });
        assert_eq!(all[0], "cargo test --package tests --no-run");
        assert_eq!(all.len(), 1 + docker_suites(repo()).len(), "{all:?}");
        let root = repo();
        let err = checked_suites(root, &["e2e".into()]).unwrap_err().to_string();
        assert!(err.starts_with("no Docker-backed test suite e2e: use one of compose,"), "{err}");
        assert_eq!(checked_suites(root, &["swarm".into()]).unwrap(), ["swarm"]);
    }

    #[test]
    fn suites_run_twice_as_many_tests_at_once_as_there_are_cores_unless_told() {
        assert_eq!(test_threads(None, 2), Some(4));
        assert_eq!(test_threads(None, 0), Some(2));
        assert_eq!(test_threads(Some("1".into()), 2), None, "RUST_TEST_THREADS is the harness's");
    }

    #[test]
    fn every_suite_runs_in_exactly_one_lane_and_the_builds_lane_names_real_suites() {
        let suites = docker_suites(repo());
        for name in BUILDS_LANE.iter().chain(&SWARM_SUITES) {
            assert!(suites.iter().any(|s| s == name), "no suite {name}");
        }
        let [builds, stacks] = lanes(&suites);
        assert_eq!(builds, BUILDS_LANE.map(str::to_owned));
        assert_eq!(stacks[..3], ["swarm", "swarm_nodes", "stacks"], "the swarm suites first");
        let mut both: Vec<String> = builds.iter().chain(&stacks).cloned().collect();
        both.sort();
        assert_eq!(both, suites, "each suite once");
        // The swarm tests re-point the local version tags: what builds those shares a lane.
        for name in ["swarm", "swarm_nodes", "images", "stacks", "wait", "release", "doctor"] {
            assert!(stacks.iter().any(|s| s == name), "{name} runs in the stacks lane");
        }
        let [_, stacks] = lanes(&["watch".into(), "stacks".into(), "db".into()]);
        assert_eq!(stacks, ["stacks", "db", "watch"], "stacks first, the rest in order");
        let [builds, stacks] = lanes(&["stacks".into(), "swarm_nodes".into(), "swarm".into()]);
        assert!(builds.is_empty(), "{builds:?}");
        assert_eq!(stacks, ["swarm", "swarm_nodes", "stacks"]);
    }

    #[test]
    fn objects_the_docker_step_left_are_named() {
        let objects = |list: &[(&str, &str)]| -> BTreeMap<String, String> {
            list.iter().map(|(id, o)| ((*id).to_owned(), (*o).to_owned())).collect()
        };
        let before = objects(&[("n1", "network bridge"), ("v1", "volume kept")]);
        assert_eq!(unlabelled(&before, &before), None);
        let fewer = objects(&[("n1", "network bridge")]);
        assert_eq!(unlabelled(&before, &fewer), None, "what went is no leftover");
        let after = objects(&[
            ("c9", "container memories-wait-7-1-app-run-1"),
            ("n1", "network bridge"),
            ("v1", "volume kept"),
            ("v2", "volume memories-wait-7-1_data"),
            ("tag memories/tools:sha-9be762b", "image tag memories/tools:sha-9be762b"),
        ]);
        assert_eq!(
            unlabelled(&before, &after).unwrap(),
            "the Docker-backed suites left 3 object(s) that carry no run label (container \
             memories-wait-7-1-app-run-1, image tag memories/tools:sha-9be762b, volume \
             memories-wait-7-1_data): find the test that creates them and label them \
             (memories.run=RUN) or remove them in its clean-up (an image tag, which has no \
             label: remove it)"
        );
    }

    #[test]
    fn the_cache_reaches_the_build_and_the_release_only() {
        let commands = Commands { cache: Some(Cache::Gha), ..commands() };
        let shown = |step| {
            commands
                .of(step, None, "127.0.0.1:9")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(shown(CiStep::Build), ["/bin/xtask build --cache gha"]);
        assert!(
            shown(CiStep::Release)[0].ends_with("--allow-dirty --cache gha"),
            "{:?}",
            shown(CiStep::Release)
        );
        assert!(!shown(CiStep::Docker)[0].contains("--cache"));
    }

    #[test]
    fn steps_run_in_ci_order_whatever_order_they_are_named_in() {
        assert_eq!(selected(&[]), CiStep::ALL);
        assert_eq!(
            selected(&[CiStep::Release, CiStep::Fmt, CiStep::Release]),
            [CiStep::Fmt, CiStep::Release]
        );
    }

    #[test]
    fn a_failure_skips_the_rest_unless_keep_going() {
        let steps = [CiStep::Fmt, CiStep::Clippy, CiStep::Unit];
        let failing = |step| if step == CiStep::Clippy { bail!("lint") } else { Ok(()) };
        let statuses =
            |outcomes: Vec<Outcome>| outcomes.iter().map(|o| o.status).collect::<Vec<_>>();
        assert_eq!(
            statuses(run_steps(&steps, false, failing)),
            [Status::Passed, Status::Failed, Status::Skipped]
        );
        let mut ran = Vec::new();
        let outcomes = run_steps(&steps, true, |step| {
            ran.push(step);
            failing(step)
        });
        assert_eq!(ran, steps, "--keep-going runs every step");
        assert_eq!(outcomes[1].error.as_deref(), Some("lint"));
        assert_eq!(statuses(outcomes), [Status::Passed, Status::Failed, Status::Passed]);
    }

    #[test]
    fn each_step_is_an_xtask_or_cargo_command() {
        let c = commands();
        let fmt = c.of(CiStep::Fmt, None, THROWAWAY);
        assert_eq!(fmt[0].to_string(), "cargo fmt --all --check");
        let clippy: Vec<String> =
            c.of(CiStep::Clippy, None, THROWAWAY).iter().map(ToString::to_string).collect();
        assert_eq!(clippy[0], "cargo clippy --workspace --all-targets -- -D warnings");
        assert!(clippy[1].contains("--test e2e"), "{clippy:?}");
        let release = c.of(CiStep::Release, None, "127.0.0.1:4999")[0].to_string();
        assert_eq!(release, "/bin/xtask release --registry 127.0.0.1:4999/ci --allow-dirty");
        assert_eq!(c.of(CiStep::E2e, None, THROWAWAY)[0].to_string(), "/bin/xtask test --e2e-only");
    }
}
