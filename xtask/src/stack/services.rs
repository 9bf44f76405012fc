//! The service model of a stack, read from what `docker compose config --format json` prints
//! for it: which services run (with the stack's profiles), the image each runs, the ports each
//! publishes, its environment, how it is known to be ready, and how `dev --watch` updates it
//! (compose's `develop.watch` rules and our `memories.reload` label). Nothing here repeats the
//! compose files' list of services: one added there is started, probed and listed by every task,
//! and built first when its image is one of ours (the catalogue in [`crate::image::ImageName`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The label that says how a service is probed from the host, on its first published port:
/// `http PATH` (ready on 200), `postgres` (a login with the service's `POSTGRES_*` settings)
/// or `redis` (PING). A service without it, or without a published port, is ready when its
/// container's healthcheck says healthy.
pub const PROBE_LABEL: &str = "memories.probe";

/// The label that says how a service restarts its app in place, as the signal its main
/// process takes for it (`SIGHUP`): the `restart` of a `sync+restart` watch rule. Without it,
/// the container is restarted.
pub const RELOAD_LABEL: &str = "memories.reload";

/// How a service is known to be ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Http { path: String },
    Postgres,
    Redis,
    Healthcheck,
}

impl Readiness {
    fn parse(label: Option<&str>) -> Result<Readiness, String> {
        let Some(label) = label else { return Ok(Readiness::Healthcheck) };
        let mut words = label.split_whitespace();
        let readiness = match (words.next(), words.next(), words.next()) {
            (Some("http"), Some(path), None) if path.starts_with('/') => {
                Readiness::Http { path: path.to_owned() }
            }
            (Some("postgres"), None, None) => Readiness::Postgres,
            (Some("redis"), None, None) => Readiness::Redis,
            _ => {
                return Err(format!(
                    "label {PROBE_LABEL}=`{label}` is not a probe: use `http /PATH`, `postgres` or `redis`"
                ));
            }
        };
        Ok(readiness)
    }
}

/// One port of a service: the container's port and, when fixed by the definition, the host
/// port it is published on (a test stack publishes on a free port, known only after `up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub target: u16,
    pub published: Option<u16>,
}

/// One service of a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// The image reference, as interpolated (`memories/server:0.1.0-abc1234`).
    pub image: String,
    pub ports: Vec<Port>,
    pub readiness: Readiness,
    /// The container's environment, as interpolated.
    pub environment: BTreeMap<String, String>,
    /// Its `develop.watch` rules, in order.
    pub watch: Vec<WatchRule>,
    /// The signal that restarts its app in place ([`RELOAD_LABEL`]), if it has one.
    pub reload: Option<String>,
    /// The named volumes it mounts, by their engine names (`memories-dev_db-data`).
    pub volumes: Vec<String>,
}

/// What a watch rule does with a change under its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchAction {
    /// Copy the changed files into the running container.
    Sync,
    /// Copy them, then restart the service (its reload signal, else the container).
    SyncRestart,
    /// Build the service's image, then recreate the service.
    Rebuild,
}

/// One `develop.watch` rule: a host path (absolute, as compose resolves it) and, for the sync
/// actions, where it lives in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRule {
    pub action: WatchAction,
    pub path: String,
    pub target: Option<String>,
    /// Patterns relative to `path` (`__pycache__/`, `*.tmp`) whose matches are left alone.
    pub ignore: Vec<String>,
}

impl WatchRule {
    /// The rule as a plan shows it, with paths relative to `root`.
    pub fn describe(&self, root: &camino::Utf8Path) -> String {
        let path = self.path.strip_prefix(&format!("{root}/")).unwrap_or(&self.path);
        match (self.action, &self.target) {
            (WatchAction::Rebuild, _) | (_, None) => format!("rebuild on a change under {path}"),
            (WatchAction::Sync, Some(target)) => format!("sync {path} to {target}"),
            (WatchAction::SyncRestart, Some(target)) => {
                format!("sync {path} to {target}, then restart")
            }
        }
    }

    fn parse(service: &str, rule: &Value) -> Result<WatchRule> {
        let action = match rule["action"].as_str() {
            Some("sync") => WatchAction::Sync,
            Some("sync+restart") => WatchAction::SyncRestart,
            Some("rebuild") => WatchAction::Rebuild,
            other => bail!(
                "service {service}: watch action {} is not supported: use sync, sync+restart \
                 or rebuild",
                other.unwrap_or("(none)")
            ),
        };
        let Some(path) = rule["path"].as_str() else {
            bail!("service {service}: a watch rule has no path");
        };
        let target = rule["target"].as_str().map(str::to_owned);
        if action != WatchAction::Rebuild && target.is_none() {
            bail!("service {service}: the watch rule for {path} syncs but has no target");
        }
        let ignore = rule["ignore"]
            .as_array()
            .map(|patterns| patterns.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(WatchRule { action, path: path.to_owned(), target, ignore })
    }
}

impl Service {
    /// The container port a host probe reaches: the first one published.
    pub fn probe_port(&self) -> Option<Port> {
        self.ports.first().copied()
    }

