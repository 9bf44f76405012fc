//! `cargo xtask bench devloop`: from a saved one-line change in a server source file to the
//! first response that carries it, for three ways of working, interleaved:
//! - ours: `cargo xtask dev --watch` (sync into the container, restart in place);
//! - `docker compose watch` with a `sync+restart` rule on the same service (the rules of
//!   compose/dev.yaml; compose 2.26 wants a `build:` section on a watched service, so the bench
//!   adds one in an overlay of its own);
//! - today's path without a watch: `cargo xtask dev` after the edit (build, recreate).
//!
//! Each side runs on a copy of the repository's build inputs of its own (`MEMORIES_ROOT`), so
//! that one side's edit never wakes another side's watcher and the working tree is never
//! touched. The copies, their stacks and their image tags are removed at the end, also when
//! the bench fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use super::{Report, Side, free_port};
use crate::image::ImageName;
use crate::image::version::Revision;
use crate::run::docker;
use crate::run::interrupt::{self, Interrupted};
use crate::run::plan::{self, Running, Step, Stream, Streams};
use crate::stack::{self, Mode, Stack};
use crate::wait::{Attempt, net};

/// The app version of the copies, so that their image tags never replace the repository's.
const COPY_VERSION: &str = "0.0.0.dev0";
/// The line each run edits, in `app/src/memories/api.py`.
const ROUTE: &str = r#"return {"version": __version__}"#;
/// The overlay `docker compose watch` needs here: compose 2.26 watches only services with a
/// build section, and its sync fails on a container whose user is numeric (`10001:10001`,
/// as the server image sets it): "getent unable to find entry" from the engine. The user by
/// name is the same user.
const COMPOSE_WATCH_OVERLAY: &str = "# Written by `cargo xtask bench devloop` for `docker compose watch`.\n\
services:\n  server:\n    user: memories\n    build:\n      context: ..\n      dockerfile: docker/server/Dockerfile\n      target: runtime\n";
/// How long one edit may take to be served before the bench fails.
const SERVE_LIMIT: Duration = Duration::from_secs(180);

/// One side: a copy of the repository with a dev stack of its own.
struct Copy {
    root: Utf8PathBuf,
    project: String,
    server_port: u16,
    db_port: u16,
    tag: String,
    /// Its watcher, when it has one.
    watcher: Option<Running>,
}

impl Copy {
    fn new(source: &Utf8Path, name: &str) -> Result<Copy> {
        let project = stack::unique_project(&format!("memories-bench-{name}"));
        let root = Utf8PathBuf::try_from(std::env::temp_dir())
            .context("the temporary directory is not UTF-8")?
            .join(&project);
        let mut copy = Copy {
            root,
            project,
            server_port: free_port()?,
            db_port: free_port()?,
            tag: String::new(),
            watcher: None,
        };
        for dir in ["app", "compose", "docker"] {
            copy_tree(&source.join(dir), &copy.root.join(dir))?;
        }
        std::fs::copy(source.join(".dockerignore"), copy.root.join(".dockerignore"))
            .context("cannot copy .dockerignore")?;
        let version = Revision::read(source)?.version.to_string();
        set_app_version(&copy.root, &version, COPY_VERSION)?;
        std::fs::write(copy.root.join("compose/bench-watch.yaml"), COMPOSE_WATCH_OVERLAY)?;
        let git = |args: &[&str]| {
            Step::new("git", &copy.root)
                .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
                .args(args.iter().copied())
                .quiet()
                .read()
        };
        git(&["init", "--quiet"])?;
        git(&["add", "--all"])?;
        git(&["commit", "--quiet", "--message", "bench copy"])?;
        copy.tag = stack::tag(&Revision::read(&copy.root)?);
        Ok(copy)
    }

    /// This xtask, at the copy, on the copy's stack.
    fn xtask(&self, exe: &str) -> Step {
        Step::new(exe, &self.root)
            .env("MEMORIES_ROOT", self.root.as_str())
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("DEV_SERVER_PORT", &self.server_port.to_string())
            .env("DEV_DB_PORT", &self.db_port.to_string())
    }

    fn stack(&self) -> Stack {
        Stack::new(&self.root, Mode::Dev, self.project.clone(), &[], self.tag.clone())
    }

