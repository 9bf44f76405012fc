//! `cargo xtask prod deploy --swarm` for real, on a one-node swarm: by digest from a registry,
//! a version the registry lacks refused before anything changes, no password in any service
//! or container, a version whose server cannot start rolled back by swarm, and an update to a
//! new version that keeps the database and proxy running, each under a steady load that sees
//! no failed request and whose every acknowledged insert stays readable; and a stack of a dead
//! test run reaped.
//!
//! Every version comes from a real commit: version A is the repository's HEAD, built in a
//! clone of it (so uncommitted changes in the work tree do not count), and the update goes to
//! a second commit in that clone that changes only the server's code, so the db and proxy
//! images must come out with the same layers from their own epochs.
//!
//! A test binary of its own, so that no other test's containers run while it turns swarm mode
//! on and off: the engine's `swarm init` and `swarm leave` break the name resolution of
//! containers that run at that moment on bridge networks (moby/moby#45144 and #51491), which
//! made a compose stack started beside it fail to find its database.

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tests::{
    Cleanup, Registry, docker, docker_output, free_port, http, leftovers, pyproject_version,
    repo_root, require_docker, wait_for_200, xtask_ok, xtask_process,
};

/// A clone of the repository at HEAD, where the test commits: `cargo xtask` runs on it through
/// `MEMORIES_ROOT`, with this checkout's xtask. Its builds name their images under a registry
/// name of their own (`--registry`), so they never move this checkout's tags
/// (`memories/NAME:<version>-<sha>` of the same commit): other suites run from those.
struct Checkout {
    dir: std::path::PathBuf,
    names: String,
}

impl Checkout {
    fn of_head(name: &str) -> Checkout {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let head = git(&repo_root(), &["rev-parse", "HEAD"]);
        let root = repo_root();
        git(&root, &["clone", "--quiet", "--no-checkout", ".", dir.to_str().unwrap()]);
        git(&dir, &["checkout", "--quiet", "--detach", &head]);
        Checkout { dir, names: tests::unique_name("localhost/swarm-build") }
    }

    fn xtask_ok(&self, args: &[&str]) -> String {
        let output = xtask_process().args(args).env("MEMORIES_ROOT", &self.dir).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "xtask {args:?} in {:?}: {stderr}", self.dir);
        String::from_utf8(output.stdout).unwrap()
    }

    /// Appends `line` to `file` and commits it.
    fn commit(&self, file: &str, line: &str) {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{line}\n")).unwrap();
        git(&self.dir, &["add", file]);
        let identity = ["-c", "user.name=swarm test", "-c", "user.email=swarm@test.invalid"];
        git(&self.dir, &[&identity[..], &["commit", "--quiet", "--message", line]].concat());
    }

    /// `cargo xtask build` of `images` here, under this checkout's own names; every ref it
    /// loads is removed by `cleanup`. Returns each image's `<version>-<sha>` ref.
    fn build(&self, images: &[&str], cleanup: &mut Cleanup) -> Vec<String> {
        let mut args = vec!["build", "--registry", self.names.as_str()];
        args.extend(images);
        let planned: Value =
            serde_json::from_str(&self.xtask_ok(&[&args[..], &["--dry-run", "--json"]].concat()))
                .unwrap();
        for image in images {
            for tag in planned["bake"]["target"][image]["tags"].as_array().unwrap() {
                cleanup.image(tag.as_str().unwrap());
            }
        }
        self.xtask_ok(&args);
        let tags = images.iter().map(|i| planned["bake"]["target"][i]["tags"][1].as_str().unwrap());
        tags.map(str::to_owned).collect()
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git").args(args).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The newest of the app's migrations (`0002_...py` is `0002`).
fn app_head_revision() -> String {
    let versions = repo_root().join("app/src/memories/migrations/versions");
    let names = std::fs::read_dir(versions).unwrap().map(|e| e.unwrap().file_name());
    let ids = names.filter_map(|n| n.to_str().and_then(|n| n.get(..4)).map(str::to_owned));
    ids.filter(|id| id.bytes().all(|b| b.is_ascii_digit())).max().expect("a revision")
}

/// The revision `n` after `id`: `0003` is one after `0002`.
fn revision_after(id: &str, n: u32) -> String {
    format!("{:04}", id.parse::<u32>().unwrap() + n)
}

/// What a steady load through the proxy saw.
#[derive(Default)]
struct Load {
    requests: u64,
    failed: Vec<String>,
    /// (id, n) of every acknowledged insert.
    inserted: Vec<(i64, usize)>,
}

/// The `n`th insert's embedding: no two alike, so a search for it finds it first.
fn unit(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; 384];
    v[n % 384] = 1.0;
    v[(n + 1) % 384] = 0.01 * (1 + n / 384) as f32;
    v
}

