//! `cargo xtask prod status`: the compose prod stack's containers, or a swarm stack's services
//! (`--stack NAME`) with its backups' health; then, in both, what monitoring says (see
//! [`monitoring`]). Monitoring that is off, not yet answering or not believable is said in one
//! line, and the rest of the status stands (exit 0).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::run::docker;
use crate::run::plan::Step;
use crate::stack::{Stack, backup, monitoring, swarm};

/// Where monitoring stands: its summary, or why there is none.
pub enum Monitoring {
    Running(monitoring::Summary),
    Absent(String),
}

impl Monitoring {
    fn to_json(&self) -> Value {
        match self {
            Monitoring::Running(summary) => summary.to_json(),
            Monitoring::Absent(why) => json!({"running": false, "problem": why}),
        }
    }

    fn lines(&self) -> Vec<String> {
        match self {
            Monitoring::Running(summary) => summary.lines(),
            Monitoring::Absent(why) => vec![format!("monitoring: {why}")],
        }
    }

    /// The summary asked through `exec`, or the reason it could not be had.
    fn ask(exec: &Step) -> Monitoring {
        match monitoring::summary(exec) {
            Ok(summary) => Monitoring::Running(summary),
            Err(e) => Monitoring::Absent(format!("{e:#}").replace('\n', " ")),
        }
    }
}

/// The switch that turns monitoring on, for the one-line reason it is off.
const TURN_ON: &str = "set MONITORING=on (the environment or --env-file)";

/// One container of the compose prod stack, as `compose ps --format json` lists it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Container {
    #[serde(rename = "Service")]
    pub service: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "State")]
    pub state: String,
    #[serde(rename = "Health", default)]
    pub health: String,
    #[serde(rename = "Image", default)]
    pub image: String,
}

/// `compose ps --format json`: one object per line (compose 2.21 and later) or one array.
pub fn parse_ps(listing: &str) -> Result<Vec<Container>> {
    let listing = listing.trim();
    let mut containers: Vec<Container> = if listing.starts_with('[') {
        serde_json::from_str(listing)
            .context("compose ps printed an array that is not of containers")?
    } else {
        listing
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("compose ps printed {l:?}")))
            .collect::<Result<_>>()?
    };
    containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    Ok(containers)
}

/// The compose prod stack's status on this engine; fails when it has no container.
pub fn compose(stack: &Stack, json: bool) -> Result<()> {
    let listing = stack
        .compose_all_profiles()
        .args(["ps", "--all", "--format", "json"])
        .quiet()
        .read()
        .context("cannot list the prod stack's containers")?;
    let containers = parse_ps(&listing)?;
    if containers.is_empty() {
        bail!(
            "the prod stack {} has no containers on this engine: start it with `cargo xtask prod \
             up` (or name a swarm stack with --stack NAME)",
            stack.project
        );
    }
    let running = |c: &Container| c.service == "prometheus" && c.state == "running";
    let monitoring = match containers.iter().any(running) {
        true => {
            Monitoring::ask(&stack.compose_all_profiles().args(["exec", "--no-TTY", "prometheus"]))
        }
        false => {
            Monitoring::Absent(format!("not running: {TURN_ON} and run `cargo xtask prod up`"))
        }
    };
    if json {
        let services: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({"service": c.service, "container": c.name, "state": c.state,
                       "health": (!c.health.is_empty()).then_some(&c.health), "image": c.image})
            })
            .collect();
        out!("{:#}", json!({"services": services, "monitoring": monitoring.to_json()}));
        return Ok(());
    }
    out!("{:<16} {:<36} {:<10} {:<10} IMAGE", "SERVICE", "CONTAINER", "STATE", "HEALTH");
    for c in &containers {
        let health = if c.health.is_empty() { "-" } else { &c.health };
        out!("{:<16} {:<36} {:<10} {:<10} {}", c.service, c.name, c.state, health, c.image);
    }
    monitoring.lines().iter().for_each(|line| out!("{line}"));
    Ok(())
}

/// Swarm stack `name`'s status: services, backups' health and monitoring.
pub fn swarm(stack: &Stack, name: &str, json: bool) -> Result<()> {
    let statuses = swarm::status(&stack.root, name)?;
    let backups = backup::swarm_summary(stack, name);
    let monitoring = swarm_monitoring(stack, name, &statuses)?;
    print(&statuses, Some(&backups), Some(&monitoring), json);
    Ok(())
}

