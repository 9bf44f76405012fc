//! `cargo xtask db`: the daily database tasks on the dev stack: a psql shell, a dump to the
//! host, a restore that refuses to mix data, and a reset to an empty database.
//!
//! The database is the service whose readiness is `postgres` in the service model, so no
//! service name, user or database is repeated here. Every command runs inside its container
//! through `docker compose exec`: nothing needs psql or pg_dump on the host, and the versions
//! always match the server's.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use crate::image::version::Revision;
use crate::run::plan::{Plan, ReadOnly, Step, Stream, Streams, Task};
use crate::stack::migrations;
use crate::stack::services::{Model, Readiness};
use crate::stack::{self, Lifecycle, Mode, Stack, Teardown};

/// The first bytes of every dump in PostgreSQL's custom format.
const DUMP_MAGIC: &[u8] = b"PGDMP";

/// The database service of a stack and how to log in to it.
#[derive(Debug, Clone)]
struct Database {
    service: String,
    user: String,
    name: String,
    volumes: Vec<String>,
}

impl Database {
    fn of(model: &Model, project: &str) -> Result<Database> {
        let Some(service) = model.services.iter().find(|s| s.readiness == Readiness::Postgres)
        else {
            bail!("stack {project} has no database (no service labelled memories.probe=postgres)");
        };
        let user = service.env("POSTGRES_USER").unwrap_or("postgres").to_owned();
        let name = service.env("POSTGRES_DB").unwrap_or(&user).to_owned();
        Ok(Database { service: service.name.clone(), user, name, volumes: service.volumes.clone() })
    }
}

/// `cargo xtask db ...`.
/// What `cargo xtask db` does with the dev stack's database.
#[derive(Debug, Clone)]
pub enum DbAction {
    /// A psql shell, with these arguments.
    Psql { args: Vec<String> },
    /// A dump in PostgreSQL's custom format; `<project>-<UTC time>.dump` when `output` is
    /// `None`.
    Dump { output: Option<Utf8PathBuf> },
    /// Restore a dump in one transaction; `clean` replaces what the database holds.
    Restore { file: Utf8PathBuf, clean: bool },
    /// Drop the data volume and start the stack again; `yes` skips the question.
    Reset { yes: bool, timeout: Duration },
    /// Migrate the database to `to` (the newest revision when `None`).
    Migrate { to: Option<String> },
    /// The revision the database is at.
    Current,
    /// Every revision, oldest first (read from the files: no Docker).
    History,
    /// A new revision file after the newest one.
    Revision { message: String },
}

/// `cargo xtask db ...`: the task `action` asks for, on the dev stack's database (`history`
/// and `revision` only read and write the revision files: no stack, no Docker).
pub fn task(root: &Utf8Path, action: DbAction) -> Result<Box<dyn Task + '_>> {
    match action {
        DbAction::History => {
            return Ok(Box::new(ReadOnly { task: "db history", run: |json| history(root, json) }));
        }
        DbAction::Revision { message } => return Ok(Box::new(NewRevision { root, message })),
        _ => {}
    }
    let revision = Revision::read(root)?;
    let project = stack::project_name("memories-dev");
    let stack = Stack::new(root, Mode::Dev, project, &[], stack::tag(&revision));
    let db = Database::of(&stack.all_profiles().model()?, &stack.project)?;
    Ok(Box::new(DbTask { stack, db, revision, action }))
}

/// A `db` subcommand on the dev stack's database.
struct DbTask {
    stack: Stack,
    db: Database,
    revision: Revision,
    action: DbAction,
}

impl Task for DbTask {
    fn plan(&self) -> Result<Plan> {
        match &self.action {
            DbAction::Migrate { to } => {
                migrate_plan(&self.stack, &self.db, &self.revision, to.as_deref())
            }
            action => plan(&self.stack, &self.db, &self.revision, action),
        }
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let DbTask { stack, db, revision, action } = *self;
        if json && matches!(action, DbAction::Psql { .. }) {
            bail!(
                "`db psql` prints psql's own output, which is not JSON: drop --json (with \
                 --dry-run, --json prints the plan)"
            );
        }
        // Before any step: a project named for another kind of stack (a leftover
        // `COMPOSE_PROJECT_NAME`) is refused with nothing done, its containers and volumes
        // untouched.
        stack::require_own_kind(&stack)?;
        execute(&stack, &db, &revision, action, json)
    }
}

