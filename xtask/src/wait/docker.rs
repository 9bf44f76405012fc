//! The Docker probe family, through the CLI: a container's health (as a typed observation),
//! a compose service's container, a container's log, a command in a container, and the event
//! stream that wakes a waiting probe when a container changes.

use std::io::{BufRead, BufReader};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;

use super::Attempt;
use crate::run::plan::{Running, Step, Stream, Streams};

/// A running `docker events` whose lines arrive on a channel; stopped on drop.
pub struct Events {
    _events: Option<Running>,
    pub receiver: Option<Receiver<()>>,
}

impl Events {
    pub fn start(filter: &str) -> Events {
        let step = quiet_docker()
            .args(["events", "--filter", filter, "--format", "{{.Action}}"])
            // State changes only: not the exec events every healthcheck run makes.
            .args(["--filter", "event=health_status", "--filter", "event=start"])
            .args(["--filter", "event=die", "--filter", "event=create"]);
        let streams = Streams { stdout: Stream::Piped, ..Streams::SILENT };
        let Ok(mut events) = step.spawn(streams) else {
            return Events { _events: None, receiver: None };
        };
        let stdout = events.stdout().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || sender.send(()).is_err() {
                    break;
                }
            }
        });
        Events { _events: Some(events), receiver: Some(receiver) }
    }
}

/// A quiet `docker` step: probes are not echoed.
fn quiet_docker() -> Step {
    Step::new("docker", ".").quiet()
}

/// What `docker inspect` says about a container: the one observation every container probe
/// decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    /// There is no such container (not yet created, or removed to be recreated).
    Missing,
    /// Created or restarting: it has no health state yet.
    Pending { status: String },
    /// Exited or dead.
    Stopped { status: String, code: i64 },
    /// Running, with what its healthcheck says (`None` when it has none).
    Running { health: Option<Health> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    /// With the last check's output.
    Unhealthy {
        last: Option<String>,
    },
}

impl Container {
    /// Reads `docker inspect --format '{{json .State}}'` output.
    fn parse(json: &str) -> Result<Container, String> {
        let state: Value =
            serde_json::from_str(json).map_err(|_| "docker inspect printed no state".to_owned())?;
        let status = state["Status"].as_str().unwrap_or("unknown").to_owned();
        let container = match status.as_str() {
            "exited" | "dead" => {
                Container::Stopped { code: state["ExitCode"].as_i64().unwrap_or(-1), status }
            }
            "created" | "restarting" => Container::Pending { status },
            _ => {
                let health = state["Health"]["Status"].as_str().map(|health| match health {
                    "healthy" => Health::Healthy,
                    "unhealthy" => Health::Unhealthy {
                        last: state["Health"]["Log"]
                            .as_array()
                            .and_then(|l| l.last())
                            .and_then(|l| l["Output"].as_str())
                            .map(|o| o.trim().to_owned()),
                    },
                    _ => Health::Starting,
                });
                Container::Running { health }
            }
        };
        Ok(container)
    }

    /// Looks at `container`. A failure to ask (no engine, a timeout) is an error; a container
    /// that does not exist is [`Container::Missing`].
    pub fn inspect(container: &str, timeout: Duration) -> Result<Container, String> {
        match docker_output(&["inspect", "--format", "{{json .State}}", container], timeout)? {
            (true, json, _) => Container::parse(json.trim()),
            // The CLI's one way of saying that the object does not exist.
            (false, _, err) if err.contains("No such") || err.contains("no such") => {
                Ok(Container::Missing)
            }
            (false, _, err) => Err(first_line(&err)),
        }
    }

    /// What this observation means for a wait on `name`'s health.
    pub fn attempt(&self, name: &str) -> Attempt {
        match self {
            Container::Missing => Attempt::NotYet(format!("no container {name} yet")),
            // No health state before the container runs: pending, not a missing healthcheck.
            Container::Pending { status } => {
                Attempt::NotYet(format!("container {name} is {status}, not running yet"))
            }
            Container::Stopped { status, code } => {
                Attempt::Failed(format!("container {name} {status} with code {code}"))
            }
            Container::Running { health: None } => Attempt::Failed(format!(
                "container {name} has no healthcheck: give it one, or probe its port or log"
            )),
            Container::Running { health: Some(Health::Healthy) } => Attempt::Ready,
            Container::Running { health: Some(Health::Unhealthy { last }) } => {
                let detail = last.as_ref().map(|o| format!(": {o}")).unwrap_or_default();
                Attempt::Failed(format!("container {name} is unhealthy{detail}"))
            }
            Container::Running { health: Some(Health::Starting) } => {
                Attempt::NotYet(format!("container {name} is running, health starting"))
            }
        }
    }
}

/// Ready when `container` is healthy.
pub fn health(container: &str, timeout: Duration) -> Attempt {
    match Container::inspect(container, timeout) {
        Ok(observed) => observed.attempt(container),
        Err(e) => Attempt::NotYet(e),
    }
}

