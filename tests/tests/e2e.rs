//! End-to-end tests against a live stack, run by `cargo xtask test`, which starts the stack
//! (with the `cache` profile), discovers the server's port, and passes it in `MEMORIES_URL`,
//! with the compose project in `MEMORIES_PROJECT`.

use std::io::Write as _;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tests::{docker, http, http_with, pyproject_version, wait_for_200};

/// Tests share the stack; those that restart the server or watch the cache take it alone.
static STACK: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    STACK.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The server's port and the compose project. `cargo xtask test` hands over the endpoint it
/// discovered (`MEMORIES_URL`) and the project (`MEMORIES_PROJECT`); since a restarted container
/// may be published on another port, the port is looked up again from the project each time.
fn stack() -> (u16, String) {
    let url = std::env::var("MEMORIES_URL")
        .expect("MEMORIES_URL is not set: run the end-to-end tests through `cargo xtask test`");
    let project = std::env::var("MEMORIES_PROJECT").expect("MEMORIES_PROJECT is not set");
    let container = server_container(&project);
    let port = docker(&["port", &container, "8283/tcp"])
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("the server of {project} (first seen at {url}) is not published")
        });
    (port, project)
}

fn server_container(project: &str) -> String {
    let container = tests::service_containers(project, "server");
    assert!(!container.is_empty(), "no server container in project {project}");
    container
}

fn get_json(port: u16, path: &str) -> (u16, Value, String) {
    let response = http("GET", port, path, None).unwrap_or_else(|| panic!("GET {path}: no answer"));
    let body = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, body, response.headers)
}

/// A unit vector along `axis`, slightly tilted towards `axis + 1`, tagged by `salt`.
fn embedding(axis: usize, salt: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; 384];
    v[axis % 384] = 1.0;
    v[(axis + 1) % 384] = salt;
    v
}

fn insert(port: u16, text: &str, embedding: &[f32]) -> i64 {
    let body = json!({"text": text, "embedding": embedding}).to_string();
    let response = http("POST", port, "/v1/memories", Some(&body)).expect("POST answers");
    assert_eq!(response.status, 201, "{}", response.body);
    serde_json::from_str::<Value>(&response.body).unwrap()["id"].as_i64().unwrap()
}

fn search_path(embedding: &[f32], k: usize) -> String {
    let values: Vec<String> = embedding.iter().map(|v| v.to_string()).collect();
    format!("/v1/memories/search?embedding={}&k={k}", values.join(","))
}

