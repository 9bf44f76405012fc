//! `cargo xtask test --changed`: the test tiers, the paths each one's outcome depends on, and
//! the fingerprint of those paths when the tier last passed on this machine (kept in
//! `target/xtask/green.json`). A tier whose inputs are what they were then is skipped, and the
//! run says so; `ci` always runs everything.

use std::collections::BTreeMap;

use anyhow::Result;
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use crate::image::version::rfc3339_utc;
use crate::run::{atomic, tree};

/// One tier of `cargo xtask test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// `cargo test --package xtask`: plans, parsing, the command line, the repository rules.
    Unit,
    /// `cargo test --package tests`: the Docker-backed tests.
    Docker,
    /// The end-to-end suite on its own stack.
    E2e,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Unit => "unit",
            Tier::Docker => "docker",
            Tier::E2e => "e2e",
        }
    }

    /// The paths whose content decides the tier's outcome. The unit tier reads the Dockerfiles,
    /// compose files, docs and workflows it checks; the others run what the images and the
    /// stack are made of.
    /// The content fingerprint of the tier's inputs in the tree at `root`.
    pub fn fingerprint(self, root: &Utf8Path) -> Result<String> {
        tree::fingerprint(root, self.inputs().iter().copied())
    }

    pub fn inputs(self) -> &'static [&'static str] {
        const BUILD: [&str; 4] = ["Cargo.toml", "Cargo.lock", ".cargo", "rust-toolchain.toml"];
        match self {
            Tier::Unit => &[
                "Cargo.toml",
                "Cargo.lock",
                ".cargo",
                "xtask",
                "docs",
                "docker",
                "compose",
                "app/pyproject.toml",
                "app/uv.lock",
                ".dockerignore",
                ".github",
                ".hadolint.yaml",
                "tools",
                "tests/tests",
            ],
            Tier::Docker => &[
                BUILD[0],
                BUILD[1],
                BUILD[2],
                BUILD[3],
                "xtask/src",
                "tests",
                "app",
                "compose",
                "docker",
                ".dockerignore",
            ],
            Tier::E2e => &[
                BUILD[0],
                BUILD[1],
                BUILD[2],
                BUILD[3],
                "xtask/src",
                "tests/src",
                "tests/tests/e2e.rs",
                "tests/Cargo.toml",
                "app",
                "compose",
                "docker",
                ".dockerignore",
            ],
        }
    }
}

/// The fingerprints of the tiers when they last passed, read from and written to `file`.
pub struct Green {
    file: Utf8PathBuf,
    tiers: BTreeMap<String, Value>,
}

/// Whether a tier must run, and if not why.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Run {
        fingerprint: String,
    },
    /// Unchanged since it passed at the time given (RFC 3339).
    Skip {
        passed_at: String,
    },
}

impl Green {
    pub fn read(root: &Utf8Path) -> Green {
        let file = root.join("target/xtask/green.json");
        let tiers = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| serde_json::from_str::<BTreeMap<String, Value>>(&text).ok())
            .unwrap_or_default();
        Green { file, tiers }
    }

    /// When `tier` last passed with its inputs at `fingerprint`, if it did.
    pub fn passed_at(&self, tier: Tier, fingerprint: &str) -> Option<String> {
        let kept = self.tiers.get(tier.name())?;
        (kept["fingerprint"].as_str() == Some(fingerprint))
            .then(|| kept["passed_at"].as_str().map(str::to_owned))
            .flatten()
    }

    /// Notes that `tier` passed with the inputs `fingerprint` (taken before it ran: a change
    /// made meanwhile runs it again next time).
    pub fn passed(&mut self, tier: Tier, fingerprint: &str) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let entry = json!({"fingerprint": fingerprint, "passed_at": rfc3339_utc(now)});
        self.tiers.insert(tier.name().to_owned(), entry);
        let text = serde_json::to_string_pretty(&self.tiers).expect("JSON serialises");
        atomic::write(&self.file, text.as_bytes())
    }
}

/// What a skipped tier's line says.
pub fn skipped_note(tier: Tier, passed_at: &str) -> String {
    format!(
        "skipped {}: nothing under {} changed since it passed at {passed_at}",
        tier.name(),
        tier.inputs().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_runs_until_it_passes_and_again_once_an_input_changes() {
        let root = Utf8PathBuf::try_from(std::env::temp_dir())
            .unwrap()
            .join(format!("changed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("app/src")).unwrap();
        std::fs::write(root.join("app/src/api.py"), "v1").unwrap();
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/a.md"), "doc").unwrap();

        let mut green = Green::read(&root);
        let passed_at =
            |green: &Green, tier: Tier| green.passed_at(tier, &tier.fingerprint(&root).unwrap());
        assert_eq!(passed_at(&green, Tier::E2e), None, "a tier that never passed runs");
        green.passed(Tier::E2e, &Tier::E2e.fingerprint(&root).unwrap()).unwrap();
        let green = Green::read(&root);
        let at = passed_at(&green, Tier::E2e).expect("nothing changed: skipped");
        assert!(skipped_note(Tier::E2e, &at).starts_with("skipped e2e: nothing under"));
        std::fs::write(root.join("docs/a.md"), "another doc").unwrap();
        assert!(passed_at(&green, Tier::E2e).is_some(), "the docs are not an input of e2e");
        assert_eq!(passed_at(&green, Tier::Unit), None, "the unit tier never passed here");
        std::fs::write(root.join("app/src/api.py"), "v2").unwrap();
        assert_eq!(passed_at(&green, Tier::E2e), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
