//! Helpers for the Docker-backed test suite: running `cargo xtask`, requiring a live engine,
//! containers and volumes that clean themselves up, and a minimal HTTP client.
//!
//! Every test here needs a running Docker engine. Without one they fail with the fix; they are
//! never skipped, so a green run always means the images were really built and run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_owned()
}

/// The label that ties a container, network or volume to the test run that created it.
pub const RUN_LABEL: &str = "memories.run";

/// The test run these tests belong to: the one `cargo xtask test` names in `MEMORIES_RUN`,
/// else this test binary itself. The format is xtask's (`xtask/src/run/label.rs`):
/// `t<hash of host name and boot id>-<pid>-<start time in ticks>`, so that `cargo xtask reap`
/// can tell whether the run's process is gone.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| match std::env::var("MEMORIES_RUN") {
        Ok(inherited) if !inherited.is_empty() => inherited,
        _ => {
            let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
            let host = format!(
                "{}/{}",
                read("/proc/sys/kernel/hostname").trim(),
                read("/proc/sys/kernel/random/boot_id").trim()
            );
            let hash = host
                .bytes()
                .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
            let stat = read("/proc/self/stat");
            let start = stat
                .rfind(')')
                .and_then(|at| stat[at + 1..].split_whitespace().nth(19))
                .unwrap_or("0");
            format!("t{hash:08x}-{}-{start}", std::process::id())
        }
    })
}

/// The xtask binary (see [`xtask_binary`]) as a process in this test run, at the repository
/// root.
pub fn xtask_process() -> Command {
    let mut command = Command::new(xtask_binary());
    command.env("MEMORIES_RUN", run_id()).current_dir(repo_root());
    command
}

/// `cargo xtask ARGS...` at the repository root, with no stdin, in this test run.
fn xtask_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO"));
    command
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .env("MEMORIES_RUN", run_id())
        .current_dir(repo_root())
        .stdin(Stdio::null());
    command
}

/// Runs `cargo xtask ARGS...`; stderr passes through for the log.
pub fn xtask(args: &[&str]) -> Output {
    xtask_command(args).stderr(Stdio::inherit()).output().expect("cannot run cargo xtask")
}

/// Runs `cargo xtask ARGS...` with stdout and stderr captured.
pub fn xtask_captured(args: &[&str]) -> Output {
    xtask_command(args).output().expect("cannot run cargo xtask")
}

/// Runs `cargo xtask ARGS...` and returns its stdout, panicking on failure.
pub fn xtask_ok(args: &[&str]) -> String {
    let output = xtask(args);
    assert!(output.status.success(), "cargo xtask {} failed: {:?}", args.join(" "), output.status);
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

/// Panics with the fix unless a Docker engine answers.
pub fn require_docker() {
    let answer = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output();
    match answer {
        Ok(output) if output.status.success() => {}
        _ => panic!(
            "these tests need a running Docker engine with buildx: run ../shared/docker-env/setup \
             (as root) or start dockerd; they are never skipped"
        ),
    }
}

/// `repository:tag` of each local image (those matching `filter` when given, e.g.
/// `NAMESPACE/*`), one per line. With the containerd image store, a listing that meets an
/// image being removed at that moment (another test's, or this run's teardown in another
/// thread) fails with `content digest ...: not found`: the listing is a walk of images and
/// then of their content, not one snapshot. That answer is asked again, up to 10 times 0.1 s
/// apart; any other failure panics.
pub fn image_refs(filter: Option<&str>) -> String {
    let mut args = vec!["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"];
    args.extend(filter);
    for _ in 0..10 {
        let output = docker_output(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            return String::from_utf8(output.stdout).expect("UTF-8").trim().to_owned();
        }
        let racing = stderr.contains("content digest") && stderr.contains("not found");
        assert!(racing, "docker {} failed: {}", args.join(" "), stderr.trim());
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("docker {} met an image being removed 10 times in a row", args.join(" "))
}

/// Runs `docker ARGS...` and returns its stdout, panicking with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let output = docker_output(args);
    assert!(
        output.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout).expect("docker output is UTF-8").trim().to_owned()
}

/// Runs `docker ARGS...` and returns whatever happened. What it creates (`run`, `create`,
/// `volume create`, `network create`, and the named volumes a `run` mounts) carries this
/// run's label, so that the run removes it even when the test never reaches its clean-up.
pub fn docker_output(args: &[&str]) -> Output {
    let label = format!("{RUN_LABEL}={}", run_id());
    let mut all: Vec<&str> = args.to_vec();
    let labelled = args.iter().any(|a| a.starts_with(&format!("{RUN_LABEL}=")));
    match args {
        // A test that labels what it creates itself (as another run's) knows best.
        _ if labelled => {}
        ["run" | "create", ..] => {
            for (flag, value) in args.iter().zip(args.iter().skip(1)) {
                let source = value.split(':').next().unwrap_or_default();
                let named = !source.is_empty() && !source.contains('/') && value.contains(':');
                if (*flag == "--volume" || *flag == "-v") && named {
                    // `run` would create it without a label; an existing volume is kept as is.
                    run_docker(&["volume", "create", "--label", &label, source]);
                }
            }
            all.splice(1..1, ["--label", label.as_str()]);
        }
        ["volume" | "network", "create", ..] => {
            all.splice(2..2, ["--label", label.as_str()]);
        }
        _ => {}
    }
    run_docker(&all)
}

fn run_docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().expect("cannot run docker")
}

