//! Stacks: the compose definition under `compose/`, the one constructor of every
//! `docker compose` invocation, and the one lifecycle every stack task follows:
//! build -> up -> wait (our probes) -> act -> on failure, `ps` and the failing services' logs
//! -> tear down what this run created -> the original result. SIGINT, SIGTERM and SIGHUP take
//! the same path and exit 128 + the signal's number; the teardown is shielded (see
//! [`crate::interrupt::cleanup_abandoned`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use clap::ValueEnum;
use serde_json::Value;

use crate::cli::ImageName;
use crate::docker;
use crate::image::{self, BuildRequest};
use crate::interrupt;
use crate::plan::{Captured, Running, Step, Stream, Streams};
use crate::reap::{self, RunId};
use crate::version::Revision;
use crate::wait::{self, Probe, WaitOptions};

/// Which overlay of the one definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Dev,
    Test,
    Prod,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Test => "test",
            Mode::Prod => "prod",
        }
    }
}

/// Optional parts of a stack (compose profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Profile {
    /// Redis as the server's search cache.
    Cache,
    /// An OpenTelemetry collector receiving the server's traces (its upstream image must be
    /// pullable).
    Otel,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Cache => "cache",
            Profile::Otel => "otel",
        }
    }
}

/// One stack: a compose project made from the base file and one overlay.
#[derive(Debug, Clone)]
pub struct Stack {
    pub root: Utf8PathBuf,
    pub mode: Mode,
    pub project: String,
    pub profiles: Vec<Profile>,
    /// The image tag every service runs (`<version>-<sha>` of the build).
    pub tag: String,
    /// Env files after the mode's own (`compose/<mode>.env`), e.g. prod secrets.
    pub env_files: Vec<Utf8PathBuf>,
    /// The test run the stack belongs to, if any: its containers, network and volumes carry
    /// it as a label (see [`crate::reap`]). By default the one named by `MEMORIES_RUN`.
    pub run: Option<RunId>,
}

impl Stack {
    pub fn new(
        root: &Utf8Path,
        mode: Mode,
        project: String,
        profiles: &[Profile],
        tag: String,
    ) -> Stack {
        let mut profiles = profiles.to_vec();
        profiles.sort();
        profiles.dedup();
        let run = reap::inherited();
        Stack { root: root.to_owned(), mode, project, profiles, tag, env_files: Vec::new(), run }
    }

    /// Makes every `docker compose` invocation: project name, each file, the env files, the
    /// profiles and the variables that pick the images, run from the repository root.
    pub fn compose(&self) -> Step {
        let mut step = docker::cli(&self.root)
            .args(["compose", "--project-name", &self.project])
            .args(["--file", "compose/compose.yaml", "--file"])
            .arg(format!("compose/{}.yaml", self.mode.name()))
            .args(["--env-file".to_owned(), format!("compose/{}.env", self.mode.name())]);
        for file in &self.env_files {
            step = step.args(["--env-file", file.as_str()]);
        }
        for profile in &self.profiles {
            step = step.args(["--profile", profile.name()]);
        }
        step = step.env("MEMORIES_TAG", &self.tag);
        if self.profiles.contains(&Profile::Cache) {
            step = step.env("REDIS_URL", "redis://redis:6379/0");
        }
        if self.profiles.contains(&Profile::Otel) {
            step = step.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318");
        }
        if let Some(run) = self.run {
            step = step.env(reap::ENV, &run.to_string());
        }
        for secret in self.secret_values() {
            step = step.secret(&secret);
        }
        step
    }