/// Ready when a compose service has a container and every one of its containers (each
/// replica) is healthy: a stack with one replica up and another still starting is not ready.
/// A replica that failed decides at once; otherwise the first one still waited for says why.
pub fn compose_health(project: &str, service: &str, timeout: Duration) -> Attempt {
    let ids = match compose_service_ps(project, service, "{{.ID}}", timeout) {
        Ok(ids) => ids,
        Err(e) => return Attempt::NotYet(e),
    };
    let attempts = ids.lines().map(|id| match Container::inspect(id, timeout) {
        Ok(observed) => observed.attempt(id),
        Err(e) => Attempt::NotYet(e),
    });
    every_replica(attempts).unwrap_or_else(|| {
        Attempt::NotYet(format!("no container yet for service {service} of project {project}"))
    })
}

/// What a service's replicas together say: failed if one failed, ready if all are, `None`
/// when there is none.
fn every_replica(attempts: impl Iterator<Item = Attempt>) -> Option<Attempt> {
    let mut decided = None;
    for attempt in attempts {
        match attempt {
            Attempt::Ready => {
                decided.get_or_insert(Attempt::Ready);
            }
            Attempt::Failed(e) => return Some(Attempt::Failed(e)),
            not_yet => {
                if !matches!(decided, Some(Attempt::NotYet(_))) {
                    decided = Some(not_yet);
                }
            }
        }
    }
    decided
}

/// `docker ps --all` of a compose service's containers, one line per container in `format`.
pub fn compose_service_ps(
    project: &str,
    service: &str,
    format: &str,
    timeout: Duration,
) -> Result<String, String> {
    docker(
        &[
            "ps",
            "--all",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            // The service's own containers, not a `compose run` beside them (a migration).
            "--filter",
            "label=com.docker.compose.oneoff=False",
            "--format",
            format,
        ],
        timeout,
    )
}

pub fn log(container: &str, text: &str, times: u32, timeout: Duration) -> Attempt {
    let output = match docker_output(&["logs", container], timeout) {
        Ok((true, out, err)) => out + &err,
        Ok((false, _, err)) => return Attempt::NotYet(first_line(&err)),
        Err(e) => return Attempt::NotYet(e),
    };
    let seen = output.matches(text).count();
    if seen >= times as usize {
        Attempt::Ready
    } else {
        Attempt::NotYet(format!("the log holds `{text}` {seen} of {times} times"))
    }
}

/// Runs `docker ARGS` within `timeout` and returns stdout, or the first line of stderr as the
/// error: the one way a check asks the Docker engine.
pub fn docker(args: &[&str], timeout: Duration) -> Result<String, String> {
    match docker_output(args, timeout)? {
        (true, out, _) => Ok(out.trim().to_owned()),
        (false, _, err) => Err(first_line(&err)),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed without a message")
        .trim()
        .to_owned()
}

/// Runs `docker ARGS` with a time limit: (success, stdout, stderr).
fn docker_output(args: &[&str], timeout: Duration) -> Result<(bool, String, String), String> {
    let step = quiet_docker().args(args.iter().copied()).timeout(timeout);
    let answer = step.capture().map_err(|e| format!("cannot run docker: {e:#}"))?;
    if answer.timed_out {
        return Err(format!("docker {} took longer than {timeout:?}", args.first().unwrap_or(&"")));
    }
    Ok((answer.status.success(), answer.stdout, answer.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_states_are_observed_then_decided() {
        let observe = |json: &str| Container::parse(json).unwrap();
        let created = observe(r#"{"Status": "created"}"#);
        assert_eq!(created, Container::Pending { status: "created".into() });
        assert!(matches!(created.attempt("c"), Attempt::NotYet(_)));
        let exited = observe(r#"{"Status": "exited", "ExitCode": 3}"#);
        assert_eq!(exited.attempt("c"), Attempt::Failed("container c exited with code 3".into()));
        let bare = observe(r#"{"Status": "running"}"#);
        assert!(matches!(bare.attempt("c"), Attempt::Failed(e) if e.contains("no healthcheck")));
        let starting = observe(r#"{"Status": "running", "Health": {"Status": "starting"}}"#);
        assert!(matches!(starting.attempt("c"), Attempt::NotYet(_)));
        let sick = observe(
            r#"{"Status": "running", "Health": {"Status": "unhealthy", "Log": [{"Output": "no\n"}]}}"#,
        );
        assert_eq!(sick.attempt("c"), Attempt::Failed("container c is unhealthy: no".into()));
        let healthy = observe(r#"{"Status": "running", "Health": {"Status": "healthy"}}"#);
        assert_eq!(healthy.attempt("c"), Attempt::Ready);
        assert!(matches!(Container::Missing.attempt("c"), Attempt::NotYet(_)));
        assert!(Container::parse("not json").is_err());
    }

    #[test]
    fn a_service_is_ready_when_every_replica_is() {
        let ready = || Attempt::Ready;
        let starting =
            |c: &str| Attempt::NotYet(format!("container {c} is running, health starting"));
        let all = |attempts: Vec<Attempt>| every_replica(attempts.into_iter());
        assert_eq!(all(vec![]), None);
        assert_eq!(all(vec![ready(), ready()]), Some(Attempt::Ready));
        // One replica up, one starting: not ready, and it says which one is waited for.
        assert_eq!(all(vec![ready(), starting("b")]), Some(starting("b")));
        assert_eq!(all(vec![starting("a"), ready(), starting("c")]), Some(starting("a")));
        let failed = Attempt::Failed("container b exited with code 1".into());
        assert_eq!(all(vec![starting("a"), failed.clone(), ready()]), Some(failed));
    }
}
