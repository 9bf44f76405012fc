//! The linters `cargo xtask ci` runs (hadolint, actionlint), installed from PyPI into a
//! virtualenv under `target/xtask/tools` exactly as `tools/requirements.txt` pins them, and
//! installed again only when that file changes.

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::run::plan::Step;

pub const REQUIREMENTS: &str = "tools/requirements.txt";

/// Where the linters' executables are.
pub struct Tools {
    bin: Utf8PathBuf,
}

impl Tools {
    pub fn hadolint(&self) -> Utf8PathBuf {
        self.bin.join("hadolint")
    }

    pub fn actionlint(&self) -> Utf8PathBuf {
        self.bin.join("actionlint")
    }
}

/// The steps that (re)create the virtualenv and install the pinned wheels.
fn install_steps(root: &Utf8Path) -> Vec<Step> {
    let venv = venv(root);
    vec![
        Step::new("python3", root).args(["-m", "venv", "--clear", venv.as_str()]),
        Step::new(venv.join("bin/pip").as_str(), root)
            .args(["install", "--quiet", "--disable-pip-version-check", "--require-hashes"])
            .args(["--only-binary", ":all:", "--requirement", REQUIREMENTS]),
    ]
}

fn venv(root: &Utf8Path) -> Utf8PathBuf {
    root.join("target/xtask/tools")
}

/// Installs the linters unless the virtualenv already holds exactly what the requirements pin.
pub fn ensure(root: &Utf8Path) -> Result<Tools> {
    let venv = venv(root);
    let stamp = venv.join("installed-requirements.txt");
    let wanted = std::fs::read_to_string(root.join(REQUIREMENTS))
        .with_context(|| format!("cannot read {REQUIREMENTS}"))?;
    let tools = Tools { bin: venv.join("bin") };
    let current = std::fs::read_to_string(&stamp).ok();
    if current.as_deref() == Some(wanted.as_str())
        && tools.hadolint().is_file()
        && tools.actionlint().is_file()
    {
        return Ok(tools);
    }
    if which::which("python3").is_err() {
        anyhow::bail!(
            "python3 is required to install the linters: install Python 3 with venv (Debian: \
             apt-get install python3-venv)"
        );
    }
    say!("installing the linters pinned in {REQUIREMENTS}");
    for step in install_steps(root) {
        step.run().context("cannot install the linters (hadolint, actionlint) from PyPI")?;
    }
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {stamp}"))?;
    Ok(tools)
}
