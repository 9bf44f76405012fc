//! `cargo xtask prod`: the production definition (`compose/prod.yaml`) as a compose stack on
//! this engine (`up`, `down`), printed with its secrets redacted (`config`), or on Docker Swarm
//! (`deploy --swarm`, `status`, `rollback`; see [`crate::swarm`]).

use std::time::Duration;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::docker;
use crate::plan::{Plan, Preview, Step};
use crate::services::Model;
use crate::stack::{self, Mode, Stack};
use crate::swarm;
use crate::tasks::{long_lived, print_endpoints};
use crate::version::Revision;

/// The settings prod refuses to start without: never defaulted, never printed.
const SECRETS: [&str; 1] = ["POSTGRES_PASSWORD"];

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
    Status {
        stack: String,
    },
    /// Return `services` (every one with a previous spec when empty) to their previous spec.
    Rollback {
        stack: String,
        services: Vec<String>,
        timeout: Duration,
    },
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
pub fn run(
    root: &Utf8Path,
    action: ProdAction,
    env_files: Vec<Utf8PathBuf>,
    preview: Preview,
) -> Result<()> {
    let revision = Revision::read(root)?;
    let project = stack::project_name("memories-prod");
    let mut stack = Stack::new(root, Mode::Prod, project, &[], stack::tag(&revision));
    stack.env_files = env_files;
    if preview.dry_run {
        if matches!(action, ProdAction::Config | ProdAction::Up { .. } | ProdAction::Deploy { .. })
        {
            stack::require_secrets(&stack, &SECRETS)?;
        }
        prod_plan(&stack, &revision, &action)?.print(preview.json);
        return Ok(());
    }
    match action {
        ProdAction::Config => {
            stack::require_secrets(&stack, &SECRETS)?;
            let mut definition = stack::merged_definition(&stack)?;
            redact(&mut definition);
            out!("{definition:#}");
            Ok(())
        }
        ProdAction::Up { no_build, timeout } => {
            stack::require_secrets(&stack, &SECRETS)?;
            // Refuse a project of another kind before writing anything for it (the lifecycle
            // checks again, as it does for every stack).
            stack::require_own_kind(&stack)?;
            stack::write_secrets(&stack, &stack::merged_definition(&stack)?)?;
            let how = long_lived(timeout, no_build);
            let started = stack::lifecycle(&stack, &revision, how, |_, probes| {
                print_endpoints(&stack, probes, preview.json);
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
            stack::require_secrets(&stack, &SECRETS)?;
            let source = deploy_source(&revision, source);
            deploy_swarm(&stack, &revision, &name, &source, timeout)
        }
        ProdAction::Status { stack: name } => {
            print_status(&swarm::status(&stack.root, &name)?, preview.json);
            Ok(())
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
            print_status(&swarm::status(&stack.root, &name)?, preview.json);
            Ok(())
        }
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

fn print_status(statuses: &[swarm::ServiceStatus], json: bool) {
    if json {
        let all: Vec<Value> = statuses.iter().map(swarm::ServiceStatus::to_json).collect();
        out!("{:#}", Value::from(all));
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
    let file = swarm_file(stack, name);
    let dir = file.parent().expect("the swarm file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    let text = serde_json::to_string_pretty(&deployment.definition)?;
    stack::write_mode(&file, text.as_bytes(), 0o600)?;
    let before = swarm::task_templates(&stack.root, name)?;
    let deployed = stack_deploy(stack, &file, name, source).run();
    let _ = std::fs::remove_file(&file);
    deployed.context("docker stack deploy failed")?;
    swarm::wait(&stack.root, name, &[], &before, timeout)?;
    for secret in swarm::prune_secrets(&stack.root, name)? {
        say!("removed secret {secret}: no current or previous spec uses it");
    }
    Ok(())
}

/// Where `prod deploy --swarm` writes the definition it hands to `docker stack deploy`.
fn swarm_file(stack: &Stack, name: &str) -> Utf8PathBuf {
    stack.root.join(format!("target/xtask/{name}-swarm.json"))
}

/// `docker stack deploy` of the definition in `file` as stack `name`; images from a registry
/// are pulled with this client's credentials on every node.
fn stack_deploy(stack: &Stack, file: &Utf8Path, name: &str, source: &swarm::Source) -> Step {
    let deploy = ["stack", "deploy", "--detach=true", "--prune", "--compose-file", file.as_str()];
    let step = docker::cli(&stack.root).args(deploy);
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
        ProdAction::Up { no_build, timeout } => {
            let model = stack.model()?;
            let how = long_lived(*timeout, *no_build);
            let plan = match stack.secrets_dir() {
                Some(dir) => plan.note(format!(
                    "first writes each secret file the definition names ({}) into {dir} (a \
                     directory only this user can enter)",
                    SECRETS.join(", ")
                )),
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
                    "reads the digest of {registry}/NAME:{version} for every image (`docker \
                     buildx imagetools inspect`); a missing one stops the deploy before \
                     anything changes"
                )),
                swarm::Source::Release(file) => plan.note(format!(
                    "reads the images and digests in {file} and checks that the registry has \
                     each; a missing one stops the deploy before anything changes"
                )),
            };
            plan.note(
                "keeps the running image of each service whose new image has the same layers \
                 and run settings (only labels differ), so that service is not restarted",
            )
            .note(
                "creates each Docker secret the definition names that does not exist yet \
                 (`<stack>_<secret>_<hash of its content>`, the value on stdin)",
            )
            .note(format!(
                "writes the swarm definition to {file} (mode 0600), removed after the deploy"
            ))
            .step(stack_deploy(stack, &file, name, &source))
            .note(
                "then waits until every service has converged (an update that swarm rolled \
                 back fails the deploy), and removes the stack's secrets that no current or \
                 previous spec uses",
            )
        }
        ProdAction::Status { stack: name } => plan.note(format!(
            "reads the services of stack {name} (`docker service inspect`, `docker service ps`)"
        )),
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
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_from_printed_definitions() {
        let mut definition = json!({"services": {"db": {"environment": {
            "POSTGRES_PASSWORD": "hunter2", "POSTGRES_USER": "memories", "API_TOKEN": "t"
        }}}});
        redact(&mut definition);
        let env = &definition["services"]["db"]["environment"];
        assert_eq!(env["POSTGRES_PASSWORD"], "***");
        assert_eq!(env["API_TOKEN"], "***");
        assert_eq!(env["POSTGRES_USER"], "memories");
        let mut urls = json!({"services": {
            "server": {"environment": {"REDIS_URL": "redis://:hunter2@cache:6379/0"},
                       "command": ["serve", "--db=postgres://me:hunter2@db/app"]},
            "db": {"environment": {"POSTGRES_PASSWORD": "s3cret"},
                   "healthcheck": {"test": ["CMD", "check", "--password=s3cret"]}},
        }});
        redact(&mut urls);
        let shown = urls.to_string();
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://:***@cache:6379/0"), "{shown}");
        assert!(shown.contains("postgres://me:***@db/app"), "{shown}");
        assert_eq!(
            redact_url_passwords("http://host:80/x and ftp://a@b"),
            "http://host:80/x and ftp://a@b"
        );
    }
}
