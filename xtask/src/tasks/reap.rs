//! The reaper: finds what runs left in Docker by their labels ([`crate::run::label`]), removes
//! what a run whose process is gone left behind (`cargo xtask reap`), and gives a task a run of
//! its own that is removed when it ends ([`as_run`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use camino::Utf8Path;
use serde_json::{Value, json};

use crate::run::docker;
use crate::run::interrupt;
use crate::run::label::{LABEL, Owner, RunId, ids_in};
use crate::run::plan::{Plan, Step, Task};
use crate::run::term;

/// What one run left in Docker.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Swarm services (whose tasks are among the containers).
    pub services: Vec<String>,
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    /// Swarm secrets.
    pub secrets: Vec<String>,
    pub tags: Vec<String>,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Container => "container",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Secret => "secret",
        }
    }
}

impl Leftovers {
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.containers.is_empty()
            && self.networks.is_empty()
            && self.volumes.is_empty()
            && self.secrets.is_empty()
            && self.tags.is_empty()
    }

    fn to_json(&self) -> Value {
        json!({
            "services": self.services,
            "containers": self.containers,
            "networks": self.networks,
            "volumes": self.volumes,
            "secrets": self.secrets,
            "tags": self.tags,
        })
    }

    fn bucket(&mut self, kind: Kind) -> &mut Vec<String> {
        match kind {
            Kind::Service => &mut self.services,
            Kind::Container => &mut self.containers,
            Kind::Network => &mut self.networks,
            Kind::Volume => &mut self.volumes,
            Kind::Secret => &mut self.secrets,
        }
    }
}

/// The labelled kinds of Docker object.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    Container,
    Network,
    Volume,
    Secret,
}

/// How the engine lists containers, networks and volumes: the command, the Go template of an
/// object's ID (a volume's is its name) and of its name.
const LISTINGS: [(Kind, &[&str], &str, &str); 3] = [
    (Kind::Container, &["ps", "--all", "--no-trunc"], "{{.ID}}", "{{.Names}}"),
    (Kind::Network, &["network", "ls", "--no-trunc"], "{{.ID}}", "{{.Name}}"),
    (Kind::Volume, &["volume", "ls"], "{{.Name}}", "{{.Name}}"),
];

/// Every container, network and volume the engine has, labelled or not: each one's ID and
/// what to call it (`container NAME`).
pub fn objects(root: &Utf8Path, when: When) -> Result<BTreeMap<String, String>> {
    let mut objects = BTreeMap::new();
    for (kind, command, id, name) in LISTINGS {
        let listing = docker::cli(root)
            .args(command.iter().copied())
            .args(["--format".to_owned(), format!("{id}\t{name}")]);
        let what = kind.as_str();
        let listed = query(listing, when).with_context(|| format!("cannot list {what}s"))?;
        for (id, name) in listed.lines().filter_map(|line| line.split_once('\t')) {
            objects.insert(id.to_owned(), format!("{what} {name}"));
        }
    }
    Ok(objects)
}

/// Lists what every run left, by run: labelled containers, networks and volumes, and image
/// tags whose repository names a run.
pub fn inventory(root: &Utf8Path, when: When) -> Result<BTreeMap<RunId, Leftovers>> {
    let mut runs: BTreeMap<RunId, Leftovers> = BTreeMap::new();
    let label = format!("{{{{.Label \"{LABEL}\"}}}}");
    for (kind, command, id, _) in LISTINGS {
        let listing = docker::cli(root).args(command.iter().copied()).args([
            "--filter".to_owned(),
            format!("label={LABEL}"),
            "--format".to_owned(),
            format!("{id}\t{label}"),
        ]);
        let listed = query(listing, when)
            .with_context(|| format!("cannot list labelled {}s", kind.as_str()))?;
        add_labelled(&mut runs, kind, &listed);
    }
    if is_swarm_manager(root, when)? {
        for (kind, what) in [(Kind::Service, "service"), (Kind::Secret, "secret")] {
            // Neither listing can show a label's value: inspect what it found.
            let found = docker::cli(root)
                .args([what, "ls", "--quiet", "--filter"])
                .arg(format!("label={LABEL}"));
            let found = query(found, when).with_context(|| format!("cannot list {what}s"))?;
            let ids: Vec<&str> = found.split_whitespace().collect();
            if ids.is_empty() {
                continue;
            }
            let format = format!("{{{{.ID}}}}\t{{{{index .Spec.Labels \"{LABEL}\"}}}}");
            let inspect =
                docker::cli(root).args([what, "inspect", "--format", &format]).args(ids.clone());
            // One that went away between the two calls is no leftover.
            let listed = match query(inspect, when) {
                Ok(listed) => listed,
                Err(_) if interrupt::is_set() => return Err(interrupt::Interrupted.into()),
                Err(_) => continue,
            };
            add_labelled(&mut runs, kind, &listed);
        }
    }
    // The listing shows `repository:tag`, but an image a swarm task pulled by `tag@digest` is
    // named `repository:tag@sha256:...`, which only that full name removes: the names come
    // from inspecting the images whose repository names a run.
    let listing = docker::cli(root).args(["image", "ls", "--no-trunc", "--format"]);
    let listing = listing.arg("{{.ID}}\t{{.Repository}}");
    let listed = docker::image_listing(&listing.quiet(), |step| match when {
        When::Before => step.capture(),
        When::Cleanup => step.capture_regardless(),
    });
    let listed = listed.context("cannot list image tags")?;
    let mut ids: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, repository)| !ids_in(repository).is_empty())
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        let format = "{{range .RepoTags}}{{println .}}{{end}}";
        let inspect = docker::cli(root).args(["image", "inspect", "--format", format]).args(ids);
        // An image removed between the two calls makes inspect fail for it alone: the others'
        // names are still on its stdout.
        let inspect = inspect.quiet();
        let named = match when {
            When::Before => inspect.capture()?,
            When::Cleanup => inspect.capture_regardless()?,
        };
        for name in named.stdout.lines().filter(|n| !n.is_empty()) {
            for run in ids_in(crate::oci::repository_of(name)) {
                let tags = &mut runs.entry(run).or_default().tags;
                if !tags.iter().any(|t| t == name) {
                    tags.push(name.to_owned());
                }
            }
        }
    }
    Ok(runs)
}

