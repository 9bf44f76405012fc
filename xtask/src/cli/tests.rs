//! Unit tests of `crate::cli`, kept beside it so that the module reads as code.

use super::*;

/// The CLI reference, `docs/cli.md`: every command's long help in the order of `--help`,
/// as clap renders it (unwrapped: clap's `wrap_help` is off, so every terminal sees the same).
fn reference() -> String {
    use clap::CommandFactory;
    fn walk(command: &mut clap::Command, path: &str, out: &mut String) {
        let help = command.render_long_help().to_string();
        let help: Vec<&str> = help.lines().map(str::trim_end).collect();
        out.push_str(&format!("\n## `{path}`\n\n```text\n{}\n```\n", help.join("\n").trim_end()));
        for sub in command.get_subcommands_mut() {
            if sub.get_name() != "help" && !sub.is_hide_set() {
                let path = format!("{path} {}", sub.get_name());
                walk(sub, &path, out);
            }
        }
    }
    let mut command = Cli::command();
    command.build();
    let mut out = String::from(
        "# CLI reference\n\nEvery command's `--help`, generated from the command line's \
         definition (`xtask/src/cli.rs`). Do not edit: `cargo test --package xtask \
         the_cli_reference_is_current` rewrites it when the definition changed (and fails, so \
         that the change is seen and committed).\n",
    );
    walk(&mut command, "cargo xtask", &mut out);
    out
}

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Every command takes `--dry-run`: one that changes something prints its plan, one that
/// only reads says so (the command-line tests run them all without Docker).
#[test]
fn every_command_takes_dry_run() {
    use clap::CommandFactory;
    fn leaves(command: &clap::Command, path: String, out: &mut Vec<(String, bool)>) {
        let subcommands: Vec<&clap::Command> =
            command.get_subcommands().filter(|c| c.get_name() != "help").collect();
        let has = command.get_arguments().any(|a| a.get_long() == Some("dry-run"));
        if subcommands.is_empty() || has {
            out.push((path.clone(), has));
        }
        for sub in subcommands {
            leaves(sub, format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut command = Cli::command();
    command.build();
    let mut found = Vec::new();
    leaves(&command, "cargo xtask".into(), &mut found);
    let missing: Vec<&str> =
        found.iter().filter(|(_, has)| !has).map(|(path, _)| path.as_str()).collect();
    assert!(found.len() > 40, "{found:?}");
    assert!(missing.is_empty(), "no --dry-run: {missing:?}");
}

/// rust-analyzer's "sourcegen" way: a test that regenerates the file and fails when it
/// was out of date (under CI it only fails).
#[test]
fn the_cli_reference_is_current() {
    let path = repo_root().join("docs/cli.md");
    let want = reference();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let ci = std::env::var_os("CI").is_some();
        if !ci {
            std::fs::write(&path, &want).unwrap();
        }
        panic!(
            "docs/cli.md is not the command line's help{}",
            if ci {
                ": run this test outside CI to regenerate it"
            } else {
                ": rewritten now, commit it"
            }
        );
    }
}

/// The words of one shell command line: quotes removed, a trailing `# comment`, redirects
/// and pipes cut off.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '#') if !in_word => break,
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let end =
        words.iter().position(|w| [">", "|", "&&", ";", "2>&1", "<", "&"].contains(&w.as_str()));
    words.truncate(end.unwrap_or(words.len()));
    words
}

/// The arguments of a code line that runs `cargo xtask`: after an optional `$ ` prompt and
/// `NAME=value` settings; `None` for any other line (output, a file listing, a table row).
fn command_of(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    rest = rest.strip_prefix("$ ").unwrap_or(rest);
    loop {
        let (word, after) = rest.split_once(' ')?;
        let setting = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        });
        if !setting {
            break;
        }
        rest = after.trim_start();
    }
    let command = rest.strip_prefix("cargo xtask ")?;
    // A benchmark's table row starts like a command; its columns are aligned by spaces.
    let code = command.split_once(" #").map_or(command, |(code, _)| code);
    (!code.trim_end().contains("   ")).then_some(command)
}

/// Every `cargo xtask ...` line in the README's and the docs' code blocks (and the examples
/// of the README's task table) parses with this command line.
#[test]
fn every_command_line_in_the_docs_parses() {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md") && !p.ends_with("cli.md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let (mut checked, mut failures) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut fenced = false;
        let mut pending = String::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            let mut commands = Vec::new();
            if fenced || line.starts_with("    ") || !pending.is_empty() {
                let joined = format!("{pending}{line}");
                if let Some(continued) = joined.strip_suffix('\\') {
                    pending = format!("{continued} ");
                    continue;
                }
                pending.clear();
                commands.extend(command_of(&joined).map(str::to_owned));
            } else if line.starts_with('|') {
                for span in line.split('`').skip(1).step_by(2) {
                    commands.extend(span.strip_prefix("cargo xtask ").map(str::to_owned));
                }
            }
            for command in commands {
                let args = shell_words(&command);
                checked += 1;
                let argv = std::iter::once("cargo xtask".to_owned()).chain(args);
                if let Err(e) = Cli::try_parse_from(argv) {
                    let e = e.to_string();
                    let why = e.lines().next().unwrap_or_default();
                    failures.push(format!("{}:{}: {command}: {why}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} command lines found");
    assert!(failures.is_empty(), "{} do not parse:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn registry_forms() {
    assert_eq!(parse_registry("127.0.0.1:5000/acme/").unwrap(), "127.0.0.1:5000/acme");
    assert_eq!(parse_registry("ghcr.io").unwrap(), "ghcr.io");
    assert!(parse_registry("http://127.0.0.1:5000").unwrap_err().contains("scheme"));
    assert!(parse_registry("reg.example/Acme").unwrap_err().contains("namespace"));
    let hub = parse_registry("acme").unwrap_err();
    assert!(hub.contains("Docker Hub") && hub.contains("`docker.io/acme`"), "{hub}");
    assert!(parse_registry("acme/team").unwrap_err().contains("`docker.io/acme/team`"));
    assert_eq!(parse_registry("localhost/acme").unwrap(), "localhost/acme");
    assert_eq!(parse_registry("localhost:5000").unwrap(), "localhost:5000");
    assert_eq!(parse_registry("docker.io/acme").unwrap(), "docker.io/acme");
    assert!(parse_registry("").is_err());
    assert!(parse_registry("reg//x").is_err());
}

#[test]
fn cli_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}
