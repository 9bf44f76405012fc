//! `cargo xtask wait-for` against real servers: loopback TCP and HTTP servers, PostgreSQL in
//! its first-start initialisation, as a standby and shutting down, Redis with a password, and
//! containers that turn healthy, unhealthy or exit; plus the wait_for_service.sh shim.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    Cleanup, docker, docker_output, free_port, published_port, repo_root, require_docker,
    unique_name, xtask_captured, xtask_ok,
};

fn wait_for(args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = vec!["wait-for", "--json"];
    all.extend_from_slice(args);
    answer(xtask_captured(&all))
}

/// [`wait_for`] through `xtask`, a binary built before (no cargo in between), for a wait that
/// must begin within seconds of what it waits for: `cargo run` may compile first.
fn wait_for_with(xtask: &std::path::Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut command = std::process::Command::new(xtask);
    command.args(["wait-for", "--json"]).args(args).env("MEMORIES_RUN", tests::run_id());
    answer(command.stdin(std::process::Stdio::null()).output().unwrap())
}

fn answer(output: Output) -> (Option<i32>, Value, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code(), json, stderr)
}

/// The db and redis images, built once for this binary.
fn images() -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        require_docker();
        let built: Value =
            serde_json::from_str(&xtask_ok(&["build", "db", "redis", "--json"])).unwrap();
        let first = |name: &str| {
            let image =
                built["images"].as_array().unwrap().iter().find(|i| i["image"] == name).unwrap();
            image["refs"][1].as_str().unwrap().to_owned()
        };
        (first("db"), first("redis"))
    })
}

#[test]
fn tcp_probe_sees_a_port_that_opens_later() {
    let port = free_port();
    let server = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_secs(5));
        drop(listener);
    });
    let (code, json, stderr) = wait_for(&["--timeout", "10s", &format!("tcp://127.0.0.1:{port}")]);
    assert_eq!(code, Some(0), "{stderr}");
    let probe = &json["probes"][0];
    assert_eq!(probe["state"], "ready");
    // It saw the port closed first: the wait really waited (timings relative to the test are
    // not asserted, since starting the waiter itself takes a variable time).
    assert!(probe["last_error"].as_str().unwrap_or_default().contains("refused"), "{probe}");
    assert!(probe["attempts"].as_u64().unwrap() > 5, "{probe}");
    server.join().unwrap();
}

