//! The docker CLI as a [`Step`] rooted at the repository (every task's docker commands start
//! here; the readiness probes' quiet ones are made in [`crate::wait`]'s own `docker` module), and
//! the checks that the engine and its plugins are there, each failure naming its fix.

use anyhow::{Result, bail};
use camino::Utf8Path;

use crate::run::plan::{Captured, Step};

/// Makes every plain `docker` invocation (`docker push`, `docker image rm`, ...), run from the
/// repository root.
pub fn cli(root: &Utf8Path) -> Step {
    Step::new("docker", root)
}

/// Makes every `docker buildx` invocation: `docker buildx [--builder NAME] ARGS...`.
///
/// Without `builder`, buildx itself honours `BUILDX_BUILDER`, then the current builder.
pub fn buildx(root: &Utf8Path, builder: Option<&str>) -> Step {
    let step = cli(root).arg("buildx");
    match builder {
        Some(name) => step.args(["--builder", name]),
        None => step,
    }
}

/// Runs an image listing (`docker image ls ...`, `step`) through `capture`, asking again while
/// the engine answers that a listed image's content is gone: the containerd image store fails
/// the whole listing with `content digest ... not found` when another process removes an image
/// while it is read. Any other failure is the answer.
pub fn image_listing(step: &Step, capture: impl Fn(&Step) -> Result<Captured>) -> Result<String> {
    for _ in 0..10 {
        let answer = capture(step)?;
        if answer.success() || !met_a_removal(&answer.stderr) {
            return answer.stdout_of(step);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("`{}` met an image being removed 10 times in a row: run it again", step.short())
}

/// Whether a failed image listing met an image another process was removing.
fn met_a_removal(stderr: &str) -> bool {
    stderr.contains("content digest") && stderr.contains("not found")
}

/// Checks that the docker CLI is on PATH: cheap enough for every run.
pub fn require_cli() -> Result<()> {
    if which::which("docker").is_err() {
        bail!("the docker CLI is required: install Docker Engine and put `docker` on PATH");
    }
    Ok(())
}

/// Explains a failed buildx command when the cause is the setup rather than the build: a
/// stopped daemon or a missing plugin. Runs only after a failure, so a successful build pays
/// nothing for it. A build that a signal stopped is the interruption itself: the engine queries
/// would be refused too, and their "cannot reach the Docker daemon" would be false.
pub fn explain_buildx_failure(failure: anyhow::Error) -> anyhow::Error {
    if crate::run::interrupt::is_set() {
        return crate::run::interrupt::Interrupted.into();
    }
    match require_buildx() {
        Ok(()) => failure,
        Err(setup) => setup,
    }
}

/// Checks, in order, the docker CLI, the daemon and the buildx plugin.
pub fn require_buildx() -> Result<()> {
    require_engine()?;
    let answer = engine_query(&["buildx", "version"]);
    if !answer.is_some_and(|a| a.success()) {
        bail!(
            "docker buildx is required: install the buildx plugin (Debian: apt-get install docker-buildx; \
             elsewhere see https://docs.docker.com/build/install-buildx/)"
        );
    }
    Ok(())
}

/// Checks the docker CLI and that the daemon answers (honouring `DOCKER_HOST`/`DOCKER_CONTEXT`).
pub fn require_engine() -> Result<()> {
    require_cli()?;
    let format = "{{.Server.Version}}";
    let answer = engine_query(&["version", "--format", format]);
    if !answer.is_some_and(|a| a.success() && !a.stdout.trim().is_empty()) {
        let target = match (std::env::var("DOCKER_HOST"), std::env::var("DOCKER_CONTEXT")) {
            (Ok(host), _) if !host.is_empty() => format!(" at DOCKER_HOST={host}"),
            (_, Ok(context)) if !context.is_empty() => format!(" of DOCKER_CONTEXT={context}"),
            _ => String::new(),
        };
        bail!(
            "cannot reach the Docker daemon{target}: start it (e.g. `sudo systemctl start docker`), \
             or point DOCKER_HOST at a running engine"
        );
    }
    Ok(())
}

/// Runs a quiet `docker ARGS` about the engine itself (no repository needed) with a time
/// limit, since a stopped daemon can hang a client.
fn engine_query(args: &[&str]) -> Option<Captured> {
    let step = cli(Utf8Path::new(".")).args(args.iter().copied()).quiet();
    step.timeout(std::time::Duration::from_secs(20)).capture().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_that_met_a_removal_is_told_from_other_failures() {
        let raced = "Error response from daemon: failed to get image size: content digest \
                     sha256:4f2c: not found";
        assert!(met_a_removal(raced));
        assert!(!met_a_removal("Cannot connect to the Docker daemon"));
        assert!(!met_a_removal("invalid reference format: not found"));
    }

    #[test]
    fn buildx_constructor_sets_the_builder_before_the_subcommand() {
        let step = buildx(Utf8Path::new("/repo"), Some("remote")).arg("bake");
        assert_eq!(step.args, ["buildx", "--builder", "remote", "bake"]);
        assert_eq!(step.cwd, "/repo");
        assert_eq!(buildx(Utf8Path::new("/r"), None).arg("ls").args, ["buildx", "ls"]);
    }
}
