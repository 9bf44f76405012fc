//! The release phase of a swarm deploy: the stanza of the db's backups, and the schema
//! migrations run as a one-off swarm job of the new server image before any server changes.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

use super::deploy_and_wait;
use crate::run::docker;
use crate::stack::Stack;
use crate::stack::backup;
use crate::stack::migrations;
use crate::stack::swarm;

/// The release phase of a swarm deploy, before any server is replaced: the database alone
/// (deployed as the full deploy will, so an unchanged one is left running; created on a first
/// deploy), then the new server image's migrations as a one-off job on the stack's network
/// with the server's settings and secrets. A failed migration ends the deploy there: the
/// database is as it was (one transaction) and no server changed.
pub(super) fn release_phase(
    stack: &Stack,
    name: &str,
    deployment: &swarm::Deployment,
    source: &swarm::Source,
    timeout: Duration,
) -> Result<()> {
    let mut db_only = deployment.definition.clone();
    if let Some(services) = db_only["services"].as_object_mut() {
        services.retain(|service, _| service == DB_SERVICE);
    }
    say!(
        "release phase: deploying {DB_SERVICE} first, then migrating it with the new server image"
    );
    swarm::create_secrets(&stack.root, name, &deployment.secrets)?;
    let failed = "docker stack deploy of the database failed";
    deploy_and_wait(stack, name, &db_only, source, false, failed, timeout)?;
    create_stanza(stack, name, deployment)?;
    migration_job(stack, name, deployment, source, timeout)
}

/// Where the database archives its WAL with pgBackRest, its stanza must exist for archiving to
/// succeed (until then every segment waits in `pg_wal`): created in the running db task's
/// container, which is on this node (the manager, where the db is placed).
pub(super) fn create_stanza(
    stack: &Stack,
    name: &str,
    deployment: &swarm::Deployment,
) -> Result<()> {
    let db = &deployment.definition["services"][DB_SERVICE];
    if db["environment"]["PGBACKREST_STANZA"].is_null() {
        return Ok(());
    }
    backup::create_swarm_stanza(stack, name)
        .context("cannot create pgBackRest's stanza for the WAL archive")
}

/// The database service, the one the release phase deploys first.
pub(super) const DB_SERVICE: &str = "db";

/// Runs `python -m memories.migrate upgrade` as a swarm job (`replicated-job`, never
/// restarted) named `<stack>_migrate`, prints its output, and removes it whatever happened.
pub(super) fn migration_job(
    stack: &Stack,
    name: &str,
    deployment: &swarm::Deployment,
    source: &swarm::Source,
    timeout: Duration,
) -> Result<()> {
    let spec = &deployment.definition["services"][migrations::SERVER];
    let image = spec["image"].as_str().context("the server service has no image")?;
    let job = format!("{name}_migrate");
    let root = &stack.root;
    // A job left by a deploy that was killed.
    let _ = docker::cli(root).args(["service", "rm", &job]).quiet().capture_regardless();
    let mut create = docker::cli(root).args(["service", "create", "--detach", "--quiet"]).args([
        "--name",
        &job,
        "--mode",
        "replicated-job",
        "--restart-condition",
        "none",
        "--network",
        &format!("{name}_default"),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--mount",
        "type=tmpfs,destination=/tmp",
        "--label",
        &format!("com.docker.stack.namespace={name}"),
    ]);
    for labels in [&spec["labels"], &spec["deploy"]["labels"]] {
        for (key, value) in labels.as_object().into_iter().flatten() {
            let label = format!("{key}={}", value.as_str().unwrap_or_default());
            create = create.args(["--label", &label, "--container-label", &label]);
        }
    }
    for (key, value) in spec["environment"].as_object().into_iter().flatten() {
        if let Some(value) = value.as_str() {
            create = create.args(["--env".to_owned(), format!("{key}={value}")]);
        }
    }
    for secret in spec["secrets"].as_array().into_iter().flatten() {
        let key = secret["source"].as_str().context("a server secret without a source")?;
        let external = deployment.definition["secrets"][key]["name"].as_str().unwrap_or(key);
        let target = secret["target"].as_str().unwrap_or(key);
        create = create.args(["--secret".to_owned(), format!("source={external},target={target}")]);
    }
    if !matches!(source, swarm::Source::Local { .. }) {
        create = create.arg("--with-registry-auth");
    }
    let create =
        create.args(["--entrypoint", "python", image]).args(["-m", "memories.migrate", "upgrade"]);
    let result = (|| -> Result<()> {
        create.run().context("cannot start the migration job")?;
        let state = wait_for_job(root, &job, timeout)?;
        let logs = docker::cli(root).args(["service", "logs", "--raw", &job]).quiet().capture()?;
        for line in logs.stdout.lines().chain(logs.stderr.lines()) {
            say!("{line}");
        }
        if state != "complete" {
            bail!(
                "the release phase's migration failed ({state}): no server was replaced, and the \
                 database is as it was (one transaction)"
            );
        }
        Ok(())
    })();
    let removed = docker::cli(root).args(["service", "rm", &job]).quiet().run_regardless();
    result.and(removed)
}

/// Waits until the job's task has ended; returns its state (`complete`, `failed`, ...).
pub(super) fn wait_for_job(root: &Utf8Path, job: &str, timeout: Duration) -> Result<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let states = docker::cli(root)
            .args(["service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", job])
            .quiet()
            .read()?;
        let first = states.lines().next().unwrap_or("").to_ascii_lowercase();
        let (state, error) = first.split_once('|').unwrap_or((&first, ""));
        let word = state.split_whitespace().next().unwrap_or("");
        if ["complete", "failed", "rejected", "shutdown", "orphaned"].contains(&word) {
            return Ok(if error.is_empty() { word.to_owned() } else { format!("{word}: {error}") });
        }
        if std::time::Instant::now() > deadline {
            bail!("the migration job {job} did not end within {timeout:?} (its state: {state})");
        }
        std::thread::sleep(Duration::from_millis(250));
        if crate::run::interrupt::is_set() {
            return Err(crate::run::interrupt::Interrupted.into());
        }
    }
}
