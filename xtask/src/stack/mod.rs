//! Stacks: the compose definition under `compose/`, the one constructor of every
//! `docker compose` invocation, and the one lifecycle every stack task (dev, test, prod, run)
//! follows: refuse a project of another kind -> read the service model ([`crate::stack::services`])
//! -> build -> up -> wait (our probes) -> act -> on failure, `ps` and the logs -> the teardown
//! its [`Teardown`] policy says -> the original result. SIGINT, SIGTERM and SIGHUP take
//! the same path and exit 128 + the signal's number; the teardown is shielded (see
//! [`crate::run::interrupt::cleanup_abandoned`]).

pub mod api_keys;
pub mod backup;
mod lifecycle;
pub mod migrations;
pub mod monitoring;
mod secrets;
pub mod services;
pub mod swarm;
pub mod tls;
pub mod watch;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use clap::ValueEnum;
use serde_json::Value;

use crate::image::ImageName;
use crate::image::version::Revision;
use crate::image::{self, BuildRequest};
use crate::run::docker;
use crate::run::label::{self, RunId};
use crate::run::plan::{Captured, Step};
use crate::stack::services::{Model, Port, Readiness, Service};
use crate::wait::Probe;

pub use lifecycle::*;
pub use secrets::*;

/// Which kind of stack, and so which compose files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Dev,
    Test,
    Prod,
    /// `cargo xtask run`: the standalone image alone (`compose/run.yaml`).
    Run,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Dev, Mode::Test, Mode::Prod, Mode::Run];

    fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Test => "test",
            Mode::Prod => "prod",
            Mode::Run => "run",
        }
    }

    /// The compose files, in order: the one definition and the mode's overlay, or `run`'s
    /// own file.
    fn files(self) -> Vec<String> {
        match self {
            Mode::Run => vec!["compose/run.yaml".into()],
            _ => vec!["compose/compose.yaml".into(), format!("compose/{}.yaml", self.name())],
        }
    }

    /// The mode's committed env file, if it has one.
    fn env_file(self) -> Option<String> {
        match self {
            Mode::Run => None,
            _ => Some(format!("compose/{}.env", self.name())),
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
    /// Prometheus scraping the servers, with alert rules (prod, `MONITORING=on`).
    #[value(skip)]
    Monitoring,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Cache => "cache",
            Profile::Otel => "otel",
            Profile::Monitoring => "monitoring",
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
    /// it as a label (see [`crate::tasks::reap`]). By default the one named by `MEMORIES_RUN`.
    pub run: Option<RunId>,
    /// Variables the compose files read, set by the task (`run`'s port and volume).
    pub vars: Vec<(String, String)>,
    /// The services `up` starts and the model holds (`dev up db`); empty for all of them.
    pub services: Vec<String>,
    /// Compose files after the mode's own: prod's way of serving HTTPS ([`crate::stack::tls::Edge`]).
    pub extra_files: Vec<String>,
}

/// The developer's own settings for the dev stack, at the repository root: optional and
/// git-ignored. Its variables fill in the compose files (like `compose/dev.env`, after it) and
/// reach the server's environment.
pub const LOCAL_ENV_FILE: &str = ".env.local";

/// The variable that the compose files put into the label [`KIND_LABEL`] of every container,
/// network and volume.
const KIND_VAR: &str = "MEMORIES_KIND";
/// The label that says which kind of stack ([`Mode`]) made a container.
const KIND_LABEL: &str = "memories.kind";

/// The variable that tells the compose files where [`Stack::secrets_dir`] is.
const SECRETS_VAR: &str = "MEMORIES_SECRETS";
const SECRETS_DIR: &str = "target/xtask/secrets";

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
        let run = label::inherited();
        let local = root.join(LOCAL_ENV_FILE);
        let env_files = match mode {
            Mode::Dev if local.is_file() => vec![local],
            _ => Vec::new(),
        };
        Stack {
            root: root.to_owned(),
            mode,
            project,
            profiles,
            tag,
            env_files,
            run,
            vars: Vec::new(),
            services: Vec::new(),
            extra_files: Vec::new(),
        }
    }

    /// Makes every `docker compose` invocation: project name, each file, the env files, the
    /// profiles and the variables that pick the images, run from the repository root.
    pub fn compose(&self) -> Step {
        let mut step = docker::cli(&self.root).args(["compose", "--project-name", &self.project]);
        for file in self.mode.files().into_iter().chain(self.extra_files.iter().cloned()) {
            step = step.args(["--file".to_owned(), file]);
        }
        for file in self.mode.env_file().into_iter() {
            step = step.args(["--env-file".to_owned(), file]);
        }
        for file in &self.env_files {
            step = step.args(["--env-file", file.as_str()]);
        }
        for profile in &self.profiles {
            step = step.args(["--profile", profile.name()]);
        }
        step = step.env("MEMORIES_TAG", &self.tag).env(KIND_VAR, self.mode.name());
        if self.profiles.contains(&Profile::Cache) {
            step = step.env("REDIS_URL", "redis://redis:6379/0");
        }
        if self.profiles.contains(&Profile::Otel) {
            step = step.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318");
        }
        if let Some(run) = self.run {
            step = step.env(label::ENV, &run.to_string());
        }
        for (key, value) in &self.vars {
            step = step.env(key, value);
        }
        if let Some(dir) = self.secrets_dir() {
            step = step.env(SECRETS_VAR, dir.as_str());
        }
        for secret in self.secret_values() {
            step = step.secret(&secret);
        }
        step
    }

    /// Where the files of the stack's compose secrets are written (`prod` only): a directory
    /// per project that only this user can enter. See [`write_secrets`].
    pub fn secrets_dir(&self) -> Option<Utf8PathBuf> {
        (self.mode == Mode::Prod).then(|| self.root.join(SECRETS_DIR).join(&self.project))
    }

    /// The values of every secret-looking setting (see [`is_secret_key`]) in the environment
    /// and the stack's env files: never shown in a step's echo, plan or error. The dev and
    /// test env files are committed, throwaway settings (the dev password is the project's
    /// name), so they are not among them; prod's is.
    pub fn secret_values(&self) -> Vec<String> {
        let committed = match self.mode {
            Mode::Prod => self.mode.env_file().map(|file| self.root.join(file)),
            Mode::Dev | Mode::Test | Mode::Run => None,
        };
        let mut values = Vec::new();
        for file in committed.iter().chain(&self.env_files) {
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
        self.all_profiles().compose()
    }

    /// The same stack with every profile its files have enabled.
    pub fn all_profiles(&self) -> Stack {
        let profiles = match self.mode {
            Mode::Run => Vec::new(),
            Mode::Dev | Mode::Test => vec![Profile::Cache, Profile::Otel],
            Mode::Prod => vec![Profile::Cache, Profile::Otel, Profile::Monitoring],
        };
        Stack { profiles, ..self.clone() }
    }

    /// The stack's service model, from `docker compose config` with the stack's files, env
    /// files and profiles (it needs the docker CLI, not the engine).
    pub fn model(&self) -> Result<Model> {
        let model = Model::from_definition(&read_definition(self, self.config_step().quiet())?)?;
        if self.services.is_empty() {
            return Ok(model);
        }
        for name in &self.services {
            model.require(name)?;
        }
        Ok(model.only(&self.services.iter().map(String::as_str).collect::<Vec<_>>()))
    }

    /// `docker compose config --format json`: the merged, interpolated definition.
    pub fn config_step(&self) -> Step {
        self.compose().args(["config", "--format", "json"])
    }

    /// The images of ours that the model's services run at this stack's tag: those a task
    /// builds first.
    pub fn images(&self, model: &Model) -> Vec<ImageName> {
        ImageName::all()
            .into_iter()
            .filter(|image| {
                let reference = format!("{}:{}", image::repository(None, *image), self.tag);
                model.services.iter().any(|s| s.image == reference)
            })
            .collect()
    }

    /// How each service is known to be ready: its `memories.probe` on the host port that
    /// `host_port` gives for its first published port, else its container's healthcheck.
    pub fn probes(
        &self,
        model: &Model,
        host_port: &dyn Fn(&Service, Port) -> Option<u16>,
    ) -> Vec<(String, Probe)> {
        model
            .services
            .iter()
            .map(|service| {
                let port = service.probe_port().and_then(|port| host_port(service, port));
                let host = "127.0.0.1".to_owned();
                let probe = match (&service.readiness, port) {
                    (Readiness::Healthcheck, _) | (_, None) => Probe::ComposeHealthy {
                        project: self.project.clone(),
                        service: service.name.clone(),
                    },
                    (Readiness::Http { path }, Some(port)) => Probe::loopback_200(port, path),
                    (Readiness::Postgres, Some(port)) => {
                        let user = service.env("POSTGRES_USER").unwrap_or("postgres");
                        Probe::Postgres {
                            host,
                            port,
                            user: user.to_owned(),
                            password: service.env("POSTGRES_PASSWORD").map(str::to_owned),
                            database: service.env("POSTGRES_DB").unwrap_or(user).to_owned(),
                            allow_cleartext: false,
                        }
                    }
                    (Readiness::Redis, Some(port)) => Probe::Redis { host, port, password: None },
                };
                (service.name.clone(), probe)
            })
            .collect()
    }

    /// A setting as compose sees it: the environment first, then the env files, last wins.
    pub fn setting(&self, key: &str) -> Option<String> {
        if let Ok(value) = std::env::var(key) {
            return Some(value);
        }
        let mode_env = self.mode.env_file().map(|file| self.root.join(file));
        let mut found = None;
        for file in mode_env.iter().chain(&self.env_files) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if let Some(value) = env_file_value(&text, key) {
                found = Some(value);
            }
        }
        found
    }

    /// A secret setting's value: `key` when set and not empty, else the contents of the file
    /// that `key_FILE` names (a key list is a file, not a line of an env file).
    pub fn secret_value(&self, key: &str) -> Result<Option<String>> {
        if let Some(value) = self.setting(key).filter(|v| !v.is_empty()) {
            return Ok(Some(value));
        }
        let file_key = format!("{key}_FILE");
        let Some(file) = self.setting(&file_key).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{file_key}={file} cannot be read"))?;
        Ok(Some(text))
    }

    /// The host port `service`'s `port` is published on, if it is.
    pub fn published_port(&self, service: &str, port: u16) -> Option<u16> {
        let step = self.compose().args(["port", service, &port.to_string()]).quiet();
        let output = step.capture().ok().filter(Captured::success)?;
        output.stdout.trim().rsplit(':').next()?.parse().ok().filter(|&p: &u16| p != 0)
    }
}

