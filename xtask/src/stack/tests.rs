//! Unit tests of `crate::stack`, kept beside it so that the module reads as code.

use super::*;

fn stack(mode: Mode, profiles: &[Profile]) -> Stack {
    Stack::new(Utf8Path::new("/repo"), mode, "p1".into(), profiles, "0.1.0-abc1234".into())
}

#[test]
fn a_local_env_file_is_read_after_the_dev_one_and_by_dev_stacks_only() {
    let temp = Utf8PathBuf::try_from(std::env::temp_dir()).unwrap();
    let root = temp.join(format!("xtask-local-env-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let local = root.join(LOCAL_ENV_FILE);
    std::fs::write(&local, "EMBEDDING_DIM=7\nAPI_TOKEN=hidden-value\n").unwrap();
    let dev = Stack::new(&root, Mode::Dev, "p".into(), &[], "t".into());
    let args = dev.compose().args;
    let at = |file: &str| args.iter().position(|a| a == file).unwrap();
    assert!(at("compose/dev.env") < at(local.as_str()), "{args:?}");
    assert_eq!(dev.setting("EMBEDDING_DIM").as_deref(), Some("7"));
    assert!(dev.secret_values().contains(&"hidden-value".to_owned()));
    let test = Stack::new(&root, Mode::Test, "p".into(), &[], "t".into());
    assert!(!test.compose().args.contains(&local.to_string()), "only dev reads it");
    std::fs::remove_file(&local).unwrap();
    let without = Stack::new(&root, Mode::Dev, "p".into(), &[], "t".into());
    assert!(without.env_files.is_empty(), "it is optional");
    std::fs::remove_dir(&root).unwrap();
}

#[test]
fn a_project_is_of_the_kind_its_containers_are_labelled_with() {
    let listing = "exited\tprod\t/repo/compose/compose.yaml,/repo/compose/dev.yaml\n\
                   running\t\t/repo/compose/compose.yaml,/repo/compose/test.yaml\n\
                   created\tprod\t\n";
    let existing = Existing::parse(listing);
    // The label wins over the files; a container without it is judged by its files.
    assert_eq!(existing.modes, [Mode::Prod, Mode::Test]);
    assert!(existing.running);
    // A volume left by a stack taken down without `--volumes` still says its kind.
    let volume = Existing::parse("\nvolume\tprod\t\n");
    assert_eq!(volume.modes, [Mode::Prod]);
    assert!(!volume.running);
    let none = Existing::parse("exited\t\t/elsewhere/docker-compose.yml\n");
    assert!(none.modes.is_empty() && !none.running);
    let step = stack(Mode::Run, &[]).compose();
    assert!(step.env.contains(&(KIND_VAR.to_owned(), "run".to_owned())), "{:?}", step.env);
}

#[test]
fn one_constructor_sets_project_files_env_file_and_profiles() {
    let step = stack(Mode::Test, &[Profile::Cache, Profile::Cache]).compose();
    assert_eq!(
        step.args,
        [
            "compose",
            "--project-name",
            "p1",
            "--file",
            "compose/compose.yaml",
            "--file",
            "compose/test.yaml",
            "--env-file",
            "compose/test.env",
            "--profile",
            "cache",
        ]
    );
    assert_eq!(step.cwd, "/repo");
    assert!(step.env.contains(&("MEMORIES_TAG".into(), "0.1.0-abc1234".into())));
    assert!(step.env.contains(&("REDIS_URL".into(), "redis://redis:6379/0".into())));
    let plain = stack(Mode::Dev, &[]).compose();
    assert!(!plain.env.iter().any(|(k, _)| k == "REDIS_URL"));
}

#[test]
fn images_and_probes_follow_the_service_model() {
    let test = stack(Mode::Test, &[Profile::Cache]);
    let model = crate::stack::services::tests::model(
        r#"{"services": {
            "db": {"image": "memories/db:0.1.0-abc1234",
                   "labels": {"memories.probe": "postgres"},
                   "environment": {"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "pw"},
                   "ports": [{"target": 5432}]},
            "otel": {"image": "otel/collector:1"},
            "redis": {"image": "memories/redis:0.1.0-abc1234",
                      "labels": {"memories.probe": "redis"}, "ports": [{"target": 6379}]},
            "server": {"image": "memories/server:0.1.0-abc1234",
                       "labels": {"memories.probe": "http /v1/health"},
                       "ports": [{"target": 8283, "published": "8283"}]},
            "stale": {"image": "memories/proxy:0.0.1-old", "ports": [{"target": 8080}]}
        }}"#,
    )
    .unwrap();
    assert_eq!(test.images(&model), [ImageName::SERVER, ImageName::DB, ImageName::named("redis")]);
    let probes = test.probes(&model, &|service, port| {
        (service.name != "redis").then_some(port.published.unwrap_or(40000))
    });
    let shown: Vec<String> = probes.iter().map(|(s, p)| format!("{s} {p}")).collect();
    assert_eq!(
        shown,
        [
            "db postgres://u:***@127.0.0.1:40000/u",
            "otel compose://p1/otel",
            "redis compose://p1/redis",
            "server http://127.0.0.1:8283/v1/health#status=200",
            "stale compose://p1/stale",
        ]
    );
    let planned = planned_waits(&test, &model);
    assert_eq!(
        planned[0],
        "db postgres://u:***@127.0.0.1:5432/u (container port; the host port is read after up)"
    );
    assert_eq!(planned[3], "server http://127.0.0.1:8283/v1/health#status=200");
}

#[test]
fn env_files_and_project_names() {
    let text = "# c\nA=1\nexport B=two\nEMPTY=\n\n  C = 3 \nQ=\"x y\"\nA=2\n";
    assert_eq!(env_file_value(text, "A").as_deref(), Some("2"));
    assert_eq!(env_file_value(text, "Q").as_deref(), Some("x y"));
    assert_eq!(env_file_value(text, "Z"), None);
    let a = unique_project("memories-test");
    assert!(a.starts_with(&format!("memories-test-{}-", std::process::id())), "{a}");
}
