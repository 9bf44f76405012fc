//! `cargo xtask prod`: the production definition (`compose/prod.yaml`) as a compose stack on
//! this engine (`up`, `down`), printed with its secrets redacted (`config`), or deployed to
//! Docker Swarm (`deploy --swarm`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::cli::{ProdAction, ProdArgs};
use crate::docker;
use crate::plan::{Plan, Step};
use crate::services::Model;
use crate::stack::{self, Mode, Stack};
use crate::tasks::{long_lived, print_endpoints};
use crate::version::Revision;
use crate::wait::{self, Attempt, Check, WaitOptions};

pub fn run(root: &Utf8Path, args: ProdArgs) -> Result<()> {
    let revision = Revision::read(root)?;
    let project = stack::project_name("memories-prod");
    let mut stack = Stack::new(root, Mode::Prod, project, &[], stack::tag(&revision));
    stack.env_files = args.env_file.clone();
    const SECRETS: [&str; 1] = ["POSTGRES_PASSWORD"];
    if args.preview.dry_run {
        if !matches!(args.action, ProdAction::Down { .. }) {
            stack::require_secrets(&stack, &SECRETS)?;
        }
        prod_plan(&stack, &revision, &args.action)?.print(args.preview.json);
        return Ok(());
    }
    match args.action {
        ProdAction::Config => {
            stack::require_secrets(&stack, &SECRETS)?;
            let mut definition = stack::merged_definition(&stack)?;
            redact(&mut definition);
            out!("{definition:#}");
            Ok(())
        }
        ProdAction::Up { no_build, timeout } => {
            stack::require_secrets(&stack, &SECRETS)?;
            stack::write_secrets(&stack, &stack::merged_definition(&stack)?)?;
            let how = long_lived(timeout, no_build);
            let started = stack::lifecycle(&stack, &revision, how, |_, probes| {
                print_endpoints(&stack, probes, args.preview.json);
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
            stack::down(&stack, volumes)?;
            stack::remove_secrets(&stack)
        }
        ProdAction::Deploy { swarm: _, stack: name, no_build, timeout } => {
            stack::require_secrets(&stack, &SECRETS)?;
            deploy_swarm(&stack, &revision, &name, no_build, timeout)
        }
    }
}

/// Where `prod deploy --swarm` writes the definition it hands to `docker stack deploy`.
fn swarm_file(stack: &Stack, name: &str) -> Utf8PathBuf {
    stack.root.join(format!("target/xtask/{name}-swarm.json"))
}

/// `docker stack deploy` of the definition in `file` as stack `name`.
fn stack_deploy(stack: &Stack, file: &Utf8Path, name: &str) -> Step {
    let deploy = ["stack", "deploy", "--detach=true", "--prune", "--compose-file", file.as_str()];
    docker::cli(&stack.root).args(deploy).arg(name)
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
                    "first writes each secret file the definition names (POSTGRES_PASSWORD) \
                     into {dir} (a directory only this user can enter)"
                )),
                None => plan,
            };
            stack::lifecycle_plan(plan, stack, &model, revision, how, |plan| plan)
        }
        ProdAction::Down { volumes } => plan
            .step(stack::down_step(stack, *volumes))
            .note("then removes the stack's secret files"),
        ProdAction::Deploy { stack: name, no_build, .. } => {
            let file = swarm_file(stack, name);
            let plan = match no_build {
                true => {
                    plan.note("--no-build: first checks that every image is in the local store")
                }
                false => plan.step(stack::build_plan(stack, &stack.model()?, revision).step),
            };
            plan.note("first checks that this engine is a swarm manager")
                .step(stack.config_step())
                .note(format!(
                    "writes the swarm definition to {file} (mode 0600), removed after the deploy"
                ))
                .step(stack_deploy(stack, &file, name))
                .note("then waits until every service runs its replicas")
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

/// What a swarm deploy needs changed in the merged compose definition: the keys the swarm
/// loader does not take, which are compose-only details of start order and naming.
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
                // Published ports: swarm's routing mesh publishes on every interface anyway.
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

fn deploy_swarm(
    stack: &Stack,
    revision: &Revision,
    name: &str,
    no_build: bool,
    timeout: Duration,
) -> Result<()> {
    let state = stack::swarm_state(&stack.root)?;
    if state != "active true" {
        bail!(
            "this engine is not a swarm manager (state: {state}): run `docker swarm init`, or deploy from a manager"
        );
    }
    // One read of the definition: the images to build come from it, and it is what deploys.
    let merged = stack::merged_definition(stack)?;
    let model = Model::from_definition(&merged)?;
    if no_build {
        stack::require_images(stack, &model)?;
    } else {
        stack::build(stack, &model, revision)?;
    }
    let definition = for_swarm(merged);
    let file = swarm_file(stack, name);
    let dir = file.parent().expect("the swarm file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    // It holds the interpolated secrets: readable by us only, and removed after the deploy.
    stack::write_mode(&file, serde_json::to_string_pretty(&definition)?.as_bytes(), 0o600)?;
    let deployed = stack_deploy(stack, &file, name).run();
    let _ = std::fs::remove_file(&file);
    deployed.context("docker stack deploy failed")?;
    let services: Vec<(String, u64)> = definition["services"]
        .as_object()
        .map(|s| {
            s.iter()
                .map(|(service, spec)| {
                    (format!("{name}_{service}"), spec["deploy"]["replicas"].as_u64().unwrap_or(1))
                })
                .collect()
        })
        .unwrap_or_default();
    say!("waiting up to {timeout:?} for every replica of stack {name} to be healthy");
    let checks: Vec<(String, Box<dyn Check>)> = services
        .into_iter()
        .map(|(service, replicas)| {
            (
                format!("{service} ({replicas} healthy)"),
                Box::new(SwarmService { service, replicas }) as Box<dyn Check>,
            )
        })
        .collect();
    let options =
        WaitOptions { timeout, max_interval: Duration::from_millis(500), ..WaitOptions::default() };
    wait::until_ready(checks, options)?;
    say!("stack {name} is deployed; remove it with `docker stack rm {name}`");
    Ok(())
}

/// Ready when a swarm service has as many healthy containers as it wants replicas.
struct SwarmService {
    service: String,
    replicas: u64,
}

impl Check for SwarmService {
    fn attempt(&mut self, timeout: Duration) -> Attempt {
        let label = format!("label=com.docker.swarm.service.name={}", self.service);
        let statuses = match wait::docker::docker(
            &["ps", "--filter", &label, "--format", "{{.Status}}"],
            timeout,
        ) {
            Ok(statuses) => statuses,
            Err(e) => return Attempt::NotYet(e),
        };
        let healthy = statuses.lines().filter(|s| s.contains("(healthy)")).count() as u64;
        if healthy >= self.replicas {
            Attempt::Ready
        } else {
            Attempt::NotYet(format!("{healthy} of {} replicas healthy", self.replicas))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn swarm_definition_drops_compose_only_keys() {
        let merged = json!({
            "name": "memories-prod",
            "services": {
                "server": {"depends_on": {"db": {"condition": "service_started"}}, "image": "x", "command": null},
                "proxy": {"ports": [{"host_ip": "0.0.0.0", "target": 8080, "published": "8080"}]},
            },
            "networks": {"default": {"name": "memories-prod_default"}},
            "volumes": {"db-data": {"name": "memories-prod_db-data"}},
        });
        let swarm = for_swarm(merged);
        assert!(swarm.get("name").is_none());
        assert!(swarm["services"]["server"].get("depends_on").is_none());
        assert_eq!(swarm["services"]["server"], json!({"image": "x"}));
        assert_eq!(
            swarm["services"]["proxy"]["ports"][0],
            json!({"target": 8080, "published": 8080})
        );
        assert_eq!(swarm["networks"]["default"], json!({}));
        assert_eq!(swarm["volumes"]["db-data"], json!({}));
    }

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
