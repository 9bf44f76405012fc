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
    cli(root).args(buildx_args(builder))
}

/// The arguments that start a buildx command on `builder` (the current one when `None`), for
/// a step that gives the docker CLI options of its own first.
pub fn buildx_args(builder: Option<&str>) -> Vec<&str> {
    match builder {
        Some(name) => vec!["buildx", "--builder", name],
        None => vec!["buildx"],
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

/// Whether `builder` (the current one when `None`) writes images straight into the image store
/// that `docker` commands read: BuildKit inside the engine of the current context (the `docker`
/// driver, whose one node is that context), with the containerd image store, which holds whole
/// multi-platform indexes (the classic store takes one platform at a time). Any query that
/// fails answers no: the build then goes through an archive as on any builder, and a builder
/// that cannot build says so there.
pub fn builds_into_store(root: &Utf8Path, builder: Option<&str>) -> bool {
    let query = |step: Step| {
        let answer = step.quiet().capture().ok()?;
        answer.success().then_some(answer.stdout)
    };
    let (inspect, context, store) = std::thread::scope(|scope| {
        let inspect = scope.spawn(|| query(buildx(root, builder).arg("inspect")));
        let context = scope.spawn(|| query(cli(root).args(["context", "show"])));
        let store = query(cli(root).args(["info", "--format", "{{json .DriverStatus}}"]));
        (inspect.join().ok().flatten(), context.join().ok().flatten(), store)
    });
    match (inspect, context, store) {
        (Some(inspect), Some(context), Some(store)) => {
            stores_builds(&inspect, context.trim(), &store)
        }
        _ => false,
    }
}

/// [`builds_into_store`] from what `docker buildx inspect`, `docker context show` and
/// `docker info --format '{{json .DriverStatus}}'` printed.
fn stores_builds(inspect: &str, context: &str, driver_status: &str) -> bool {
    let values = |name: &str| -> Vec<&str> {
        let fields = inspect.lines().filter_map(|line| line.split_once(':'));
        fields.filter(|(key, _)| key.trim() == name).map(|(_, value)| value.trim()).collect()
    };
    // One node, the current context's engine: a builder of several is not the engine's own.
    let one_node = values("Endpoint") == [context];
    let containerd =
        serde_json::from_str::<Vec<(String, String)>>(driver_status.trim()).is_ok_and(|status| {
            status.iter().any(|(k, v)| k == "driver-type" && v == "io.containerd.snapshotter.v1")
        });
    values("Driver") == ["docker"] && one_node && containerd
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

    const DEFAULT: &str = "Name:          default\nDriver:        docker\nLast Activity: 2026-12-07 \
                           21:41:22 +0000 UTC\n\nNodes:\nName:             default\nEndpoint:         \
                           default\nStatus:           running\nBuildKit version: v0.13.2\n";
    const CONTAINERD: &str = r#"[["driver-type","io.containerd.snapshotter.v1"]]"#;

    #[test]
    fn only_the_engines_own_builder_over_the_containerd_store_builds_into_it() {
        assert!(stores_builds(DEFAULT, "default", CONTAINERD));
        // The classic store: no multi-platform index.
        let overlay2 = r#"[["Backing Filesystem","extfs"],["Supports d_type","true"]]"#;
        assert!(!stores_builds(DEFAULT, "default", overlay2));
        assert!(!stores_builds(DEFAULT, "default", "null"));
        // Another context's engine, not the one `docker` commands talk to.
        assert!(!stores_builds(DEFAULT, "remote", CONTAINERD));
        // A builder container keeps its images to itself.
        let container = DEFAULT
            .replace("Driver:        docker", "Driver:        docker-container")
            .replace("Endpoint:         default", "Endpoint:         unix:///var/run/docker.sock");
        assert!(!stores_builds(&container, "default", CONTAINERD));
        let two_nodes = format!("{DEFAULT}\nName:             b\nEndpoint:         default\n");
        assert!(!stores_builds(&two_nodes, "default", CONTAINERD));
        assert!(!stores_builds("", "default", CONTAINERD));
    }
}
