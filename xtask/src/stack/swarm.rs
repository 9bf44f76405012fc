//! The prod definition on Docker Swarm: `prod deploy --swarm` (by digest from a registry or a
//! release's `--json` output, or this engine's own images on a one-node swarm), `prod status`
//! and `prod rollback`. Secrets become Docker secrets named by a hash of their content, so a
//! changed secret rolls out like any other update; the update and rollback settings per
//! service are the definition's own (`compose/prod.yaml`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::image::version::Revision;
use crate::image::{self, ImageName};
use crate::oci::Registry;
use crate::run::docker;
use crate::run::label;
use crate::run::plan::Step;
use crate::stack::services::Model;
use crate::stack::{self, Stack};

mod converge;

pub use converge::{ServiceStatus, status, task_templates, wait};

/// Where the images of a swarm deploy come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// This engine's `memories/*` images, built first unless `build` is false: other nodes
    /// cannot pull them, so for a one-node swarm only.
    Local { build: bool },
    /// `REGISTRY/NAME:VERSION` of every image, each deployed by the digest the registry has.
    Registry { registry: String, version: String },
    /// The images a `cargo xtask release --json` printed, by their digests.
    Release(Utf8PathBuf),
}

/// What a deploy hands to `docker stack deploy`, and the secrets it needs first.
pub struct Deployment {
    pub definition: Value,
    pub secrets: Vec<SwarmSecret>,
}

/// One Docker secret of the stack: `<stack>_<key>_<hash>`, made from a setting's value.
pub struct SwarmSecret {
    pub name: String,
    pub setting: String,
    value: String,
}

/// The label `docker stack rm` removes a stack's objects by.
const NAMESPACE: &str = "com.docker.stack.namespace";

/// The definition to deploy: the merged prod definition without compose-only keys, each
/// service's image replaced by what `images` resolved, each file secret replaced by an
/// external Docker secret named by its content.
pub fn deployment(
    stack: &Stack,
    merged: Value,
    name: &str,
    images: &BTreeMap<String, String>,
) -> Result<Deployment> {
    let mut definition = for_swarm(merged);
    let mut secrets = Vec::new();
    for (key, setting) in stack::file_secrets(stack, &definition) {
        let value = stack::secret_setting(stack, &setting)?;
        let secret = SwarmSecret { name: secret_name(name, &key, &value), setting, value };
        definition["secrets"][&key] = json!({"name": secret.name, "external": true});
        secrets.push(secret);
    }
    if let Some(services) = definition["services"].as_object_mut() {
        for (service, spec) in services.iter_mut() {
            if let Some(image) = images.get(service) {
                spec["image"] = Value::from(image.as_str());
            }
        }
    }
    Ok(Deployment { definition, secrets })
}

/// `<stack>_<key>_<12 hex digits>`: the same content gives the same name (a re-deploy changes
/// nothing), another gives a new secret, which swarm rolls out as an update. The hash is salted
/// with the stack and key, so equal passwords of two stacks do not show as equal.
fn secret_name(stack: &str, key: &str, value: &str) -> String {
    let mut hash = Sha256::new();
    for part in ["memories-secret", stack, key, value] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let hex: String = hash.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{stack}_{key}_{hex}")
}

