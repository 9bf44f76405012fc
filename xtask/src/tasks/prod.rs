//! `cargo xtask prod`: the production definition (`compose/prod.yaml`) as a compose stack on
//! this engine (`up`, `down`), printed with its secrets redacted (`config`), or on Docker Swarm
//! (`deploy --swarm`, `status`, `rollback`; see [`crate::stack::swarm`]).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::image::version::Revision;
use crate::run::docker;
use crate::run::plan::{Plan, Step, Task};
use crate::stack::backup;
use crate::stack::migrations;
use crate::stack::services::Model;
use crate::stack::swarm;
use crate::stack::tls::Edge;
use crate::stack::{self, Lifecycle, Mode, Profile, Stack};
use crate::tasks::dev::{long_lived, print_endpoints};

mod release_phase;
pub mod status;

use release_phase::{DB_SERVICE, release_phase};

/// The settings prod refuses to start without: never defaulted, never printed. Each may also
/// come from the file its `_FILE` setting names (`API_KEYS_FILE`).
const SECRETS: [&str; 2] = ["POSTGRES_PASSWORD", "API_KEYS"];

/// What `cargo xtask prod` does with the production definition.
#[derive(Debug, Clone)]
pub enum ProdAction {
    /// Print the merged definition, secrets redacted.
    Config,
    Up {
        no_build: bool,
        timeout: Duration,
    },
    Down {
        volumes: bool,
    },
    /// Deploy to the swarm stack `stack` and wait until every service has converged.
    Deploy {
        stack: String,
        source: DeploySource,
        timeout: Duration,
    },
    /// The compose prod stack's status, or swarm stack `stack`'s.
    Status {
        stack: Option<String>,
    },
    /// Return `services` (every one with a previous spec when empty) to their previous spec.
    Rollback {
        stack: String,
        services: Vec<String>,
        timeout: Duration,
    },
    /// The API keys in file `.0` (else `API_KEYS_FILE`).
    Keys(Option<Utf8PathBuf>, crate::stack::api_keys::KeysAction),
    /// The proxy's ACME certificates: listed, or renewed now when `renew`; in swarm stack
    /// `stack`'s proxy when given.
    Certs {
        renew: bool,
        stack: Option<String>,
    },
    /// Backups of the compose prod stack's database, or of swarm stack `.0`'s (see [`backup`]).
    Backups(Option<String>, backup::BackupAction),
}

/// Where `prod deploy` takes its images from.
#[derive(Debug, Clone)]
pub enum DeploySource {
    /// `REGISTRY/NAME:VERSION` by digest; the app's version when `None`.
    Registry { registry: String, version: Option<String> },
    /// The images a `release --json` printed.
    Release(Utf8PathBuf),
    /// This engine's own images, built first when `build`.
    Local { build: bool },
}

/// `cargo xtask prod ...`; `env_files` hold the secrets, read after compose/prod.env.
/// `cargo xtask prod ...`: the prod stack `action` works on, its settings read and, for the
/// tasks that start or print it, its secrets and HTTPS checked.
pub fn task(root: &Utf8Path, action: ProdAction, env_files: Vec<Utf8PathBuf>) -> Result<ProdTask> {
    let revision = Revision::read(root)?;
    let project = stack::project_name("memories-prod");
    let mut stack = Stack::new(root, Mode::Prod, project, &[], stack::tag(&revision));
    stack.env_files = env_files;
    match stack.setting("MONITORING").as_deref() {
        None | Some("" | "off") => {}
        Some("on") => stack.profiles.push(Profile::Monitoring),
        Some(other) => bail!("MONITORING={other} is not a choice: set on (Prometheus) or off"),
    }
    // The tasks that start or print the stack check how it serves HTTPS (files read and
    // checked) before anything else; the rest name the same compose files from the settings.
    let starts =
        matches!(action, ProdAction::Config | ProdAction::Up { .. } | ProdAction::Deploy { .. });
    let edge = if starts {
        require_secrets(&stack)?;
        Some(Edge::checked(&stack)?)
    } else {
        Edge::chosen(&stack)
    };
    stack.extra_files = edge.as_ref().map(Edge::files).unwrap_or_default();
    Ok(ProdTask { stack, revision, action, edge })
}