/// Files `id<TAB>run` lines under their runs.
fn add_labelled(runs: &mut BTreeMap<RunId, Leftovers>, kind: Kind, listed: &str) {
    for line in listed.lines() {
        let Some((id, run)) = line.split_once('\t') else { continue };
        if let Some(run) = RunId::parse(run.trim()) {
            runs.entry(run).or_default().bucket(kind).push(id.to_owned());
        }
    }
}

/// Whether the engine manages a swarm, and so can hold services and secrets.
fn is_swarm_manager(root: &Utf8Path, when: When) -> Result<bool> {
    let info = docker::cli(root).args(["info", "--format", "{{.Swarm.ControlAvailable}}"]);
    Ok(query(info, when).context("cannot ask the engine about swarm mode")?.trim() == "true")
}

/// When the reaper runs: the two differ in how a signal is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before a run's own work (or as `cargo xtask reap`): a signal stops it.
    Before,
    /// In a run's clean-up: shielded like every clean-up step (see [`Step::run_regardless`]).
    Cleanup,
}

/// Runs a listing or a removal quietly and returns its stdout.
fn query(step: Step, when: When) -> Result<String> {
    let step = step.quiet();
    let answer = match when {
        When::Before => step.capture()?,
        When::Cleanup => step.capture_regardless()?,
    };
    answer.stdout_of(&step)
}

/// Removes what `leftovers` lists: services first (so that swarm starts no new task), then
/// containers (with their anonymous volumes), then the networks, volumes and secrets they
/// used, then the tags.
pub fn remove(root: &Utf8Path, leftovers: &Leftovers, when: When) -> Result<()> {
    let mut failures = Vec::new();
    let mut each = |args: &[&str], ids: &[String]| {
        if ids.is_empty() {
            return;
        }
        let removed = query(docker::cli(root).args(args.iter().copied()).args(ids), when);
        if let Err(err) = removed {
            failures.push(format!("{err:#}"));
        }
    };
    each(&["service", "rm"], &leftovers.services);
    // Swarm stops a removed service's tasks after `service rm` returns; their network can go
    // only once they have.
    let tasks = ["ps", "--all", "--quiet"];
    until_gone(root, when, &tasks, "label=com.docker.swarm.service.id", &leftovers.services);
    each(&["rm", "--force", "--volumes"], &leftovers.containers);
    each(&["network", "rm"], &leftovers.networks);
    // A swarm network outlives its `network rm` for a moment, too.
    until_gone(root, when, &["network", "ls", "--quiet"], "id", &leftovers.networks);
    each(&["volume", "rm", "--force"], &leftovers.volumes);
    each(&["secret", "rm"], &leftovers.secrets);
    each(&["image", "rm"], &leftovers.tags);
    if !failures.is_empty() {
        anyhow::bail!("cannot remove all of a run's leftovers: {}", failures.join("; "));
    }
    Ok(())
}