/// What a swarm deploy needs changed in the merged compose definition: the keys the swarm
/// loader does not take, which are compose-only details of start order, naming and
/// container security options.
pub fn for_swarm(mut definition: Value) -> Value {
    drop_nulls(&mut definition);
    if let Some(object) = definition.as_object_mut() {
        object.remove("name");
    }
    if let Some(services) = definition.get_mut("services").and_then(Value::as_object_mut) {
        for service in services.values_mut() {
            if let Some(service) = service.as_object_mut() {
                // Swarm starts services in any order; the server waits for its database.
                service.remove("depends_on");
                service.remove("profiles");
                // Swarm has neither: tasks restart by `deploy.restart_policy`, and
                // no-new-privileges is a daemon setting there.
                service.remove("restart");
                service.remove("security_opt");
                // Swarm ignores it, with a warning: its tasks get the default /dev/shm.
                service.remove("shm_size");
                // Compose's own key for a bind mount (`BACKUP_PATH`); the swarm loader refuses
                // it, and swarm never creates a missing host path anyway.
                for volume in
                    service.get_mut("volumes").and_then(Value::as_array_mut).into_iter().flatten()
                {
                    if let Some(bind) = volume.get_mut("bind").and_then(Value::as_object_mut) {
                        bind.remove("create_host_path");
                    }
                }
                // Compose writes CPU limits as numbers; the swarm loader wants strings.
                if let Some(resources) = service
                    .get_mut("deploy")
                    .and_then(|d| d.get_mut("resources"))
                    .and_then(Value::as_object_mut)
                {
                    for bound in resources.values_mut() {
                        if let Some(cpus) = bound.get("cpus").and_then(Value::as_f64) {
                            bound["cpus"] = Value::from(cpus.to_string());
                        }
                    }
                }
                // The run label of a test run's containers also labels their service, so that
                // the reaper removes the service rather than containers swarm would replace.
                let run = service.get("labels").and_then(|l| l.get(label::LABEL)).cloned();
                if let Some(run) = run.filter(|r| r.as_str().is_some_and(|r| !r.is_empty())) {
                    let deploy = service.entry("deploy").or_insert_with(|| json!({}));
                    if let Some(deploy) = deploy.as_object_mut() {
                        let labels = deploy.entry("labels").or_insert_with(|| json!({}));
                        if let Some(labels) = labels.as_object_mut() {
                            labels.insert(label::LABEL.to_owned(), run);
                        }
                    }
                }
                // Published ports: swarm publishes on every interface.
                if let Some(ports) = service.get_mut("ports").and_then(Value::as_array_mut) {
                    for port in ports {
                        if let Some(port) = port.as_object_mut() {
                            port.remove("host_ip");
                            // Compose writes the published port as a string; swarm wants a number.
                            let published = port
                                .get("published")
                                .and_then(Value::as_str)
                                .and_then(|p| p.parse::<u64>().ok());
                            if let Some(published) = published {
                                port.insert("published".into(), published.into());
                            }
                        }
                    }
                }
            }
        }
    }
    for section in ["networks", "volumes"] {
        if let Some(items) = definition.get_mut(section).and_then(Value::as_object_mut) {
            for item in items.values_mut() {
                if let Some(item) = item.as_object_mut() {
                    // Let the stack namespace them (`<stack>_db-data`).
                    item.remove("name");
                }
            }
        }
    }
    definition
}

/// Compose prints unset fields as `null`; the swarm loader wants them absent.
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Each service of `model` that runs one of our images, with that image.
fn our_images(stack: &Stack, model: &Model) -> Vec<(String, ImageName)> {
    let images = stack.images(model);
    model
        .services
        .iter()
        .filter_map(|service| {
            let image = images.iter().find(|image| {
                service.image == format!("{}:{}", image::repository(None, **image), stack.tag)
            })?;
            Some((service.name.clone(), *image))
        })
        .collect()
}

/// The images a deploy resolved.
pub struct Resolved {
    /// Service -> the image it deploys.
    pub images: BTreeMap<String, String>,
    /// Service -> what the registry answered for its image (registry sources only).
    answers: BTreeMap<String, crate::oci::Inspected>,
}