/// A `prod` subcommand on its stack.
pub struct ProdTask {
    stack: Stack,
    revision: Revision,
    action: ProdAction,
    edge: Option<Edge>,
}

impl Task for ProdTask {
    fn plan(&self) -> Result<Plan> {
        prod_plan(&self.stack, &self.revision, &self.action)
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let ProdTask { stack, revision, action, edge } = *self;
        execute(stack, &revision, action, edge, json)
    }
}

fn execute(
    stack: Stack,
    revision: &Revision,
    action: ProdAction,
    edge: Option<Edge>,
    json: bool,
) -> Result<()> {
    match action {
        ProdAction::Config => {
            let mut definition = stack::merged_definition(&stack)?;
            redact(&mut definition);
            out!("{definition:#}");
            Ok(())
        }
        ProdAction::Up { no_build, timeout } => {
            // Refuse a project of another kind before writing anything for it (the lifecycle
            // checks again, as it does for every stack).
            stack::require_own_kind(&stack)?;
            stack::write_secrets(&stack, &stack::merged_definition(&stack)?)?;
            // The release phase: the new server image migrates the database before any
            // server is created or replaced.
            let how = Lifecycle {
                release_phase: Some(migrations::RELEASE_PHASE),
                ..long_lived(timeout, no_build)
            };
            let started = stack::lifecycle(&stack, revision, how, |_, probes| {
                print_endpoints(&stack, probes, json);
                if edge.as_ref().is_some_and(|e| *e != Edge::Plain) {
                    let port = |key, default: &str| stack.setting(key).unwrap_or(default.into());
                    say!(
                        "HTTPS on port {}; plain HTTP on port {} redirects there",
                        port("HTTPS_PORT", "443"),
                        port("PROXY_PORT", "8080")
                    );
                }
                say!(
                    "the prod stack {} is ready; stop it with `cargo xtask prod down`",
                    stack.project
                );
                Ok(())
            });
            // A failed first start took the stack's containers down: its secrets go with them.
            if started.is_err() && !stack::has_containers(&stack.project).unwrap_or(true) {
                stack::remove_secrets(&stack)?;
            }
            started
        }
        ProdAction::Down { volumes } => {
            stack::down_own(&stack, volumes)?;
            stack::remove_secrets(&stack)
        }
        ProdAction::Deploy { stack: name, source, timeout } => {
            let source = deploy_source(revision, source);
            deploy_swarm(&stack, revision, &name, &source, timeout)
        }
        ProdAction::Status { stack: Some(name) } => status::swarm(&stack, &name, json),
        ProdAction::Status { stack: None } => status::compose(&stack, json),
        ProdAction::Keys(file, action) => {
            let file = match file.or_else(|| stack.setting("API_KEYS_FILE").map(Into::into)) {
                Some(file) => file,
                None => bail!(
                    "which key file? pass --file FILE, or set API_KEYS_FILE (the environment or \
                     --env-file)"
                ),
            };
            crate::stack::api_keys::run(&file, action, json)
        }
        ProdAction::Certs { renew, stack: swarm_stack } => {
            let container = match &swarm_stack {
                Some(name) => Some(swarm_proxy_container(&stack, name)?),
                None => {
                    if !stack::running_services(&stack)?.iter().any(|s| s == "proxy") {
                        bail!(
                            "the proxy of stack {} is not running: start it with `cargo xtask \
                             prod up`",
                            stack.project
                        );
                    }
                    None
                }
            };
            let step = certs_step(&stack, container.as_deref(), renew);
            if renew {
                step.run().context("the renewal failed (the proxy's log says more)")?;
                say!("renewed; the proxy serves the new certificate");
            } else {
                out!("{}", step.read().context("cannot list the proxy's certificates")?.trim_end());
            }
            Ok(())
        }
        ProdAction::Backups(swarm_stack, action) => {
            let target = backup_target(&stack, swarm_stack);
            if matches!(target, backup::Target::Compose(_)) {
                require_secrets(&stack)?;
            }
            backup::run(&target, action, json)
        }
        ProdAction::Rollback { stack: name, services, timeout } => {
            swarm::require_manager(&stack)?;
            let before = swarm::task_templates(&stack.root, &name)?;
            let targets = swarm::rollback(&stack.root, &name, &services)?;
            let wait = swarm::wait(&stack.root, &name, &targets, &before, timeout);
            wait.with_context(|| {
                format!("the rollback of {} did not complete", targets.join(", "))
            })?;
            say!("rolled back {}", targets.join(", "));
            status::print(&swarm::status(&stack.root, &name)?, None, None, json);
            Ok(())
        }
    }
}

