//! The compose definition's own rules, checked with `docker compose config` (no engine needed):
//! every mode validates, every service has a healthcheck, no database port beyond loopback, and
//! the otel collector's config is consistent. Part of the repository checks of `cargo xtask ci`.

use std::process::Command;

use serde_json::Value;
use tests::repo_root;

/// The merged definition of one mode, as JSON: the one definition with the mode's overlay
/// and env file, or `run`'s own file.
fn merged(mode: &str, profiles: &[&str]) -> Value {
    merged_with(mode, profiles, &[])
}

/// [`merged`] with more compose files after the mode's (prod's HTTPS overlays).
fn merged_with(mode: &str, profiles: &[&str], extra: &[&str]) -> Value {
    let mut args: Vec<String> =
        vec!["compose".into(), "--project-name".into(), "memories-check".into()];
    match mode {
        "run" => args.extend(["--file".into(), "compose/run.yaml".into()]),
        _ => args.extend([
            "--file".into(),
            "compose/compose.yaml".into(),
            "--file".into(),
            format!("compose/{mode}.yaml"),
            "--env-file".into(),
            format!("compose/{mode}.env"),
        ]),
    }
    for file in extra {
        args.extend(["--file".to_owned(), (*file).to_owned()]);
    }
    for p in profiles {
        args.extend(["--profile".to_owned(), (*p).to_owned()]);
    }
    args.extend(["config".to_owned(), "--format".into(), "json".into()]);
    let output = Command::new("docker")
        .args(&args)
        .env("MEMORIES_TAG", "check")
        .env("MEMORIES_SECRETS", "/run/check")
        .env("POSTGRES_PASSWORD", "check")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(output.status.success(), "{mode}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn compose_files_validate_with_healthchecks_and_no_database_port_beyond_loopback() {
    for (mode, profiles) in
        [("dev", &["cache", "otel"][..]), ("test", &["cache", "otel"]), ("prod", &[]), ("run", &[])]
    {
        let definition = merged(mode, profiles);
        let services = definition["services"].as_object().unwrap();
        assert!(!services.is_empty(), "{mode}");
        for (name, service) in services {
            let health = &service["healthcheck"];
            assert!(health["test"].is_array(), "{mode}/{name} has no healthcheck");
            assert!(health["start_interval"].is_string(), "{mode}/{name} has no start_interval");
            for port in service["ports"].as_array().into_iter().flatten() {
                let host_ip = port["host_ip"].as_str().unwrap_or("0.0.0.0");
                if mode != "prod" || name == "db" {
                    assert_eq!(
                        host_ip, "127.0.0.1",
                        "{mode}/{name} publishes beyond loopback: {port}"
                    );
                }
                if mode == "test" {
                    assert!(
                        port.get("published").is_none_or(|p| p == "" || p.is_null()),
                        "test/{name}: {port}"
                    );
                }
            }
        }
        if mode == "prod" {
            let published: Vec<&String> =
                services.iter().filter(|(_, s)| s["ports"].is_array()).map(|(n, _)| n).collect();
            assert_eq!(published, ["proxy"], "prod publishes only the proxy");
            // Every prod service is confined, restarts when it crashes, has limits and an
            // update policy that rolls back, and sees no password in its environment.
            for (name, service) in services {
                assert_eq!(service["read_only"], true, "prod/{name}");
                assert_eq!(service["cap_drop"], serde_json::json!(["ALL"]), "prod/{name}");
                let deploy = &service["deploy"];
                assert_eq!(deploy["restart_policy"]["condition"], "any", "prod/{name}");
                assert!(deploy["resources"]["limits"]["memory"].is_string(), "prod/{name}");
                assert_eq!(deploy["update_config"]["failure_action"], "rollback", "prod/{name}");
                let env = service["environment"].as_object().into_iter().flatten();
                for (key, value) in env {
                    assert!(
                        !key.contains("PASSWORD") || key.ends_with("_FILE"),
                        "prod/{name} has {key}={value} in its environment"
                    );
                }
            }
            assert_eq!(services["db"]["deploy"]["update_config"]["order"], "stop-first");
            assert_eq!(services["server"]["deploy"]["update_config"]["order"], "start-first");
        }
    }
    // No default password in prod: without it, the definition does not even validate.
    let output = Command::new("docker")
        .args(["compose", "--file", "compose/compose.yaml", "--file", "compose/prod.yaml"])
        .args(["--env-file", "compose/prod.env", "config", "--quiet"])
        .env("MEMORIES_TAG", "check")
        .env("MEMORIES_SECRETS", "/run/check")
        .env_remove("POSTGRES_PASSWORD")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("POSTGRES_PASSWORD is required"));
}