fn execute(
    stack: &Stack,
    db: &Database,
    revision: &Revision,
    action: DbAction,
    json: bool,
) -> Result<()> {
    let (said, result) = match action {
        DbAction::Psql { args } => {
            require_running(stack, db)?;
            return psql_step(stack, db, &args).stdout_is_data().run();
        }
        DbAction::Reset { yes, timeout } => return reset(stack, db, revision, yes, timeout),
        DbAction::Migrate { to } => {
            require_running(stack, db)?;
            let step = migrate_step(stack, to.as_deref());
            let text = step.read().context("db migrate failed (its error is above)")?;
            let done: Value = serde_json::from_str(text.trim())
                .with_context(|| format!("`{}` did not print JSON", step.short()))?;
            (migrate_said(&done, stack), done)
        }
        DbAction::Current => {
            require_running(stack, db)?;
            let step = migrations::compose_step(stack, &["current", "--json"]);
            let text = step.read().context("db current failed (its error is above)")?;
            let at: Value = serde_json::from_str(text.trim())
                .with_context(|| format!("`{}` did not print JSON", step.short()))?;
            let said = match (at["revision"].as_str(), at["predates_migrations"].as_bool()) {
                (Some(rev), _) if Some(rev) == at["head"].as_str() => {
                    format!("database {} is at {rev}, the newest revision", db.name)
                }
                (Some(rev), _) => format!(
                    "database {} is at {rev}; the newest is {}: `cargo xtask db migrate`",
                    db.name, at["head"]
                ),
                (None, Some(true)) => format!(
                    "database {} predates migrations: `cargo xtask db migrate` stamps it",
                    db.name
                ),
                (None, _) => {
                    format!("database {} has no schema: `cargo xtask db migrate`", db.name)
                }
            };
            if !json {
                out!("{}", at["revision"].as_str().unwrap_or("none"));
            }
            (said, at)
        }
        DbAction::History | DbAction::Revision { .. } => unreachable!("handled above"),
        DbAction::Dump { output } => {
            require_running(stack, db)?;
            let output = output.unwrap_or_else(|| default_dump_name(&stack.project));
            let bytes = dump(stack, db, &output)?;
            let said = format!(
                "dumped database {} of stack {} to {output} ({bytes} bytes)",
                db.name, stack.project
            );
            (said, json!({"file": output.as_str(), "bytes": bytes}))
        }
        DbAction::Restore { file, clean } => {
            require_running(stack, db)?;
            let rows = restore(stack, db, &file, clean)?;
            let said = format!(
                "restored {file} into database {} of stack {}: {rows} rows",
                db.name, stack.project
            );
            (said, json!({"file": file.as_str(), "rows": rows}))
        }
    };
    say!("{said}");
    if json {
        out!("{result}");
    }
    Ok(())
}

fn exec(stack: &Stack, db: &Database) -> Step {
    stack.compose().args(["exec", "--no-TTY", &db.service])
}

/// `psql` in the database's container, with a terminal when ours is one.
fn psql_step(stack: &Stack, db: &Database, args: &[String]) -> Step {
    let step = stack.compose().arg("exec");
    let step = if std::io::stdin().is_terminal() { step } else { step.arg("--no-TTY") };
    step.args([&db.service, "psql", "--username", &db.user, "--dbname", &db.name])
        .args(args.iter().cloned())
}

fn dump_step(stack: &Stack, db: &Database) -> Step {
    exec(stack, db).args([
        "pg_dump",
        "--username",
        &db.user,
        "--dbname",
        &db.name,
        "--format=custom",
    ])
}

/// `pg_restore` of a dump on its stdin, in one transaction: dropping what the dump recreates
/// (the empty schema a new database starts with), and stopping at the first error.
fn restore_step(stack: &Stack, db: &Database) -> Step {
    exec(stack, db).args([
        "pg_restore",
        "--username",
        &db.user,
        "--dbname",
        &db.name,
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        "--exit-on-error",
    ])
}

fn count_step(stack: &Stack, db: &Database) -> Step {
    exec(stack, db)
        .args(["psql", "--username", &db.user, "--dbname", &db.name])
        .args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet"])
        .args(["--set", "ON_ERROR_STOP=1", "--command", crate::stack::backup::COUNT_ROWS])
}

fn volume_rm_step(stack: &Stack, db: &Database) -> Step {
    crate::run::docker::cli(&stack.root).args(["volume", "rm", "--force"]).args(&db.volumes)
}