/// The running container of swarm stack `name`'s proxy on this engine.
fn swarm_proxy_container(stack: &Stack, name: &str) -> Result<String> {
    let listed = swarm::task_containers(&stack.root, &format!("{name}_proxy"))?;
    match listed.into_iter().next() {
        Some(id) => Ok(id),
        None => bail!("no task of {name}_proxy runs on this engine: run this on its node"),
    }
}

/// `proxy-entrypoint renew` (or `certs`) in the proxy's container: the compose prod stack's,
/// or `container`.
fn certs_step(stack: &Stack, container: Option<&str>, renew: bool) -> Step {
    let command = ["proxy-entrypoint", if renew { "renew" } else { "certs" }];
    match container {
        Some(id) => docker::cli(&stack.root).args(["exec", id]).args(command),
        None => stack.compose().args(["exec", "--no-TTY", "proxy"]).args(command),
    }
}

/// Fails unless every secret prod needs is set and the API keys are a valid key list or `off`.
fn require_secrets(stack: &Stack) -> Result<()> {
    if stack.secret_value("API_KEYS")?.is_none() {
        bail!(
            "the prod stack needs API keys: make a key file with `cargo xtask prod keys create \
             NAME --file FILE` and set API_KEYS_FILE=FILE, or set API_KEYS=off to serve without \
             keys (on purpose)"
        );
    }
    stack::require_secrets(stack, &SECRETS)?;
    let keys = stack.secret_value("API_KEYS")?.unwrap_or_default();
    let what = match stack.setting("API_KEYS").filter(|v| !v.is_empty()) {
        Some(_) => "API_KEYS".to_owned(),
        None => format!("API_KEYS_FILE {}", stack.setting("API_KEYS_FILE").unwrap_or_default()),
    };
    crate::stack::api_keys::check_setting(&keys, &what)
}

fn backup_target(stack: &Stack, swarm_stack: Option<String>) -> backup::Target {
    match swarm_stack {
        Some(name) => backup::Target::Swarm { stack: stack.clone(), name },
        None => backup::Target::Compose(stack.clone()),
    }
}

fn deploy_source(revision: &Revision, source: DeploySource) -> swarm::Source {
    match source {
        DeploySource::Registry { registry, version } => swarm::Source::Registry {
            registry,
            version: version.unwrap_or_else(|| revision.version.to_string()),
        },
        DeploySource::Release(file) => swarm::Source::Release(file),
        DeploySource::Local { build } => swarm::Source::Local { build },
    }
}

fn deploy_swarm(
    stack: &Stack,
    revision: &Revision,
    name: &str,
    source: &swarm::Source,
    timeout: Duration,
) -> Result<()> {
    swarm::require_manager(stack)?;
    // One read of the definition: the images to deploy come from it, and it is what deploys.
    let merged = stack::merged_definition(stack)?;
    let model = Model::from_definition(&merged)?;
    let mut resolved = swarm::resolve_images(stack, &model, revision, source)?;
    swarm::keep_unchanged(&stack.root, name, &mut resolved)?;
    let deployment = swarm::deployment(stack, merged, name, &resolved.images)?;
    release_phase(stack, name, &deployment, source, timeout)?;
    apply(stack, name, &deployment, source, timeout)?;
    say!(
        "stack {name} is deployed; see it with `cargo xtask prod status --stack {name}`, \
         remove it with `docker stack rm {name}`"
    );
    Ok(())
}

/// Deploys `deployment` as stack `name`: its secrets first, then `docker stack deploy`, then
/// waits until every service has converged, then prunes the secrets no spec uses.
pub fn apply(
    stack: &Stack,
    name: &str,
    deployment: &swarm::Deployment,
    source: &swarm::Source,
    timeout: Duration,
) -> Result<()> {
    swarm::create_secrets(&stack.root, name, &deployment.secrets)?;
    let failed = "docker stack deploy failed";
    deploy_and_wait(stack, name, &deployment.definition, source, true, failed, timeout)?;
    for secret in swarm::prune_secrets(&stack.root, name)? {
        say!("removed secret {secret}: no current or previous spec uses it");
    }
    Ok(())
}

