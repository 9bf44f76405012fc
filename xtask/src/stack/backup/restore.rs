//! `prod restore`: the db's data put back from a backup, as of its latest, of a point in time
//! or of one backup alone; on compose with the stack's own commands, on a swarm by scaling the
//! writers and the db to 0, running `pgbackrest restore` in a one-off container of the db
//! service's image and mounts, and scaling back.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{COUNT_ROWS, DB, RestoreTarget, Target, WRITERS, query, swarm_db_containers};
use crate::run::docker;
use crate::run::plan::Step;
use crate::stack::{self, Stack};

/// Whether the database's volume (`<project>_db-data`) exists.
pub(super) fn data_volume_exists(stack: &Stack) -> Result<bool> {
    let name = format!("^{}_{DATA_VOLUME}$", stack.project);
    let listed = crate::run::docker::cli(&stack.root)
        .args(["volume", "ls", "--quiet", "--filter", &format!("name={name}")])
        .quiet()
        .read()?;
    Ok(!listed.trim().is_empty())
}

/// The database's volume in the definition.
pub(super) const DATA_VOLUME: &str = "db-data";

/// The steps of a restore, in order, as the plan shows them.
pub(super) fn restore_steps(stack: &Stack, target: &RestoreTarget) -> Vec<Step> {
    let stop = stack.compose().args(["stop", "--timeout", "10"]).args(WRITERS).arg(DB);
    let restore = stack
        .compose()
        .args(["run", "--rm", "--no-deps", "--no-TTY", "--entrypoint", "pgbackrest", DB])
        .args(restore_args(target));
    vec![stop, restore]
}

pub(super) fn restore(
    stack: &Stack,
    target: &RestoreTarget,
    force: bool,
    timeout: Duration,
) -> Result<()> {
    let running = stack::running_services(stack)?;
    if running.iter().any(|s| s == DB) {
        let rows = query(&Target::Compose(stack.clone()), "", COUNT_ROWS).quiet().read()?;
        let rows: u64 = rows.trim().parse().with_context(|| {
            format!("cannot read a row count from `{}`; nothing was changed", rows.trim())
        })?;
        if rows > 0 && !force {
            bail!(
                "database memories of stack {} holds {rows} rows: pass --force to replace them with \
                 {} (nothing was changed)",
                stack.project,
                target.describe()
            );
        }
    } else if !force && data_volume_exists(stack)? {
        bail!(
            "the {DB} service of stack {} is not running but its volume is there, so its rows \
             cannot be counted: start it with `cargo xtask prod up`, or pass --force to replace \
             whatever the volume holds",
            stack.project
        );
    }
    // After `prod down` the secret files are gone; the containers of the restore need them.
    stack::write_secrets(stack, &stack::merged_definition(stack)?)?;
    say!(
        "restoring {} into stack {}; its writers stop meanwhile",
        target.describe(),
        stack.project
    );
    let started = std::time::Instant::now();
    let [stop, restore] = <[Step; 2]>::try_from(restore_steps(stack, target)).expect("two steps");
    stop.run().context("cannot stop the writers and the database; nothing was restored")?;
    restore.run().context(
        "the restore failed and the database is stopped: run the same `cargo xtask prod \
         restore` again with --force, or `cargo xtask prod up` to start what the volume holds",
    )?;
    let db_only = Stack { services: vec![DB.to_owned()], ..stack.clone() };
    stack::up_and_wait(&db_only, &db_only.model()?, timeout)
        .context("the restored database did not become ready")?;
    let restored = Duration::from_secs_f64(started.elapsed().as_secs_f64());
    stack::up_and_wait(stack, &stack.model()?, timeout).context("the stack did not come back")?;
    let rows = query(&Target::Compose(stack.clone()), "", COUNT_ROWS).quiet().read()?;
    say!(
        "restored {} into stack {}: {} rows, the database ready {:.1} s after the writers stopped",
        target.describe(),
        stack.project,
        rows.trim(),
        restored.as_secs_f64()
    );
    Ok(())
}

/// A swarm stack's service, as `docker service inspect` gives it.
pub(super) fn inspect_service(stack: &Stack, service: &str) -> Result<Value> {
    let text = docker::cli(&stack.root)
        .args(["service", "inspect", service])
        .quiet()
        .read()
        .with_context(|| format!("cannot inspect service {service}: is the stack deployed?"))?;
    let list: Value =
        serde_json::from_str(&text).context("docker service inspect printed no JSON")?;
    list.get(0).cloned().with_context(|| format!("docker service inspect lists no {service}"))
}