    pub fn env(&self, key: &str) -> Option<&str> {
        self.environment.get(key).map(String::as_str)
    }
}

/// The services of a stack, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub services: Vec<Service>,
}

impl Model {
    /// Reads a merged definition, as `docker compose config --format json` prints it.
    pub fn from_definition(definition: &Value) -> Result<Model> {
        let Some(services) = definition.get("services").and_then(Value::as_object) else {
            bail!("the stack definition has no services");
        };
        let mut model = Model::default();
        for (name, spec) in services {
            let label = spec["labels"].get(PROBE_LABEL).and_then(Value::as_str);
            let readiness =
                Readiness::parse(label).map_err(|e| anyhow::anyhow!("service {name}: {e}"))?;
            let ports = spec["ports"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|port| {
                    let target = port["target"].as_u64().and_then(|t| u16::try_from(t).ok())?;
                    // Compose writes the published port as a string, an empty one for "any".
                    let published = match &port["published"] {
                        Value::String(p) => p.parse().ok(),
                        Value::Number(p) => p.as_u64().and_then(|p| u16::try_from(p).ok()),
                        _ => None,
                    };
                    Some(Port { target, published: published.filter(|&p| p != 0) })
                })
                .collect();
            let environment = spec["environment"]
                .as_object()
                .map(|env| {
                    env.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            let watch = spec["develop"]["watch"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|rule| WatchRule::parse(name, rule))
                .collect::<Result<_>>()?;
            let reload = spec["labels"].get(RELOAD_LABEL).and_then(Value::as_str);
            let volumes = spec["volumes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|mount| mount["type"] == "volume")
                .filter_map(|mount| mount["source"].as_str())
                .map(|source| {
                    let named = definition["volumes"][source]["name"].as_str();
                    named.unwrap_or(source).to_owned()
                })
                .collect();
            model.services.push(Service {
                name: name.clone(),
                image: spec["image"].as_str().unwrap_or_default().to_owned(),
                ports,
                readiness,
                environment,
                watch,
                reload: reload.map(str::to_owned),
                volumes,
            });
        }
        Ok(model)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.services.iter().map(|s| s.name.as_str()).collect()
    }

    /// The same model with only the services named in `names`, in this model's order.
    pub fn only(&self, names: &[&str]) -> Model {
        let services = self.services.iter().filter(|s| names.contains(&s.name.as_str()));
        Model { services: services.cloned().collect() }
    }

    /// Fails naming `name` and the services there are, unless the stack has a service `name`.
    pub fn require(&self, name: &str) -> Result<&Service> {
        self.service(name).with_context(|| {
            format!("the stack has no service `{name}`: name one of {}", self.names().join(", "))
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The model of `json`, a definition's text.
    pub fn model(json: &str) -> Result<Model> {
        Model::from_definition(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn services_ports_environment_and_probes_come_from_the_definition() {
        let json = r#"{"services": {
            "db": {"image": "memories/db:t", "labels": {"memories.probe": "postgres"},
                   "environment": {"POSTGRES_USER": "u", "POSTGRES_DB": "d"},
                   "ports": [{"target": 5432, "published": "5433", "host_ip": "127.0.0.1"}]},
            "server": {"image": "memories/server:t", "labels": {"memories.probe": "http /v1/health"},
                       "ports": [{"target": 8283, "host_ip": "127.0.0.1"}]},
            "otel": {"image": "otel/collector:1", "labels": {"memories.run": ""}}
        }}"#;
        let model = model(json).unwrap();
        assert_eq!(model.names(), ["db", "otel", "server"]);
        let db = model.require("db").unwrap();
        assert_eq!(db.readiness, Readiness::Postgres);
        assert_eq!(db.probe_port(), Some(Port { target: 5432, published: Some(5433) }));
        assert_eq!(db.env("POSTGRES_DB"), Some("d"));
        let server = model.require("server").unwrap();
        assert_eq!(server.readiness, Readiness::Http { path: "/v1/health".into() });
        assert_eq!(server.probe_port(), Some(Port { target: 8283, published: None }));
        assert_eq!(model.require("otel").unwrap().readiness, Readiness::Healthcheck);
        assert_eq!(model.only(&["server", "nope"]).names(), ["server"]);
        let missing = model.require("web").unwrap_err().to_string();
        assert_eq!(missing, "the stack has no service `web`: name one of db, otel, server");
    }

    #[test]
    fn a_probe_label_that_is_not_a_probe_is_refused_with_the_forms() {
        for bad in ["http", "http v1/health", "tcp", "postgres extra"] {
            let json =
                format!(r#"{{"services": {{"a": {{"labels": {{"memories.probe": "{bad}"}}}}}}}}"#);
            let err = model(&json).unwrap_err().to_string();
            assert!(err.starts_with("service a: label memories.probe="), "{err}");
            assert!(err.contains("use `http /PATH`, `postgres` or `redis`"), "{err}");
        }
    }
}