/// The services of the stack that run now, from `compose ps` (every profile).
pub fn running_services(stack: &Stack) -> Result<Vec<String>> {
    let listing = stack
        .compose_all_profiles()
        .args(["ps", "--services", "--status", "running"])
        .quiet()
        .timeout(Duration::from_secs(30))
        .read()?;
    Ok(listing.lines().map(str::to_owned).collect())
}

/// Builds the images the stack runs (a no-op when nothing changed).
pub fn build(stack: &Stack, model: &Model, revision: &Revision) -> Result<()> {
    image::execute(&build_plan(stack, model, revision))
        .context("cannot build the stack's images")?;
    Ok(())
}

/// The build of the images the stack runs.
pub fn build_plan(stack: &Stack, model: &Model, revision: &Revision) -> image::BuildPlan {
    let request = BuildRequest { images: stack.images(model), ..BuildRequest::default() };
    image::plan(&stack.root, revision, &request)
}

/// `docker compose up` as every task starts a stack: detached, with the images built before.
pub fn up_step(stack: &Stack) -> Step {
    stack
        .compose()
        .args(["up", "--detach", "--remove-orphans", "--no-build", "--pull", "never"])
        .args(&stack.services)
}

/// `docker compose down` of every profile, with the volumes when `volumes`.
pub fn down_step(stack: &Stack, volumes: bool) -> Step {
    let step = stack.compose_all_profiles().args(["down", "--remove-orphans", "--timeout", "5"]);
    if volumes { step.arg("--volumes") } else { step }
}