/// Each way prod serves HTTPS (the overlays `cargo xtask prod` adds) validates: the proxy
/// publishes HTTPS beside HTTP, says which way, gets its certificate as secrets or a volume (never
/// in its environment), and is ready by its own healthcheck, which asks over HTTPS.
#[test]
fn prod_https_overlays_validate() {
    let ways: [(&str, &[&str]); 3] = [
        ("files", &["compose/https.yaml", "compose/tls-files.yaml"]),
        ("acme", &["compose/https.yaml", "compose/acme.yaml"]),
        ("acme", &["compose/https.yaml", "compose/acme.yaml", "compose/acme-ca.yaml"]),
    ];
    for (way, files) in ways {
        let definition = merged_with("prod", &[], files);
        let proxy = &definition["services"]["proxy"];
        let targets: Vec<u64> = proxy["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["target"].as_u64().unwrap())
            .collect();
        assert_eq!(targets, [8080, 8443], "{files:?}");
        assert_eq!(proxy["environment"]["PROXY_TLS"], way, "{files:?}");
        assert!(proxy["labels"].get("memories.probe").is_none(), "{files:?}: {}", proxy["labels"]);
        assert_eq!(proxy["healthcheck"]["test"], serde_json::json!(["CMD", "proxy-health"]));
        let secrets: Vec<&str> = proxy["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["source"].as_str().unwrap())
            .collect();
        match (way, files.len()) {
            ("files", _) => assert_eq!(secrets, ["tls_cert", "tls_key"]),
            (_, 2) => assert!(secrets.is_empty(), "{secrets:?}"),
            _ => assert_eq!(secrets, ["acme_ca"]),
        }
        if way == "acme" {
            let volumes = proxy["volumes"].as_array().unwrap();
            assert!(volumes.iter().any(|v| v["source"] == "acme"), "{volumes:?}");
        }
    }
}

#[test]
fn the_otel_collector_config_is_consistent() {
    use yaml_rust2::YamlLoader;
    let text = std::fs::read_to_string(repo_root().join("docker/otel/collector.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("collector.yaml is YAML");
    let config = &docs[0];
    assert!(
        !config["receivers"]["otlp"]["protocols"]["http"].is_badvalue(),
        "OTLP over HTTP is received"
    );
    let pipelines = config["service"]["pipelines"].as_hash().expect("service.pipelines");
    assert!(pipelines.keys().any(|k| k.as_str() == Some("traces")), "a traces pipeline");
    for (name, pipeline) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            for item in pipeline[section].as_vec().into_iter().flatten() {
                let item = item.as_str().unwrap();
                assert!(
                    !config[section][item].is_badvalue(),
                    "pipeline {name:?} uses undefined {section}.{item}"
                );
            }
        }
    }
    for extension in config["service"]["extensions"].as_vec().into_iter().flatten() {
        assert!(
            !config["extensions"][extension.as_str().unwrap()].is_badvalue(),
            "undefined extension"
        );
    }
    // `cargo xtask dev --profile otel` points the server at port 4318 of the collector.
    assert_eq!(
        config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].as_str(),
        Some("0.0.0.0:4318")
    );
}
