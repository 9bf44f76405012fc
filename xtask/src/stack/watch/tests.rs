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

/// A scratch project for the sync's own tests.
fn project(name: &str) -> Utf8PathBuf {
    let dir = Utf8PathBuf::try_from(std::env::temp_dir())
        .unwrap()
        .join(format!("watch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    dir.canonicalize_utf8().unwrap()
}

/// The entries of a sync archive: name, kind, and a file's text or a link's target.
fn entries(bytes: Vec<u8>) -> Vec<(String, tar::EntryType, String)> {
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut found = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let mut text = String::new();
        if kind.is_symlink() {
            text = entry.link_name().unwrap().unwrap().to_string_lossy().into_owned();
        } else if kind.is_file() {
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
        }
        found.push((name.trim_end_matches('/').to_owned(), kind, text));
    }
    found
}

#[test]
fn the_sync_skips_what_cannot_be_copied_and_follows_links_only_inside_the_project() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let root = project("links");
    let pkg = root.join("pkg");
    std::fs::write(pkg.join("api.py"), "good edit").unwrap();
    std::fs::write(root.join("shared.py"), "shared inside").unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(pkg.join("test.sock")).unwrap();
    symlink(root.join("shared.py"), pkg.join("inside.py")).unwrap();
    let outside = root.with_file_name(format!("outside-secret-{}", std::process::id()));
    std::fs::write(&outside, "TOP SECRET").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&outside, pkg.join("leak.txt")).unwrap();
    symlink(&pkg, pkg.join("loop")).unwrap();
    std::fs::create_dir_all(pkg.join("__pycache__")).unwrap();
    std::fs::write(pkg.join("__pycache__/api.pyc"), "bytecode").unwrap();

    let mut archive = tar::Builder::new(Vec::new());
    let mut skipped = Vec::new();
    add_entry(&mut archive, &root, &pkg, "app/pkg", 0, &mut skipped).unwrap();
    let found = entries(archive.into_inner().unwrap());
    let file = |name: &str| found.iter().find(|(n, _, _)| n == name).cloned();
    assert_eq!(file("app/pkg/api.py").unwrap().2, "good edit", "{found:?}");
    assert_eq!(file("app/pkg/inside.py").unwrap().2, "shared inside", "a link inside is followed");
    let leak = file("app/pkg/leak.txt").unwrap();
    assert!(leak.1.is_symlink() && leak.2 == outside.as_str(), "copied as a link: {leak:?}");
    assert!(!found.iter().any(|(_, _, text)| text == "TOP SECRET"), "{found:?}");
    assert!(file("app/pkg/test.sock").is_none(), "a socket is skipped: {found:?}");
    assert!(file("app/pkg/__pycache__/api.pyc").is_none(), "{found:?}");
    // The loop (pkg/loop -> pkg) is followed a bounded number of times, then copied as a link.
    assert!(found.len() < 200, "a link loop ends: {} entries", found.len());
    let said = skipped.join("\n");
    assert!(said.contains("test.sock is not a file") && said.contains("leak.txt links outside"));
    std::fs::remove_file(&outside).unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_directory_removed_and_made_again_is_watched_anew_and_synced_whole() {
    let root = project("returning");
    let pkg = root.join("pkg");
    let (sender, events) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(sender).unwrap();
    let points = vec![(pkg.clone(), notify::RecursiveMode::Recursive)];
    watcher.watch(pkg.as_std_path(), notify::RecursiveMode::Recursive).unwrap();
    let mut returning = Returning::new(&points);
    let mut paths = BTreeSet::new();
    returning.look(&mut watcher, &mut paths).unwrap();
    assert!(paths.is_empty(), "nothing is back that was not gone");

    std::fs::remove_dir_all(&pkg).unwrap();
    returning.look(&mut watcher, &mut paths).unwrap();
    assert!(paths.is_empty() && returning.lost.contains(&pkg));

    std::fs::create_dir_all(&pkg).unwrap();
    returning.look(&mut watcher, &mut paths).unwrap();
    assert_eq!(paths, BTreeSet::from([pkg.clone()]), "the whole directory is synced");
    // And it is watched again: an edit inside it is an event.
    while events.try_recv().is_ok() {}
    std::fs::write(pkg.join("api.py"), "edit").unwrap();
    let seen = (0..50).any(|_| {
        matches!(
            events.recv_timeout(Duration::from_millis(100)),
            Ok(Ok(event)) if event.paths.iter().any(|p| p.ends_with("api.py"))
        )
    });
    assert!(seen, "an edit in the directory made again is seen");
    let _ = std::fs::remove_dir_all(&root);
}
