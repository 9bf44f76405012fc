//! `cargo xtask db` for real on a dev stack of its own: a dump survives a reset and restores
//! every row, a restore into a database with rows is refused without `--clean`, and an
//! interrupted dump leaves no file under its name (nor a partial one).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tests::{Cleanup, free_port, http, leftovers, require_docker, unique_name, xtask_process};

struct DevStack {
    project: String,
    server_port: u16,
    db_port: u16,
}

impl DevStack {
    fn xtask(&self, args: &[&str]) -> Command {
        let mut command = xtask_process();
        command
            .args(args)
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("DEV_SERVER_PORT", self.server_port.to_string())
            .env("DEV_DB_PORT", self.db_port.to_string())
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.xtask(args).stderr(Stdio::piped()).output().expect("cannot run xtask")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "xtask {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Every memory as `id|text`, in id order.
    fn rows(&self) -> Vec<String> {
        let query = "select id || '|' || text from memories order by id";
        let out = self.ok(&["db", "psql", "--", "--no-align", "--tuples-only", "-c", query]);
        out.lines().map(str::to_owned).collect()
    }
}

#[test]
fn a_dump_survives_a_reset_restores_every_row_and_an_interrupted_one_leaves_no_file() {
    require_docker();
    let stack = DevStack {
        project: unique_name("memories-db"),
        server_port: free_port(),
        db_port: free_port(),
    };
    let mut cleanup = Cleanup::default();
    cleanup.project(&stack.project);
    let dir = std::env::temp_dir().join(unique_name("memories-dumps"));
    std::fs::create_dir_all(&dir).unwrap();
    stack.ok(&["dev"]);

    let embedding = vec!["0.25"; 384].join(",");
    for text in ["first", "second, with a comma", "third"] {
        let body = format!(r#"{{"text": "{text}", "embedding": [{embedding}]}}"#);
        let created = http("POST", stack.server_port, "/v1/memories", Some(&body)).unwrap();
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let before = stack.rows();
    assert_eq!(before.len(), 3);

    let dump = dir.join("dev.dump");
    let dump = dump.to_str().unwrap();
    let written = stack.ok(&["db", "dump", "--output", dump, "--json"]);
    assert!(written.contains(r#""file""#), "{written}");
    let again = stack.run(&["db", "dump", "--output", dump]);
    assert!(!again.status.success(), "an existing dump is never overwritten");

    // A restore into a database with rows is refused, and changes nothing.
    let refused = stack.run(&["db", "restore", dump]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("holds 3 rows: pass --clean"), "{stderr}");
    assert_eq!(stack.rows(), before);

    // Reset (no terminal: --yes is required), then restore: every row is back.
    let unconfirmed = stack.run(&["db", "reset"]);
    assert_eq!(unconfirmed.status.code(), Some(1), "reset asks first");
    assert_eq!(stack.rows(), before, "an unconfirmed reset changes nothing");
    stack.ok(&["db", "reset", "--yes"]);
    assert_eq!(stack.rows(), Vec::<String>::new(), "the reset database is empty");
    stack.ok(&["db", "restore", dump]);
    assert_eq!(stack.rows(), before);
    // --clean replaces what is there; the served API sees the rows.
    stack.ok(&["db", "restore", dump, "--clean"]);
    assert_eq!(stack.rows(), before);
    let search = format!("/v1/memories/search?k=5&embedding={embedding}");
    let found = http("GET", stack.server_port, &search.replace(',', "%2C"), None).unwrap();
    assert_eq!(found.status, 200, "{}", found.body);
    assert!(found.body.contains("second, with a comma"), "{}", found.body);

    // An interrupted dump: a lock holds pg_dump, then SIGINT.
    let db_container = tests::service_containers(&stack.project, "db");
    let lock = "begin; lock table memories in access exclusive mode; select pg_sleep(20);";
    let mut locker = Command::new("docker")
        .args(["exec", &db_container, "psql", "-U", "memories", "-d", "memories", "-c", lock])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let cut = dir.join("cut.dump");
    let mut dumping = stack
        .xtask(&["db", "dump", "--output", cut.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(dumping.try_wait().unwrap().is_none(), "the lock holds the dump");
    let pid = dumping.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dumping.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the dump did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = locker.kill();
    let _ = locker.wait();
    assert_eq!(status.code(), Some(130));
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["dev.dump"], "no cut.dump, no partial file");

    stack.ok(&["dev", "down", "--volumes"]);
    let label = format!("label=com.docker.compose.project={}", stack.project);
    assert_eq!(leftovers(&label), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}