/// The ids of the running containers of `service` in compose project `project`, one per line
/// (empty when none runs).
pub fn service_containers(project: &str, service: &str) -> String {
    docker(&[
        "ps",
        "--quiet",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])
}

/// A name no other test or run on this machine uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Docker objects a test created, removed when the test ends however it ends.
#[derive(Default)]
pub struct Cleanup {
    projects: Vec<String>,
    stacks: Vec<String>,
    compose: Vec<(String, PathBuf)>,
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Cleanup {
    pub fn container(&mut self, name: &str) {
        self.containers.push(name.to_owned());
    }

    /// A compose project started from `file`, taken down with its volumes.
    pub fn compose(&mut self, project: &str, file: &Path) {
        self.compose.push((project.to_owned(), file.to_owned()));
    }

    /// Everything labelled as part of compose project `name`: containers, networks, volumes.
    pub fn project(&mut self, name: &str) {
        self.projects.push(name.to_owned());
    }

    /// A swarm stack: removed, then its volumes once its containers are gone.
    pub fn stack(&mut self, name: &str) {
        self.stacks.push(name.to_owned());
    }

    pub fn volume(&mut self, name: &str) {
        self.volumes.push(name.to_owned());
    }

    pub fn image(&mut self, reference: &str) {
        self.images.push(reference.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for stack in &self.stacks {
            let _ = docker_output(&["stack", "rm", stack]);
            let label = format!("label=com.docker.stack.namespace={stack}");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60)
                && !docker_output(&["ps", "--all", "--quiet", "--filter", &label]).stdout.is_empty()
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            remove_labelled(&label);
        }
        for project in &self.projects {
            remove_labelled(&format!("label=com.docker.compose.project={project}"));
        }
        for (project, file) in &self.compose {
            let file = file.to_string_lossy();
            let _ = docker_output(&[
                "compose",
                "--project-name",
                project,
                "--file",
                &file,
                "down",
                "--volumes",
                "--timeout",
                "1",
            ]);
        }
        for c in &self.containers {
            let _ = docker_output(&["rm", "--force", "--volumes", c]);
        }
        for v in &self.volumes {
            let _ = docker_output(&["volume", "rm", "--force", v]);
        }
        for i in &self.images {
            let _ = docker_output(&["image", "rm", i]);
        }
    }
}

/// Removes the containers, networks and volumes that carry `label` (a `label=K=V` filter).
fn remove_labelled(label: &str) {
    let ids = |args: &[&str]| -> Vec<String> {
        let out = docker_output(args);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    };
    for id in ids(&["ps", "--all", "--quiet", "--filter", label]) {
        let _ = docker_output(&["rm", "--force", "--volumes", &id]);
    }
    for id in ids(&["network", "ls", "--quiet", "--filter", label]) {
        let _ = docker_output(&["network", "rm", &id]);
    }
    for id in ids(&["volume", "ls", "--quiet", "--filter", label]) {
        let _ = docker_output(&["volume", "rm", "--force", &id]);
    }
}

/// What is left of compose project or swarm stack objects carrying `label`, one line each.
pub fn leftovers(label: &str) -> Vec<String> {
    let mut left = Vec::new();
    for (kind, args) in [
        ("container", vec!["ps", "--all", "--format", "{{.Names}}", "--filter", label]),
        ("network", vec!["network", "ls", "--format", "{{.Name}}", "--filter", label]),
        ("volume", vec!["volume", "ls", "--format", "{{.Name}}", "--filter", label]),
    ] {
        let out = docker_output(&args);
        left.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| format!("{kind} {l}")));
    }
    left
}

/// The xtask binary, built if needed: for tests that signal it directly (no cargo in between).
pub fn xtask_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "xtask"])
        .current_dir(repo_root())
        .status()
        .expect("cannot run cargo build");
    assert!(status.success(), "cargo build --package xtask failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    target.join("debug/xtask")
}

