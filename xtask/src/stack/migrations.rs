//! The schema's versions, seen from xtask: the Alembic revisions in the app's source (read here
//! without Python, for `db history` and `db revision`), and the release phase that migrates a
//! prod database with the new server image before any server is replaced.
//!
//! The migrations themselves run in the server image (`python -m memories.migrate`, see
//! `app/src/memories/migrate.py`): one transaction, under an advisory lock, so a failing
//! revision changes nothing and two deploys never migrate at once.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use crate::run::plan::{Plan, Step};
use crate::stack::services::{Model, Readiness};
use crate::stack::{self, Mode, ReleasePhase, Stack};

/// Where the revisions live, from the repository root.
pub const VERSIONS_DIR: &str = "app/src/memories/migrations/versions";

/// The service whose image carries the migrations.
pub const SERVER: &str = "server";

/// The migration runner in the server image, as entrypoint and its first arguments.
const ENTRYPOINT: &str = "python";
const RUNNER: [&str; 2] = ["-m", "memories.migrate"];

/// One revision file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub revision: String,
    pub down_revision: Option<String>,
    /// The first paragraph of its docstring.
    pub message: String,
    pub file: String,
}

impl Revision {
    pub fn to_json(&self) -> Value {
        json!({
            "revision": self.revision,
            "down_revision": self.down_revision,
            "message": self.message,
            "file": self.file,
        })
    }
}

/// The value of `name = "..."` (or `None`) at the start of a line of a revision file.
fn assignment(text: &str, name: &str) -> Option<Option<String>> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.trim_start().strip_prefix('=')?.trim();
        if value == "None" {
            return Some(None);
        }
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let inner = value[1..].split(quote).next()?;
        Some(Some(inner.to_owned()))
    })
}

/// The first paragraph of a module docstring, on one line.
fn docstring(text: &str) -> String {
    let body = text.trim_start();
    let Some(rest) = body.strip_prefix("\"\"\"") else { return String::new() };
    let doc = rest.split("\"\"\"").next().unwrap_or("");
    let first = doc.split("\n\n").next().unwrap_or("");
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every revision in `dir`, oldest first; fails unless they form one line from the baseline.
pub fn revisions(dir: &Utf8Path) -> Result<Vec<Revision>> {
    let mut found = Vec::new();
    let entries = dir.read_dir_utf8().with_context(|| format!("cannot read {dir}"))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {dir}"))?;
        let name = entry.file_name();
        if !name.ends_with(".py") || name.starts_with('_') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .with_context(|| format!("cannot read {}", entry.path()))?;
        let Some(Some(revision)) = assignment(&text, "revision") else {
            bail!("{}: no `revision = \"...\"` line", entry.path());
        };
        let down_revision = assignment(&text, "down_revision").flatten();
        found.push(Revision {
            revision,
            down_revision,
            message: docstring(&text),
            file: name.into(),
        });
    }
    order(found)
}

/// The revisions as one line, oldest first.
fn order(mut found: Vec<Revision>) -> Result<Vec<Revision>> {
    let mut ordered: Vec<Revision> = Vec::new();
    let mut parent: Option<String> = None;
    loop {
        let children: Vec<usize> =
            (0..found.len()).filter(|&i| found[i].down_revision == parent).collect();
        match children.as_slice() {
            [] => break,
            [one] => {
                let next = found.remove(*one);
                parent = Some(next.revision.clone());
                ordered.push(next);
            }
            many => {
                let mut names: Vec<&str> =
                    many.iter().map(|&i| found[i].revision.as_str()).collect();
                names.sort_unstable();
                bail!(
                    "revisions {} all follow {}: the history must be one line; point one of \
                     them at the other",
                    names.join(", "),
                    parent.as_deref().unwrap_or("nothing")
                );
            }
        }
    }
    if !found.is_empty() {
        let stray: Vec<&str> = found.iter().map(|r| r.revision.as_str()).collect();
        bail!("revisions {} are not reachable from the baseline", stray.join(", "));
    }
    Ok(ordered)
}