    /// Writes the edit that makes `/v1/version` carry `marker`.
    fn edit(&self, marker: u32) -> Result<()> {
        let api = self.root.join("app/src/memories/api.py");
        let text = std::fs::read_to_string(&api).context("cannot read api.py")?;
        let start = text.find(r#"return {"version": __version__"#).context("no version route")?;
        let end = start + text[start..].find('}').context("no end of the route")? + 1;
        let line = format!(r#"return {{"version": __version__, "bench": {marker}}}"#);
        std::fs::write(&api, format!("{}{line}{}", &text[..start], &text[end..]))
            .context("cannot write api.py")
    }

    /// Waits until `/v1/version` carries `marker`.
    fn served(&self, marker: u32) -> Result<()> {
        let wanted = format!(r#""bench":{marker}}}"#);
        let start = Instant::now();
        while start.elapsed() < SERVE_LIMIT {
            if interrupt::is_set() {
                return Err(Interrupted.into());
            }
            let port = self.server_port;
            let timeout = Duration::from_secs(2);
            let answer =
                net::http("127.0.0.1", port, "/v1/version", Some(200), Some(&wanted), timeout);
            if matches!(answer, Attempt::Ready) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("edit {marker} was not served on port {} within {SERVE_LIMIT:?}", self.server_port)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        drop(self.watcher.take());
        let _ = self
            .stack()
            .compose_all_profiles()
            .args(["down", "--volumes", "--timeout", "2"])
            .env("DEV_SERVER_PORT", &self.server_port.to_string())
            .env("DEV_DB_PORT", &self.db_port.to_string())
            .quiet()
            .run_regardless();
        let short = self.tag.rsplit('-').next().unwrap_or_default().to_owned();
        for image in ImageName::released() {
            // An edited copy is dirty: `cargo xtask dev` there tags `...-dirty` too.
            let tags = [self.tag.clone(), format!("sha-{short}")];
            let dirty = tags.iter().map(|tag| format!("{tag}-dirty"));
            for tag in tags.iter().cloned().chain(dirty).chain([COPY_VERSION.to_owned()]) {
                let reference = format!("memories/{}:{tag}", image.as_str());
                let _ = docker::cli(&self.root)
                    .args(["image", "rm", "--no-prune", &reference])
                    .quiet()
                    .capture();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Sets the app's version in the copy at `root` from `old` to `new`, where a release bumps it:
/// in `app/pyproject.toml` and in the project's own entry of `app/uv.lock`, which every image
/// build checks (`uv sync --locked` refuses a lock that does not match the project).
fn set_app_version(root: &Utf8Path, old: &str, new: &str) -> Result<()> {
    let edit = |relative: &str, from: String, to: String| -> Result<()> {
        let path = root.join(relative);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        if !text.contains(&from) {
            bail!("{path} has no `{}`: cannot set the copy's version", from.replace('\n', " "));
        }
        std::fs::write(&path, text.replacen(&from, &to, 1))
            .with_context(|| format!("cannot write {path}"))
    };
    edit("app/pyproject.toml", format!("version = \"{old}\""), format!("version = \"{new}\""))?;
    let entry = |version: &str| format!("name = \"memories\"\nversion = \"{version}\"");
    edit("app/uv.lock", entry(old), entry(new))
}

fn copy_tree(from: &Utf8Path, to: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {to}"))?;
    for entry in from.read_dir_utf8().with_context(|| format!("cannot read {from}"))? {
        let entry = entry?;
        if matches!(entry.file_name(), "__pycache__" | ".venv" | ".pytest_cache") {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {target}"))?;
        }
    }
    Ok(())
}

/// Starts a watcher and waits until it says it watches (a line of its stdout that contains
/// `ready_line`).
fn start_watcher(step: &Step, ready_line: &str) -> Result<Running> {
    let streams = Streams { stdin: Stream::Null, stdout: Stream::Piped, stderr: Stream::Null };
    let mut running = step.spawn(streams)?;
    let output = running.stdout().context("the watcher has no stdout")?;
    let (sender, ready) = std::sync::mpsc::channel();
    let wanted = ready_line.to_owned();
    std::thread::spawn(move || {
        let mut said = false;
        // Read to the end, so that the watcher never blocks on a full pipe.
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if !said && line.contains(&wanted) {
                said = true;
                let _ = sender.send(());
            }
        }
    });
    let start = Instant::now();
    loop {
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        if ready.recv_timeout(Duration::from_millis(100)).is_ok() {
            return Ok(running);
        }
        if start.elapsed() > Duration::from_secs(900) || running.try_wait()?.is_some() {
            bail!("`{}` did not start watching (no `{ready_line}`)", step.short());
        }
    }
}

/// `cargo xtask bench devloop`.
pub fn devloop(root: &Utf8Path, runs: u32) -> Result<Report> {
    docker::require_engine()?;
    let exe = plan::this_xtask()?;
    let names = ["ours", "compose-watch", "rebuild"];
    let mut copies = BTreeMap::new();
    for name in names {
        say!("preparing the {name} side: a copy of the repository and its dev stack");
        let copy = Copy::new(root, name)?;
        copy.xtask(&exe).args(["dev"]).run().with_context(|| format!("cannot start {name}"))?;
        copies.insert(name, copy);
    }
    let ours = copies.get_mut("ours").expect("the ours side");
    let watch = ours.xtask(&exe).args(["dev", "--watch", "--json", "--no-build"]);
    ours.watcher = Some(start_watcher(&watch, r#""event":"watching""#)?);
    let peer = copies.get_mut("compose-watch").expect("the compose side");
    let compose = peer
        .stack()
        .compose()
        .env("DEV_SERVER_PORT", &peer.server_port.to_string())
        .env("DEV_DB_PORT", &peer.db_port.to_string())
        .args(["--file", "compose/bench-watch.yaml"]);
    // The server again, with the overlay's user.
    compose.clone().args(["up", "--detach", "--no-build", "--wait", "server"]).run()?;
    let compose_watch = compose.args(["watch", "--no-up", "server"]);
    peer.watcher = Some(start_watcher(&compose_watch, "Watch enabled")?);
    let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut marker = 0;
    // One warm-up edit per side, then the timed runs, rotating which side goes first.
    for run in 0..=runs {
        for turn in 0..names.len() {
            let name = names[(turn + run as usize) % names.len()];
            let copy = &copies[name];
            marker += 1;
            let start = Instant::now();
            copy.edit(marker)?;
            if name == "rebuild" {
                copy.xtask(&exe).args(["dev"]).quiet().capture()?;
            }
            copy.served(marker)?;
            let took = start.elapsed();
            if run > 0 {
                say!("run {run}/{runs}: {name} served the edit in {} ms", took.as_millis());
                samples.entry(name).or_default().push(took);
            }
            // Let the side settle (its probes, a healthcheck) before the next one is timed.
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    drop(copies);
    let mut take = |name: &str| samples.remove(name).unwrap_or_default();
    Ok(Report {
        name: "devloop",
        ours: Side::new("cargo xtask dev --watch", take("ours")),
        peer: Side::new("docker compose watch (sync+restart)", take("compose-watch")),
        others: vec![Side::new("cargo xtask dev after the edit", take("rebuild"))],
        note: Some(format!(
            "from writing the file to the first response with the change ({ROUTE} edited); each \
             side on its own copy of the repository"
        )),
    })
}

#[cfg(test)]
mod tests {
    use camino::Utf8PathBuf;

    use super::{COPY_VERSION, set_app_version};
    use crate::image::version::Revision;

    #[test]
    fn a_copys_version_is_set_in_the_project_and_its_lock() {
        let repo = Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let root = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("devloop-version-{}", std::process::id()));
        std::fs::create_dir_all(root.join("app")).unwrap();
        for file in ["app/pyproject.toml", "app/uv.lock"] {
            std::fs::copy(repo.join(file), root.join(file)).unwrap();
        }
        let version = Revision::read(&repo).unwrap().version.to_string();
        set_app_version(&root, &version, COPY_VERSION).unwrap();
        let read = |file: &str| std::fs::read_to_string(root.join(file)).unwrap();
        let want = format!("version = \"{COPY_VERSION}\"");
        assert!(read("app/pyproject.toml").contains(&want));
        assert!(read("app/uv.lock").contains(&format!("name = \"memories\"\n{want}")));

        let err = set_app_version(&root, &version, "9.9.9").unwrap_err().to_string();
        assert!(err.ends_with("cannot set the copy's version"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