fn remove_db_step(stack: &Stack, db: &Database) -> Step {
    stack.compose().args(["rm", "--stop", "--force", &db.service])
}

/// What `db ACTION` would run.
fn plan(stack: &Stack, db: &Database, revision: &Revision, action: &DbAction) -> Result<Plan> {
    let plan = Plan::new(format!("db on project {}", stack.project)).note(format!(
        "first refuses a project whose containers or volumes belong to a stack of another kind \
         than {}",
        stack.mode.name()
    ));
    let plan = match action {
        DbAction::Psql { args } => plan.step(psql_step(stack, db, args)),
        DbAction::Dump { output } => {
            let output = output.clone().unwrap_or_else(|| default_dump_name(&stack.project));
            plan.note(format!("refuses an existing {output}")).step(dump_step(stack, db)).note(
                format!(
                    "its stdout goes to a temporary file beside {output}, renamed to it once \
                     pg_dump succeeded and the file starts as a dump does"
                ),
            )
        }
        DbAction::Restore { file, clean } => {
            let plan = plan.note(format!("checks that {file} is a dump in the custom format"));
            let plan = plan.step(count_step(stack, db));
            let plan = match clean {
                true => plan.note("--clean: the rows there are replaced"),
                false => plan.note("refuses a database that holds rows (--clean replaces them)"),
            };
            plan.step(restore_step(stack, db)).note(format!("with {file} on its stdin"))
        }
        DbAction::Migrate { to } => plan.step(migrate_step(stack, to.as_deref())),
        DbAction::Current => plan.step(migrations::compose_step(stack, &["current", "--json"])),
        DbAction::History | DbAction::Revision { .. } => unreachable!("handled without a stack"),
        DbAction::Reset { yes, timeout } => {
            let plan = match yes {
                true => plan,
                false => plan.note("asks first (refused without --yes when stdin is no terminal)"),
            };
            let plan = plan.step(remove_db_step(stack, db)).step(volume_rm_step(stack, db));
            let model = stack.model()?;
            let how = reset_lifecycle(*timeout);
            stack::lifecycle_plan(plan, stack, &model, revision, how, |plan| plan)
        }
    };
    Ok(plan)
}

fn default_dump_name(project: &str) -> Utf8PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let time = crate::image::version::rfc3339_utc(now as i64).replace(['-', ':'], "");
    Utf8PathBuf::from(format!("{project}-{time}.dump"))
}

fn require_running(stack: &Stack, db: &Database) -> Result<()> {
    if !stack::running_services(stack)?.contains(&db.service) {
        bail!(
            "the {} service of stack {} is not running: start it with `cargo xtask dev up {}`",
            db.service,
            stack.project,
            db.service
        );
    }
    Ok(())
}

/// A file removed when dropped, unless kept.
struct Partial {
    path: Utf8PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Streams `pg_dump` into a temporary file beside `output`, then renames it: `output` appears
/// complete or not at all. Returns its size.
fn dump(stack: &Stack, db: &Database, output: &Utf8Path) -> Result<u64> {
    if output.exists() {
        bail!("{output} exists: choose another --output, or remove it first");
    }
    let name = output.file_name().with_context(|| format!("{output} is not a file name"))?;
    let dir = output.parent().filter(|p| !p.as_str().is_empty()).unwrap_or(Utf8Path::new("."));
    let mut partial =
        Partial { path: dir.join(format!(".{name}.partial-{}", std::process::id())), keep: false };
    let file = std::fs::File::create_new(&partial.path)
        .with_context(|| format!("cannot create {}", partial.path))?;
    let step = dump_step(stack, db);
    let streams = Streams { stdin: Stream::Null, stdout: Stream::Piped, stderr: Stream::Inherit };
    let mut running = step.spawn(streams)?;
    let mut stdout = running.stdout().context("pg_dump has no stdout")?;
    let copier = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut writer = std::io::BufWriter::new(file);
        let bytes = std::io::copy(&mut stdout, &mut writer)?;
        writer.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(bytes)
    });
    let status = running.wait();
    let copied = copier.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let status = status?;
    if !status.success() {
        bail!("`{}` failed with {status}; {output} was not written", step.short());
    }
    let bytes = copied.with_context(|| format!("cannot write {}", partial.path))?;
    require_dump(&partial.path).with_context(|| format!("{output} was not written"))?;
    if let Err(err) = publish_new(&partial.path, output) {
        // The dump is kept where it is, under the name the error gives.
        partial.keep = true;
        return Err(err);
    }
    Ok(bytes)
}