/// The image each service deploys, by digest where the source is a registry: nothing changes
/// before every one of them is known to exist.
pub fn resolve_images(
    stack: &Stack,
    model: &Model,
    revision: &Revision,
    source: &Source,
) -> Result<Resolved> {
    let ours = our_images(stack, model);
    let wanted: Vec<(String, ImageName, String)> = match source {
        Source::Local { build } => {
            if *build {
                stack::build(stack, model, revision)?;
            } else {
                stack::require_images(stack, model)?;
            }
            let images = ours
                .into_iter()
                .map(|(service, image)| {
                    (service, format!("{}:{}", image::repository(None, image), stack.tag))
                })
                .collect();
            return Ok(Resolved { images, answers: BTreeMap::new() });
        }
        Source::Registry { registry, version } => ours
            .into_iter()
            .map(|(service, image)| {
                let reference = format!("{}:{version}", image::repository(Some(registry), image));
                (service, image, reference)
            })
            .collect(),
        Source::Release(file) => {
            let released = read_release(file)?;
            let mut wanted = Vec::new();
            for (service, image) in ours {
                let Some(reference) = released.get(image.as_str()) else {
                    bail!(
                        "{file} names no {} image, which service {service} needs: give the \
                         `--json` output of a release of every image",
                        image.as_str()
                    );
                };
                wanted.push((service, image, reference.clone()));
            }
            wanted
        }
    };
    let remote = Registry::new(&stack.root);
    let mut resolved = BTreeMap::new();
    let mut answers = BTreeMap::new();
    let mut missing = Vec::new();
    for (service, _, reference) in wanted {
        match remote.inspect(&reference)? {
            Some(inspected) => {
                let index = inspected.found();
                let pinned = match reference.split_once('@') {
                    Some((_, digest)) if digest == index.digest => reference.clone(),
                    Some(_) => bail!("the registry answered {reference} with {}", index.digest),
                    None => format!("{reference}@{}", index.digest),
                };
                resolved.insert(service.clone(), pinned);
                answers.insert(service, inspected);
            }
            None => missing.push(reference),
        }
    }
    if !missing.is_empty() {
        bail!(
            "the registry does not have {}: release it first (`cargo xtask release --registry \
             REG`), or deploy a version it has; nothing was changed",
            missing.join(", ")
        );
    }
    Ok(Resolved { images: resolved, answers })
}

/// Where the deploy would give a running service of stack `name` an image of the same content
/// (the same layers and run settings: every release labels every image with its version, so
/// an unchanged database gets a new digest all the same), keeps the running image, so that the
/// service is not restarted: a database stopped for a label would fail requests.
pub fn keep_unchanged(root: &Utf8Path, name: &str, resolved: &mut Resolved) -> Result<()> {
    let running: BTreeMap<String, String> = inspect_services(root, name)?
        .iter()
        .filter_map(|service| {
            let spec = &service["Spec"];
            let service = spec["Name"].as_str()?.strip_prefix(&format!("{name}_"))?.to_owned();
            Some((service, spec["TaskTemplate"]["ContainerSpec"]["Image"].as_str()?.to_owned()))
        })
        .collect();
    let remote = Registry::new(root);
    for (service, wanted) in resolved.images.iter_mut() {
        let (Some(current), Some(new)) = (running.get(service), resolved.answers.get(service))
        else {
            continue;
        };
        if current == wanted || !current.contains("@sha256:") {
            continue;
        }
        let Some(old) = remote.inspect(current)? else { continue };
        if old.content().is_some() && old.content() == new.content() {
            say!(
                "{service}: {wanted} has the layers and settings of the running {current} (only \
                 its labels differ): kept, not restarted"
            );
            *wanted = current.clone();
        } else if service == "db" {
            // Said before anything changes: the one restart that costs requests.
            say!(
                "{service}: {wanted} differs from the running {current} in its layers or \
                 settings: the database restarts (stop-first, it never runs twice on its \
                 volume), and requests fail until it is back"
            );
        }
    }
    Ok(())
}