/// Inserts and health checks, one every 40 ms or so, until `stop`.
fn steady_load(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Load> {
    std::thread::spawn(move || {
        let mut load = Load::default();
        let mut axis = 0;
        while !stop.load(Ordering::SeqCst) {
            load.requests += 2;
            match http("GET", port, "/v1/health", None) {
                Some(r) if r.status == 200 => {}
                Some(r) => load.failed.push(format!("health {}: {}", r.status, r.body)),
                None => load.failed.push("health: no answer".into()),
            }
            let body = json!({"text": format!("swarm load {axis}"), "embedding": unit(axis)});
            match http("POST", port, "/v1/memories", Some(&body.to_string())) {
                Some(r) if r.status == 201 => {
                    let id = serde_json::from_str::<Value>(&r.body).unwrap()["id"].as_i64();
                    load.inserted.push((id.unwrap(), axis));
                    axis += 1;
                }
                Some(r) => load.failed.push(format!("insert {}: {}", r.status, r.body)),
                None => load.failed.push("insert: no answer".into()),
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        load
    })
}

#[test]
fn prod_deploys_by_digest_to_a_swarm_and_a_broken_version_rolls_back_without_a_failed_request() {
    require_docker();
    let registry = Registry::start();
    let namespace = registry.namespace("swarm");
    let version = pyproject_version();
    let images = ["server", "db", "proxy"];
    let checkout = Checkout::of_head(&tests::unique_name("swarm-checkout"));
    let mut built = Cleanup::default();
    let mut build_and_push = |version: &str| {
        for (image, local) in images.iter().zip(checkout.build(&images, &mut built)) {
            let remote = format!("{namespace}/{image}:{version}");
            docker(&["tag", &local, &remote]);
            docker(&["push", "--quiet", &remote]);
            docker(&["image", "rm", &remote]);
        }
    };
    build_and_push(&version);
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    let we_started_the_swarm = state != "active";
    // `swarm init` makes it and `swarm leave` keeps it.
    let gwbridge_before =
        docker_output(&["network", "inspect", "docker_gwbridge"]).status.success();
    if we_started_the_swarm {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    }
    let stack = tests::unique_name("memswarm");
    let port = free_port();
    let password = tests::unique_name("swarm-pw");
    let deploy = |extra: &[&str], env: &[(&str, &str)]| -> Output {
        let mut command = xtask_process();
        command
            .args(["prod", "deploy", "--swarm", "--stack", &stack, "--timeout", "180s"])
            .args(extra)
            .env("POSTGRES_PASSWORD", &password)
            .env("API_KEYS", "off")
            .env("TLS", "off")
            .env("PROXY_PORT", port.to_string())
            .current_dir(repo_root());
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!said.contains(&password), "prod deploy printed the password: {said}");
        output
    };
    let status = || -> Value {
        let out = xtask_ok(&["prod", "status", "--stack", &stack, "--json"]);
        serde_json::from_str(&out).unwrap()
    };
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut cleanup = Cleanup::default();
        cleanup.stack(&stack);

        // A version the registry lacks: refused, nothing deployed.
        let missing = deploy(&["--registry", &namespace, "--version", "9.9.9"], &[]);
        assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
        assert!(stderr(&missing).contains("the registry does not have"), "{}", stderr(&missing));
        let label = format!("label=com.docker.stack.namespace={stack}");
        assert_eq!(docker(&["service", "ls", "--quiet", "--filter", &label]), "");

        let first = deploy(&["--registry", &namespace], &[]);
        assert!(first.status.success(), "{}", stderr(&first));
        wait_for_200(port, "/v1/health", Duration::from_secs(30));
        for service in status()["services"].as_array().unwrap() {
            let image = service["image"].as_str().unwrap();
            assert!(image.starts_with(&namespace) && image.contains("@sha256:"), "{service}");
            assert_eq!(service["running"], service["desired"], "{service}");
        }
        let services = docker(&["service", "ls", "--quiet", "--filter", &label]);
        let services: Vec<&str> = services.lines().collect();
        assert_eq!(services.len(), 3, "{services:?}");
        let mut inspected = docker(&[&["service", "inspect"], services.as_slice()].concat());
        let containers = docker(&["ps", "--quiet", "--filter", &label]);
        for container in containers.lines() {
            inspected += &docker(&["inspect", container]);
        }
        assert!(!inspected.contains(&password), "docker inspect shows the password");

        // A version whose server cannot start (its table has 384 dimensions, not 7), under a
        // steady load: swarm rolls it back, no request fails, no acknowledged insert is lost.
        let stop = Arc::new(AtomicBool::new(false));
        let load = steady_load(port, stop.clone());
        std::thread::sleep(Duration::from_secs(2));
        let broken = deploy(&["--registry", &namespace], &[("EMBEDDING_DIM", "7")]);
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        let load = load.join().unwrap();
        assert_eq!(broken.status.code(), Some(1), "{}", stderr(&broken));
        assert!(stderr(&broken).contains("swarm rolled it back"), "{}", stderr(&broken));
        let server = status()["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == format!("{stack}_server"))
            .cloned()
            .unwrap();
        assert_eq!(server["update"], "rollback_completed", "{server}");
        assert_eq!(server["running"], 2, "{server}");
        eprintln!(
            "{} requests during the broken deploy, {} failed",
            load.requests,
            load.failed.len()
        );
        assert!(load.failed.is_empty(), "{} failed: {:?}", load.failed.len(), load.failed);
        assert!(load.inserted.len() > 10, "the load ran: {}", load.inserted.len());
        let stored = || -> std::collections::BTreeSet<i64> {
            // Read from the table itself: a search is approximate (HNSW) and may miss a row.
            let db = docker(&[
                "ps",
                "--quiet",
                "--filter",
                &format!("label=com.docker.swarm.service.name={stack}_db"),
            ]);
            let ids = docker(&[
                "exec",
                &db,
                "psql",
                "-U",
                "memories",
                "-d",
                "memories",
                "-At",
                "-c",
                "SELECT id FROM memories",
            ]);
            ids.lines().map(|l| l.parse().unwrap()).collect()
        };
        let ids = stored();
        for (id, _) in &load.inserted {
            assert!(ids.contains(id), "acknowledged insert {id} is in the table");
        }

        // An update to the next commit, which changed only the server's code (so every image
        // gets new labels, as every release does), under a steady load: the servers are
        // replaced one at a time, the database and the proxy keep running, no request fails.
        let next = format!("{version}.post9");
        checkout.commit("app/src/memories/__init__.py", "# The swarm test's second commit.");
        build_and_push(&next);
        let image_of = |service: &str| -> String {
            let statuses = status();
            let found =
                statuses["services"].as_array().unwrap().iter().find(|s| s["service"] == service);
            found.unwrap()["image"].as_str().unwrap().to_owned()
        };
        let (db_before, proxy_before) =
            (image_of(&format!("{stack}_db")), image_of(&format!("{stack}_proxy")));
        let stop = Arc::new(AtomicBool::new(false));
        let load = steady_load(port, stop.clone());
        std::thread::sleep(Duration::from_secs(2));
        let updated = deploy(&["--registry", &namespace, "--version", &next], &[]);
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        let load = load.join().unwrap();
        assert!(updated.status.success(), "{}", stderr(&updated));
        for kept in ["db", "proxy"] {
            let said = format!("{kept}: {namespace}/{kept}:{next}@");
            assert!(stderr(&updated).contains(&said), "{kept} is kept: {}", stderr(&updated));
        }
        assert!(image_of(&format!("{stack}_server")).contains(&format!("/server:{next}@sha256:")));
        assert_eq!(image_of(&format!("{stack}_db")), db_before, "the database was not restarted");
        assert_eq!(image_of(&format!("{stack}_proxy")), proxy_before);
        eprintln!("{} requests during the update, {} failed", load.requests, load.failed.len());
        assert!(load.failed.is_empty(), "{} failed: {:?}", load.failed.len(), load.failed);
        assert!(load.inserted.len() > 10, "the load ran: {}", load.inserted.len());
        let ids = stored();
        for (id, _) in &load.inserted {
            assert!(ids.contains(id), "acknowledged insert {id} is in the table");
        }

        // Expand and contract, each a release whose server image carries one more revision
        // (derived from the last one), deployed under a steady load. The release phase
        // migrates before any server is replaced: no request fails, no insert is lost.
        let query = |sql: &str| -> String {
            let db = docker(&[
                "ps",
                "--quiet",
                "--filter",
                &format!("label=com.docker.swarm.service.name={stack}_db"),
            ]);
            docker(&["exec", &db, "psql", "-U", "memories", "-d", "memories", "-At", "-c", sql])
        };
        let columns = || {
            query(
                "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'memories'::regclass AND attnum > 0 AND NOT attisdropped",
            )
        };
        let revision_now = || query("SELECT version_num FROM alembic_version");
        // The app's newest revision, and the test's own ones after it.
        let head = app_head_revision();
        let (e, f) = (revision_after(&head, 1), revision_after(&head, 2));
        assert_eq!(revision_now(), head, "the release phase migrated the first deploy");
        let release = |base: &str, suffix: &str, id: &str, down: &str, upgrade: &str| -> String {
            let version = format!("{version}.{suffix}");
            let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("{stack}-{suffix}"));
            std::fs::create_dir_all(&dir).unwrap();
            let revision = format!(
                "\"\"\"The swarm test's revision {id}.\"\"\"\nfrom alembic import op\n\n\
                 revision = \"{id}\"\ndown_revision = \"{down}\"\n\n\n\
                 def upgrade():\n{upgrade}\n\n\ndef downgrade():\n    pass\n"
            );
            std::fs::write(dir.join(format!("{id}_swarm_test.py")), revision).unwrap();
            let versions = "/opt/venv/lib/python3.13/site-packages/memories/migrations/versions/";
            let dockerfile =
                format!("FROM {namespace}/server:{base}\nCOPY {id}_swarm_test.py {versions}\n");
            std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
            let server = format!("{namespace}/server:{version}");
            docker(&["build", "--quiet", "--tag", &server, dir.to_str().unwrap()]);
            docker(&["push", "--quiet", &server]);
            docker(&["image", "rm", &server]);
            for image in ["db", "proxy"] {
                let (from, to) = (
                    format!("{namespace}/{image}:{base}"),
                    format!("{namespace}/{image}:{version}"),
                );
                docker(&["pull", "--quiet", &from]);
                docker(&["tag", &from, &to]);
                docker(&["push", "--quiet", &to]);
                docker(&["image", "rm", &from, &to]);
            }
            let _ = std::fs::remove_dir_all(&dir);
            version
        };
        let under_load = |version: &str| -> (Output, Load) {
            let stop = Arc::new(AtomicBool::new(false));
            let load = steady_load(port, stop.clone());
            std::thread::sleep(Duration::from_secs(2));
            let deployed = deploy(&["--registry", &namespace, "--version", version], &[]);
            std::thread::sleep(Duration::from_secs(2));
            stop.store(true, Ordering::SeqCst);
            (deployed, load.join().unwrap())
        };
        let expand = release(
            &next,
            "post10",
            &e,
            &head,
            "    op.execute(\"ALTER TABLE memories ADD COLUMN source text NOT NULL DEFAULT 'api'\")\n\
             \x20   op.execute(\"CREATE INDEX memories_created_at_idx ON memories (created_at)\")",
        );
        let (deployed, load) = under_load(&expand);
        assert!(deployed.status.success(), "{}", stderr(&deployed));
        let migrated = format!("from {head} to {e}");
        assert!(stderr(&deployed).contains(&migrated), "{}", stderr(&deployed));
        assert_eq!(revision_now(), e);
        assert_eq!(columns(), "id,text,embedding,created_at,source");
        eprintln!("{} requests during the expand, {} failed", load.requests, load.failed.len());
        assert!(load.failed.is_empty(), "{} failed: {:?}", load.failed.len(), load.failed);
        let ids = stored();
        assert!(load.inserted.iter().all(|(id, _)| ids.contains(id)), "every insert is kept");

        // A release whose migration fails (a constraint every row violates): refused in the
        // release phase, the schema, revision and servers as they were.
        let servers_before = image_of(&format!("{stack}_server"));
        let failing = release(
            &expand,
            "post11",
            &f,
            &e,
            "    op.execute(\"ALTER TABLE memories DROP COLUMN source\")\n\
             \x20   op.execute(\"ALTER TABLE memories ADD CONSTRAINT long CHECK (length(text) > 1000)\")",
        );
        let (refused, load) = under_load(&failing);
        assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
        assert!(stderr(&refused).contains("violated by some row"), "{}", stderr(&refused));
        assert!(stderr(&refused).contains("no server was replaced"), "{}", stderr(&refused));
        assert_eq!(revision_now(), e, "the failed migration changed nothing");
        assert_eq!(columns(), "id,text,embedding,created_at,source", "not even its first step");
        assert_eq!(image_of(&format!("{stack}_server")), servers_before);
        assert!(load.failed.is_empty(), "{} failed: {:?}", load.failed.len(), load.failed);
        let jobs =
            docker(&["service", "ls", "--quiet", "--filter", &format!("name={stack}_migrate")]);
        assert_eq!(jobs, "", "the migration job is removed after it failed");

        // The contract step: a release that drops the column no running code uses.
        let drop_source = "    op.execute(\"ALTER TABLE memories DROP COLUMN source\")";
        let contract = release(&expand, "post12", &f, &e, drop_source);
        let (deployed, load) = under_load(&contract);
        assert!(deployed.status.success(), "{}", stderr(&deployed));
        assert_eq!(revision_now(), f);
        assert_eq!(columns(), "id,text,embedding,created_at");
        eprintln!("{} requests during the contract, {} failed", load.requests, load.failed.len());
        assert!(load.failed.is_empty(), "{} failed: {:?}", load.failed.len(), load.failed);
        let ids = stored();
        assert!(load.inserted.iter().all(|(id, _)| ids.contains(id)), "every insert is kept");
        // The deploy created pgBackRest's stanza: the WAL is archived (`check` switches to a new
        // segment and waits until it is in the archive).
        let db = docker(&[
            "ps",
            "--quiet",
            "--filter",
            &format!("label=com.docker.swarm.service.name={stack}_db"),
        ]);
        docker(&["exec", &db, "pgbackrest", "check"]);

        // Backups on the swarm: the db image's schedule made a full backup about a minute
        // after the database's first start, so the backups are healthy.
        let backups = |extra: &[&str]| -> Output {
            xtask_process()
                .args([&["prod", "backups", "--stack", &stack, "--json"], extra].concat())
                .output()
                .unwrap()
        };
        let started = std::time::Instant::now();
        while !backups(&[]).status.success() {
            assert!(started.elapsed() < Duration::from_secs(120), "a scheduled backup in 2 min");
            std::thread::sleep(Duration::from_secs(1));
        }
        let listed: Value = serde_json::from_slice(&backups(&[]).stdout).unwrap();
        assert_eq!(listed["health"]["status"], "ok", "{listed}");
        assert_eq!(listed["schedule"]["every_s"], 86400, "{listed}");
        assert!(listed["schedule"]["last_ok"].is_string(), "{listed}");
        let health = status()["backups"].clone();
        assert_eq!(health["health"]["status"], "ok", "{health}");
        assert!(health["newest"].is_string(), "{health}");

        // A backup now, rows written after it, then that backup restored: exactly its rows.
        let made = xtask_ok(&["prod", "backup", "--stack", &stack, "--json"]);
        let label =
            serde_json::from_str::<Value>(&made).unwrap()["label"].as_str().unwrap().to_owned();
        let count = || query("SELECT count(*) FROM memories");
        let at_backup = count();
        for n in 0..3 {
            let body = json!({"text": format!("after the backup {n}"), "embedding": unit(n)});
            let inserted = http("POST", port, "/v1/memories", Some(&body.to_string())).unwrap();
            assert_eq!(inserted.status, 201, "{}", inserted.body);
        }
        let restore = |extra: &[&str]| -> Output {
            xtask_process()
                .args(["prod", "restore", "--stack", &stack, "--backup", &label])
                .args(extra)
                .output()
                .unwrap()
        };
        let refused = restore(&[]);
        assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
        assert!(stderr(&refused).contains("pass --force"), "{}", stderr(&refused));
        let restored = restore(&["--force"]);
        assert!(restored.status.success(), "{}", stderr(&restored));
        eprintln!("{}", stderr(&restored).lines().last().unwrap_or_default());
        assert_eq!(count(), at_backup, "exactly the backup's rows");
        wait_for_200(port, "/v1/health", Duration::from_secs(60));
        for service in status()["services"].as_array().unwrap() {
            assert_eq!(service["running"], service["desired"], "{service}");
        }
        // The restore's scale to 0 and back is no release to roll back to.
        let rollback =
            xtask_process().args(["prod", "rollback", "--stack", &stack, "db"]).output().unwrap();
        assert_eq!(rollback.status.code(), Some(1), "{}", stderr(&rollback));
        assert!(stderr(&rollback).contains("only in its replica count"), "{}", stderr(&rollback));
        drop(cleanup);
        let secrets = docker(&["secret", "ls", "--quiet", "--filter", &format!("name={stack}_")]);
        assert_eq!(secrets, "", "docker stack rm removes the stack's secrets");

        a_dead_runs_swarm_stack_is_reaped(&password);
    }));
    if we_started_the_swarm {
        let _ = docker_output(&["swarm", "leave", "--force"]);
        if !gwbridge_before {
            let _ = docker_output(&["network", "rm", "docker_gwbridge"]);
        }
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(
        leftovers(&format!("label=com.docker.stack.namespace={stack}")),
        Vec::<String>::new()
    );
}

