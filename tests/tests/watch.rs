//! `cargo xtask dev --watch` for real, on a copy of the repository (`MEMORIES_ROOT`), so that
//! its edits never reach the tree other tests build from: a source edit is served, a broken
//! edit is reported while the watch goes on, the fix recovers, a socket in the tree fails
//! nothing, a link to a file outside the project arrives as a link, the package removed and
//! made again is served again, a lock change rebuilds and recreates the server, and Ctrl-C
//! ends the watch with 130 and leaves the stack running.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    Cleanup, RepoCopy, docker, free_port, http, leftovers, require_docker, run_id,
    service_containers, unique_name, xtask_binary,
};

/// The watch process and its `--json` events, read on a thread of their own.
struct Watching {
    child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Watching {
    /// The next event that `wanted` accepts, skipping others; panics after `timeout`.
    fn expect(&mut self, what: &str, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if wanted(&event) {
                        return event;
                    }
                }
                Err(_) => panic!("no {what} event within {timeout:?}; events: {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event_is(event: &Value, kind: &str, service: &str) -> bool {
    event["event"] == kind && event["service"] == service
}

fn server_container(project: &str) -> String {
    service_containers(project, "server")
}

#[test]
fn dev_watch_serves_edits_reports_a_broken_one_recovers_and_rebuilds_on_a_lock_change() {
    require_docker();
    let copy = RepoCopy::new("0.0.0.dev9");
    let project = unique_name("memories-watch");
    let mut cleanup = Cleanup::default();
    cleanup.project(&project);
    let (server_port, db_port) = (free_port(), free_port());
    let env = |command: &mut Command| {
        command
            .env("MEMORIES_ROOT", &copy.root)
            .env("MEMORIES_RUN", run_id())
            .env("COMPOSE_PROJECT_NAME", &project)
            .env("DEV_SERVER_PORT", server_port.to_string())
            .env("DEV_DB_PORT", db_port.to_string())
            .current_dir(&copy.root)
            .stdin(Stdio::null());
    };
    let mut command = Command::new(xtask_binary());
    command.args(["dev", "--watch", "--json"]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    env(&mut command);
    let mut child = command.spawn().expect("cannot start cargo xtask dev --watch");
    let stdout = child.stdout.take().unwrap();
    let (sender, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let event = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON event: {line}: {e}"));
            if sender.send(event).is_err() {
                break;
            }
        }
    });
    let mut watching = Watching { child, events, seen: Vec::new() };
    // The first run builds the copy's images (cached layers) and starts the stack.
    let started =
        watching.expect("watching", Duration::from_secs(600), |e| e["event"] == "watching");
    assert_eq!(started["project"], project.as_str());
    let version = || http("GET", server_port, "/v1/version", None).map(|r| r.body);

    // A source edit: served without a new container.
    let container = server_container(&project);
    let api = copy.path("app/src/memories/api.py");
    let original = std::fs::read_to_string(&api).unwrap();
    let marker = r#"return {"version": __version__}"#;
    assert!(original.contains(marker), "api.py still has the version route");
    let edited = original.replace(marker, r#"return {"version": __version__, "watched": 1}"#);
    std::fs::write(&api, &edited).unwrap();
    let action = watching
        .expect("sync action", Duration::from_secs(30), |e| event_is(e, "action", "server"));
    assert_eq!(action["action"], "sync+restart");
    let ready = watching.expect("ready", Duration::from_secs(60), |e| {
        event_is(e, "ready", "server") || event_is(e, "failed", "server")
    });
    assert_eq!(ready["event"], "ready", "{ready}");
    let body = version().expect("the server answers after the reload");
    assert!(body.contains(r#""watched":1"#), "the edit is served: {body}");
    assert_eq!(server_container(&project), container, "a source edit keeps the container");

    // A broken edit: reported with the traceback; the watch goes on.
    std::fs::write(&api, format!("{edited}\nthis is not python(\n")).unwrap();
    let failed = watching.expect("failed", Duration::from_secs(60), |e| {
        event_is(e, "ready", "server") || event_is(e, "failed", "server")
    });
    assert_eq!(failed["event"], "failed", "{failed}");
    let logs = failed["logs"].to_string();
    assert!(logs.contains("SyntaxError"), "the failure shows the log: {logs}");
    assert!(watching.child.try_wait().unwrap().is_none(), "the watch goes on after a failure");

    // The fix: ready again.
    let fixed = edited.replace(r#""watched": 1"#, r#""watched": 2"#);
    std::fs::write(&api, fixed).unwrap();
    let ready = watching.expect("ready after the fix", Duration::from_secs(60), |e| {
        event_is(e, "ready", "server") || event_is(e, "failed", "server")
    });
    assert_eq!(ready["event"], "ready", "{ready}");
    let body = version().expect("the server answers after the fix");
    assert!(body.contains(r#""watched":2"#), "the fix is served: {body}");

    // A good edit saved with a path that cannot be copied (a socket a test run left in the
    // tree) and a link to a private file outside the project: the edit is served, the socket
    // is skipped, and the link arrives as a link, never as the file it points to.
    let pkg = copy.path("app/src/memories");
    let socket = std::os::unix::net::UnixListener::bind(pkg.join("left.sock")).unwrap();
    let outside = std::env::temp_dir().join(format!("watch-secret-{}", std::process::id()));
    std::fs::write(&outside, "TOP SECRET").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&outside, pkg.join("leak.txt")).unwrap();
    let third = edited.replace(r#""watched": 1"#, r#""watched": 3"#);
    std::fs::write(&api, &third).unwrap();
    let ready = watching.expect("ready with a socket in the batch", Duration::from_secs(60), |e| {
        event_is(e, "ready", "server") || event_is(e, "failed", "server")
    });
    assert_eq!(ready["event"], "ready", "a socket fails nothing: {ready}");
    let body = version().expect("the server answers");
    assert!(body.contains(r#""watched":3"#), "the good edit is served: {body}");
    let site = "/opt/venv/lib/python3.13/site-packages/memories";
    let leak = docker(&[
        "exec",
        &container,
        "sh",
        "-c",
        &format!("readlink {site}/leak.txt; cat {site}/leak.txt 2>&1; ls {site}"),
    ]);
    assert!(leak.starts_with(&outside.display().to_string()), "copied as a link: {leak}");
    assert!(!leak.contains("TOP SECRET") && !leak.contains("left.sock"), "{leak}");
    drop(socket);
    std::fs::remove_file(pkg.join("left.sock")).unwrap();
    std::fs::remove_file(pkg.join("leak.txt")).unwrap();
    std::fs::remove_file(&outside).unwrap();
    watching.expect("ready after the removals", Duration::from_secs(60), |e| {
        event_is(e, "ready", "server")
    });

    // The package removed and made again, as a branch switch or `git stash` does: the watch
    // sees the directory come back, syncs all of it, and serves the edit made meanwhile.
    let saved = std::env::temp_dir().join(format!("watch-saved-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&saved);
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
        assert!(status.success(), "cp -a {} {}", from.display(), to.display());
    };
    cp(&pkg, &saved);
    std::fs::remove_dir_all(&pkg).unwrap();
    let gone = watching.expect("the removal acted on", Duration::from_secs(60), |e| {
        event_is(e, "ready", "server") || event_is(e, "failed", "server")
    });
    assert_eq!(gone["event"], "failed", "the app cannot start without its package: {gone}");
    let fourth = third.replace(r#""watched": 3"#, r#""watched": 4"#);
    std::fs::write(saved.join("api.py"), &fourth).unwrap();
    cp(&saved, &pkg);
    watching.expect("ready once the package is back", Duration::from_secs(60), |e| {
        event_is(e, "ready", "server")
    });
    let body = version().expect("the server answers after the package came back");
    assert!(body.contains(r#""watched":4"#), "the package came back and is served: {body}");
    let _ = std::fs::remove_dir_all(&saved);

    // A lock change: the server's image is rebuilt and the server alone recreated.
    let db = service_containers(&project, "db");
    let lock = copy.path("app/uv.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    std::fs::write(&lock, format!("{text}# edited by the watch test\n")).unwrap();
    let action = watching
        .expect("rebuild action", Duration::from_secs(30), |e| event_is(e, "action", "server"));
    assert_eq!(action["action"], "rebuild");
    let ready = watching.expect("ready after the rebuild", Duration::from_secs(600), |e| {
        event_is(e, "ready", "server") || event_is(e, "failed", "server")
    });
    assert_eq!(ready["event"], "ready", "{ready}");
    let recreated = server_container(&project);
    assert!(!recreated.is_empty() && recreated != container, "the server was recreated");
    let still = service_containers(&project, "db");
    assert_eq!(still, db, "the database was left alone");
    let body = version().expect("the rebuilt server answers");
    assert!(body.contains(r#""watched":4"#), "the rebuilt image has the working tree: {body}");

    // Ctrl-C: the watch ends with 130; the stack keeps running.
    let pid = watching.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = watching.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the watch did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    assert_eq!(server_container(&project), recreated, "Ctrl-C leaves the stack running");

    let mut down = Command::new(xtask_binary());
    down.args(["dev", "down", "--volumes"]);
    env(&mut down);
    assert!(down.status().unwrap().success(), "dev down");
    let label = format!("label=com.docker.compose.project={project}");
    assert_eq!(leftovers(&label), Vec::<String>::new());
}