/// Image name -> `repository:tag@digest`, from a `cargo xtask release --json` output.
fn read_release(file: &Utf8Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    let released: Value = serde_json::from_str(&text).with_context(|| {
        format!("{file} is not JSON: give the output of `cargo xtask release --json`")
    })?;
    let mut images = BTreeMap::new();
    for entry in released["images"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(name), Some(digest), Some(first)) =
            (entry["image"].as_str(), entry["digest"].as_str(), entry["refs"][0].as_str())
        else {
            bail!("{file}: an image without a name, digest or ref: {entry}");
        };
        if !digest.starts_with("sha256:") {
            bail!("{file}: {name} has no sha256 digest ({digest})");
        }
        images.insert(name.to_owned(), format!("{first}@{digest}"));
    }
    if images.is_empty() {
        bail!("{file} lists no images: give the output of `cargo xtask release --json`");
    }
    Ok(images)
}

/// Creates each secret the deployment needs that does not exist yet.
pub fn create_secrets(root: &Utf8Path, name: &str, secrets: &[SwarmSecret]) -> Result<()> {
    let existing = docker::cli(root)
        .args(["secret", "ls", "--format", "{{.Name}}"])
        .quiet()
        .read()
        .context("cannot list the swarm's secrets")?;
    let existing: BTreeSet<&str> = existing.lines().collect();
    for secret in secrets.iter().filter(|s| !existing.contains(s.name.as_str())) {
        create_secret_step(root, name, secret)
            .stdin_bytes(secret.value.clone().into_bytes())
            .secret(&secret.value)
            .quiet()
            .read()
            .with_context(|| {
                format!("cannot create secret {} from {}", secret.name, secret.setting)
            })?;
    }
    Ok(())
}

/// `docker secret create`, the value on stdin, labelled so that `docker stack rm` removes it.
pub fn create_secret_step(root: &Utf8Path, name: &str, secret: &SwarmSecret) -> Step {
    docker::cli(root)
        .args(["secret", "create", "--label"])
        .arg(format!("{NAMESPACE}={name}"))
        .args(label::label_args())
        .arg(&secret.name)
        .arg("-")
}

/// Removes the stack's secrets that neither the current nor the previous spec of any service
/// uses (the previous one stays for `prod rollback`).
pub fn prune_secrets(root: &Utf8Path, name: &str) -> Result<Vec<String>> {
    let services = inspect_services(root, name)?;
    let mut used = BTreeSet::new();
    for service in &services {
        for spec in [&service["Spec"], &service["PreviousSpec"]] {
            for secret in spec["TaskTemplate"]["ContainerSpec"]["Secrets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Some(secret) = secret["SecretName"].as_str() {
                    used.insert(secret.to_owned());
                }
            }
        }
    }
    let label = format!("label={NAMESPACE}={name}");
    let ours = docker::cli(root)
        .args(["secret", "ls", "--filter", &label, "--format", "{{.Name}}"])
        .quiet()
        .read()
        .context("cannot list the stack's secrets")?;
    let mut removed = Vec::new();
    for secret in ours.lines().filter(|s| !used.contains(*s)) {
        docker::cli(root)
            .args(["secret", "rm", secret])
            .quiet()
            .read()
            .with_context(|| format!("cannot remove the unused secret {secret}"))?;
        removed.push(secret.to_owned());
    }
    Ok(removed)
}

/// The services of stack `name`, failing when it has none.
fn deployed_services(root: &Utf8Path, name: &str) -> Result<Vec<Value>> {
    let services = inspect_services(root, name)?;
    if services.is_empty() {
        bail!(
            "stack {name} has no services on this swarm: deploy it with `cargo xtask prod deploy --swarm`"
        );
    }
    Ok(services)
}

/// Fails unless this engine is a swarm manager, with the fix.
pub fn require_manager(stack: &Stack) -> Result<()> {
    let state = stack::swarm_state(&stack.root)?;
    if state != "active true" {
        bail!(
            "this engine is not a swarm manager (state: {state}): run `docker swarm init`, or deploy from a manager"
        );
    }
    Ok(())
}