/// Serves `GET`: 503 for the first `failures` requests, then 200 with `body`.
fn flaky_http_server(failures: usize, body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let (status, body) = if n < failures {
                ("503 Service Unavailable", "starting")
            } else {
                ("200 OK", body)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn http_probe_needs_2xx_and_the_body_it_was_told() {
    let port = flaky_http_server(3, "{\"status\": \"ok\"}");
    let url = format!("http://127.0.0.1:{port}/v1/health#contains=%22ok%22");
    let (code, json, stderr) = wait_for(&["--timeout", "10s", &url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(json["probes"][0]["attempts"].as_u64().unwrap() >= 4, "503s are not ready: {json}");

    let url = format!("http://127.0.0.1:{port}/#status=418");
    let (code, json, stderr) = wait_for(&["--timeout", "500ms", &url]);
    assert_eq!(code, Some(124), "{stderr}");
    assert_eq!(json["verdict"], "timed_out");
    assert_eq!(json["probes"][0]["last_error"], "status 200, want 418");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: timed out after 500ms waiting for http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(last.contains("status 200, want 418"), "{stderr}");
}

#[test]
fn bad_specs_exit_2_with_the_accepted_forms_and_passwords_stay_hidden() {
    let output = xtask_captured(&["wait-for", "tcp://localhost"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the port is missing") && stderr.contains("accepted probe forms"),
        "{stderr}"
    );

    let port = free_port();
    let spec = format!("postgres://me:hunter2@127.0.0.1:{port}/app");
    let (code, json, stderr) = wait_for(&["--timeout", "300ms", &spec]);
    assert_eq!(code, Some(124));
    assert!(!stderr.contains("hunter2") && !json.to_string().contains("hunter2"), "{stderr}{json}");
    assert_eq!(json["probes"][0]["probe"], format!("postgres://me:***@127.0.0.1:{port}/app"));
}

#[test]
fn postgres_is_ready_only_after_init_and_not_as_a_standby_or_shutting_down() {
    let (db, _) = images();
    let mut cleanup = Cleanup::default();
    let name = container(
        &mut cleanup,
        "memories-wait-pg",
        // Another database name than the default: the first start creates it.
        &[
            "--env",
            "POSTGRES_PASSWORD=pw-test",
            "--env",
            "POSTGRES_DB=waitdb",
            "--publish",
            "127.0.0.1::5432",
            db,
            "-c",
            "hot_standby=off",
        ],
    );
    let port = published_port(&name, 5432);
    let spec = format!("postgres://memories:pw-test@127.0.0.1:{port}/waitdb");

    // First start: the initialising server listens on its socket only, so ready means done.
    let (code, _, stderr) = wait_for(&["--timeout", "60s", &spec]);
    assert_eq!(code, Some(0), "{stderr}");
    let logs = docker_output(&["logs", &name]);
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("db: initialised"),
        "ready before init ended"
    );

    // A wrong password is final: no waiting it out.
    let start = Instant::now();
    let wrong = format!("postgres://memories:nope@127.0.0.1:{port}/waitdb");
    let (code, json, _) = wait_for(&["--timeout", "30s", &wrong]);
    assert_eq!(code, Some(1));
    assert!(json["probes"][0]["last_error"].as_str().unwrap().contains("28P01"), "{json}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // A standby without hot standby answers "not accepting connections" (57P03): not ready.
    let pgdata = "/var/lib/postgresql/volume/data";
    docker(&["exec", &name, "touch", &format!("{pgdata}/standby.signal")]);
    docker(&["restart", "--time", "5", &name]);
    let port = published_port(&name, 5432);
    let spec = format!("postgres://memories:pw-test@127.0.0.1:{port}/waitdb");
    // Each short wait times out (the standby is never ready); the restart itself may take
    // longer than one of them on a busy machine, so they go on until the standby has
    // answered, and 57P03 is what it says.
    let restarted = Instant::now();
    loop {
        let (code, json, stderr) = wait_for(&["--timeout", "3s", &spec]);
        assert_eq!(code, Some(124), "{stderr}");
        let last = json["probes"][0]["last_error"].as_str().unwrap_or_default().to_owned();
        if last.contains("57P03") {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "the standby never answered: {json}"
        );
        assert!(!last.contains("SQLSTATE"), "a standby answers 57P03, not {json}");
    }

    // Promoted, the same server is ready.
    docker(&["exec", &name, "pg_ctl", "promote", "--pgdata", pgdata]);
    let (code, _, stderr) = wait_for(&["--timeout", "30s", &spec]);
    assert_eq!(code, Some(0), "{stderr}");

    // A smart shutdown waits for open sessions and refuses new ones: not ready.
    docker(&[
        "exec",
        "--detach",
        &name,
        "psql",
        "--host=/run/postgresql",
        "--username=memories",
        "--command=SELECT pg_sleep(20)",
        "waitdb",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    docker(&["exec", "--detach", &name, "pg_ctl", "stop", "--mode=smart", "--pgdata", pgdata]);
    std::thread::sleep(Duration::from_millis(500));
    let (code, json, stderr) = wait_for(&["--timeout", "2s", &spec]);
    assert_eq!(code, Some(124), "{stderr}");
    let last = json["probes"][0]["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("shutting down"), "{json}");
}

#[test]
fn redis_answers_pong_and_a_wrong_password_is_final() {
    let (_, redis) = images();
    let mut cleanup = Cleanup::default();
    let name = container(
        &mut cleanup,
        "memories-wait-redis",
        &["--publish", "127.0.0.1::6379", redis, "--requirepass", "s3cret"],
    );
    let port = published_port(&name, 6379);
    let (code, _, stderr) =
        wait_for(&["--timeout", "30s", &format!("redis://:s3cret@127.0.0.1:{port}")]);
    assert_eq!(code, Some(0), "{stderr}");
    for (spec, says) in [
        (format!("redis://:wrong@127.0.0.1:{port}"), "WRONGPASS"),
        (format!("redis://127.0.0.1:{port}"), "NOAUTH"),
    ] {
        let (code, json, _) = wait_for(&["--timeout", "30s", &spec]);
        assert_eq!(code, Some(1), "{spec}");
        assert!(json["probes"][0]["last_error"].as_str().unwrap().contains(says), "{json}");
    }
}

fn container(cleanup: &mut Cleanup, prefix: &str, args: &[&str]) -> String {
    require_docker();
    let name = unique_name(prefix);
    cleanup.container(&name);
    let mut all = vec!["run", "--detach", "--name", name.as_str()];
    all.extend_from_slice(args);
    docker(&all);
    name
}

#[test]
fn container_health_healthy_unhealthy_exited_and_none() {
    // Built before the container starts: it turns healthy 4 s after, and the wait must see it
    // starting first.
    let xtask = tests::xtask_binary();
    let mut cleanup = Cleanup::default();
    let healthy = container(
        &mut cleanup,
        "memories-wait-healthy",
        &[
            "--health-cmd",
            "test -e /tmp/up",
            "--health-interval",
            "300ms",
            // Failures while starting do not count: it stays "starting", then turns healthy.
            "--health-start-period",
            "30s",
            "--health-start-interval",
            "300ms",
            "debian:trixie-slim",
            "sh",
            "-c",
            "sleep 4; touch /tmp/up; sleep 60",
        ],
    );
    let (code, json, stderr) =
        wait_for_with(&xtask, &["--timeout", "30s", &format!("docker://{healthy}")]);
    assert_eq!(code, Some(0), "{stderr}");
    // It saw the container still starting: it waited for the health change.
    let last = json["probes"][0]["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("health starting"), "{json}");

    let unhealthy = container(
        &mut cleanup,
        "memories-wait-unhealthy",
        &[
            "--health-cmd",
            "false",
            "--health-interval",
            "200ms",
            "--health-retries",
            "1",
            "debian:trixie-slim",
            "sleep",
            "60",
        ],
    );
    let exited = container(
        &mut cleanup,
        "memories-wait-exited",
        &["debian:trixie-slim", "sh", "-c", "exit 3"],
    );
    let plain =
        container(&mut cleanup, "memories-wait-plain", &["debian:trixie-slim", "sleep", "60"]);
    for (container, says) in
        [(unhealthy, "is unhealthy"), (exited, "exited with code 3"), (plain, "has no healthcheck")]
    {
        let start = Instant::now();
        let (code, json, stderr) =
            wait_for(&["--timeout", "60s", &format!("docker://{container}")]);
        assert_eq!(code, Some(1), "{container}: {stderr}");
        assert!(json["probes"][0]["last_error"].as_str().unwrap().contains(says), "{json}");
        assert!(start.elapsed() < Duration::from_secs(20), "fails fast, not at the deadline");
    }
}

#[test]
fn compose_log_exec_and_file_probes() {
    require_docker();
    let mut cleanup = Cleanup::default();
    let project = unique_name("memories-wait-compose");
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{project}.yaml"));
    std::fs::write(
        &file,
        "services:\n  app:\n    image: debian:trixie-slim\n    command: [sleep, \"60\"]\n    stop_grace_period: 1s\n    \
         healthcheck:\n      test: [CMD, \"true\"]\n      interval: 300ms\n",
    )
    .unwrap();
    cleanup.compose(&project, &file);
    docker(&[
        "compose",
        "--project-name",
        &project,
        "--file",
        file.to_str().unwrap(),
        "up",
        "--detach",
    ]);
    let (code, _, stderr) = wait_for(&["--timeout", "30s", &format!("compose://{project}/app")]);
    assert_eq!(code, Some(0), "{stderr}");
    every_replica_of_a_compose_service_must_be_healthy();

    let logs = container(
        &mut cleanup,
        "memories-wait-log",
        &["debian:trixie-slim", "sh", "-c", "echo up; sleep 4; echo up; touch /tmp/flag; sleep 60"],
    );
    let (code, json, stderr) = wait_for(&[
        "--timeout",
        "30s",
        &format!("log://{logs}?contains=up&times=2"),
        &format!("exec://{logs}?arg=test&arg=-e&arg=/tmp/flag"),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let last = json["probes"][0]["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("1 of 2 times"), "it waited for the second line: {json}");

    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique_name("ready-file"));
    let created = path.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(created, "").unwrap();
    });
    let (code, _, stderr) = wait_for(&["--timeout", "10s", &format!("file://{}", path.display())]);
    assert_eq!(code, Some(0), "{stderr}");
    writer.join().unwrap();
    let _ = std::fs::remove_file(path);
}

/// Two replicas that stay "starting" until told: with one healthy, the service is not ready
/// (the one made healthy is the one `docker ps` lists first, which a wait that looked at one
/// container took for the service); with both, it is. A `compose run` beside them, exited, does
/// not count.
fn every_replica_of_a_compose_service_must_be_healthy() {
    let mut cleanup = Cleanup::default();
    let project = unique_name("memories-wait-replicas");
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{project}.yaml"));
    std::fs::write(
        &file,
        "services:\n  app:\n    image: debian:trixie-slim\n    command: [sleep, \"60\"]\n    \
         stop_grace_period: 1s\n    deploy: {replicas: 2}\n    healthcheck:\n      \
         test: [CMD, test, -e, /tmp/up]\n      interval: 300ms\n      start_period: 60s\n      \
         start_interval: 300ms\n",
    )
    .unwrap();
    cleanup.compose(&project, &file);
    // `compose down` leaves the one-off `compose run` container below: remove it by its label.
    cleanup.project(&project);
    let compose = |args: &[&str]| {
        let mut all = vec!["compose", "--project-name", &project, "--file", file.to_str().unwrap()];
        all.extend_from_slice(args);
        docker(&all)
    };
    compose(&["up", "--detach"]);
    // Exited, and left in place: it would fail the wait if it counted.
    compose(&["run", "--no-deps", "--no-TTY", "app", "true"]);
    let replicas = docker(&[
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        "label=com.docker.compose.oneoff=False",
        "--format",
        "{{.ID}}",
    ]);
    let replicas: Vec<&str> = replicas.lines().collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    docker(&["exec", replicas[0], "touch", "/tmp/up"]);
    let probe = format!("compose://{project}/app");
    let (code, json, stderr) = wait_for(&["--timeout", "3s", &probe]);
    assert_eq!(code, Some(124), "one replica of two is not ready, so it times out: {stderr}");
    let last = json["probes"][0]["last_error"].as_str().unwrap_or_default();
    assert!(last.contains(replicas[1]) && last.contains("health starting"), "{json}");
    docker(&["exec", replicas[1], "touch", "/tmp/up"]);
    let (code, _, stderr) = wait_for(&["--timeout", "30s", &probe]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn the_shim_keeps_the_old_call_forms_and_passes_arguments_intact() {
    let port = flaky_http_server(0, "ok");
    let shim = repo_root().join("scripts/wait_for_service.sh");
    let output = std::process::Command::new(&shim)
        .args([
            &format!("127.0.0.1:{port}"),
            "-t",
            "10",
            "--",
            "printf",
            "[%s]",
            "a b",
            "$HOME",
            "",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "[a b][$HOME][]");

    let output = std::process::Command::new(&shim)
        .args([&format!("http://127.0.0.1:{port}/"), "--", "true"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let closed = free_port();
    let output = std::process::Command::new(&shim)
        .args([&format!("127.0.0.1:{closed}"), "-t", "1", "--", "echo", "never"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(124));
    assert!(output.stdout.is_empty());
    let bad = std::process::Command::new(&shim).args(["nowhere"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
