//! Unit tests of `crate::stack::watch`, kept beside it so that the module reads as code.

use super::*;
use crate::stack::services::tests::model;

fn dev_model() -> Model {
    model(
        r#"{"services": {
        "server": {"image": "memories/server:t", "labels": {"memories.reload": "SIGHUP"},
          "develop": {"watch": [
            {"action": "sync+restart", "path": "/r/app/src/memories",
             "target": "/opt/venv/site/memories", "ignore": ["__pycache__/", "gen/*.json"]},
            {"action": "rebuild", "path": "/r/app/uv.lock"},
            {"action": "rebuild", "path": "/r/docker/common"}]}},
        "db": {"image": "memories/db:t",
          "develop": {"watch": [
            {"action": "rebuild", "path": "/r/docker/db"},
            {"action": "rebuild", "path": "/r/docker/common"}]}},
        "redis": {"image": "memories/redis:t"}
    }}"#,
    )
    .unwrap()
}

fn batch(paths: &[&str]) -> Batch {
    Batch::of(&dev_model(), &paths.iter().map(Utf8PathBuf::from).collect())
}

#[test]
fn a_source_edit_syncs_to_the_rule_target_and_restarts_that_service_only() {
    let b = batch(&["/r/app/src/memories/api.py", "/r/app/src/memories/sub/new.py"]);
    assert!(b.rebuild.is_empty());
    assert_eq!(b.restart, BTreeSet::from(["server".to_owned()]));
    let inside: Vec<&str> = b.sync["server"].iter().map(|(_, i)| i.as_str()).collect();
    assert_eq!(inside, ["/opt/venv/site/memories/api.py", "/opt/venv/site/memories/sub/new.py"]);
}

#[test]
fn editor_files_bytecode_and_rule_ignores_do_nothing() {
    for path in [
        "/r/app/src/memories/.api.py.swp",
        "/r/app/src/memories/api.py~",
        "/r/app/src/memories/4913",
        "/r/app/src/memories/.#api.py",
        "/r/app/src/memories/__pycache__/api.cpython-313.pyc",
        "/r/app/src/memories/gen/x.json",
        "/r/app/README.md",
    ] {
        assert!(batch(&[path]).is_empty(), "{path}");
    }
    // A pattern with a slash matches from the rule's path only.
    assert!(!batch(&["/r/app/src/memories/sub/gen/x.json"]).is_empty());
}

#[test]
fn a_dependency_or_shared_dockerfile_change_rebuilds_the_services_it_belongs_to() {
    let b = batch(&["/r/app/uv.lock", "/r/app/src/memories/api.py"]);
    assert_eq!(b.rebuild, BTreeSet::from(["server".to_owned()]));
    assert!(b.sync.is_empty() && b.restart.is_empty(), "a rebuild covers the sync: {b:?}");
    let b = batch(&["/r/docker/common/debs.sh"]);
    assert_eq!(b.rebuild, BTreeSet::from(["db".to_owned(), "server".to_owned()]));
    // A file named like a rule's file, elsewhere, is not it.
    assert!(batch(&["/r/app/uv.lock.bak"]).is_empty());
}

#[test]
fn log_lines_lose_their_escape_sequences() {
    assert_eq!(without_escapes("\u{1b}[2KTraceback\n\u{1b}[31mred\u{1b}[0m"), "Traceback\nred");
}

#[test]
fn globs_match_whole_components() {
    assert!(glob("*.py", "api.py"));
    assert!(glob("a?c", "abc"));
    assert!(!glob("*.py", "api.pyc"));
    assert!(glob("*", ""));
    assert!(!glob("gen", "generated"));
}