/// Gives the finished file `from` its name `to`, never replacing a file that appeared there
/// meanwhile (a rename would): a hard link fails when `to` exists, then `from` goes.
fn publish_new(from: &Utf8Path, to: &Utf8Path) -> Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            std::fs::remove_file(from).with_context(|| format!("cannot remove {from}"))?;
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{to} appeared while the dump ran and was left as it is; the dump is in {from}: \
             rename it, or dump again with another --output"
        ),
        Err(err) => Err(err).with_context(|| {
            format!("cannot name the dump {to} (it is in {from}: rename it yourself)")
        }),
    }
}

/// Fails unless `file` starts as a dump in the custom format does.
fn require_dump(file: &Utf8Path) -> Result<()> {
    let mut head = [0u8; DUMP_MAGIC.len()];
    let read = std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("cannot read {file}"));
    if read.is_err() || head != DUMP_MAGIC {
        read?;
        bail!(
            "{file} is not a dump in PostgreSQL's custom format (as `cargo xtask db dump` writes)"
        );
    }
    Ok(())
}

fn count_rows(stack: &Stack, db: &Database) -> Result<u64> {
    let text = count_step(stack, db).quiet().timeout(Duration::from_secs(60)).read()?;
    text.trim().parse().with_context(|| format!("cannot read a row count from `{}`", text.trim()))
}

/// Restores `file` (refusing a database with rows unless `clean`); returns the rows after.
fn restore(stack: &Stack, db: &Database, file: &Utf8Path, clean: bool) -> Result<u64> {
    require_dump(file)?;
    let rows = count_rows(stack, db)?;
    if rows > 0 && !clean {
        bail!(
            "database {} of stack {} holds {rows} rows: pass --clean to replace them with the \
             dump, or run `cargo xtask db reset` first",
            db.name,
            stack.project
        );
    }
    let mut input = std::fs::File::open(file).with_context(|| format!("cannot read {file}"))?;
    let step = restore_step(stack, db);
    let streams = Streams { stdin: Stream::Piped, stdout: Stream::Stderr, stderr: Stream::Inherit };
    let mut running = step.spawn(streams)?;
    let mut stdin = running.stdin().context("pg_restore has no stdin")?;
    let feeder = std::thread::spawn(move || -> std::io::Result<u64> {
        let bytes = std::io::copy(&mut input, &mut stdin)?;
        stdin.flush()?;
        Ok(bytes)
    });
    let status = running.wait()?;
    // A broken pipe when pg_restore stopped early says less than its status.
    let _ = feeder.join();
    if !status.success() {
        bail!("`{}` failed with {status}: nothing was restored (one transaction)", step.short());
    }
    count_rows(stack, db)
}

fn reset_lifecycle(timeout: Duration) -> Lifecycle {
    Lifecycle { timeout, build: true, teardown: Teardown::LeaveRunning, release_phase: None }
}

/// Drops the database's volumes and starts the stack again (the services that ran, or all).
fn reset(
    stack: &Stack,
    db: &Database,
    revision: &Revision,
    yes: bool,
    timeout: Duration,
) -> Result<()> {
    let volumes = db.volumes.join(", ");
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "db reset deletes volume {volumes} of stack {} and every row in it: pass --yes \
                 to confirm (stdin is not a terminal to ask)",
                stack.project
            );
        }
        say!("delete volume {volumes} of stack {} and every row in it? type yes:", stack.project);
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).context("cannot read the answer")?;
        if answer.trim() != "yes" {
            bail!("reset cancelled; nothing was changed");
        }
    }
    let mut services = stack::running_services(stack)?;
    remove_db_step(stack, db).run()?;
    if !db.volumes.is_empty() {
        volume_rm_step(stack, db).run()?;
    }
    if !services.is_empty() && !services.contains(&db.service) {
        services.push(db.service.clone());
    }
    let again = Stack { services, ..stack.clone() };
    stack::lifecycle(&again, revision, reset_lifecycle(timeout), |_, _| {
        say!("database {} of stack {} is empty and ready", db.name, stack.project);
        Ok(())
    })
}

/// `python -m memories.migrate upgrade --json [--to REV]` in a one-off server container.
fn migrate_step(stack: &Stack, to: Option<&str>) -> Step {
    let mut args = vec!["upgrade", "--json"];
    if let Some(to) = to {
        args.extend(["--to", to]);
    }
    migrations::compose_step(stack, &args)
}

