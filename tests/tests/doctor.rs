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