    /// The values of every secret-looking setting (see [`is_secret_key`]) in the environment
    /// and the stack's env files: never shown in a step's echo, plan or error. The dev and
    /// test env files are committed, throwaway settings (the dev password is the project's
    /// name), so they are not among them; prod's is.
    pub fn secret_values(&self) -> Vec<String> {
        let mode_env = self.root.join(format!("compose/{}.env", self.mode.name()));
        let committed = match self.mode {
            Mode::Prod => Some(&mode_env),
            Mode::Dev | Mode::Test => None,
        };
        let mut values = Vec::new();
        for file in committed.into_iter().chain(&self.env_files) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            values.extend(
                env_file_entries(&text).filter(|(key, _)| is_secret_key(key)).map(|(_, v)| v),
            );
        }
        values
            .extend(std::env::vars().filter(|(key, _)| is_secret_key(key)).map(|(_, value)| value));
        values.retain(|v| !v.is_empty());
        values
    }

    /// The same, with every profile enabled: for commands that must see every container the
    /// project may have (down, ps, logs), whatever profiles `up` used.
    pub fn compose_all_profiles(&self) -> Step {
        Stack { profiles: vec![Profile::Cache, Profile::Otel], ..self.clone() }.compose()
    }

    /// The services this stack runs, in start order.
    pub fn services(&self) -> Vec<&'static str> {
        let mut services = vec!["db", "server"];
        if self.profiles.contains(&Profile::Cache) {
            services.push("redis");
        }
        if self.profiles.contains(&Profile::Otel) {
            services.push("otel-collector");
        }
        if self.mode == Mode::Prod {
            services.push("proxy");
        }
        services
    }

    /// The images this stack needs built.
    pub fn images(&self) -> Vec<ImageName> {
        let mut images = vec![ImageName::Server, ImageName::Db];
        if self.profiles.contains(&Profile::Cache) {
            images.push(ImageName::Redis);
        }
        if self.mode == Mode::Prod {
            images.push(ImageName::Proxy);
        }
        images
    }

    /// How each service is known to be ready: through its published port where it has one,
    /// else its container's healthcheck. The server counts as ready on `/v1/health` 200, which
    /// it answers only when its database does.
    pub fn probes(&self, ports: &dyn Fn(&str, u16) -> Option<u16>) -> Vec<(&'static str, Probe)> {
        let health = |service: &str| Probe::ComposeHealthy {
            project: self.project.clone(),
            service: service.into(),
        };
        self.services()
            .into_iter()
            .map(|service| {
                let probe = match (service, self.mode) {
                    ("server", Mode::Dev | Mode::Test) => match ports("server", 8283) {
                        Some(port) => http_health(port),
                        None => health(service),
                    },
                    ("db", Mode::Dev | Mode::Test) => {
                        match (ports("db", 5432), self.setting("POSTGRES_PASSWORD")) {
                            (Some(port), password) => Probe::Postgres {
                                host: "127.0.0.1".into(),
                                port,
                                user: "memories".into(),
                                password,
                                database: "memories".into(),
                                allow_cleartext: false,
                            },
                            (None, _) => health(service),
                        }
                    }
                    ("redis", Mode::Dev | Mode::Test) => match ports("redis", 6379) {
                        Some(port) => {
                            Probe::Redis { host: "127.0.0.1".into(), port, password: None }
                        }
                        None => health(service),
                    },
                    ("proxy", _) => match ports("proxy", 8080) {
                        Some(port) => http_health(port),
                        None => health(service),
                    },
                    _ => health(service),
                };
                (service, probe)
            })
            .collect()
    }

    /// A setting as compose sees it: the environment first, then the env files, last wins.
    pub fn setting(&self, key: &str) -> Option<String> {
        if let Ok(value) = std::env::var(key) {
            return Some(value);
        }
        let mode_env = self.root.join(format!("compose/{}.env", self.mode.name()));
        let mut found = None;
        for file in std::iter::once(&mode_env).chain(&self.env_files) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if let Some(value) = env_file_value(&text, key) {
                found = Some(value);
            }
        }
        found
    }

    /// The host port a service is published on by configuration (dev and prod), without asking
    /// Docker: the `DEV_*_PORT` and `PROXY_PORT` settings or their defaults.
    pub fn configured_port(&self, service: &str) -> Option<u16> {
        let (key, default) = match (self.mode, service) {
            (Mode::Dev, "server") => ("DEV_SERVER_PORT", 8283),
            (Mode::Dev, "db") => ("DEV_DB_PORT", 5432),
            (Mode::Dev, "redis") => ("DEV_REDIS_PORT", 6379),
            (Mode::Prod, "proxy") => ("PROXY_PORT", 8080),
            _ => return None,
        };
        Some(self.setting(key).and_then(|p| p.parse().ok()).unwrap_or(default))
    }

    /// The host port `service`'s `port` is published on, if it is.
    pub fn published_port(&self, service: &str, port: u16) -> Option<u16> {
        let step = self.compose().args(["port", service, &port.to_string()]).quiet();
        let output = step.capture().ok().filter(Captured::success)?;
        output.stdout.trim().rsplit(':').next()?.parse().ok().filter(|&p: &u16| p != 0)
    }
}

fn http_health(port: u16) -> Probe {
    Probe::loopback_200(port, "/v1/health")
}

/// Builds the images the stack runs (a no-op when nothing changed).
pub fn build(stack: &Stack, revision: &Revision) -> Result<()> {
    image::execute(&build_plan(stack, revision)).context("cannot build the stack's images")?;
    Ok(())
}

/// The build of the images the stack runs.
pub fn build_plan(stack: &Stack, revision: &Revision) -> image::BuildPlan {
    let request = BuildRequest { images: stack.images(), ..BuildRequest::default() };
    image::plan(&stack.root, revision, &request)
}