fn migrate_said(done: &Value, stack: &Stack) -> String {
    let after = done["after"].as_str().unwrap_or("?");
    let stamped = match done["stamped"].as_bool() {
        Some(true) => "recognised a database made before migrations and stamped it; ",
        _ => "",
    };
    match done["before"].as_str() {
        Some(before) if before == after => {
            format!("{stamped}the database of stack {} is at {after}", stack.project)
        }
        before => format!(
            "{stamped}migrated the database of stack {} from {} to {after}",
            stack.project,
            before.unwrap_or("nothing")
        ),
    }
}

/// `db migrate --dry-run`: the plan, and the SQL of the revisions up to `to` from Alembic's
/// offline mode, made by the dev server image with the work tree's package in a container
/// with no network (the SQL needs the app's Python; the image must be built).
fn migrate_plan(
    stack: &Stack,
    db: &Database,
    revision: &Revision,
    to: Option<&str>,
) -> Result<Plan> {
    let image = format!("memories/{}:{}", migrations::SERVER, stack::tag(revision));
    let mut args = vec!["upgrade", "--sql"];
    if let Some(to) = to {
        args.extend(["--to", to]);
    }
    let offline = crate::run::docker::cli(&stack.root)
        .args(["run", "--rm", "--network", "none", "--entrypoint", "python"])
        .args(["--volume".to_owned(), migrations::work_tree_mount(&stack.root), image.clone()])
        .args(["-m", "memories.migrate"])
        .args(args)
        .quiet();
    let plan = plan(stack, db, revision, &DbAction::Migrate { to: to.map(Into::into) })?;
    // The plan needs no engine; the SQL needs the server image, so without it the plan says
    // why instead.
    let sql = offline.read();
    Ok(match sql {
        Ok(sql) => plan
            .note(
                "the SQL of the revisions from the first to the target, as Alembic's offline \
                 mode writes it (a database already at a later revision runs only the rest):",
            )
            .attach("sql", sql.trim_end().to_owned()),
        Err(err) => plan.note(format!(
            "no SQL shown: it is made by the server image {image} (`cargo xtask build server`), \
             which could not run: {err:#}"
        )),
    })
}

/// `db history`: every revision, oldest first, from the files.
fn history(root: &Utf8Path, json: bool) -> Result<()> {
    let revisions = migrations::revisions(&root.join(migrations::VERSIONS_DIR))?;
    if json {
        let all: Vec<Value> = revisions.iter().map(migrations::Revision::to_json).collect();
        out!("{:#}", Value::from(all));
        return Ok(());
    }
    for r in &revisions {
        out!("{}  {}  {}", r.revision, r.down_revision.as_deref().unwrap_or("-   "), r.message);
    }
    Ok(())
}

/// `db revision MESSAGE`: a new revision file from the template.
struct NewRevision<'a> {
    root: &'a Utf8Path,
    message: String,
}

impl Task for NewRevision<'_> {
    fn plan(&self) -> Result<Plan> {
        let revisions = migrations::revisions(&self.root.join(migrations::VERSIONS_DIR))?;
        let head = revisions.last().map_or("nothing", |r| r.revision.as_str());
        Ok(Plan::new("db revision").note(format!(
            "writes a new revision after {head} in {}, from the template",
            migrations::VERSIONS_DIR
        )))
    }

    fn execute(self: Box<Self>, json: bool) -> Result<()> {
        let root = self.root;
        let path = migrations::new_revision(root, &self.message)?;
        let relative = path.strip_prefix(root).unwrap_or(&path);
        say!("wrote {relative}: fill in upgrade() and downgrade(), then `cargo xtask db migrate`");
        if json {
            out!("{}", json!({"file": relative.as_str()}));
        } else {
            out!("{relative}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_never_replaces_a_file_that_appeared_meanwhile() {
        let dir = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("db-publish-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (partial, output) = (dir.join(".out.partial"), dir.join("out.dump"));
        std::fs::write(&partial, "the dump").unwrap();
        std::fs::write(&output, "someone else's").unwrap();
        let err = publish_new(&partial, &output).unwrap_err().to_string();
        assert!(
            err.contains("appeared while the dump ran") && err.contains(".out.partial"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "someone else's");
        assert_eq!(std::fs::read_to_string(&partial).unwrap(), "the dump", "the dump is kept");

        std::fs::remove_file(&output).unwrap();
        publish_new(&partial, &output).unwrap();
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "the dump");
        assert!(!partial.exists(), "the partial name goes");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
