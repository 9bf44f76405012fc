//! `cargo xtask reap`: what a test run whose process is gone left in Docker is removed; what a
//! live run or another machine's run owns is kept.

use tests::{Cleanup, RUN_LABEL, docker, docker_output, require_docker, run_id, xtask_process};

/// A run id of this machine whose process is gone: the pid of a child that has exited, with a
/// start time no process of that pid can have now.
fn dead_run() -> String {
    let own = run_id();
    let host = own.split('-').next().expect("t<host>-<pid>-<start>");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    format!("{host}-{pid}-1")
}

fn exists(args: &[&str]) -> bool {
    docker_output(args).status.success()
}

#[test]
fn a_dead_runs_leftovers_are_reaped_and_live_or_foreign_runs_are_kept() {
    require_docker();
    let dead = dead_run();
    let foreign = "t00000000-1-1";
    let label = |run: &str| format!("{RUN_LABEL}={run}");
    let name = |what: &str, run: &str| format!("reap-{what}-{run}");
    // What a killed run left: a container, a network, a volume and a throwaway image tag.
    docker(&[
        "create",
        "--label",
        &label(&dead),
        "--name",
        &name("c", &dead),
        "debian:trixie-slim",
    ]);
    docker(&["network", "create", "--label", &label(&dead), &name("n", &dead)]);
    docker(&["volume", "create", "--label", &label(&dead), &name("v", &dead)]);
    let tag = format!("localhost/reap-{dead}-0/image:1");
    docker(&["tag", "debian:trixie-slim", &tag]);
    // A live run's (this test's own) and another machine's.
    let mut cleanup = Cleanup::default();
    let live = name("c", run_id());
    cleanup.container(&live);
    docker(&["create", "--name", &live, "debian:trixie-slim"]);
    cleanup.volume(&name("v", foreign));
    docker(&["volume", "create", "--label", &label(foreign), &name("v", foreign)]);

    let reap = |args: &[&str]| {
        let output = xtask_process().arg("reap").args(args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let said: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        // A dry run prints its plan, with the report under `runs`; a run, the report.
        let report = match args.contains(&"--dry-run") {
            true => {
                assert_eq!(said["dry_run"], true, "{said}");
                said["runs"].clone()
            }
            false => said,
        };
        let find = |run: &str| {
            report.as_array().unwrap().iter().find(|r| r["run"] == run).cloned().unwrap()
        };
        (find(&dead), find(run_id()), find(foreign))
    };
    let (planned, _, _) = reap(&["--dry-run", "--json"]);
    assert_eq!(
        (planned["owner"].as_str(), planned["removed"].as_bool()),
        (Some("gone"), Some(false))
    );
    assert_eq!(planned["leftovers"]["tags"][0], tag.as_str());
    assert!(exists(&["container", "inspect", &name("c", &dead)]), "a dry run removes nothing");

    let (dead_report, live_report, foreign_report) = reap(&["--json"]);
    assert_eq!(dead_report["removed"], true);
    assert_eq!(
        (live_report["owner"].as_str(), live_report["removed"].as_bool()),
        (Some("alive"), Some(false))
    );
    assert_eq!(foreign_report["owner"], "unknown");
    assert!(!exists(&["container", "inspect", &name("c", &dead)]));
    assert!(!exists(&["network", "inspect", &name("n", &dead)]));
    assert!(!exists(&["volume", "inspect", &name("v", &dead)]));
    assert!(!exists(&["image", "inspect", &tag]));
    assert!(exists(&["container", "inspect", &live]), "a live run's container was removed");
    assert!(exists(&["volume", "inspect", &name("v", foreign)]), "another machine's was removed");
}