/// A free TCP port on 127.0.0.1 (free when asked), never one this process handed out before:
/// the kernel may give the port it just released to the next `bind(0)`, and a stack given the
/// same port for two services fails with "port is already allocated".
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The host port that `container`'s `port`/tcp is published on.
pub fn published_port(container: &str, port: u16) -> u16 {
    let mapping = docker(&["port", container, &format!("{port}/tcp")]);
    let first = mapping.lines().next().expect("the port is published");
    first
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad mapping {first}"))
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request to 127.0.0.1 with `Connection: close`; `None` when it cannot connect
/// or the answer is cut short.
pub fn http(method: &str, port: u16, path: &str, json_body: Option<&str>) -> Option<Response> {
    http_with(method, port, path, &[], json_body)
}

/// [`http`] with more request headers.
pub fn http_with(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    json_body: Option<&str>,
) -> Option<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = json_body.unwrap_or("");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Response { status, headers: head.to_ascii_lowercase(), body: body.to_owned() })
}

/// Polls `GET path` every 100 ms until it answers 200; returns how long that took.
pub fn wait_for_200(port: u16, path: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut last = String::from("no answer");
    while start.elapsed() < timeout {
        match http("GET", port, path, None) {
            Some(r) if r.status == 200 => return start.elapsed(),
            Some(r) => last = format!("{} {}", r.status, r.body),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("GET {path} on port {port} did not answer 200 within {timeout:?}; last: {last}")
}

/// The app version in `app/pyproject.toml`, read the simple way, independently of xtask.
pub fn pyproject_version() -> String {
    let text =
        std::fs::read_to_string(repo_root().join("app/pyproject.toml")).expect("read pyproject");
    let line = text.lines().find(|l| l.starts_with("version")).expect("a version line");
    line.split('"').nth(1).expect("a quoted version").to_owned()
}

/// Sets the app's version in the repository (or copy) at `root`, where a release bumps it: in
/// `app/pyproject.toml` and in the project's own entry of `app/uv.lock`, which every image
/// build checks with `uv sync --locked` (as `uv lock` would write it).
pub fn set_app_version(root: &std::path::Path, version: &str) {
    let old = pyproject_version();
    let edit = |relative: &str, from: String, to: String| {
        let path = root.join(relative);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&from), "{relative} has no `{from}`");
        std::fs::write(&path, text.replacen(&from, &to, 1)).unwrap();
    };
    edit("app/pyproject.toml", format!("version = \"{old}\""), format!("version = \"{version}\""));
    edit(
        "app/uv.lock",
        format!("name = \"memories\"\nversion = \"{old}\""),
        format!("name = \"memories\"\nversion = \"{version}\""),
    );
}

/// What `platform.machine()` says inside a server image run as linux/arm64 (under qemu here),
/// after importing the app and its compiled dependencies.
pub fn arm64_machine(server_image: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        "--entrypoint",
        "python",
        server_image,
        "-c",
        "import platform, psycopg, memories.api; print(platform.machine())",
    ])
}

