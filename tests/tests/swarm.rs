//! `cargo xtask prod deploy --swarm` for real, on a one-node swarm.
//!
//! A test binary of its own, so that no other test's containers run while it turns swarm mode
//! on and off: the engine's `swarm init` and `swarm leave` break the name resolution of
//! containers that run at that moment on bridge networks (moby/moby#45144 and #51491), which
//! made a compose stack started beside it fail to find its database.

use std::time::Duration;

use tests::{
    Cleanup, docker, docker_output, free_port, leftovers, repo_root, require_docker, wait_for_200,
    xtask_ok, xtask_process,
};

#[test]
fn prod_deploys_to_a_one_node_swarm_with_every_replica_healthy() {
    require_docker();
    xtask_ok(&["build", "server", "db", "proxy"]);
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    let we_started_the_swarm = state != "active";
    if we_started_the_swarm {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    }
    let stack = tests::unique_name("memswarm");
    let port = free_port();
    let output = {
        let mut cleanup = Cleanup::default();
        cleanup.stack(&stack);
        let output = xtask_process()
            .args([
                "prod",
                "deploy",
                "--swarm",
                "--stack",
                &stack,
                "--no-build",
                "--timeout",
                "120s",
            ])
            .env("POSTGRES_PASSWORD", "swarm-test")
            .env("PROXY_PORT", port.to_string())
            .current_dir(repo_root())
            .output()
            .unwrap();
        if output.status.success() {
            wait_for_200(port, "/v1/health", Duration::from_secs(30));
            let replicas = docker(&[
                "ps",
                "--filter",
                &format!("label=com.docker.swarm.service.name={stack}_server"),
                "--format",
                "{{.Status}}",
            ]);
            assert_eq!(
                replicas.lines().filter(|s| s.contains("(healthy)")).count(),
                2,
                "{replicas}"
            );
        }
        output
    };
    if we_started_the_swarm {
        let _ = docker_output(&["swarm", "leave", "--force"]);
    }
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        leftovers(&format!("label=com.docker.stack.namespace={stack}")),
        Vec::<String>::new()
    );
}