/// `docker service inspect` of every service of stack `name`.
fn inspect_services(root: &Utf8Path, name: &str) -> Result<Vec<Value>> {
    let label = format!("label={NAMESPACE}={name}");
    let ids = docker::cli(root)
        .args(["service", "ls", "--quiet", "--filter", &label])
        .quiet()
        .read()
        .with_context(|| format!("cannot list the services of stack {name}"))?;
    if ids.trim().is_empty() {
        return Ok(Vec::new());
    }
    let json = docker::cli(root)
        .args(["service", "inspect"])
        .args(ids.split_whitespace())
        .quiet()
        .read()
        .with_context(|| format!("cannot inspect the services of stack {name}"))?;
    let services: Value =
        serde_json::from_str(&json).context("docker service inspect printed no JSON")?;
    Ok(services.as_array().cloned().unwrap_or_default())
}

/// `docker service rollback` of each named service of stack `name` (all that have a previous
/// spec when none is named).
pub fn rollback(root: &Utf8Path, name: &str, services: &[String]) -> Result<Vec<String>> {
    let all = deployed_services(root, name)?;
    for service in services {
        if !all.iter().any(|s| s["Spec"]["Name"].as_str() == Some(&format!("{name}_{service}"))) {
            bail!("stack {name} has no service {service}");
        }
    }
    let mut targets = Vec::new();
    for service in &all {
        let full = service["Spec"]["Name"].as_str().unwrap_or_default();
        let short = full.strip_prefix(&format!("{name}_")).unwrap_or(full);
        let named = services.is_empty() || services.iter().any(|s| s == short);
        let scaled = only_scaled(service);
        if named && !service["PreviousSpec"].is_null() && !scaled {
            targets.push(full.to_owned());
        } else if named && scaled && !services.is_empty() {
            bail!(
                "{full}'s previous spec differs only in its replica count (a scale, such as \
                 `prod restore`'s): rolling back would scale it, not return to an earlier \
                 release; deploy the release you want with `cargo xtask prod deploy --swarm`"
            );
        } else if named && !services.is_empty() {
            bail!("{full} has no previous spec to return to");
        }
    }
    if targets.is_empty() {
        bail!("no service of stack {name} has a previous spec to return to");
    }
    for target in &targets {
        rollback_step(root, target).run().with_context(|| format!("cannot roll {target} back"))?;
    }
    Ok(targets)
}

/// Whether a service's previous spec is its spec with another replica count: the previous
/// "release" is a scale (`prod restore` scales the database and the servers to 0 and back).
/// The engine fills in defaults when the CLI updates a service (restart and update policies,
/// the stop grace period), so the specs are compared on what a release changes: the task's
/// container (image, command, settings, secrets) and the service's labels, key by key where
/// both have the key.
fn only_scaled(service: &Value) -> bool {
    let (spec, previous) = (&service["Spec"], &service["PreviousSpec"]);
    if previous.is_null() {
        return false;
    }
    let replicas = |s: &Value| s.pointer("/Mode/Replicated/Replicas").cloned();
    let container = |s: &Value| s.pointer("/TaskTemplate/ContainerSpec").cloned();
    replicas(spec) != replicas(previous)
        && agree(&container(spec).unwrap_or_default(), &container(previous).unwrap_or_default())
        && agree(&spec["Labels"], &previous["Labels"])
}

/// Whether two JSON values are equal on every key both objects have (recursively).
fn agree(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.iter().all(|(key, value)| b.get(key).is_none_or(|other| agree(value, other)))
        }
        (a, b) => a == b,
    }
}

pub fn rollback_step(root: &Utf8Path, service: &str) -> Step {
    docker::cli(root).args(["service", "rollback", "--detach", "--quiet", service])
}

/// The running containers of swarm service `service` (`STACK_SERVICE`) on this engine.
pub fn task_containers(root: &Utf8Path, service: &str) -> Result<Vec<String>> {
    let listed = docker::cli(root)
        .args(["ps", "--quiet", "--filter"])
        .arg(format!("label=com.docker.swarm.service.name={service}"))
        .quiet()
        .read()
        .with_context(|| format!("cannot list the containers of {service}"))?;
    Ok(listed.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests;
