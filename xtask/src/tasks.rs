//! The stack tasks: `dev`, `test`, `prod` and `run`, each a thin use of the one lifecycle in
//! [`crate::stack`].

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::cli::{DevAction, DevArgs, DevUpCommand, ProdAction, ProdArgs, RunArgs, TestArgs};
use crate::docker;
use crate::interrupt::{self, Interrupted};
use crate::plan::{Plan, Step};
use crate::reap::{self, RunId};
use crate::services::Model;
use crate::stack::{self, Lifecycle, Mode, Profile, Stack, Teardown};
use crate::version::Revision;
use crate::wait::{self, Attempt, Check, Probe, WaitOptions};
use crate::watch::{self, WatchOptions};

/// `cargo xtask dev ...`.
pub fn dev(root: &Utf8Path, args: DevArgs) -> Result<()> {
    let revision = Revision::read(root)?;
    let project = stack::project_name("memories-dev");
    let action =
        args.action.unwrap_or(DevAction::Up(DevUpCommand { up: args.up, services: Vec::new() }));
    let profiles = match &action {
        DevAction::Up(up) => up.up.profile.clone(),
        _ => Vec::new(),
    };
    let mut stack = Stack::new(root, Mode::Dev, project, &profiles, stack::tag(&revision));
    if let DevAction::Up(up) = &action {
        stack.services = up.services.clone();
    }
    if args.preview.json && !args.preview.dry_run {
        refuse_json(&action)?;
    }
    if args.preview.dry_run {
        dev_plan(&stack, &revision, &action)?.print(args.preview.json);
        return Ok(());
    }
    match action {
        DevAction::Up(up) => dev_up(&stack, &revision, &up, args.preview.json),
        DevAction::Down { volumes } => stack::down(&stack, volumes),
        DevAction::Logs { service, follow } => {
            if let Some(service) = &service {
                stack.all_profiles().model()?.require(service)?;
            }
            logs_step(&stack, service.as_deref(), follow).stdout_is_data().run()
        }
        DevAction::Ps => ps_step(&stack, args.preview.json).stdout_is_data().run(),
        DevAction::Exec { service, command } => {
            stack.all_profiles().model()?.require(&service)?;
            exec_step(&stack, &service, &command).stdout_is_data().run()
        }
        DevAction::Restart { service } => {
            let model = stack.all_profiles().model()?;
            model.require(&service)?;
            stack.compose_all_profiles().args(["restart", &service]).run()?;
            let running = running_services(&stack, &model);
            let probes = stack.probes(&running, &|_, port| port.published);
            let checks = wait::checks(&probes.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
            wait::until_ready(
                checks,
                WaitOptions { timeout: Duration::from_secs(120), ..WaitOptions::default() },
            )?;
            if args.preview.json {
                print_endpoints(&stack, &probes, true);
            }
            Ok(())
        }
    }
}

/// `--json` where a subcommand's output is a stream of its own (logs, a command's output):
/// refused rather than ignored.
fn refuse_json(action: &DevAction) -> Result<()> {
    let name = match action {
        DevAction::Logs { .. } => "logs",
        DevAction::Exec { .. } => "exec",
        _ => return Ok(()),
    };
    bail!(
        "`dev {name}` prints the service's own output, which is not JSON: drop --json (with \
         --dry-run, --json prints the plan)"
    )
}

fn logs_step(stack: &Stack, service: Option<&str>, follow: bool) -> Step {
    let step = stack.compose_all_profiles().arg("logs");
    let step = if follow { step.arg("--follow") } else { step };
    step.args(service)
}

fn ps_step(stack: &Stack, json: bool) -> Step {
    let step = stack.compose_all_profiles().args(["ps", "--all"]);
    if json { step.args(["--format", "json"]) } else { step }
}

/// `compose exec`, without a TTY when our stdin is not a terminal (a pipe, CI, a plan).
fn exec_step(stack: &Stack, service: &str, command: &[String]) -> Step {
    let step = stack.compose_all_profiles().arg("exec");
    let step = if std::io::stdin().is_terminal() { step } else { step.arg("-T") };
    step.arg(service).args(command.iter().cloned())
}

/// The lifecycle of `dev up` and `prod up`: a stack left running.
fn long_lived(timeout: Duration, no_build: bool) -> Lifecycle {
    Lifecycle { timeout, build: !no_build, teardown: Teardown::LeaveRunning }
}

/// What `dev ACTION` would run.
fn dev_plan(stack: &Stack, revision: &Revision, action: &DevAction) -> Result<Plan> {
    let plan = Plan::new(format!("dev on project {}", stack.project));
    let plan = match action {
        DevAction::Up(DevUpCommand { up, .. }) => {
            let model = stack.model()?;
            let how = long_lived(up.timeout, up.no_build);
            stack::lifecycle_plan(plan, stack, &model, revision, how, |plan| {
                if up.attach {
                    return plan
                        .step(stack.compose().args(["logs", "--follow", "--since", "1s"]))
                        .note("Ctrl-C then stops the stack (its data is kept)");
                }
                if !up.watch {
                    return plan;
                }
                watch::watched(&model).into_iter().fold(
                    plan.note("then watches the working tree until Ctrl-C, by these rules:"),
                    |plan, service| {
                        service.watch.iter().fold(plan, |plan, rule| {
                            plan.note(format!("{}: {}", service.name, rule.describe(&stack.root)))
                        })
                    },
                )
            })
        }
        DevAction::Down { volumes } => plan.step(stack::down_step(stack, *volumes)),
        DevAction::Logs { service, follow } => {
            plan.step(logs_step(stack, service.as_deref(), *follow))
        }
        DevAction::Ps => plan.step(ps_step(stack, false)),
        DevAction::Exec { service, command } => plan.step(exec_step(stack, service, command)),
        DevAction::Restart { service } => {
            let model = stack.all_profiles().model()?;
            plan.step(stack.compose_all_profiles().args(["restart", service]))
                .note("then waits for those of these services that run:")
                .wait_for(stack::planned_waits(stack, &model))
        }
    };
    Ok(plan)
}

fn dev_up(stack: &Stack, revision: &Revision, up: &DevUpCommand, json: bool) -> Result<()> {
    let up = &up.up;
    let how = long_lived(up.timeout, up.no_build);
    stack::lifecycle(stack, revision, how, |model, probes| {
        // With --json and --watch, stdout is a stream of events, the endpoints the first.
        if !(json && up.watch) {
            print_endpoints(stack, probes, json);
        }
        say!(
            "the dev stack {} is ready; stop it with `cargo xtask dev down` (data is kept)",
            stack.project
        );
        if up.watch {
            let options = WatchOptions { timeout: up.timeout, json };
            return watch::watch(stack, model, revision, &options);
        }
        if !up.attach {
            return Ok(());
        }
        let followed =
            stack.compose().args(["logs", "--follow", "--since", "1s"]).stdout_is_data().run();
        if interrupt::is_set() {
            // The lifecycle stops the stack (a failed task), keeping its data.
            return Err(Interrupted.into());
        }
        followed
    })
}

/// The services of `model` that run now, so that a restart waits for what is there.
fn running_services(stack: &Stack, model: &Model) -> Model {
    let services = stack::running_services(stack).unwrap_or_default();
    model.only(&services.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Prints where each service answers, on stdout: one line each, or one JSON document.
fn print_endpoints(stack: &Stack, probes: &[(String, Probe)], json: bool) {
    if json {
        let services: serde_json::Map<String, Value> = probes
            .iter()
            .map(|(service, probe)| (service.clone(), Value::from(probe.to_string())))
            .collect();
        out!("{}", serde_json::json!({"project": stack.project, "services": services}));
        return;
    }
    for (service, probe) in probes {
        match probe {
            Probe::Http { host, port, .. } => out!("{service:<8} http://{host}:{port}"),
            Probe::Redis { host, port, .. } => out!("{service:<8} redis://{host}:{port}"),
            Probe::Postgres { host, port, user, database, .. } => out!(
                "{service:<8} postgresql://{user}@{host}:{port}/{database} (password in compose/{}.env)",
                stack.mode.name()
            ),
            _ => out!("{service:<8} {probe}"),
        }
    }
}

fn test_stack(root: &Utf8Path, args: &TestArgs, revision: &Revision) -> Stack {
    let project = args.project.clone().unwrap_or_else(|| stack::unique_project("memories-test"));
    Stack::new(root, Mode::Test, project, &[Profile::Cache], stack::tag(revision))
}

/// The `cargo test` of the unit, repository and Docker-backed tests.
fn workspace_tests(root: &Utf8Path, cargo: &str, args: &TestArgs) -> Step {
    Step::new(cargo, root)
        .args(["test", "--workspace"])
        .args(args.tests.iter().flat_map(|filter| ["--", filter.as_str()]))
}

/// The `cargo test` of the end-to-end suite.
fn e2e_tests(root: &Utf8Path, cargo: &str, args: &TestArgs) -> Step {
    Step::new(cargo, root)
        .args(["test", "--package", "tests", "--test", "e2e", "--"])
        .args(args.filter.iter().cloned())
}

/// The lifecycle of the end-to-end suite's stack.
fn test_lifecycle(args: &TestArgs) -> Lifecycle {
    let teardown = if args.keep { Teardown::Keep } else { Teardown::Always };
    Lifecycle { timeout: args.timeout, build: true, teardown }
}

/// What `cargo xtask test` would run.
fn test_plan(root: &Utf8Path, args: &TestArgs, cargo: &str) -> Result<Plan> {
    let revision = Revision::read(root)?;
    let stack = test_stack(root, args, &revision);
    let model = stack.model()?;
    let mut plan = Plan::new(format!("test on project {}", stack.project))
        .note("first removes what test runs whose process is gone left (`cargo xtask reap`)");
    if !args.e2e_only {
        plan = plan.step(workspace_tests(root, cargo, args));
    }
    let e2e = e2e_tests(root, cargo, args).env("MEMORIES_URL", "http://127.0.0.1:<server port>");
    Ok(stack::lifecycle_plan(plan, &stack, &model, &revision, test_lifecycle(args), |plan| {
        plan.step(e2e)
    }))
}

/// `cargo xtask test`.
pub fn test(root: &Utf8Path, args: &TestArgs) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if args.preview.dry_run {
        test_plan(root, args, &cargo)?.print(args.preview.json);
        return Ok(());
    }
    if let Some(project) = &args.project {
        // The test stack is torn down with its volumes: it must be one this run creates.
        if stack::exists(project)? {
            bail!(
                "project {project} already exists (containers, volumes or networks carry its \
                 label), and `test` removes the volumes of its stack: name a new project, or \
                 drop --project"
            );
        }
    }
    // This run's id labels what it and its tests create; whatever a signal or a failure
    // leaves of it is removed at the end, and what dead runs left is removed first.
    reap::as_run(root, |run| {
        test_run(root, args, &cargo, run)?;
        if args.preview.json {
            out!("{}", serde_json::json!({"run": run.to_string(), "passed": true}));
        }
        Ok(())
    })
}

fn test_run(root: &Utf8Path, args: &TestArgs, cargo: &str, run: RunId) -> Result<()> {
    if !args.e2e_only {
        workspace_tests(root, cargo, args)
            .env(reap::ENV, &run.to_string())
            .run()
            .context("the unit, repository and Docker-backed tests failed")?;
    }
    let revision = Revision::read(root)?;
    let mut stack = test_stack(root, args, &revision);
    // A kept stack outlives the run, so it must not carry its label (the next run would reap
    // it).
    stack.run = if args.keep { None } else { Some(run) };
    say!("end-to-end tests on stack {}", stack.project);
    stack::lifecycle(&stack, &revision, test_lifecycle(args), |_, probes| {
        let url = probes
            .iter()
            .find_map(|(service, probe)| match (service.as_str(), probe) {
                ("server", Probe::Http { host, port, .. }) => Some(format!("http://{host}:{port}")),
                _ => None,
            })
            .context("the test stack publishes no server port")?;
        e2e_tests(root, cargo, args)
            .env("MEMORIES_URL", &url)
            .env("MEMORIES_PROJECT", &stack.project)
            .env(reap::ENV, &run.to_string())
            .run()
            .context("the end-to-end tests failed")
    })
}

/// `cargo xtask prod ...`.
pub fn prod(root: &Utf8Path, args: ProdArgs) -> Result<()> {
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
            stack::lifecycle(&stack, &revision, long_lived(timeout, no_build), |_, probes| {
                print_endpoints(&stack, probes, args.preview.json);
                say!(
                    "the prod stack {} is ready; stop it with `cargo xtask prod down`",
                    stack.project
                );
                Ok(())
            })
        }
        ProdAction::Down { volumes } => stack::down(&stack, volumes),
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
            stack::lifecycle_plan(plan, stack, &model, revision, how, |plan| plan)
        }
        ProdAction::Down { volumes } => plan.step(stack::down_step(stack, *volumes)),
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
    write_private(&file, &serde_json::to_string_pretty(&definition)?)?;
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

#[cfg(unix)]
fn write_private(path: &Utf8Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {path}"))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {path}"))
}