/// What `up_and_wait` waits for, as a plan shows it (no engine asked): the host ports the
/// definition fixes (dev, prod, run), else the container port, whose host port is known only
/// after `up` (test).
pub fn planned_waits(stack: &Stack, model: &Model) -> Vec<String> {
    let probes = stack.probes(model, &|_, port| Some(port.published.unwrap_or(port.target)));
    // One probe per service, in the model's order.
    model
        .services
        .iter()
        .zip(probes)
        .map(|(service, (name, probe))| {
            let later = service.probe_port().is_some_and(|p| p.published.is_none());
            match probe {
                Probe::ComposeHealthy { .. } => format!("{name} {probe}"),
                _ if later => {
                    format!("{name} {probe} (container port; the host port is read after up)")
                }
                _ => format!("{name} {probe}"),
            }
        })
        .collect()
}

/// Fails naming the first image of the stack that is not in the local image store, for
/// `--no-build` runs.
pub fn require_images(stack: &Stack, model: &Model) -> Result<()> {
    let references: Vec<String> = stack
        .images(model)
        .into_iter()
        .map(|image| format!("{}:{}", image::repository(None, image), stack.tag))
        .collect();
    if references.is_empty() {
        return Ok(());
    }
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
        let image = crate::oci::repository_of(missing);
        let name = image.rsplit('/').next().unwrap_or(image);
        bail!("image {missing} is not built: drop --no-build, or run `cargo xtask build {name}`");
    }
    Ok(())
}