/// Writes `definition` to the swarm file (mode 0600, removed afterwards), hands it to `docker
/// stack deploy` (`prune`: remove the services it does not name), and waits until every
/// service of stack `name` has converged. `failed` is the context of a deploy that fails.
fn deploy_and_wait(
    stack: &Stack,
    name: &str,
    definition: &Value,
    source: &swarm::Source,
    prune: bool,
    failed: &'static str,
    timeout: Duration,
) -> Result<()> {
    let file = swarm_file(stack, name);
    let dir = file.parent().expect("the swarm file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    stack::write_mode(&file, serde_json::to_string_pretty(definition)?.as_bytes(), 0o600)?;
    let before = swarm::task_templates(&stack.root, name)?;
    let deployed = stack_deploy(stack, &file, name, source, prune).run();
    let _ = std::fs::remove_file(&file);
    deployed.context(failed)?;
    swarm::wait(&stack.root, name, &[], &before, timeout)
}

/// Where `prod deploy --swarm` writes the definition it hands to `docker stack deploy`.
fn swarm_file(stack: &Stack, name: &str) -> Utf8PathBuf {
    stack.root.join(format!("target/xtask/{name}-swarm.json"))
}

/// `docker stack deploy` of the definition in `file` as stack `name`; images from a registry
/// are pulled with this client's credentials on every node.
fn stack_deploy(
    stack: &Stack,
    file: &Utf8Path,
    name: &str,
    source: &swarm::Source,
    prune: bool,
) -> Step {
    let deploy = ["stack", "deploy", "--detach=true", "--compose-file", file.as_str()];
    let step = docker::cli(&stack.root).args(deploy);
    // `--prune` removes the services the file does not name: only for the full definition.
    let step = if prune { step.arg("--prune") } else { step };
    let step = match source {
        swarm::Source::Local { .. } => step.args(["--resolve-image", "never"]),
        swarm::Source::Registry { .. } | swarm::Source::Release(_) => {
            step.arg("--with-registry-auth")
        }
    };
    step.arg(name)
}

/// What `prod ACTION` would run.
fn prod_plan(stack: &Stack, revision: &Revision, action: &ProdAction) -> Result<Plan> {
    let plan = Plan::new(format!("prod on project {}", stack.project));
    let plan = match action {
        ProdAction::Config => plan
            .step(stack.config_step())
            .note("prints the merged definition with every secret shown as ***"),
        ProdAction::Keys(file, action) => {
            let file = file.as_ref().map_or("the API_KEYS_FILE setting's file", |f| f.as_str());
            plan.note(match action {
                crate::stack::api_keys::KeysAction::Create { name } => {
                    format!("adds key {name} to {file} (its SHA-256 only) and prints the key once")
                }
                crate::stack::api_keys::KeysAction::Revoke { name } => {
                    format!("removes key {name} from {file}")
                }
                crate::stack::api_keys::KeysAction::List => format!("lists the keys in {file}"),
            })
        }
        ProdAction::Up { no_build, timeout } => {
            let model = stack.model()?;
            let how = Lifecycle {
                release_phase: Some(migrations::RELEASE_PHASE),
                ..long_lived(*timeout, *no_build)
            };
            let plan = match stack.secrets_dir() {
                Some(dir) => {
                    let definition = stack::merged_definition(stack)?;
                    let settings: Vec<String> = stack::file_secrets(stack, &definition)
                        .into_iter()
                        .map(|(_, setting)| setting)
                        .collect();
                    plan.note(format!(
                        "first writes each secret file the definition names ({}) into {dir} (a \
                         directory only this user can enter)",
                        settings.join(", ")
                    ))
                }
                None => plan,
            };
            stack::lifecycle_plan(plan, stack, &model, revision, how, |plan| plan)
        }
        ProdAction::Down { volumes } => stack::down_own_plan(plan, stack, *volumes)
            .note("then removes the stack's secret files"),
        ProdAction::Deploy { stack: name, source, .. } => {
            let source = deploy_source(revision, source.clone());
            let file = swarm_file(stack, name);
            let plan = plan
                .note("first checks that this engine is a swarm manager")
                .step(stack.config_step());
            let plan = match &source {
                swarm::Source::Local { build: false } => {
                    plan.note("--no-build: checks that every image is in the local store")
                }
                swarm::Source::Local { build: true } => {
                    plan.step(stack::build_plan(stack, &stack.model()?, revision).step)
                }
                swarm::Source::Registry { registry, version } => plan.note(format!(
                    "reads the digest of {registry}/NAME:{version} for every image (the \
                     registry's API, through xtask's OCI client); a missing one stops the deploy \
                     before anything changes"
                )),
                swarm::Source::Release(file) => plan.note(format!(
                    "reads the images and digests in {file} and checks that the registry has \
                     each; a missing one stops the deploy before anything changes"
                )),
            };
            plan.note(
                "keeps the running image of each service whose new image has the same layers \
                 and run settings (only labels differ), so that service is not restarted; says \
                 before anything changes when the database's image differs (it restarts)",
            )
            .note(
                "creates each Docker secret the definition names that does not exist yet \
                 (`<stack>_<secret>_<hash of its content>`, the value on stdin)",
            )
            .note(format!(
                "release phase: deploys the {DB_SERVICE} service alone first (the definition's \
                 other services left out, nothing pruned), waits until it has converged:"
            ))
            .step(stack_deploy(stack, &file, name, &source, false))
            .note(
                "creates pgBackRest's stanza in the running db container (WAL archiving needs it)",
            )
            .note(format!(
                "then runs the new server image's migrations as the swarm job {name}_migrate \
                 (`python -m memories.migrate upgrade`, never restarted) on the stack's network \
                 with the server's settings and secrets, prints its output and removes it; a \
                 failed migration ends the deploy here"
            ))
            .note(format!(
                "writes the swarm definition to {file} (mode 0600), removed after the deploy"
            ))
            .step(stack_deploy(stack, &file, name, &source, true))
            .note(
                "then waits until every service has converged (an update that swarm rolled \
                 back fails the deploy), and removes the stack's secrets that no current or \
                 previous spec uses",
            )
        }
        ProdAction::Backups(swarm_stack, action) => {
            backup::plan(&backup_target(stack, swarm_stack.clone()), action)
        }
        ProdAction::Certs { renew, stack: swarm_stack } => {
            let container =
                swarm_stack.as_ref().map(|name| format!("<the running {name}_proxy task>"));
            plan.step(certs_step(stack, container.as_deref(), *renew))
        }
        ProdAction::Status { stack: name } => plan.note(status::describe(stack, name.as_deref())),
        ProdAction::Rollback { stack: name, services, .. } => {
            let services = match services.is_empty() {
                true => vec!["<each service with a previous spec>".to_owned()],
                false => services.clone(),
            };
            let plan = services.iter().fold(plan, |plan, service| {
                plan.step(swarm::rollback_step(&stack.root, &format!("{name}_{service}")))
            });
            plan.note("then waits until every service has rolled back")
        }
    };
    Ok(plan)
}

/// Replaces secrets with `***` wherever they appear in a definition: the values of
/// secret-looking environment variables, those same values inside any other string (a URL,
/// a command), and the password of any `scheme://user:password@host` URL.
fn redact(definition: &mut Value) {
    let mut secrets = Vec::new();
    if let Some(services) = definition.get_mut("services").and_then(Value::as_object_mut) {
        for service in services.values_mut() {
            let Some(env) = service.get_mut("environment").and_then(Value::as_object_mut) else {
                continue;
            };
            for (key, value) in env.iter_mut() {
                if stack::is_secret_key(key) {
                    if let Some(secret) = value.as_str().filter(|v| !v.is_empty()) {
                        secrets.push(secret.to_owned());
                    }
                    *value = Value::from("***");
                }
            }
        }
    }
    redact_strings(definition, &secrets);
}

fn redact_strings(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(text) => {
            let mut redacted = redact_url_passwords(text);
            for secret in secrets {
                redacted = redacted.replace(secret.as_str(), "***");
            }
            *text = redacted;
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_strings(v, secrets)),
        _ => {}
    }
}

/// `redis://:pw@cache:6379/0` becomes `redis://:***@cache:6379/0`, in any text.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let authority_end = after.find(['/', ' ', '"', '\'']).unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@').and_then(|at| authority[..at].find(':').map(|c| (c, at))) {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