/// `docker compose up` as every task starts a stack: detached, with the images built before.
pub fn up_step(stack: &Stack) -> Step {
    stack.compose().args(["up", "--detach", "--remove-orphans", "--no-build", "--pull", "never"])
}

/// `docker compose down` of every profile, with the volumes when `volumes`.
pub fn down_step(stack: &Stack, volumes: bool) -> Step {
    let step = stack.compose_all_profiles().args(["down", "--remove-orphans", "--timeout", "5"]);
    if volumes { step.arg("--volumes") } else { step }
}

/// What `up_and_wait` waits for, as a plan shows it (no Docker asked): the configured ports
/// of dev and prod; for a test stack, the container ports, whose host ports are known only
/// after `up`.
pub fn planned_waits(stack: &Stack) -> Vec<String> {
    let probes = match stack.mode {
        Mode::Dev | Mode::Prod => stack.probes(&|service, _| stack.configured_port(service)),
        Mode::Test => stack.probes(&|_, port| Some(port)),
    };
    let suffix = match stack.mode {
        Mode::Test => " (container port; the host port is read after up)",
        Mode::Dev | Mode::Prod => "",
    };
    probes.iter().map(|(service, probe)| format!("{service} {probe}{suffix}")).collect()
}

/// Fails naming the first image of the stack that is not in the local image store, for
/// `--no-build` runs.
pub fn require_images(stack: &Stack) -> Result<()> {
    let references: Vec<String> = stack
        .images()
        .into_iter()
        .map(|image| format!("{}:{}", image::repository(None, image), stack.tag))
        .collect();
    // One call for all: it prints the ids of those found and fails if any is missing.
    let output = docker::cli(&stack.root)
        .args(["image", "inspect", "--format", "{{.Id}}"])
        .args(&references)
        .quiet()
        .capture()?;
    if !output.success() {
        let stderr = &output.stderr;
        let missing =
            references.iter().find(|r| stderr.contains(r.as_str())).unwrap_or(&references[0]);
        let image = missing.rsplit_once(':').map_or(missing.as_str(), |(repo, _)| repo);
        let name = image.rsplit('/').next().unwrap_or(image);
        bail!("image {missing} is not built: drop --no-build, or run `cargo xtask build {name}`");
    }
    Ok(())
}

/// The tag a stack runs: the build's `<version>-<sha>` tag, unique to the commit.
pub fn tag(revision: &Revision) -> String {
    revision.build_tags()[1].clone()
}

/// What a project already has, from one `docker ps`: the overlays (dev, test, prod) of its
/// containers, read from the label compose puts on each
/// (`com.docker.compose.project.config_files`), and whether any of them runs.
pub struct Existing {
    pub modes: Vec<Mode>,
    pub running: bool,
}

fn project_filter(project: &str) -> String {
    format!("label=com.docker.compose.project={project}")
}

/// Reads a docker listing of the project's things (a short query, never a long one).
fn list(project: &str, args: &[&str]) -> Result<String> {
    docker::cli(Utf8Path::new("."))
        .args(args.iter().copied())
        .args(["--filter".to_owned(), project_filter(project)])
        .timeout(Duration::from_secs(30))
        .read()
        .with_context(|| format!("cannot look for an existing project {project}"))
}

pub fn existing(project: &str) -> Result<Existing> {
    let format = "{{.State}}\t{{.Label \"com.docker.compose.project.config_files\"}}";
    let containers = list(project, &["ps", "--all", "--format", format])?;
    let modes: Vec<Mode> = [Mode::Dev, Mode::Test, Mode::Prod]
        .into_iter()
        .filter(|mode| containers.contains(&format!("{}.yaml", mode.name())))
        .collect();
    let running = containers.lines().any(|line| line.starts_with("running\t"));
    Ok(Existing { modes, running })
}