pub(super) fn replicas(service: &Value) -> u64 {
    service["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(1)
}

/// `docker run` of a one-off container with the db service's image, pgBackRest settings and
/// mounts (data, backups, /tmp), running `pgbackrest ARGS` with no network.
pub(super) fn swarm_oneoff(stack: &Stack, name: &str, db: &Value, args: &[String]) -> Result<Step> {
    let spec = &db["Spec"]["TaskTemplate"]["ContainerSpec"];
    let image = spec["Image"].as_str().context("the db service names no image")?;
    let mut step = docker::cli(&stack.root)
        .args(["run", "--rm", "--name", &format!("{name}_restore"), "--network", "none"])
        .args(["--label", &format!("com.docker.stack.namespace={name}")]);
    for env in spec["Env"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if env.starts_with("PGBACKREST_") {
            step = step.args(["--env", env]);
        }
    }
    for mount in spec["Mounts"].as_array().into_iter().flatten() {
        step = step.args(["--mount", &mount_option(mount)?]);
    }
    Ok(step.args(["--entrypoint", "pgbackrest", image]).args(args))
}

/// One of a service's mounts as `docker run --mount`'s value, with the labels its volume is
/// created with (when a lost volume is created anew, it still belongs to the stack).
pub(super) fn mount_option(mount: &Value) -> Result<String> {
    let field = |key: &str| mount[key].as_str().unwrap_or_default();
    let (kind, source, target) = (field("Type"), field("Source"), field("Target"));
    if [kind, source, target].iter().any(|f| f.contains(',') || f.contains('"')) {
        bail!(
            "the db service's mount {mount} has a comma or quote in it, which `--mount` cannot carry"
        );
    }
    let mut option = format!("type={kind},target={target}");
    if !source.is_empty() {
        option.push_str(&format!(",source={source}"));
    }
    if mount["ReadOnly"].as_bool() == Some(true) {
        option.push_str(",readonly");
    }
    let labels = mount["VolumeOptions"]["Labels"].as_object().into_iter().flatten();
    for (key, value) in labels {
        option.push_str(&format!(",volume-label={key}={}", value.as_str().unwrap_or_default()));
    }
    Ok(option)
}

/// `docker service scale --detach SERVICE=N ...`.
pub(super) fn scale_step(stack: &Stack, scales: &[(String, u64)]) -> Step {
    docker::cli(&stack.root)
        .args(["service", "scale", "--detach"])
        .args(scales.iter().map(|(service, n)| format!("{service}={n}")))
}

/// A restore on a swarm: the writers and the db scaled to 0, `pgbackrest restore` in a
/// one-off container made from the db service, then the db and the writers scaled back.
pub(super) fn restore_swarm(
    stack: &Stack,
    name: &str,
    to: &RestoreTarget,
    force: bool,
    timeout: Duration,
) -> Result<()> {
    crate::stack::swarm::require_manager(stack)?;
    let target = Target::Swarm { stack: stack.clone(), name: name.to_owned() };
    let db_service = format!("{name}_{DB}");
    let db = inspect_service(stack, &db_service)?;
    let mut writers = Vec::new();
    for writer in WRITERS {
        let service = format!("{name}_{writer}");
        writers.push((service.clone(), replicas(&inspect_service(stack, &service)?)));
    }
    match swarm_db_containers(stack, name)?.first() {
        Some(container) => {
            let rows = query(&target, container, COUNT_ROWS).quiet().read()?;
            let rows: u64 = rows.trim().parse().with_context(|| {
                format!("cannot read a row count from `{}`; nothing was changed", rows.trim())
            })?;
            if rows > 0 && !force {
                bail!(
                    "database memories of swarm stack {name} holds {rows} rows: pass --force to \
                     replace them with {} (nothing was changed)",
                    to.describe()
                );
            }
        }
        None if !force => bail!(
            "no running {db_service} task on this engine, so its rows cannot be counted: run \
             this on the node that runs it, or pass --force to replace whatever its volume holds"
        ),
        None => {}
    }
    let restore = swarm_oneoff(stack, name, &db, &restore_args(to))?;
    say!("restoring {} into swarm stack {name}; its writers stop meanwhile", to.describe());
    let started = std::time::Instant::now();
    let stopped: Vec<(String, u64)> =
        writers.iter().map(|(s, _)| (s.clone(), 0)).chain([(db_service.clone(), 0)]).collect();
    scale_step(stack, &stopped)
        .run()
        .context("cannot scale the writers and the database to 0; nothing was restored")?;
    // The volume is the restore's only once the database's container has exited.
    let deadline = std::time::Instant::now() + timeout;
    while !swarm_db_containers(stack, name)?.is_empty() {
        if std::time::Instant::now() > deadline {
            bail!(
                "{db_service}'s container still runs {timeout:?} after it was scaled to 0: \
                 nothing was restored; `docker service scale {db_service}={}` starts it again",
                replicas(&db)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let scale_back = format!(
        "`docker service scale {db_service}={} {}` starts what the volume holds",
        replicas(&db),
        writers.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(" ")
    );
    restore.run().with_context(|| {
        format!(
            "the restore failed and the database is scaled to 0: run the same `cargo xtask prod \
             restore` again with --force, or {scale_back}"
        )
    })?;
    let before = crate::stack::swarm::task_templates(&stack.root, name)?;
    scale_step(stack, &[(db_service.clone(), replicas(&db))]).run()?;
    crate::stack::swarm::wait(&stack.root, name, &[], &before, timeout)
        .context("the restored database did not become ready")?;
    let restored = started.elapsed();
    scale_step(stack, &writers).run()?;
    crate::stack::swarm::wait(&stack.root, name, &[], &before, timeout)
        .context("the writers did not come back")?;
    let container = target.container()?;
    let rows = query(&target, &container, COUNT_ROWS).quiet().read()?;
    say!(
        "restored {} into swarm stack {name}: {} rows, the database ready {:.1} s after the \
         writers stopped",
        to.describe(),
        rows.trim(),
        restored.as_secs_f64()
    );
    Ok(())
}

pub(super) fn restore_args(to: &RestoreTarget) -> Vec<String> {
    [vec!["restore".to_owned(), "--delta".to_owned()], to.args()].concat()
}