/// A stack that a test run deployed and left when its process died: `cargo xtask reap` removes
/// its services, their containers, its network, volume and secrets.
fn a_dead_runs_swarm_stack_is_reaped(password: &str) {
    // This machine's part of a run id, with a pid and start time no live process has.
    let dead = format!("{}-4194000-1", &tests::run_id()[..9]);
    let stack = tests::unique_name("memorphan");
    let mut cleanup = Cleanup::default();
    cleanup.stack(&stack);
    let deployed = xtask_process()
        .args(["prod", "deploy", "--swarm", "--stack", &stack, "--local", "--no-build"])
        .args(["--timeout", "180s"])
        .env("POSTGRES_PASSWORD", password)
        .env("API_KEYS", "off")
        .env("TLS", "off")
        .env("PROXY_PORT", free_port().to_string())
        .env("MEMORIES_RUN", &dead)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let label = format!("label=memories.run={dead}");
    let listed = |what: &str| docker(&[what, "ls", "--quiet", "--filter", &label]);
    assert_eq!(listed("service").lines().count(), 3, "every service carries the run label");
    assert_eq!(listed("secret").lines().count(), 2, "the password and key secrets carry it");
    assert!(!leftovers(&label).is_empty(), "its containers and network carry it");

    let reaped = xtask_process()
        .args(["reap", "--json"])
        .env_remove("MEMORIES_RUN")
        .current_dir(repo_root())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&reaped.stderr);
    assert!(reaped.status.success(), "{said}");
    assert!(said.contains(&format!("removing what run {dead} left")), "{said}");
    assert_eq!(listed("service"), "");
    assert_eq!(listed("secret"), "");
    assert_eq!(leftovers(&label), Vec::<String>::new());
}