/// Whether the project has any container, volume or network at all.
pub fn exists(project: &str) -> Result<bool> {
    for args in [
        ["ps", "--all", "--quiet"].as_slice(),
        &["volume", "ls", "--quiet"],
        &["network", "ls", "--quiet"],
    ] {
        if !list(project, args)?.trim().is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses a project that holds a stack of another kind: a dev task never touches a prod
/// stack, nor the reverse. Returns what the project has.
pub fn require_own_kind(stack: &Stack) -> Result<Existing> {
    let existing = existing(&stack.project)?;
    if let Some(other) = existing.modes.iter().find(|m| **m != stack.mode) {
        bail!(
            "project {} holds a {} stack, not a {} one: set COMPOSE_PROJECT_NAME to another name",
            stack.project,
            other.name(),
            stack.mode.name()
        );
    }
    Ok(existing)
}

/// Starts the stack and waits until every service is ready. On failure it prints `ps` and
/// the logs of the services that did not make it; tearing down is the caller's.
pub fn up_and_wait(stack: &Stack, timeout: Duration) -> Result<Vec<(&'static str, Probe)>> {
    let up = up_step(stack);
    // Where the ports are known beforehand (dev, prod), the probes start with `up` itself, and
    // `up` is one more check of the same wait: its failure ends the wait at once.
    let (probes, up_check) = match stack.mode {
        Mode::Dev | Mode::Prod => {
            let probes = stack.probes(&|service, _| stack.configured_port(service));
            (probes, Some(UpCheck::start(&up)?))
        }
        Mode::Test => {
            up.run().context("cannot start the stack")?;
            (stack.probes(&|service, port| stack.published_port(service, port)), None)
        }
    };
    say!(
        "waiting up to {timeout:?} for {}",
        probes.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
    );
    // Probes count only once `up` has exited: before that they may reach a container that
    // `up` is about to replace.
    let started = Arc::new(AtomicBool::new(up_check.is_none()));
    let mut checks: Vec<(String, Box<dyn wait::Check>)> = probes
        .iter()
        .map(|(service, probe)| {
            let check = ServiceCheck {
                project: stack.project.clone(),
                service,
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
                .map(|((service, _), _)| *service)
                .collect();
            dump(stack, &failing);
        }
        return Err(err.context(format!("stack {} did not become ready", stack.project)));
    }
    Ok(probes)
}

/// [`up_and_wait`] for a long-lived stack (dev, prod), after [`require_own_kind`]. When it
/// fails, a stack that was not running before is taken down (its data stays); one that was is
/// left as it is, so that a failed update never takes down containers that served before it.
pub fn up_and_wait_or_undo(
    stack: &Stack,
    before: &Existing,
    timeout: Duration,
) -> Result<Vec<(&'static str, Probe)>> {
    let result = up_and_wait(stack, timeout);
    if result.is_err() {
        if before.running {
            say!(
                "left stack {} as it is: it was running before this run; see `docker compose \
                 --project-name {} ps --all`",
                stack.project,
                stack.project
            );
        } else {
            let _ = down(stack, false);
        }
    }
    result
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

/// A service's probe, counted only after `up` has started the containers, and failed at
/// once when the service's container has exited: a dead server is not "not yet ready".
struct ServiceCheck {
    project: String,
    service: &'static str,
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
        let states = wait::checks::compose_service_ps(
            &self.project,
            self.service,
            "{{.State}}\t{{.Status}}",
            timeout,
        );
        let exited = states.as_deref().unwrap_or("").lines().find_map(|line| {
            let (state, status) = line.split_once('\t')?;
            matches!(state, "exited" | "dead").then(|| status.to_owned())
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
    let services: Vec<&str> =
        if services.is_empty() { stack.services() } else { services.to_vec() };
    for service in services {
        say!("--- last 200 log lines of {service} ---");
        let _ = stack
            .compose_all_profiles()
            .args(["logs", "--no-color", "--tail", "200", service])
            .run_regardless();
    }
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

/// Runs `act` on a started stack; on failure dumps its state; then tears down what this run
/// created (unless `keep`), and returns the first error.
pub fn lifecycle(
    stack: &Stack,
    timeout: Duration,
    teardown_volumes: bool,
    keep: bool,
    act: impl FnOnce(&[(&'static str, Probe)]) -> Result<()>,
) -> Result<()> {
    let result = up_and_wait(stack, timeout).and_then(|probes| {
        let result = act(&probes);
        if result.is_err() && !interrupt::is_set() {
            dump(stack, &[]);
        }
        result
    });
    if keep {
        say!(
            "kept stack {}: remove it with `docker compose --project-name {} down --volumes`",
            stack.project,
            stack.project
        );
        return result;
    }
    let teardown = down(stack, teardown_volumes);
    match (result, teardown) {
        (Err(err), Err(teardown)) => {
            say!("error: {teardown:#}");
            Err(err)
        }
        (result, teardown) => result.and(teardown),
    }
}

/// The value of `key` in an env file's text, unquoted.
pub fn env_file_value(text: &str, key: &str) -> Option<String> {
    env_file_entries(text).filter(|(k, _)| *k == key).map(|(_, v)| v).next_back()
}

/// Every `KEY=value` of an env file's text, in order, values unquoted.
fn env_file_entries(text: &str) -> impl DoubleEndedIterator<Item = (&str, String)> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned()))
}

/// A setting whose value is a secret, by its name: a password, secret, token or key.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "KEY", "REDISCLI_AUTH"].iter().any(|s| key.contains(s))
}

/// Fails naming every required secret that neither the environment nor an env file sets.
pub fn require_secrets(stack: &Stack, secrets: &[&str]) -> Result<()> {
    for file in &stack.env_files {
        std::fs::read_to_string(file).with_context(|| format!("cannot read env file {file}"))?;
    }
    let missing: Vec<&str> =
        secrets.iter().copied().filter(|s| stack.setting(s).is_none_or(|v| v.is_empty())).collect();
    if !missing.is_empty() {
        bail!(
            "the {} stack needs {}: export {}, or pass --env-file FILE with {} (it has no default on purpose)",
            stack.mode.name(),
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            missing.iter().map(|m| format!("{m}=...")).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

/// The project name of a long-lived stack: `COMPOSE_PROJECT_NAME`, else `default`.
pub fn project_name(default: &str) -> String {
    std::env::var("COMPOSE_PROJECT_NAME")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| default.into())
}

/// A compose project name that no other run on this machine uses.
pub fn unique_project(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{:04x}", std::process::id(), nanos & 0xffff)
}

/// The swarm state of the engine (`active` when it is a manager or worker).
pub fn swarm_state(root: &Utf8Path) -> Result<String> {
    let format = "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}";
    let out = docker::cli(root)
        .args(["info", "--format", format])
        .quiet()
        .read()
        .context("cannot ask the engine about swarm")?;
    Ok(out.trim().to_owned())
}

/// The merged, interpolated definition as JSON, for a swarm deploy.
pub fn merged_definition(stack: &Stack) -> Result<Value> {
    let json = stack
        .compose()
        .args(["config", "--format", "json"])
        .read()
        .context("the stack definition is not valid")?;
    serde_json::from_str(&json).context("docker compose config printed no JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(mode: Mode, profiles: &[Profile]) -> Stack {
        Stack::new(Utf8Path::new("/repo"), mode, "p1".into(), profiles, "0.1.0-abc1234".into())
    }

    #[test]
    fn one_constructor_sets_project_files_env_file_and_profiles() {
        let step = stack(Mode::Test, &[Profile::Cache, Profile::Cache]).compose();
        assert_eq!(
            step.args,
            [
                "compose",
                "--project-name",
                "p1",
                "--file",
                "compose/compose.yaml",
                "--file",
                "compose/test.yaml",
                "--env-file",
                "compose/test.env",
                "--profile",
                "cache",
            ]
        );
        assert_eq!(step.cwd, "/repo");
        assert!(step.env.contains(&("MEMORIES_TAG".into(), "0.1.0-abc1234".into())));
        assert!(step.env.contains(&("REDIS_URL".into(), "redis://redis:6379/0".into())));
        let plain = stack(Mode::Dev, &[]).compose();
        assert!(!plain.env.iter().any(|(k, _)| k == "REDIS_URL"));
    }

    #[test]
    fn services_images_and_probes_follow_mode_and_profiles() {
        let test = stack(Mode::Test, &[Profile::Cache]);
        assert_eq!(test.services(), ["db", "server", "redis"]);
        assert_eq!(test.images(), [ImageName::Server, ImageName::Db, ImageName::Redis]);
        let probes = test.probes(&|service, _| (service != "db").then_some(40000));
        let shown: Vec<String> = probes.iter().map(|(s, p)| format!("{s} {p}")).collect();
        assert_eq!(
            shown,
            [
                "db compose://p1/db",
                "server http://127.0.0.1:40000/v1/health#status=200",
                "redis redis://127.0.0.1:40000",
            ]
        );
        let prod = stack(Mode::Prod, &[]);
        assert_eq!(prod.services(), ["db", "server", "proxy"]);
        assert!(prod.images().contains(&ImageName::Proxy));
        let probes = prod.probes(&|_, _| None);
        assert_eq!(probes[1].1.to_string(), "compose://p1/server");
    }

    #[test]
    fn env_files_and_project_names() {
        let text = "# c\nA=1\nexport B=two\nEMPTY=\n\n  C = 3 \nQ=\"x y\"\nA=2\n";
        assert_eq!(env_file_value(text, "A").as_deref(), Some("2"));
        assert_eq!(env_file_value(text, "Q").as_deref(), Some("x y"));
        assert_eq!(env_file_value(text, "Z"), None);
        let a = unique_project("memories-test");
        assert!(a.starts_with(&format!("memories-test-{}-", std::process::id())), "{a}");
    }
}
