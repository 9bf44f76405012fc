//! `cargo xtask doctor` on a machine that has everything: every line ok, the registry included.

use tests::{require_docker, xtask_captured};

#[test]
fn doctor_passes_here_with_the_local_registry() {
    require_docker();
    let output = xtask_captured(&["doctor", "--registry", "127.0.0.1:5000"]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}{}", String::from_utf8_lossy(&output.stderr));
    for what in ["rust", "docker CLI", "docker engine", "buildx", "compose", "disk", "registry"] {
        let line = report
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} line: {report}"));
        assert!(!line.starts_with("fail"), "{line}");
    }
    assert!(report.contains("linux/arm64"), "the builder can do arm64 here: {report}");
}

/// Each benchmark of the quick set (`cargo xtask bench`) runs, both sides, once: a peer command
/// that broke (a flag buildx no longer takes, a compose file moved) fails CI here, not a user.
#[test]
fn the_quick_benchmarks_and_their_peers_run() {
    tests::require_docker();
    for bench in ["wait", "stack", "build", "startup"] {
        let output = tests::xtask_process()
            .args(["bench", bench, "--runs", "1", "--json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "bench {bench}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        for side in ["ours", "peer"] {
            let samples = report[side]["samples_ms"].as_array().map_or(0, Vec::len);
            assert_eq!(samples, 1, "bench {bench}: {side} ran once: {report}");
        }
    }
}

/// The edit-to-serving benchmark (`cargo xtask bench devloop`, not in the quick set: three dev
/// stacks) runs each of its three sides once. Its copies of the repository once failed every
/// build (`uv sync --locked` refused a lock whose project version the copy had not followed),
/// and nothing ran it.
#[test]
fn the_devloop_benchmark_runs_all_three_sides() {
    tests::require_docker();
    let output = tests::xtask_process()
        .args(["bench", "devloop", "--runs", "1", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench devloop: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let sides = [&report["ours"], &report["peer"], &report["others"][0]];
    for side in sides {
        let samples = side["samples_ms"].as_array().map_or(0, Vec::len);
        assert_eq!(samples, 1, "each side ran once: {report}");
    }
}