/// A registry of the test's own (the repository's `registry` image) on a free loopback port,
/// removed with everything pushed to it when dropped.
pub struct Registry {
    pub container: String,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Registry {
    pub fn start() -> Registry {
        require_docker();
        // Built once per test binary: two builds naming the same image at once make the image
        // store refuse the second ("already exists").
        static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let image = IMAGE.get_or_init(|| {
            let built = xtask_ok(&["build", "registry", "--json"]);
            let built: serde_json::Value =
                serde_json::from_str(&built).expect("build --json is JSON");
            built["images"][0]["refs"][1].as_str().expect("a built ref").to_owned()
        });
        let container = unique_name("memories-test-registry");
        docker(&["run", "--detach", "--name", &container, "--publish", "127.0.0.1::5000", image]);
        let registry = Registry {
            address: format!("127.0.0.1:{}", published_port(&container, 5000)),
            container,
        };
        let start = Instant::now();
        while http("GET", registry.port(), "/v2/", None).map(|r| r.status) != Some(200) {
            assert!(start.elapsed() < Duration::from_secs(30), "the test registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn port(&self) -> u16 {
        self.address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
    }

    /// See [`namespace`].
    pub fn namespace(&self, name: &str) -> String {
        namespace(&self.address, name)
    }

    /// Stops the registry: nothing can be pulled from it any more.
    pub fn stop(&self) {
        docker(&["stop", "--time", "1", &self.container]);
    }
}

impl Drop for Registry {
    /// Removes the registry and every local tag that names an image in it. A test that failed
    /// first gets the end of the registry's log on stderr: an answer such as a 500 is
    /// explained there, and the container is gone after.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = docker_output(&["logs", "--tail", "40", &self.container]);
            eprintln!(
                "the end of the test registry's log ({}):\n{}{}",
                self.container,
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = docker_output(&["rm", "--force", "--volumes", &self.container]);
        remove_local_tags(&self.address);
    }
}

/// `ADDRESS/NAME-<run>`: a namespace whose local tags `cargo xtask reap` can tie to this
/// run, should the test die before it removes them.
fn namespace(address: &str, name: &str) -> String {
    format!("{address}/{name}-{}", run_id())
}

/// Removes every local tag under `address/`: once its registry is gone it names nothing.
fn remove_local_tags(address: &str) {
    let listed = image_refs(None);
    let prefix = format!("{address}/");
    for reference in listed.lines() {
        if reference.starts_with(&prefix) {
            let _ = docker_output(&["image", "rm", reference]);
        }
    }
}

/// `cargo xtask fault-proxy` in front of a registry: a share of its requests fail (500, 429,
/// reset, delay), picked from `seed`. Stopped when dropped.
pub struct FaultyRegistry {
    child: std::process::Child,
    /// `127.0.0.1:PORT` of the proxy.
    pub address: String,
}

impl FaultyRegistry {
    pub fn start(upstream: &Registry, rate: &str, seed: u64) -> FaultyRegistry {
        let mut child = xtask_process()
            .args(["fault-proxy", "--upstream", &upstream.address, "--rate", rate])
            .args(["--seed", &seed.to_string(), "--delay", "500ms"])
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the fault proxy");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut address = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut address).expect("the proxy's address");
        drop(stdout);
        FaultyRegistry { child, address: address.trim().to_owned() }
    }
}

impl FaultyRegistry {
    /// See [`namespace`].
    pub fn namespace(&self, name: &str) -> String {
        namespace(&self.address, name)
    }
}

impl Drop for FaultyRegistry {
    /// Stops the proxy and removes the local tags that name images through it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_local_tags(&self.address);
    }
}

/// A copy of the repository's build inputs (`app/`, `compose/`, `docker/`, `.dockerignore`) in
/// a git repository of its own (ignoring what the repository ignores, so that what a task
/// writes under `target/` does not make the tree dirty), with app version `version`, for tests that edit sources under
/// a running task (`MEMORIES_ROOT` points xtask at it). Its images get tags of their own
/// (`<version>`, `<version>-<sha>`, `sha-<sha>`); dropping it removes those tags and the copy.
pub struct RepoCopy {
    pub root: PathBuf,
    pub version: String,
    pub sha: String,
}

impl RepoCopy {
    pub fn new(version: &str) -> RepoCopy {
        let root = std::env::temp_dir().join(unique_name("memories-copy"));
        let source = repo_root();
        for dir in ["app", "compose", "docker"] {
            copy_tree(&source.join(dir), &root.join(dir));
        }
        for file in [".dockerignore", ".gitignore"] {
            std::fs::copy(source.join(file), root.join(file)).unwrap();
        }
        set_app_version(&root, version);
        let git = |args: &[&str]| {
            let output = Command::new("git")
                .args(["-c", "user.name=tests", "-c", "user.email=tests@localhost"])
                .args(args)
                .current_dir(&root)
                .stdin(Stdio::null())
                .output()
                .expect("cannot run git");
            assert!(
                output.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        git(&["init", "--quiet"]);
        git(&["add", "--all"]);
        git(&["commit", "--quiet", "--message", "copy"]);
        let sha = git(&["rev-parse", "--short=7", "HEAD"]);
        RepoCopy { root, version: version.to_owned(), sha }
    }

    /// A file of the copy, by its path in the repository.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

impl Drop for RepoCopy {
    fn drop(&mut self) {
        // Every image a build in the copy tagged (its catalogue may name images this
        // checkout's does not): `<version>`, `<version>-<sha>`, `sha-<sha>`, and their `-dirty`
        // forms, of its first commit and of the one a test may have made since.
        let version = &self.version;
        let head = Command::new("git")
            .args(["rev-parse", "--short=7", "HEAD"])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut ours = vec![version.clone()];
        for sha in [&self.sha, &head].into_iter().filter(|sha| !sha.is_empty()) {
            ours.extend([
                format!("{version}-{sha}"),
                format!("sha-{sha}"),
                format!("{version}-{sha}-dirty"),
                format!("sha-{sha}-dirty"),
            ]);
        }
        let listed = docker_output(&[
            "image",
            "ls",
            "--filter",
            "reference=memories/*",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ]);
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        for reference in listed.lines() {
            let tag = reference.rsplit_once(':').map_or("", |(_, tag)| tag);
            if ours.iter().any(|t| t == tag) {
                let _ = docker_output(&["image", "rm", reference]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Copies a directory tree, leaving out Python caches and virtualenvs.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if matches!(name.to_str(), Some("__pycache__" | ".venv" | ".pytest_cache")) {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}
