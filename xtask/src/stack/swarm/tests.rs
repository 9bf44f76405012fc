//! Unit tests of `crate::stack::swarm`, kept beside it so that the module reads as code.

use super::converge::*;
use super::*;
use crate::wait::Attempt;

#[test]
fn a_previous_spec_that_is_only_a_scale_is_no_release_to_return_to() {
    let spec = |image: &str, replicas: u64| {
        json!({"Name": "s_db", "Labels": {"com.docker.stack.image": image},
               "TaskTemplate": {"ContainerSpec": {"Image": image, "Env": ["A=1"]}},
               "Mode": {"Replicated": {"Replicas": replicas}}})
    };
    let service = |now: Value, previous: Value| json!({"Spec": now, "PreviousSpec": previous});
    assert!(only_scaled(&service(spec("db@1", 1), spec("db@1", 0))));
    // What the engine fills in on a CLI update is not a difference.
    let mut filled = spec("db@1", 1);
    filled["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] = json!(10_000_000_000u64);
    filled["UpdateConfig"] = json!({"Parallelism": 1});
    assert!(only_scaled(&service(filled, spec("db@1", 0))));
    assert!(!only_scaled(&service(spec("db@2", 1), spec("db@1", 1))));
    assert!(!only_scaled(&service(spec("db@2", 1), spec("db@1", 0))));
    let mut settings = spec("db@1", 1);
    settings["TaskTemplate"]["ContainerSpec"]["Env"] = json!(["A=2"]);
    assert!(!only_scaled(&service(settings, spec("db@1", 0))));
    assert!(!only_scaled(&service(spec("db@1", 1), Value::Null)));
}

#[test]
fn swarm_definition_drops_compose_only_keys() {
    let merged = json!({
        "name": "memories-prod",
        "services": {
            "server": {"depends_on": {"db": {"condition": "service_started"}}, "image": "x",
                       "command": null, "restart": "always",
                       "security_opt": ["no-new-privileges:true"]},
            "proxy": {"ports": [{"host_ip": "0.0.0.0", "target": 8080, "published": "8080"}],
                      "deploy": {"resources": {"limits": {"cpus": 0.5, "memory": "134217728"}}}},
        },
        "networks": {"default": {"name": "memories-prod_default"}},
        "volumes": {"db-data": {"name": "memories-prod_db-data"}},
    });
    let swarm = for_swarm(merged);
    assert!(swarm.get("name").is_none());
    assert_eq!(swarm["services"]["server"], json!({"image": "x"}));
    assert_eq!(swarm["services"]["proxy"]["ports"][0], json!({"target": 8080, "published": 8080}));
    assert_eq!(swarm["services"]["proxy"]["deploy"]["resources"]["limits"]["cpus"], "0.5");
    assert_eq!(swarm["networks"]["default"], json!({}));
    assert_eq!(swarm["volumes"]["db-data"], json!({}));
}

#[test]
fn a_test_run_label_also_labels_the_service() {
    let run = "t0000abcd-42-7";
    let merged = json!({"services": {
        "server": {"image": "x", "labels": {"memories.run": run, "memories.probe": "http /"},
                   "deploy": {"replicas": 2}},
        "db": {"image": "y", "labels": {"memories.run": ""}},
    }});
    let swarm = for_swarm(merged);
    let server = &swarm["services"]["server"];
    assert_eq!(server["deploy"], json!({"replicas": 2, "labels": {"memories.run": run}}));
    assert_eq!(server["labels"]["memories.run"], run, "the containers keep it");
    assert!(swarm["services"]["db"].get("deploy").is_none(), "outside a run: no label");
}

#[test]
fn secret_names_follow_their_content_and_stack() {
    let a = secret_name("memories", "postgres_password", "hunter2");
    assert_eq!(a, secret_name("memories", "postgres_password", "hunter2"));
    assert!(a.starts_with("memories_postgres_password_") && a.len() == 27 + 12, "{a}");
    assert!(!a.contains("hunter2"));
    assert_ne!(a, secret_name("memories", "postgres_password", "hunter3"));
    let other = secret_name("other", "postgres_password", "hunter2");
    assert_ne!(a[a.len() - 12..], other[other.len() - 12..]);
}

#[test]
fn a_release_file_gives_refs_by_digest() {
    let dir = Utf8PathBuf::try_from(std::env::temp_dir()).unwrap();
    let file = dir.join(format!("xtask-release-{}.json", std::process::id()));
    let digest = format!("sha256:{}", "a".repeat(64));
    let released = json!({"images": [
        {"image": "server", "digest": digest, "refs": ["reg:5000/ns/server:0.1.0", "reg:5000/ns/server:latest"]},
    ]});
    std::fs::write(&file, released.to_string()).unwrap();
    let images = read_release(&file).unwrap();
    assert_eq!(images["server"], format!("reg:5000/ns/server:0.1.0@{digest}"));
    std::fs::write(&file, r#"{"images": []}"#).unwrap();
    assert!(read_release(&file).unwrap_err().to_string().contains("lists no images"));
    std::fs::write(&file, "not json").unwrap();
    assert!(read_release(&file).unwrap_err().to_string().contains("release --json"));
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn convergence_reads_the_update_state() {
    let status = |update: Option<&str>, running| ServiceStatus {
        service: "m_server".into(),
        desired: 2,
        running,
        image: "r/server:0.1.0@sha256:a".into(),
        previous_image: None,
        update: update.map(str::to_owned),
        message: Some("update rolled back".into()),
    };
    let not_yet = |attempt| matches!(attempt, Attempt::NotYet(_));
    assert_eq!(decide(&status(None, 2), Expect::Updated, false), Attempt::Ready);
    assert!(not_yet(decide(&status(None, 1), Expect::Updated, false)));
    // Changed, but swarm has not started the update: the old tasks do not count.
    assert!(not_yet(decide(&status(None, 2), Expect::Updated, true)));
    assert!(not_yet(decide(&status(Some("updating"), 2), Expect::Updated, true)));
    assert_eq!(decide(&status(Some("completed"), 2), Expect::Updated, true), Attempt::Ready);
    let Attempt::Failed(why) =
        decide(&status(Some("rollback_completed"), 2), Expect::Updated, true)
    else {
        panic!("a rolled back deploy fails")
    };
    assert!(why.contains("rolled it back") && why.contains("update rolled back"), "{why}");
    // An earlier deploy's rollback of a service this one did not change: converged.
    assert_eq!(
        decide(&status(Some("rollback_completed"), 2), Expect::Updated, false),
        Attempt::Ready
    );
    assert_eq!(
        decide(&status(Some("rollback_completed"), 2), Expect::RolledBack, false),
        Attempt::Ready
    );
    assert!(not_yet(decide(&status(Some("completed"), 2), Expect::RolledBack, false)));
    let paused = decide(&status(Some("paused"), 2), Expect::Updated, true);
    assert!(matches!(paused, Attempt::Failed(_)));
}
