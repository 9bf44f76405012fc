//! The checks behind each probe kind: network protocols spoken directly, Docker through its
//! CLI (with its event stream as a wake-up signal), files through the file system.

use std::time::Duration;

use super::docker::{Events, compose_health, docker, health, log};
use super::net::{connect, http, https, https_agent, redis};
use super::postgres;
use super::{Attempt, Check, Clock, Probe};

pub fn for_probe(probe: &Probe) -> Box<dyn Check> {
    Box::new(ProbeCheck { probe: probe.clone(), events: None, agent: None })
}

struct ProbeCheck {
    probe: Probe,
    /// `docker events` for the probe's container, started on the first wait.
    events: Option<Events>,
    /// The HTTPS client of an https probe, made on its first attempt.
    agent: Option<ureq::Agent>,
}

impl Check for ProbeCheck {
    fn attempt(&mut self, timeout: Duration) -> Attempt {
        match &self.probe {
            Probe::Tcp { host, port } => match connect(host, *port, timeout) {
                Ok(_) => Attempt::Ready,
                Err(e) => Attempt::NotYet(e),
            },
            Probe::Http { host, port, path, status, contains } => {
                http(host, *port, path, *status, contains.as_deref(), timeout)
            }
            Probe::Https { host, port, path, status, contains, ca } => {
                let agent = match self.agent.take() {
                    Some(agent) => agent,
                    None => match https_agent(ca.as_deref()) {
                        Ok(agent) => agent,
                        Err(e) => return Attempt::NotYet(e),
                    },
                };
                let probe = (host.as_str(), *port, path.as_str());
                let attempt = https(&agent, probe, *status, contains.as_deref(), timeout);
                self.agent = Some(agent);
                attempt
            }
            Probe::Postgres { host, port, user, password, database, allow_cleartext } => {
                postgres::attempt(
                    &postgres::Target {
                        host,
                        port: *port,
                        user,
                        password: password.as_deref(),
                        database,
                        allow_cleartext: *allow_cleartext,
                    },
                    timeout,
                )
            }
            Probe::Redis { host, port, password } => {
                redis(host, *port, password.as_deref(), timeout)
            }
            Probe::Healthy { container } => health(container, timeout),
            Probe::ComposeHealthy { project, service } => compose_health(project, service, timeout),
            Probe::Log { container, text, times } => log(container, text, *times, timeout),
            Probe::Exec { container, argv } => {
                let mut args = vec!["exec", container.as_str()];
                args.extend(argv.iter().map(String::as_str));
                match docker(&args, timeout) {
                    Ok(_) => Attempt::Ready,
                    Err(e) => Attempt::NotYet(e),
                }
            }
            Probe::File { path } => {
                if std::path::Path::new(path).exists() {
                    Attempt::Ready
                } else {
                    Attempt::NotYet(format!("{path} does not exist"))
                }
            }
        }
    }

    fn wait_for_change(&mut self, clock: &dyn Clock, timeout: Duration) {
        let filter = match &self.probe {
            Probe::Healthy { container } => format!("container={container}"),
            Probe::ComposeHealthy { project, .. } => {
                format!("label=com.docker.compose.project={project}")
            }
            _ => return clock.sleep(timeout),
        };
        let events = self.events.get_or_insert_with(|| Events::start(&filter));
        match &events.receiver {
            // A health change, start, death or creation prompts a new look.
            Some(receiver) => {
                let _ = receiver.recv_timeout(timeout);
            }
            None => clock.sleep(timeout),
        }
    }

    fn max_interval(&self, configured: Duration) -> Duration {
        match self.probe {
            // Health changes arrive as events; polling is only the fallback.
            Probe::Healthy { .. } | Probe::ComposeHealthy { .. } => {
                configured.max(Duration::from_secs(1))
            }
            _ => configured,
        }
    }
}
