//! Whether a swarm stack's services have converged: each service's status read from the
//! engine (replicas wanted and running, update state, image), and the wait until each is
//! what a deploy expects, as readiness checks.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use super::{deployed_services, inspect_services};
use crate::run::docker;
use crate::wait::{self, Attempt, Check, WaitOptions};

/// Where one service of a stack stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub service: String,
    pub desired: u64,
    pub running: u64,
    /// The image of the current spec (`repository:tag@digest` when deployed by digest).
    pub image: String,
    pub previous_image: Option<String>,
    /// Swarm's update state (`updating`, `completed`, `rollback_completed`, ...), if any
    /// update happened.
    pub update: Option<String>,
    pub message: Option<String>,
}

impl ServiceStatus {
    pub fn to_json(&self) -> Value {
        json!({
            "service": self.service,
            "desired": self.desired,
            "running": self.running,
            "image": self.image,
            "previous_image": self.previous_image,
            "update": self.update,
            "message": self.message,
        })
    }
}

/// The status of every service of stack `name`, sorted by service; failing when it has none.
pub fn status(root: &Utf8Path, name: &str) -> Result<Vec<ServiceStatus>> {
    let mut statuses = Vec::new();
    for service in deployed_services(root, name)? {
        let full = service["Spec"]["Name"].as_str().unwrap_or_default().to_owned();
        let running = running_tasks(root, &full)?;
        statuses.push(read_status(&service, running));
    }
    statuses.sort_by(|a, b| a.service.cmp(&b.service));
    Ok(statuses)
}

pub(super) fn read_status(service: &Value, running: u64) -> ServiceStatus {
    let spec_image =
        |spec: &Value| spec["TaskTemplate"]["ContainerSpec"]["Image"].as_str().map(str::to_owned);
    ServiceStatus {
        service: service["Spec"]["Name"].as_str().unwrap_or_default().to_owned(),
        desired: service["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(1),
        running,
        image: spec_image(&service["Spec"]).unwrap_or_default(),
        previous_image: spec_image(&service["PreviousSpec"]),
        update: service["UpdateStatus"]["State"].as_str().map(str::to_owned),
        message: service["UpdateStatus"]["Message"].as_str().map(str::to_owned),
    }
}

/// How many of a service's tasks run (a task with a healthcheck counts once healthy).
pub(super) fn running_tasks(root: &Utf8Path, service: &str) -> Result<u64> {
    let states = docker::cli(root)
        .args(["service", "ps", "--filter", "desired-state=running"])
        .args(["--format", "{{.CurrentState}}", service])
        .quiet()
        .read()
        .with_context(|| format!("cannot list the tasks of {service}"))?;
    Ok(states.lines().filter(|s| s.starts_with("Running")).count() as u64)
}

/// What a wait for a stack expects its updates to end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A deploy: an update that was rolled back is a failure.
    Updated,
    /// `prod rollback`: rolled back is the goal.
    RolledBack,
}

/// Ready when a swarm service runs as many tasks as it wants and its update (if any) ended
/// the way `expect` says; failed at once when it ended another way.
pub struct Converged {
    pub root: Utf8PathBuf,
    pub service: String,
    pub expect: Expect,
    /// The deploy changed the service's task template, so an update must run: until swarm
    /// says it started, the old tasks still run and do not count.
    pub changed: bool,
}

impl Check for Converged {
    fn attempt(&mut self, _timeout: Duration) -> Attempt {
        let inspected = docker::cli(&self.root)
            .args(["service", "inspect", &self.service])
            .quiet()
            .read()
            .map_err(|e| format!("{e:#}"))
            .and_then(|json| serde_json::from_str::<Value>(&json).map_err(|e| e.to_string()));
        let service = match inspected {
            Ok(list) => list[0].clone(),
            Err(e) => return Attempt::NotYet(e),
        };
        let running = match running_tasks(&self.root, &self.service) {
            Ok(running) => running,
            Err(e) => return Attempt::NotYet(format!("{e:#}")),
        };
        decide(&read_status(&service, running), self.expect, self.changed)
    }
}

pub(super) fn decide(status: &ServiceStatus, expect: Expect, changed: bool) -> Attempt {
    let message = status.message.as_deref().unwrap_or("no message");
    match (status.update.as_deref(), expect) {
        (Some(state @ ("updating" | "rollback_started")), _) => {
            return Attempt::NotYet(format!("{state}: {message}"));
        }
        (Some("paused" | "rollback_paused"), _) => {
            return Attempt::Failed(format!(
                "the update is paused: {message}; see `cargo xtask prod status --stack NAME`"
            ));
        }
        // A rollback of an earlier deploy (a service this deploy left unchanged, such as the
        // server while the release phase deploys the database) is not this deploy's failure.
        (Some("rollback_completed"), Expect::Updated) if changed => {
            return Attempt::Failed(format!(
                "the new version failed and swarm rolled it back to {}: {message}",
                status.image
            ));
        }
        (Some("completed") | None, Expect::RolledBack) => {
            return Attempt::NotYet("waiting for the rollback to start".into());
        }
        (None, Expect::Updated) if changed => {
            return Attempt::NotYet("waiting for the update to start".into());
        }
        _ => {}
    }
    if status.running >= status.desired {
        Attempt::Ready
    } else {
        Attempt::NotYet(format!("{} of {} replicas running", status.running, status.desired))
    }
}

/// Each service of stack `name` with its task template: what a deploy may change.
pub fn task_templates(root: &Utf8Path, name: &str) -> Result<BTreeMap<String, Value>> {
    Ok(templates(inspect_services(root, name)?))
}

pub(super) fn templates(services: Vec<Value>) -> BTreeMap<String, Value> {
    services
        .into_iter()
        .filter_map(|s| {
            Some((s["Spec"]["Name"].as_str()?.to_owned(), s["Spec"]["TaskTemplate"].clone()))
        })
        .collect()
}

/// Waits until every service of stack `name` has converged: the services in `rolled_back`
/// (full names) once their rollback completed, the others once updated. `before` holds the
/// task templates before a deploy: a service whose template changed must be seen updating.
pub fn wait(
    root: &Utf8Path,
    name: &str,
    rolled_back: &[String],
    before: &BTreeMap<String, Value>,
    timeout: Duration,
) -> Result<()> {
    let now = templates(deployed_services(root, name)?);
    let checks: Vec<(String, Box<dyn Check>)> = now
        .iter()
        .map(|(service, template)| {
            let changed = before.get(service).is_some_and(|old| old != template);
            let expect = match rolled_back.contains(service) {
                true => Expect::RolledBack,
                false => Expect::Updated,
            };
            let check =
                Converged { root: root.to_owned(), service: service.to_owned(), expect, changed };
            (service.to_owned(), Box::new(check) as Box<dyn Check>)
        })
        .collect();
    say!("waiting up to {timeout:?} for every service of stack {name} to converge");
    let options =
        WaitOptions { timeout, max_interval: Duration::from_millis(500), ..WaitOptions::default() };
    wait::until_ready(checks, options)?;
    Ok(())
}