/// Waits, at most a minute, until the docker listing `list` filtered to `key=ID` for each of
/// `ids` lists nothing.
fn until_gone(root: &Utf8Path, when: When, list: &[&str], key: &str, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let filters = ids.iter().flat_map(|id| ["--filter".to_owned(), format!("{key}={id}")]);
    let listing = docker::cli(root).args(list.iter().copied()).args(filters);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let stopped = match when {
            When::Before => interrupt::is_set(),
            When::Cleanup => interrupt::cleanup_abandoned(),
        };
        let listed = query(listing.clone(), when);
        if stopped || listed.is_ok_and(|l| l.trim().is_empty()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Removes everything of run `run`: in the clean-up at the end of the run itself.
pub fn remove_run(root: &Utf8Path, run: RunId) -> Result<()> {
    let mut runs = inventory(root, When::Cleanup)?;
    match runs.remove(&run) {
        Some(leftovers) if !leftovers.is_empty() => {
            say!("removing what test run {run} left: {}", summary(&leftovers));
            remove(root, &leftovers, When::Cleanup)
        }
        _ => Ok(()),
    }
}

/// Runs `work` as a test run: first removes what dead runs left, then runs `work` with this
/// process's run id (for it to hand on in [`crate::run::label::ENV`]), then removes everything labelled with the
/// id, whatever `work` returned. The first error wins.
pub fn as_run(root: &Utf8Path, work: impl FnOnce(RunId) -> Result<()>) -> Result<()> {
    let run = RunId::of_process(std::process::id())
        .context("cannot name this test run: /proc is needed to tell live runs from dead ones")?;
    if let Err(err) = reap(root, false) {
        say!("warning: cannot remove what earlier test runs left: {err:#}");
    }
    say!("test run {run} (Docker objects it creates carry the label {LABEL}={run})");
    let result = work(run);
    let removed = remove_run(root, run);
    result.and(removed)
}

/// `cargo xtask reap`: removes what runs whose process is gone left behind (as [`as_run`]
/// does before every test run), and says what it removed, or with `--dry-run` what it would.
pub fn task(root: &Utf8Path) -> ReapTask<'_> {
    ReapTask { root }
}

/// The reaper, as a task.
pub struct ReapTask<'a> {
    root: &'a Utf8Path,
}

impl Task for ReapTask<'_> {
    /// What reaping would remove, run by run (read from Docker), with the same report under
    /// `runs` in `--json`.
    fn plan(&self) -> Result<Plan> {
        let mut plan = Plan::new("reap");
        let runs = match inventory(self.root, When::Before) {
            Ok(runs) => runs,
            Err(err) => {
                let note = format!("cannot list what runs left, and reaping would fail: {err:#}");
                return Ok(plan.note(note).fact("runs", json!([])));
            }
        };
        for (run, leftovers) in &runs {
            plan = plan.note(match run.owner() {
                Owner::Gone => format!("would remove what run {run} left: {}", summary(leftovers)),
                Owner::Alive => format!("would keep run {run}: its process still runs"),
                Owner::Unknown => format!("would keep run {run}: it belongs to another machine"),
            });
        }
        if runs.is_empty() {
            plan = plan.note("no run left anything behind");
        }
        Ok(plan.fact("runs", report(&runs, false)))
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        reap(self.root, json)
    }
}

/// Each run's owner and leftovers, and whether they were (or, in a plan, would be) removed.
fn report(runs: &BTreeMap<RunId, Leftovers>, removing: bool) -> Value {
    let report: Vec<Value> = runs
        .iter()
        .map(|(run, leftovers)| {
            let owner = run.owner();
            json!({
                "run": run.to_string(),
                "owner": format!("{owner:?}").to_lowercase(),
                "removed": owner == Owner::Gone && removing,
                "leftovers": leftovers.to_json(),
            })
        })
        .collect();
    Value::from(report)
}

fn reap(root: &Utf8Path, json: bool) -> Result<()> {
    let runs = inventory(root, When::Before)?;
    let mut result = Ok(());
    for (run, leftovers) in &runs {
        match run.owner() {
            Owner::Gone => {
                say!("removing what run {run} left (its process is gone): {}", summary(leftovers));
                if let Err(err) = remove(root, leftovers, When::Before) {
                    result = Err(err);
                }
            }
            Owner::Alive => say!("keeping run {run}: its process still runs"),
            Owner::Unknown => say!("keeping run {run}: it belongs to another machine"),
        }
    }
    if json {
        out!("{}", report(&runs, true));
    } else if runs.is_empty() {
        say!("no run left anything behind");
    }
    result
}

fn summary(leftovers: &Leftovers) -> String {
    let parts = [
        (leftovers.services.len(), "service"),
        (leftovers.containers.len(), "container"),
        (leftovers.networks.len(), "network"),
        (leftovers.volumes.len(), "volume"),
        (leftovers.secrets.len(), "secret"),
        (leftovers.tags.len(), "image tag"),
    ];
    let shown: Vec<String> =
        parts.iter().filter(|(n, _)| *n > 0).map(|&(n, what)| term::count(n, what)).collect();
    shown.join(", ")
}