/// A file name's part made from a message: lowercase words joined by `_`, at most 40 bytes.
fn slug(message: &str) -> String {
    let words: Vec<String> = message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let mut slug = String::new();
    for word in words {
        if slug.len() + word.len() + 1 > 40 {
            break;
        }
        if !slug.is_empty() {
            slug.push('_');
        }
        slug.push_str(&word);
    }
    slug
}

/// The text of a new revision after `head`.
fn revision_text(id: &str, head: Option<&str>, message: &str) -> String {
    let down = head.map_or_else(|| "None".to_owned(), |h| format!("\"{h}\""));
    format!(
        r#""""{message}

Revision ID: {id}
Revises: {revises}

Runs in one transaction with every other revision of the deploy: a failure changes nothing.
Keep the running release working (expand first, contract in a later release): see docs/db.md,
"Changing the schema".
"""

from alembic import op

revision = "{id}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT 1")  # Replace with this revision's change.


def downgrade() -> None:
    op.execute("SELECT 1")  # Replace with what undoes upgrade().
"#,
        revises = head.unwrap_or(""),
    )
}

/// Writes a new revision after the newest one; returns its path. Its id is the next number
/// (`0002` after `0001`), so two branches that each add one collide by name in review.
pub fn new_revision(root: &Utf8Path, message: &str) -> Result<Utf8PathBuf> {
    let message = message.trim();
    if message.is_empty() || message.contains('"') || message.contains('\n') {
        bail!(
            "the revision message must be one line without double quotes, e.g. \"add a tags column\""
        );
    }
    let dir = root.join(VERSIONS_DIR);
    let existing = revisions(&dir)?;
    let head = existing.last().map(|r| r.revision.as_str());
    let number = existing.iter().filter_map(|r| r.revision.parse::<u32>().ok()).max().unwrap_or(0);
    let id = format!("{:04}", number + 1);
    let slug = slug(message);
    if slug.is_empty() {
        bail!("the revision message needs a word in ASCII letters or digits for the file name");
    }
    let path = dir.join(format!("{id}_{slug}.py"));
    let text = revision_text(&id, head, message);
    let mut file =
        std::fs::File::create_new(&path).with_context(|| format!("cannot create {path}"))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("cannot write {path}"))?;
    Ok(path)
}

/// Where the server image installs the app's package (as `compose/dev.yaml`'s watch rule
/// names it).
const INSTALLED_PACKAGE: &str = "/opt/venv/lib/python3.13/site-packages/memories";

/// `python -m memories.migrate ARGS` as a one-off container of the stack's server service:
/// its image, settings, secrets and network, and no other service started. On the dev stack
/// the work tree's package is mounted over the image's, so a revision just written runs
/// without a rebuild.
pub fn compose_step(stack: &Stack, args: &[&str]) -> Step {
    let step = stack.compose().args(["run", "--rm", "--no-deps", "--no-TTY"]);
    let step = match stack.mode {
        Mode::Dev => step.args(["--volume".to_owned(), work_tree_mount(&stack.root)]),
        _ => step,
    };
    step.args(["--entrypoint", ENTRYPOINT, SERVER]).args(RUNNER).args(args.iter().copied())
}

/// A `--volume` value that mounts the work tree's package over the server image's.
pub fn work_tree_mount(root: &Utf8Path) -> String {
    format!("{}:{INSTALLED_PACKAGE}:ro", root.join("app/src/memories"))
}

/// The database service of a stack.
fn database(model: &Model) -> Result<String> {
    let db = model.services.iter().find(|s| s.readiness == Readiness::Postgres);
    Ok(db.context("the stack has no database service (memories.probe=postgres)")?.name.clone())
}

/// The release phase of a compose stack: start its database alone (or keep it running), wait
/// until it is ready, then migrate it with the new server image as a one-off container. Runs
/// before any server is created or replaced; a failed migration ends the task there.
/// Prod's release phase, for [`crate::stack::Lifecycle`].
pub const RELEASE_PHASE: ReleasePhase = ReleasePhase { run: release_phase, plan: release_plan };

pub fn release_phase(stack: &Stack, model: &Model, timeout: Duration) -> Result<()> {
    let db = database(model)?;
    let alone = Stack { services: vec![db.clone()], ..stack.clone() };
    let db_model = alone.model()?;
    say!("release phase: starting {db} alone, then migrating it with the new server image");
    stack::up_and_wait(&alone, &db_model, timeout)?;
    // Where the database archives its WAL with pgBackRest (prod), its stanza must exist for
    // archiving to succeed: created once, before anything writes.
    if db_model.services.iter().any(|s| s.name == db && s.env("PGBACKREST_STANZA").is_some()) {
        crate::stack::backup::ensure_compose_stanza(stack)
            .context("cannot create pgBackRest's stanza for the WAL archive")?;
    }
    compose_step(stack, &["upgrade"]).run().map_err(|err| {
        err.context(
            "the release phase's migration failed: no server was created or replaced, and the \
             database is as it was (one transaction)",
        )
    })
}

/// The release phase as a plan shows it.
pub fn release_plan(plan: Plan, stack: &Stack, model: &Model) -> Plan {
    let db = database(model).unwrap_or_else(|_| "db".into());
    let alone = Stack { services: vec![db.clone()], ..stack.clone() };
    plan.note(format!("release phase: starts {db} alone and waits until it is ready:"))
        .step(stack::up_step(&alone))
        .note("then migrates it with the new server image, before any server is replaced:")
        .step(compose_step(stack, &["upgrade"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(id: &str, down: Option<&str>) -> Revision {
        Revision {
            revision: id.into(),
            down_revision: down.map(Into::into),
            message: String::new(),
            file: format!("{id}.py"),
        }
    }

    #[test]
    fn a_revision_file_is_read_without_python() {
        let text = "\"\"\"Add a tags\n column.\n\nRevision ID: 0002\n\"\"\"\n\nrevision = \"0002\"\n\
                    down_revision = '0001'\n";
        assert_eq!(assignment(text, "revision"), Some(Some("0002".into())));
        assert_eq!(assignment(text, "down_revision"), Some(Some("0001".into())));
        assert_eq!(assignment("down_revision = None\n", "down_revision"), Some(None));
        assert_eq!(docstring(text), "Add a tags column.");
    }

    #[test]
    fn revisions_form_one_line_from_the_baseline() {
        let line = order(vec![revision("0002", Some("0001")), revision("0001", None)]).unwrap();
        let ids: Vec<&str> = line.iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(ids, ["0001", "0002"]);
        let fork = vec![
            revision("0001", None),
            revision("0002", Some("0001")),
            revision("0003", Some("0001")),
        ];
        let err = order(fork).unwrap_err().to_string();
        assert!(err.contains("revisions 0002, 0003 all follow 0001"), "{err}");
        let stray = order(vec![revision("0001", None), revision("0009", Some("0005"))]);
        assert!(stray.unwrap_err().to_string().contains("0009 are not reachable"));
    }

    #[test]
    fn a_new_revision_follows_the_head_and_is_found_again() {
        let root = Utf8PathBuf::from(std::env::temp_dir().to_str().unwrap())
            .join(format!("xtask-revisions-{}", std::process::id()));
        let dir = root.join(VERSIONS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("0001_baseline.py"),
            "\"\"\"Baseline.\"\"\"\nrevision = \"0001\"\ndown_revision = None\n",
        )
        .unwrap();
        let path = new_revision(&root, "Add a tags column (nullable)").unwrap();
        assert_eq!(path.file_name(), Some("0002_add_a_tags_column_nullable.py"));
        let line = revisions(&dir).unwrap();
        assert_eq!(line[1].revision, "0002");
        assert_eq!(line[1].down_revision.as_deref(), Some("0001"));
        assert_eq!(line[1].message, "Add a tags column (nullable)");
        assert!(new_revision(&root, "say \"hi\"").is_err());
        assert!(new_revision(&root, "  ").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_repositorys_own_history_is_one_line_from_0001() {
        let root = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let line = revisions(&root.join(VERSIONS_DIR)).unwrap();
        assert_eq!(line[0].revision, "0001");
        assert_eq!(line[0].down_revision, None);
    }
}
