//! Repository checks: rules every Dockerfile and build input must follow, read as text, with
//! no Docker engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn dockerfiles() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root().join("docker")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().unwrap().to_string_lossy().starts_with("Dockerfile") {
                found.push(path);
            }
        }
    }
    assert!(!found.is_empty(), "no Dockerfile under docker/");
    found.sort();
    found
}

/// Joins continuation lines and drops comments and blank lines.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[derive(Debug, Default)]
struct Stage {
    base: String,
    user: Option<String>,
    healthcheck: bool,
    copies_from: Vec<String>,
    /// Every instruction after its FROM, continuation lines joined.
    body: Vec<String>,
}

/// The stages of a Dockerfile by name (unnamed ones by index), in order.
fn stages(text: &str) -> Vec<(String, Stage)> {
    let mut stages: Vec<(String, Stage)> = Vec::new();
    for instruction in instructions(text) {
        let mut words = instruction.split_whitespace();
        let keyword = words.next().unwrap().to_ascii_uppercase();
        let rest: Vec<&str> = words.collect();
        if keyword == "FROM" {
            let args: Vec<&str> = rest.iter().copied().filter(|w| !w.starts_with("--")).collect();
            let name = match args.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => stages.len().to_string(),
            };
            stages.push((name, Stage { base: args[0].to_owned(), ..Stage::default() }));
            continue;
        }
        let (_, stage) = stages.last_mut().expect("an instruction before FROM");
        stage.body.push(instruction.clone());
        match keyword.as_str() {
            "USER" => stage.user = Some(rest.join(" ")),
            "HEALTHCHECK" => stage.healthcheck = rest.first() != Some(&"NONE"),
            "COPY" => {
                for word in rest {
                    if let Some(from) = word.strip_prefix("--from=") {
                        stage.copies_from.push(from.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    stages
}

#[test]
fn no_dockerfile_has_a_syntax_line() {
    // A `# syntax=` line makes BuildKit pull a frontend image, which fails offline.
    for path in dockerfiles() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let directive = line.trim_start_matches('#').trim().to_ascii_lowercase();
            assert!(
                !(line.trim_start().starts_with('#') && directive.starts_with("syntax")),
                "{}:{}: remove the `# syntax=` line",
                path.display(),
                n + 1
            );
        }
    }
}

#[test]
fn every_cache_mount_is_named_apart_by_cache_space() {
    // `build --no-cache` passes `CACHE_SPACE` so that its cache mounts start empty without
    // emptying anyone else's: a mount that ignores it would carry package lists and wheels from
    // an earlier build into a build that claims to start fresh.
    for path in dockerfiles() {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut declared = false;
        for instruction in instructions(&text) {
            let mut words = instruction.split_whitespace();
            match words.next().unwrap_or_default().to_ascii_uppercase().as_str() {
                "FROM" => declared = false,
                "ARG" => declared |= words.any(|w| w.split('=').next() == Some("CACHE_SPACE")),
                _ => {}
            }
            for mount in instruction.split_whitespace().filter_map(|w| w.strip_prefix("--mount=")) {
                let options: BTreeMap<&str, &str> =
                    mount.split(',').filter_map(|o| o.split_once('=')).collect();
                if options.get("type") != Some(&"cache") {
                    continue;
                }
                let id = options.get("id").copied().unwrap_or_default();
                assert!(
                    id.ends_with("$CACHE_SPACE") && declared,
                    "{}: the cache mount `{mount}` must have an id ending in $CACHE_SPACE, in a \
                     stage that declares `ARG CACHE_SPACE`",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_only_external_base_is_debian_trixie_slim() {
    for path in dockerfiles() {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut known = BTreeSet::new();
        for (name, stage) in stages(&text) {
            assert!(
                known.contains(&stage.base) || stage.base == "debian:trixie-slim",
                "{}: stage {name} is FROM {}: build FROM debian:trixie-slim or an earlier stage",
                path.display(),
                stage.base
            );
            known.insert(name);
        }
    }
}

#[test]
fn final_images_run_as_non_root_with_a_healthcheck() {
    let mut leaves_seen = 0;
    for path in dockerfiles() {
        let text = std::fs::read_to_string(&path).unwrap();
        let stages = stages(&text);
        let by_name: BTreeMap<&str, &Stage> = stages.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let used: BTreeSet<&str> = stages
            .iter()
            .flat_map(|(_, s)| s.copies_from.iter().map(String::as_str).chain([s.base.as_str()]))
            .collect();
        // Follows FROM to the nearest stage that sets the property.
        let inherited = |name: &str, get: &dyn Fn(&Stage) -> Option<String>| {
            let mut current = by_name.get(name).copied();
            while let Some(stage) = current {
                if let Some(value) = get(stage) {
                    return Some(value);
                }
                current = by_name.get(stage.base.as_str()).copied();
            }
            None
        };
        for (name, _) in stages.iter().filter(|(n, _)| !used.contains(n.as_str())) {
            leaves_seen += 1;
            let user = inherited(name, &|s| s.user.clone()).unwrap_or_else(|| "root".into());
            let user_name = user.split(':').next().unwrap();
            // The one exception: a Docker engine for the two-node swarm test, which runs
            // privileged and never outside that test (an engine needs root to make its
            // containers' namespaces, networks and mounts).
            let engine = path.ends_with("docker/node/Dockerfile") && name == "node";
            assert!(
                engine || !matches!(user_name, "root" | "0"),
                "{}: target {name} runs as {user}: add a non-root USER",
                path.display()
            );
            assert!(
                inherited(name, &|s| s.healthcheck.then(String::new)).is_some(),
                "{}: target {name} has no HEALTHCHECK",
                path.display()
            );
        }
    }
    assert!(leaves_seen >= 5, "expected the runtime, standalone, db, redis and proxy targets");
}

#[test]
fn dockerignore_keeps_build_output_and_git_out_of_contexts() {
    let text = std::fs::read_to_string(root().join(".dockerignore"))
        .expect(".dockerignore at the repository root (the context of every image)");
    let lines: BTreeSet<&str> = text.lines().map(str::trim).collect();
    for needed in ["target/", ".git/", "**/__pycache__/", "**/.venv/"] {
        assert!(lines.contains(needed), ".dockerignore lacks `{needed}`");
    }
}

#[test]
fn python_dependencies_are_locked() {
    let lock = std::fs::read_to_string(root().join("app/uv.lock"))
        .expect("app/uv.lock: run `uv lock` in app/ and commit it");
    assert!(lock.contains("name = \"memories\""), "uv.lock does not lock the memories project");
    // The images' `uv sync --locked` refuses a lock whose project version is not pyproject's.
    let pyproject = std::fs::read_to_string(root().join("app/pyproject.toml")).unwrap();
    let version = pyproject.lines().find(|l| l.starts_with("version = ")).unwrap();
    assert!(
        lock.contains(&format!("name = \"memories\"\n{version}\n")),
        "app/uv.lock does not lock app/pyproject.toml's {version}: run `uv lock` in app/"
    );
}

#[test]
fn the_stage_parser_sees_what_the_checks_rely_on() {
    let text = "FROM debian:trixie-slim AS a\nUSER x\nHEALTHCHECK CMD \\\n  true\n\
                FROM a AS b\n# comment\nCOPY --from=a /x /y\nFROM debian:trixie-slim\n";
    let stages = stages(text);
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "2"]);
    assert_eq!(stages[0].1.user.as_deref(), Some("x"));
    assert!(stages[0].1.healthcheck);
    assert_eq!(stages[1].1.base, "a");
    assert_eq!(stages[1].1.copies_from, ["a"]);
}

/// Every `.rs` file under `xtask/src`, with its path relative to it.
fn xtask_sources() -> Vec<(String, String)> {
    let base = root().join("xtask/src");
    let mut found = Vec::new();
    let mut dirs = vec![base.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.strip_prefix(&base).unwrap().to_string_lossy().into_owned();
                found.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn output_never_panics_on_a_closed_pipe() {
    // `println!` and `eprintln!` panic when stdout or stderr is closed (`| head`, a closed
    // terminal), which would skip a teardown: `say!` and `out!` (term.rs) ignore the error.
    let mut offenders = Vec::new();
    for (name, text) in xtask_sources() {
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if ["println!(", "eprintln!(", "print!(", "eprint!("].iter().any(|m| code.contains(m)) {
                offenders.push(format!("xtask/src/{name}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "use say! or out! instead:\n{}", offenders.join("\n"));
}

#[test]
fn processes_start_only_through_the_runner() {
    // `plan::Step` is the one door: it echoes (redacting secrets), stops on Ctrl-C and shields
    // clean-up. Nothing else may start a process.
    let markers = ["Command::new(", "process::Command", "cmd!(", "duct::", "xshell"];
    let mut offenders = Vec::new();
    for (name, text) in xtask_sources() {
        if name == "run/plan.rs" {
            continue;
        }
        for (number, line) in text.lines().enumerate() {
            if markers.iter().any(|m| line.contains(m)) {
                offenders.push(format!("xtask/src/{name}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "start processes with plan::Step:\n{}", offenders.join("\n"));
}

#[test]
fn only_main_reads_the_command_line_types() {
    // cli/ turns what was given into each task's request values; a task module that took
    // clap's types would tie its logic (and its tests) to the spelling of the flags.
    let offenders: Vec<String> = xtask_sources()
        .into_iter()
        .filter(|(name, text)| {
            name != "main.rs" && !name.starts_with("cli/") && text.contains("crate::cli")
        })
        .map(|(name, _)| format!("xtask/src/{name}"))
        .collect();
    assert!(offenders.is_empty(), "take request values, not cli types: {offenders:?}");
}

type Graph = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The module a source file is (`stack/swarm.rs` is `stack::swarm`, `stack/mod.rs` is `stack`).
fn module_of(file: &str) -> String {
    let path = file.trim_end_matches(".rs").trim_end_matches("/mod");
    path.replace('/', "::")
}

/// The modules of `xtask/src` and which others each one's code names (`crate::a::b`,
/// `super::b`, and `use crate::{...}` lists), outside tests and comments: a name is the longest
/// module it starts with. `main` is left out (it declares them all).
fn module_graph() -> Graph {
    let sources = xtask_sources();
    let modules: std::collections::BTreeSet<String> =
        sources.iter().map(|(name, _)| module_of(name)).collect();
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| modules.contains(m))
    };
    let mut graph = Graph::new();
    for (name, text) in &sources {
        let module = module_of(name);
        // A module's unit tests (`tests.rs`) may name anything.
        if module == "main" || name.ends_with("tests.rs") {
            continue;
        }
        // `super` of a file is its folder's module; of a folder's `mod.rs`, the folder's parent.
        let parent = match name.ends_with("/mod.rs") {
            true => module.rsplit_once("::").map_or("", |(p, _)| p).to_owned(),
            false => module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_owned()),
        };
        let code = text.split("#[cfg(test)]").next().unwrap();
        let code: String =
            code.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        let mut uses = std::collections::BTreeSet::new();
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.clone())] {
            for (at, _) in code.match_indices(prefix) {
                if at > 0 && code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = &code[at + prefix.len()..];
                let join = |tail: &str| match base.is_empty() {
                    true => tail.to_owned(),
                    false => format!("{base}::{tail}"),
                };
                let path_end = |r: &str| {
                    r.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                        .unwrap_or(r.len())
                };
                let head = &rest[..path_end(rest)];
                let head = head.trim_end_matches(':');
                if rest[head.len()..].starts_with("::{") || rest.starts_with('{') {
                    let open = rest.find('{').unwrap();
                    let inner =
                        &rest[open + 1..rest[open..].find('}').map_or(rest.len(), |c| open + c)];
                    for item in inner.split(',') {
                        let item = item.trim();
                        let item = &item[..path_end(item)];
                        let path = match head.is_empty() {
                            true => item.to_owned(),
                            false => format!("{head}::{item}"),
                        };
                        uses.extend(resolve(&join(path.trim_end_matches(':'))));
                    }
                } else {
                    uses.extend(resolve(&join(head)));
                }
            }
        }
        uses.remove(&module);
        uses.remove("self");
        graph.entry(module).or_default().extend(uses);
    }
    graph
}

/// The first cycle in `graph`, depth-first, if any.
fn first_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten().filter(|n| graph.contains_key(*n)) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph.keys().find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_in_a_cycle() {
    // A cycle between modules means neither can be understood (or moved) without the other:
    // layers only look down. Depth-first, naming the first cycle found.
    let graph = module_graph();
    assert!(
        graph.len() > 40 && graph["tasks::prod"].contains("stack"),
        "the graph is read: {graph:?}"
    );
    if let Some(cycle) = first_cycle(&graph) {
        panic!("modules import each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn no_folder_imports_in_a_cycle() {
    // The folders are the layers (main.rs says which is over which): one that names another
    // which names it back has lost its place.
    let top = |m: &str| m.split("::").next().unwrap().to_owned();
    let mut folders = Graph::new();
    for (module, uses) in module_graph() {
        let entry = folders.entry(top(&module)).or_default();
        entry.extend(uses.iter().map(|u| top(u)).filter(|u| *u != top(&module)));
    }
    assert!(folders["tasks"].contains("stack") && folders.len() >= 7, "{folders:?}");
    if let Some(cycle) = first_cycle(&folders) {
        panic!("folders import each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_module_graph_reads_paths_lists_and_super() {
    let graph = module_graph();
    // `use crate::{image::bundle, ...}` style lists, `super::` in a folder, and a nested path.
    assert!(graph["tasks::bench::deploy"].contains("tasks::bench"), "{graph:?}");
    assert!(graph["wait::checks"].contains("wait::postgres"), "{graph:?}");
    assert!(graph["stack::swarm"].contains("run::label"), "{graph:?}");
}

#[test]
fn the_workflow_runs_every_docker_backed_suite_in_a_job_of_its_own() {
    // A suite added under tests/tests but not to the matrix would never run on GitHub.
    let workflow = std::fs::read_to_string(root().join(".github/workflows/ci.yml")).unwrap();
    let listed: BTreeSet<String> = workflow
        .lines()
        .skip_while(|l| l.trim() != "suite:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(str::to_owned))
        .collect();
    let suites: BTreeSet<String> = std::fs::read_dir(root().join("tests/tests"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap().file_name().into_string().ok()?.strip_suffix(".rs").map(str::to_owned)
        })
        .filter(|name| name != "e2e")
        .collect();
    assert!(suites.len() > 10, "{suites:?}");
    assert_eq!(listed, suites, "the ci.yml matrix lists every suite of tests/tests");
}

/// The Dockerfile and target stage of every image whose reproducibility is checked (all but
/// those built for the build machine only), from `docker/images.toml`.
fn checked_targets() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string(root().join("docker/images.toml")).unwrap();
    let mut found = Vec::new();
    for table in text.split("\n[[image]]\n").skip(1) {
        let field = |key: &str| {
            table.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        if field("platforms").as_deref() != Some("build") {
            found.push((root().join(field("dockerfile").unwrap()), field("target").unwrap()));
        }
    }
    assert!(found.len() >= 7, "{found:?}");
    found
}

#[test]
fn every_file_of_an_image_is_dated_by_its_content_not_by_when_or_where_it_was_built() {
    // The export keeps file times as they are: the time a cached step ran, or a checkout's
    // time, would make an image depend on the cache and the checkout (docs/images.md, "Cached
    // or not, the same"). So an image's own stages only copy from stages whose last step that writes
    // files dates them (`find ... -newermt @946684800 -exec touch ...`), never from the
    // checkout, and run nothing.
    const DATES: &str = "-newermt @946684800 -exec touch --no-dereference --date=@946684800";
    for (path, target) in checked_targets() {
        let text = std::fs::read_to_string(&path).unwrap();
        let stages = stages(&text);
        let stage = |name: &str| stages.iter().find(|(n, _)| n == name).map(|(_, s)| s);
        let where_ = path.display();
        let mut chain = vec![target.clone()];
        while let Some(current) = stage(chain.last().unwrap()) {
            if stage(&current.base).is_none() || current.base == "target" {
                break;
            }
            chain.push(current.base.clone());
        }
        for name in &chain {
            for instruction in &stage(name).unwrap().body {
                let keyword = instruction.split_whitespace().next().unwrap().to_ascii_uppercase();
                assert!(
                    keyword != "RUN" && keyword != "ADD",
                    "{where_}: stage {name} of image target {target} must not `{keyword}`: do it \
                     in a stage it copies from"
                );
                if keyword != "COPY" {
                    continue;
                }
                let from = instruction.split_whitespace().find_map(|w| w.strip_prefix("--from="));
                let Some(from) = from else {
                    panic!(
                        "{where_}: stage {name} copies from the checkout (`{instruction}`): copy \
                         into a stage's root that dates its files, then from that stage"
                    );
                };
                let source = stage(from).unwrap_or_else(|| panic!("{where_}: no {from}"));
                let last = source
                    .body
                    .iter()
                    .rev()
                    .find(|i| i.starts_with("RUN") || i.starts_with("COPY"))
                    .map(String::as_str)
                    .unwrap_or_default();
                assert!(
                    last.starts_with("RUN") && last.contains(DATES),
                    "{where_}: stage {from}, copied into image target {target}, must end with a \
                     RUN that dates its files (`find DIR {DATES} {{}} +`)"
                );
            }
        }
    }
}