/// What the monitoring of swarm stack `name` says, asked of its Prometheus task on this engine;
/// `statuses` are the stack's services ([`swarm::status`]).
pub fn swarm_monitoring(
    stack: &Stack,
    name: &str,
    statuses: &[swarm::ServiceStatus],
) -> Result<Monitoring> {
    let service = format!("{name}_prometheus");
    if !statuses.iter().any(|s| s.service == service) {
        return Ok(Monitoring::Absent(format!(
            "not running: {TURN_ON} and deploy again with `cargo xtask prod deploy --swarm`"
        )));
    }
    Ok(match swarm::task_containers(&stack.root, &service)?.into_iter().next() {
        Some(id) => Monitoring::ask(&docker::cli(&stack.root).args(["exec", &id])),
        None => Monitoring::Absent(format!(
            "no task of {service} runs on this engine: ask on its node (a manager)"
        )),
    })
}

/// The services' states, the backups' health when `backups` is given (see
/// [`backup::swarm_summary`]) and monitoring's figures when given; `--json`: `{"services":
/// [...], "backups": {...}, "monitoring": {...}}`.
pub fn print(
    statuses: &[swarm::ServiceStatus],
    backups: Option<&Value>,
    monitoring: Option<&Monitoring>,
    json: bool,
) {
    if json {
        let all: Vec<Value> = statuses.iter().map(swarm::ServiceStatus::to_json).collect();
        let mut status = json!({"services": all});
        if let Some(backups) = backups {
            status["backups"] = backups.clone();
        }
        if let Some(monitoring) = monitoring {
            status["monitoring"] = monitoring.to_json();
        }
        out!("{status:#}");
        return;
    }
    out!("{:<24} {:>8}  {:<20} IMAGE", "SERVICE", "REPLICAS", "UPDATE");
    for s in statuses {
        out!(
            "{:<24} {:>8}  {:<20} {}",
            s.service,
            format!("{}/{}", s.running, s.desired),
            s.update.as_deref().unwrap_or("-"),
            s.image
        );
    }
    for s in statuses.iter().filter(|s| s.update.is_some()) {
        if let Some(message) = &s.message {
            out!("{}: {message}", s.service);
        }
    }
    if let Some(backups) = backups {
        let health = &backups["health"];
        let status = health["status"].as_str().unwrap_or("unknown");
        match health["problem"].as_str() {
            Some(problem) => out!("backups: {status}: {problem}"),
            None => out!(
                "backups: {status}: newest {} (finished {}), WAL archived up to {}",
                backups["newest"].as_str().unwrap_or("-"),
                backups["newest_finished"].as_str().unwrap_or("-"),
                backups["wal_archived_up_to"].as_str().unwrap_or("-")
            ),
        }
    }
    if let Some(monitoring) = monitoring {
        monitoring.lines().iter().for_each(|line| out!("{line}"));
    }
}

/// What `prod status` reads, for `--dry-run`.
pub fn describe(stack: &Stack, swarm_stack: Option<&str>) -> String {
    let monitoring = "and, when its Prometheus runs, the last five minutes' rates, p99 and \
                      alerts (`promtool query instant` in its container)";
    match swarm_stack {
        Some(name) => format!(
            "reads the services of stack {name} (`docker service inspect`, `docker service ps`), \
             the backups' health in its db task on this engine (as `prod backups --stack {name}` \
             does) {monitoring}"
        ),
        None => format!(
            "reads the containers of the prod stack {} (`docker compose ps`) {monitoring}",
            stack.project
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_ps_listings_parse_in_either_form_and_lies_fail() {
        let line = |service: &str, name: &str| {
            format!(
                r#"{{"Service":"{service}","Name":"{name}","State":"running","Health":"healthy","Image":"memories/{service}:0.1.0","Ports":""}}"#
            )
        };
        let lines = format!("{}\n{}\n", line("server", "p-server-2"), line("db", "p-db-1"));
        let parsed = parse_ps(&lines).unwrap();
        assert_eq!(
            parsed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["p-db-1", "p-server-2"]
        );
        assert_eq!(parsed[0].health, "healthy");
        let array = format!("[{},{}]", line("server", "p-server-2"), line("db", "p-db-1"));
        assert_eq!(parse_ps(&array).unwrap(), parsed);
        assert!(parse_ps("").unwrap().is_empty());
        for lie in ["no such service", r#"{"Service": 1}"#, "[1]"] {
            assert!(parse_ps(lie).is_err(), "{lie}");
        }
    }

    #[test]
    fn monitoring_that_is_absent_is_one_line_and_false_in_json() {
        let absent = Monitoring::Absent(format!("not running: {TURN_ON}"));
        assert_eq!(absent.lines(), [format!("monitoring: not running: {TURN_ON}")]);
        assert_eq!(absent.to_json()["running"], false);
    }
}