#[test]
fn health_reports_ok_and_the_version() {
    let _shared = shared();
    let (port, _) = stack();
    let (status, body, _) = get_json(port, "/v1/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], pyproject_version());
}

#[test]
fn version_equals_pyproject() {
    let _shared = shared();
    let (port, _) = stack();
    let (status, body, _) = get_json(port, "/v1/version");
    assert_eq!(status, 200);
    assert_eq!(body["version"], pyproject_version());
}

#[test]
fn nearest_neighbours_come_back_through_pgvector() {
    let _shared = shared();
    let (port, _) = stack();
    let axis = 100 + (std::process::id() as usize % 50);
    let near = insert(port, "e2e near", &embedding(axis, 0.05));
    let far = insert(port, "e2e far", &embedding(axis + 2, 0.0));
    // A kept stack may hold earlier runs' rows at these very places, and every row off these
    // axes (`far` too) is equally far: `near` comes back, in order of distance, ahead of `far`.
    let (status, found, _) = get_json(port, &search_path(&embedding(axis, 0.0), 100));
    assert_eq!(status, 200, "{found}");
    let rows = found.as_array().unwrap();
    let distance = |i: usize| rows[i]["distance"].as_f64().unwrap();
    assert!((1..rows.len()).all(|i| distance(i - 1) <= distance(i)), "in order: {found}");
    let at = |id: i64| rows.iter().position(|r| r["id"].as_i64() == Some(id));
    let near_at = at(near).unwrap_or_else(|| panic!("near {near} found: {found}"));
    assert!(distance(near_at) < distance(rows.len() - 1), "{found}");
    if let Some(far_at) = at(far) {
        assert!(distance(near_at) < distance(far_at), "{found}");
    }

    let (status, body, _) = get_json(port, "/v1/memories/search?embedding=1,2,3");
    assert_eq!(status, 422);
    assert!(body.to_string().contains("expects 384"), "{body}");
}

#[test]
fn a_repeated_search_is_served_from_redis() {
    // Alone: an insert by another test moves the cache generation on between two searches.
    let _alone = STACK.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (port, _) = stack();
    insert(port, "e2e cached", &embedding(7, 0.3));
    let path = search_path(&embedding(7, 0.31), 3);
    let (_, first, headers) = get_json(port, &path);
    assert!(headers.contains("x-cache: miss"), "the first search misses: {headers}");
    let (_, second, headers) = get_json(port, &path);
    assert!(headers.contains("x-cache: hit"), "the second search hits: {headers}");
    assert_eq!(first, second);
    // An insert moves the cache on: the next search sees it.
    insert(port, "e2e cached 2", &embedding(7, 0.31));
    let (_, _, headers) = get_json(port, &path);
    assert!(headers.contains("x-cache: miss"), "an insert invalidates: {headers}");
}

#[test]
fn data_survives_a_server_restart() {
    let _alone = STACK.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (port, project) = stack();
    let id = insert(port, "e2e durable", &embedding(250, 0.7));
    docker(&["restart", "--time", "5", &server_container(&project)]);
    let (port, _) = stack();
    wait_for_200(port, "/v1/health", Duration::from_secs(60));
    // The suite may run again on a kept stack, which holds the rows of earlier runs at the same
    // distance: the row is among the nearest, not necessarily first.
    let (_, found, _) = get_json(port, &search_path(&embedding(250, 0.7), 20));
    let ids: Vec<i64> = found.as_array().unwrap().iter().filter_map(|r| r["id"].as_i64()).collect();
    assert!(ids.contains(&id), "{found}");
}

/// Input that PostgreSQL or pgvector cannot store as given is refused with 422 and a reason,
/// never a 500 or a row that can never be found.
#[test]
fn unstorable_input_is_refused_with_422() {
    let _shared = shared();
    let (port, _) = stack();
    let values = |value: &str| vec![value; 384].join(",");
    let mut one_huge = vec!["0.5"; 384];
    one_huge[3] = "1e39";
    let bodies = [
        ("NUL in text", format!(r#"{{"text":"a\u0000b","embedding":[{}]}}"#, values("0.5"))),
        ("lone surrogate", format!(r#"{{"text":"a\ud800b","embedding":[{}]}}"#, values("0.5"))),
        ("beyond float32", format!(r#"{{"text":"huge","embedding":[{}]}}"#, one_huge.join(","))),
        ("zero as float32", format!(r#"{{"text":"tiny","embedding":[{}]}}"#, values("1e-46"))),
    ];
    for (what, body) in bodies {
        let response = http("POST", port, "/v1/memories", Some(&body)).expect("POST answers");
        assert_eq!(response.status, 422, "{what}: {}", response.body);
        assert!(response.body.contains("detail"), "{what}: {}", response.body);
    }
    for (what, query) in [("beyond float32", one_huge.join(",")), ("tiny", values("1e-46"))] {
        let (status, body, _) = get_json(port, &format!("/v1/memories/search?embedding={query}"));
        assert_eq!(status, 422, "search {what}: {body}");
    }
}

/// The database container of the test stack.
fn db_container(project: &str) -> String {
    let container = tests::service_containers(project, "db");
    assert!(!container.is_empty(), "no db container in project {project}");
    container
}

/// Unpauses a container when dropped, so a failed assertion never leaves the database paused.
struct Unpause(String);

impl Drop for Unpause {
    fn drop(&mut self) {
        let _ = tests::docker_output(&["unpause", &self.0]);
    }
}

#[test]
fn after_a_database_crash_and_restart_every_request_succeeds() {
    let _alone = STACK.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (port, project) = stack();
    // Several pooled connections, all of which the restart makes stale.
    for i in 0..8 {
        insert(port, &format!("e2e before restart {i}"), &embedding(300 + i, 0.2));
    }
    // Killed, not stopped: the server's connections get no goodbye from the database and
    // stay open on its side until they are used.
    let db = db_container(&project);
    docker(&["kill", &db]);
    docker(&["start", &db]);
    let start = std::time::Instant::now();
    while docker(&["inspect", "--format", "{{.State.Health.Status}}", &db]) != "healthy" {
        assert!(start.elapsed() < Duration::from_secs(60), "the database never became healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..10 {
        let (status, body, _) = get_json(port, &search_path(&embedding(300 + i, 0.2), 1));
        assert_eq!(status, 200, "request {i} after the restart: {body}");
    }
    insert(port, "e2e after restart", &embedding(320, 0.2));
}

#[test]
fn a_database_that_does_not_answer_gives_503_fast_and_no_error_text() {
    let _alone = STACK.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (port, project) = stack();
    wait_for_200(port, "/v1/health", Duration::from_secs(30));
    let db = db_container(&project);
    let paused = Unpause(db.clone());
    docker(&["pause", &db]);
    // The health endpoint gives up after 1 s (2 s is the promise, met in a quiet run). The
    // bound here only tells failing fast from hanging: other stacks' tests may load the
    // machine at the same time.
    let start = std::time::Instant::now();
    let (status, body, _) = get_json(port, "/v1/health");
    let took = start.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(4), "health took {took:?}");
    assert_eq!(body["database"], "unavailable", "no database error text: {body}");
    // Other requests fail within their deadline (3 s) instead of hanging, with no error text.
    let body = json!({"text": "e2e while paused", "embedding": embedding(330, 0.1)}).to_string();
    let response = http("POST", port, "/v1/memories", Some(&body)).expect("an answer in time");
    assert_eq!(response.status, 503, "{}", response.body);
    assert!(response.headers.contains("retry-after"), "{}", response.headers);
    assert!(!response.body.contains("connection"), "{}", response.body);
    assert_eq!(metric(port, "memories_db_up "), 0.0, "a scrape sees the database away");
    drop(paused);
    wait_for_200(port, "/v1/health", Duration::from_secs(30));
    // Each scrape asks the database on its own, with a deadline of 0.5 s (health's is 1 s), so
    // right after the unpause, under the load of other stacks' tests, one scrape can still see
    // it away (a CI run's did, its `SELECT 1` past the deadline at 545 ms). Back means a scrape
    // soon sees it, not the first one.
    let start = std::time::Instant::now();
    while metric(port, "memories_db_up ") != 1.0 {
        assert!(start.elapsed() < Duration::from_secs(15), "no scrape sees the database back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, found, _) = get_json(port, &search_path(&embedding(330, 0.1), 1));
    assert_eq!(status, 200, "{found}");
    // The insert answered 503 was rolled back when its stuck statement returned.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_texts(&project, "e2e while paused"), 0, "a 503 never takes effect");
}

/// How many rows hold `text`, read from the table.
fn count_texts(project: &str, text: &str) -> u64 {
    let sql = format!("SELECT count(*) FROM memories WHERE text = '{}'", text.replace('\'', "''"));
    let db = db_container(project);
    docker(&["exec", &db, "psql", "-U", "memories", "-d", "memories", "-At", "-c", &sql])
        .parse()
        .unwrap()
}

#[test]
fn an_insert_answered_503_behind_a_lock_is_never_stored_and_a_retry_stores_one_row() {
    let _alone = STACK.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (port, project) = stack();
    wait_for_200(port, "/v1/health", Duration::from_secs(30));
    let text = format!("e2e behind a lock {}", tests::unique_name("k"));
    let body = json!({"text": text, "embedding": embedding(340, 0.3)}).to_string();
    let key = tests::unique_name("idempotency");
    let post = |key: &str, body: &str| {
        http_with("POST", port, "/v1/memories", &[("Idempotency-Key", key)], Some(body)).unwrap()
    };
    // A lock held past the request's deadline (3 s): PostgreSQL cancels the waiting insert at
    // the deadline, so the 503 is the whole story. The lock is held from a psql session fed
    // on stdin until the request has its answer, and the request is sent only once
    // PostgreSQL shows the lock granted: `docker exec` can take seconds to start on a loaded
    // machine, and a fixed wait let the insert in first (and the lock then outlived the test).
    let db = db_container(&project);
    let mut locker = std::process::Command::new("docker")
        .args(["exec", "-i", &db, "psql", "-U", "memories", "-d", "memories"])
        .args(["-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut hold = locker.stdin.take().unwrap();
    hold.write_all(b"begin; lock table memories in access exclusive mode;\n").unwrap();
    hold.flush().unwrap();
    let granted = "SELECT count(*) FROM pg_locks WHERE relation = 'memories'::regclass \
                   AND mode = 'AccessExclusiveLock' AND granted";
    let asked = std::time::Instant::now();
    while docker(&["exec", &db, "psql", "-U", "memories", "-d", "memories", "-At", "-c", granted])
        != "1"
    {
        assert!(asked.elapsed() < Duration::from_secs(60), "the lock was never granted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = post(&key, &body);
    hold.write_all(b"commit;\n").unwrap();
    drop(hold);
    assert!(locker.wait().unwrap().success(), "the locking session failed");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.headers.contains("retry-after"), "{}", refused.headers);
    assert_eq!(count_texts(&project, &text), 0, "the refused insert is not stored");

    // The retry the 503 invites, twice with the same key: one row, the same answer.
    let first = post(&key, &body);
    assert_eq!(first.status, 201, "{}", first.body);
    let again = post(&key, &body);
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(first.body, again.body, "the first answer again");
    assert!(again.headers.contains("idempotent-replayed: true"), "{}", again.headers);
    assert_eq!(count_texts(&project, &text), 1);
    // The same key with another body is a client error, not a second row.
    let other = json!({"text": "another body", "embedding": embedding(341, 0.3)}).to_string();
    let misused = post(&key, &other);
    assert_eq!(misused.status, 422, "{}", misused.body);
    assert!(misused.body.contains("Idempotency-Key"), "{}", misused.body);
    assert_eq!(count_texts(&project, &text), 1);
}

/// The value of the series `line_start` (a metric name and its labels, as Prometheus's text
/// format writes them) in the server's `GET /metrics`, or 0 when it has none yet.
fn metric(port: u16, line_start: &str) -> f64 {
    let response = http("GET", port, "/metrics", None).expect("GET /metrics answers");
    assert_eq!(response.status, 200, "{}", response.body);
    response
        .body
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn the_server_counts_its_requests_by_route_and_status_and_names_each_one() {
    // Alone: the counts must move by exactly what this test sends.
    let _alone = STACK.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (port, _) = stack();
    let ok = r#"memories_requests_total{method="GET",route="/v1/version",status="200"}"#;
    let bad = r#"memories_requests_total{method="GET",route="/v1/memories/search",status="422"}"#;
    let unmatched = r#"memories_requests_total{method="GET",route="unmatched",status="404"}"#;
    let before = (metric(port, ok), metric(port, bad), metric(port, unmatched));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, _, headers) = get_json(port, "/v1/version");
        assert_eq!(status, 200);
        let id = headers.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap();
        ids.push(id.trim().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each request its own id: {ids:?}");
    assert_eq!(get_json(port, "/v1/memories/search?embedding=x").0, 422);
    assert_eq!(get_json(port, "/no/such/path/42").0, 404);
    let after = (metric(port, ok), metric(port, bad), metric(port, unmatched));
    assert_eq!(after, (before.0 + 3.0, before.1 + 1.0, before.2 + 1.0));
    assert_eq!(metric(port, "memories_build_info{"), 1.0, "the build's info");
}