/// `cargo xtask run`.
pub fn run(root: &Utf8Path, args: &RunArgs) -> Result<()> {
    let revision = Revision::read(root)?;
    let project = format!("memories-run-{}", args.port);
    let mut stack = Stack::new(root, Mode::Run, project, &[], stack::tag(&revision));
    stack.vars = vec![
        ("RUN_PORT".into(), args.port.to_string()),
        ("RUN_VOLUME".into(), args.volume.clone()),
    ];
    // Created here rather than by compose, so that it outlives the stack and can carry a test
    // run's label; an existing volume (data from an earlier run) is left as it is.
    let volume =
        docker::cli(root).args(["volume", "create"]).args(reap::label_args()).arg(&args.volume);
    let logs = stack.compose().args(["logs", "--follow", "--since", "1s"]);
    let how = Lifecycle {
        timeout: Duration::from_secs(60),
        build: !args.no_build,
        teardown: Teardown::Stop,
    };
    if args.preview.dry_run {
        let model = stack.model()?;
        let plan = Plan::new("run the standalone image").step(volume);
        stack::lifecycle_plan(plan, &stack, &model, &revision, how, |plan| {
            plan.step(logs).note("until Ctrl-C")
        })
        .print(args.preview.json);
        return Ok(());
    }
    docker::require_cli()?;
    volume.quiet().read().with_context(|| format!("cannot create volume {}", args.volume))?;
    let url = format!("http://127.0.0.1:{}", args.port);
    stack::lifecycle(&stack, &revision, how, |_, _| {
        if args.preview.json {
            out!(
                "{}",
                serde_json::json!({"url": url, "project": stack.project, "volume": args.volume})
            );
        } else {
            out!("{url}");
        }
        say!("memories is ready (data in volume {}); Ctrl-C stops it", args.volume);
        let followed = logs.stdout_is_data().run();
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        followed
    })
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