/// The tag a stack runs: the build's `<version>-<sha>` tag, unique to the commit.
pub fn tag(revision: &Revision) -> String {
    revision.build_tags()[1].clone()
}

/// What a project already has, from `docker ps` and `docker volume ls` side by side: the kinds
/// of stack (dev, test, prod, run) of its containers and volumes, from their [`KIND_LABEL`]
/// (or, on a container made before that label, from the compose files it was made from), and
/// whether any container runs. Volumes count because they outlive the containers: a prod
/// stack taken down without `--volumes` is still prod data.
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
    let format = format!(
        "{{{{.State}}}}\t{{{{.Label \"{KIND_LABEL}\"}}}}\t\
         {{{{.Label \"com.docker.compose.project.config_files\"}}}}"
    );
    let volume_format = format!("volume\t{{{{.Label \"{KIND_LABEL}\"}}}}\t");
    let (containers, volumes) = std::thread::scope(|scope| {
        let volumes = scope.spawn(|| list(project, &["volume", "ls", "--format", &volume_format]));
        let containers = list(project, &["ps", "--all", "--format", &format]);
        (containers, volumes.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    Ok(Existing::parse(&format!("{}\n{}", containers?, volumes?)))
}

impl Existing {
    /// Reads `docker ps` lines of state, kind label and compose files.
    fn parse(containers: &str) -> Existing {
        let mut modes = Vec::new();
        let mut running = false;
        for line in containers.lines() {
            let mut fields = line.splitn(3, '\t');
            let (state, kind, files) =
                (fields.next().unwrap_or(""), fields.next().unwrap_or(""), fields.next());
            running |= state == "running";
            let mode = Mode::from_name(kind).or_else(|| {
                let files = files.unwrap_or("");
                Mode::ALL.into_iter().find(|m| files.contains(&format!("{}.yaml", m.name())))
            });
            if let Some(mode) = mode.filter(|m| !modes.contains(m)) {
                modes.push(mode);
            }
        }
        Existing { modes, running }
    }
}

/// Whether `project` has any container, running or not.
pub fn has_containers(project: &str) -> Result<bool> {
    Ok(!list(project, &["ps", "--all", "--quiet"])?.trim().is_empty())
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
            "project {} holds a {} stack, not a {} one: nothing was done; set \
             COMPOSE_PROJECT_NAME to another name",
            stack.project,
            other.name(),
            stack.mode.name()
        );
    }
    Ok(existing)
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
    read_definition(stack, stack.config_step().quiet())
}

fn read_definition(stack: &Stack, config: Step) -> Result<Value> {
    let json = config
        .read()
        .with_context(|| format!("the {} stack's definition is not valid", stack.mode.name()))?;
    serde_json::from_str(&json).context("docker compose config printed no JSON")
}

#[cfg(test)]
mod tests;
