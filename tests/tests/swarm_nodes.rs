//! `cargo xtask prod deploy --swarm` on two nodes: the host's engine as manager, and a second
//! engine (the `node` image: Debian's docker.io) in a privileged container joined as a worker.
//! Both pull the released images by digest from one registry; the server's replicas run on
//! both nodes; when the second node's engine stops, swarm brings every replica back on the
//! first within 30 s, and the service answers throughout.
//!
//! The second engine shares the network namespace of the test registry's container, so both
//! engines reach the registry as `127.0.0.1:PORT` (the host through a published port), which
//! makes one image ref good on both. The swarm runs over a bridge network this test creates:
//! the host's engine advertises its gateway address, the node its own address on it, and the
//! overlay network's VXLAN traffic crosses that bridge and nothing else.
//!
//! A test binary of its own, like `swarm`: it turns swarm mode on and off, which breaks the
//! name resolution of containers running at that moment on bridge networks.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    Cleanup, docker, docker_output, free_port, http, pyproject_version, repo_root, require_docker,
    run_id, unique_name, wait_for_200, xtask_ok, xtask_process,
};

/// A network removed when dropped, after the containers on it.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker_output(&["network", "rm", &self.0]);
    }
}

/// Polls `check` every 200 ms until it holds or `limit` passes; how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// The nodes the running tasks of `service` are on, one entry per task.
fn running_on(service: &str) -> Vec<String> {
    let out = docker_output(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
    ]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    listed
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("Running"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn replicas_spread_over_two_nodes_and_come_back_on_one_when_the_other_stops() {
    require_docker();
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_ne!(state, "active", "this test makes its own swarm: leave the current one first");
    let built: Value = serde_json::from_str(&xtask_ok(&[
        "build", "server", "db", "proxy", "registry", "node", "--json",
    ]))
    .unwrap();
    let local = |image: &str| -> String {
        let images = built["images"].as_array().unwrap();
        let found = images.iter().find(|i| i["image"] == image).unwrap();
        found["refs"][1].as_str().unwrap().to_owned()
    };
    let labels = ["--label", &format!("memories.run={}", run_id())];

    // The bridge both engines speak swarm over, and the registry both pull from.
    let network = unique_name("memories-nodes");
    docker(&[&["network", "create"], &labels[..], &[&network]].concat());
    let _network = Network(network.clone());
    let mut cleanup = Cleanup::default();
    let gateway =
        docker(&["network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", &network]);
    let registry = unique_name("memories-nodes-registry");
    cleanup.container(&registry);
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    docker(
        &[
            &["run", "--detach", "--name", &registry, "--network", &network],
            &labels[..],
            &["--publish", &format!("{address}:{port}")],
            &["--env", &format!("REGISTRY_HTTP_ADDR=0.0.0.0:{port}"), &local("registry")],
        ]
        .concat(),
    );
    within(Duration::from_secs(30), "the registry answers", || {
        http("GET", port, "/v2/", None).is_some_and(|r| r.status == 200)
    });
    let namespace = format!("{address}/nodes-{}", run_id());
    let version = pyproject_version();
    for image in ["server", "db", "proxy"] {
        let remote = format!("{namespace}/{image}:{version}");
        docker(&["tag", &local(image), &remote]);
        cleanup.image(&remote);
        docker(&["push", "--quiet", &remote]);
    }

    // The second engine, in the registry's network namespace.
    let node = unique_name("memories-node");
    let node_data = format!("{node}-data");
    // Removed before the registry, whose network namespace it runs in.
    let mut node_cleanup = Cleanup::default();
    node_cleanup.container(&node);
    node_cleanup.volume(&node_data);
    // Made first, so that it carries the run's label too (`cargo xtask reap` after a kill).
    docker(&[&["volume", "create"], &labels[..], &[&node_data]].concat());
    docker(
        &[
            &["run", "--detach", "--privileged", "--name", &node],
            &labels[..],
            &["--network", &format!("container:{registry}")],
            &["--volume", &format!("{node_data}:/var/lib/docker"), &local("node")],
        ]
        .concat(),
    );
    within(Duration::from_secs(60), "the second engine answers", || {
        docker_output(&["exec", &node, "docker", "version"]).status.success()
    });
    let node_address = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &registry,
    ]);

    let gwbridge_before =
        docker_output(&["network", "inspect", "docker_gwbridge"]).status.success();
    docker(&["swarm", "init", "--advertise-addr", &gateway]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let token = docker(&["swarm", "join-token", "--quiet", "worker"]);
        let joined = docker_output(&[
            "exec",
            &node,
            "docker",
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &node_address,
            &format!("{gateway}:2377"),
        ]);
        assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
        let worker = docker(&["exec", &node, "docker", "info", "--format", "{{.Name}}"]);
        let manager = docker(&["info", "--format", "{{.Name}}"]);
        within(Duration::from_secs(30), "the worker is ready", || {
            let nodes = docker(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
            nodes.lines().any(|l| l == format!("{worker} Ready"))
        });

        let stack = unique_name("memnodes");
        let proxy_port = free_port();
        let password = unique_name("nodes-pw");
        let mut stack_cleanup = Cleanup::default();
        stack_cleanup.stack(&stack);
        let deployed = xtask_process()
            .args(["prod", "deploy", "--swarm", "--stack", &stack, "--timeout", "240s"])
            .args(["--registry", &namespace])
            .env("POSTGRES_PASSWORD", &password)
            .env("API_KEYS", "off")
            .env("TLS", "off")
            .env("PROXY_PORT", proxy_port.to_string())
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
        wait_for_200(proxy_port, "/v1/health", Duration::from_secs(60));
        let server = format!("{stack}_server");
        let mut spread = running_on(&server);
        spread.sort();
        let mut both = vec![manager.clone(), worker.clone()];
        both.sort();
        assert_eq!(spread, both, "one server replica on each node");
        for pinned in ["db", "proxy"] {
            let on = running_on(&format!("{stack}_{pinned}"));
            assert_eq!(
                on,
                std::slice::from_ref(&manager),
                "{pinned} stays on the manager, with its data"
            );
        }
        // The worker pulled its replica by digest from the registry.
        let pulled = docker(&["exec", &node, "docker", "ps", "--format", "{{.Image}}"]);
        assert!(pulled.contains(&format!("{namespace}/server")), "{pulled}");

        let stopping = Instant::now();
        docker(&["stop", "--time", "10", &node]);
        let mut failed = 0;
        let back = within(Duration::from_secs(30), "both replicas on the manager", || {
            if http("GET", proxy_port, "/v1/health", None).map(|r| r.status) != Some(200) {
                failed += 1;
            }
            running_on(&server) == [manager.clone(), manager.clone()]
        });
        eprintln!(
            "the second engine stopped; both server replicas ran on the manager {:.1} s after \
             the stop began ({:.1} s after it returned); health checks through the proxy \
             meanwhile: {failed} failed",
            stopping.elapsed().as_secs_f64(),
            back.as_secs_f64()
        );
        wait_for_200(proxy_port, "/v1/health", Duration::from_secs(10));
        drop(stack_cleanup);
    }));
    let _ = docker_output(&["swarm", "leave", "--force"]);
    if !gwbridge_before {
        let _ = docker_output(&["network", "rm", "docker_gwbridge"]);
    }
    drop(node_cleanup);
    drop(cleanup);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
