//! `cargo xtask doctor`: what this machine has and lacks for the tasks, one line per check,
//! each problem with its fix.

use std::fmt;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::image::platform::Platform;
use crate::run::plan::Step;
use crate::run::term;
use crate::wait::{Attempt, Probe};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Debug)]
pub struct Finding {
    pub level: Level,
    pub what: &'static str,
    /// What was found, or what is wrong and how to fix it.
    pub detail: String,
}

fn finding(level: Level, what: &'static str, detail: impl Into<String>) -> Finding {
    Finding { level, what, detail: detail.into() }
}

/// Runs `program args` and returns its trimmed stdout when it succeeds.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let step = Step::new(program, ".").args(args.iter().copied()).quiet();
    let out = step.timeout(std::time::Duration::from_secs(20)).capture().ok()?;
    out.success().then(|| out.stdout.trim().to_owned())
}

/// What to check beyond the machine itself.
#[derive(Debug, Clone)]
pub struct Request {
    /// Platforms the builder must be able to build for.
    pub platforms: Vec<Platform>,
    /// The buildx builder to check; the current one when `None`.
    pub builder: Option<String>,
    /// A registry that must answer the registry API.
    pub registry: Option<String>,
}

pub fn run(args: &Request) -> Result<()> {
    let findings = check(args);
    for f in &findings {
        out!("{:<5} {:<16} {}", f.level, f.what, f.detail);
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    if failed > 0 {
        bail!("{} failed: see the fixes above", term::count(failed, "check"));
    }
    Ok(())
}

pub fn check(args: &Request) -> Vec<Finding> {
    let mut findings = vec![rust()];
    if which::which("docker").is_err() {
        findings.push(finding(
            Level::Fail,
            "docker CLI",
            "not on PATH: install Docker Engine (with the buildx and compose plugins)",
        ));
        return findings;
    }
    findings.push(finding(
        Level::Ok,
        "docker CLI",
        output("docker", &["--version"]).unwrap_or_default(),
    ));
    let target = match (std::env::var("DOCKER_HOST"), std::env::var("DOCKER_CONTEXT")) {
        (Ok(host), _) if !host.is_empty() => format!(" at DOCKER_HOST={host}"),
        (_, Ok(context)) if !context.is_empty() => format!(" of DOCKER_CONTEXT={context}"),
        _ => String::new(),
    };
    match output("docker", &["version", "--format", "{{.Server.Version}}"])
        .filter(|v| !v.is_empty())
    {
        Some(version) => {
            findings.push(finding(Level::Ok, "docker engine", format!("{version}{target}")))
        }
        None => {
            findings.push(finding(
                Level::Fail,
                "docker engine",
                format!(
                    "cannot reach the Docker daemon{target}: start it (e.g. `sudo systemctl start docker`), \
                     or point DOCKER_HOST at a running engine"
                ),
            ));
            return findings;
        }
    }
    findings.push(buildx(args));
    findings.push(compose());
    findings.push(disk());
    if let Some(registry) = &args.registry {
        findings.push(registry_check(registry));
    }
    findings
}

fn rust() -> Finding {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Some(version) = output(&rustc, &["--version"]) else {
        return finding(
            Level::Fail,
            "rust",
            "rustc not found: install Rust with rustup (https://rustup.rs)",
        );
    };
    let number = version.split_whitespace().nth(1).unwrap_or_default();
    let mut parts = number.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (1, 85) {
        finding(Level::Ok, "rust", version)
    } else {
        finding(
            Level::Fail,
            "rust",
            format!("{version} is too old: `rustup update stable` (1.85 or newer)"),
        )
    }
}

fn buildx(args: &Request) -> Finding {
    let Some(version) = output("docker", &["buildx", "version"]) else {
        return finding(
            Level::Fail,
            "buildx",
            "the buildx plugin is missing: install it (Debian: apt-get install docker-buildx)",
        );
    };
    let mut inspect = vec!["buildx", "inspect"];
    if let Some(builder) = &args.builder {
        inspect.extend(["--builder", builder.as_str()]);
    }
    let Some(description) = output("docker", &inspect) else {
        return finding(
            Level::Fail,
            "buildx",
            format!("{version}; but the builder cannot be inspected: check --builder"),
        );
    };
    let platforms = builder_platforms(&description);
    let missing: Vec<String> =
        args.platforms.iter().map(ToString::to_string).filter(|p| !platforms.contains(p)).collect();
    if missing.is_empty() {
        finding(Level::Ok, "buildx", format!("{version}; builds {}", platforms.join(", ")))
    } else {
        finding(
            Level::Warn,
            "buildx",
            format!(
                "the builder cannot build {}: install qemu emulation (Debian: apt-get install qemu-user-static \
                 binfmt-support), or pick a builder that can with --builder",
                missing.join(", ")
            ),
        )
    }
}

/// The platforms of `docker buildx inspect` output (its `Platforms:` lines).
pub fn builder_platforms(description: &str) -> Vec<String> {
    description
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Platforms:"))
        .flat_map(|list| list.split(','))
        .map(|p| p.trim().trim_end_matches('*').trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn compose() -> Finding {
    match output("docker", &["compose", "version", "--short"]) {
        Some(version) if !version.starts_with('1') => {
            finding(Level::Ok, "compose", format!("v{version}"))
        }
        Some(version) => finding(
            Level::Fail,
            "compose",
            format!("compose {version} is v1: install compose v2 (the docker compose plugin)"),
        ),
        None => finding(
            Level::Fail,
            "compose",
            "`docker compose` is missing: install the compose v2 plugin (Debian: apt-get install docker-compose)",
        ),
    }
}

fn disk() -> Finding {
    let root =
        output("docker", &["info", "--format", "{{.DockerRootDir}}"]).unwrap_or_else(|| "/".into());
    let df = output("df", &["-Pk", &root]).unwrap_or_default();
    let free_kib = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    let Some(free_kib) = free_kib else {
        return finding(Level::Warn, "disk", format!("cannot tell the free space of {root}"));
    };
    let gib = free_kib as f64 / 1024.0 / 1024.0;
    let detail = format!("{gib:.1} GiB free for images in {root}");
    match gib {
        g if g >= 10.0 => finding(Level::Ok, "disk", detail),
        g if g >= 2.0 => finding(
            Level::Warn,
            "disk",
            format!("{detail}: builds may run out; `docker system prune`"),
        ),
        _ => finding(
            Level::Fail,
            "disk",
            format!("{detail}: free some space (`docker system prune`)"),
        ),
    }
}

fn registry_check(registry: &str) -> Finding {
    let spec = format!("http://{}/v2/", registry.trim_end_matches('/'));
    let probe = match Probe::parse(&spec) {
        Ok(p) => p,
        Err(e) => return finding(Level::Fail, "registry", e),
    };
    let mut check = crate::wait::checks(std::slice::from_ref(&probe)).remove(0).1;
    match check.attempt(Duration::from_secs(3)) {
        Attempt::Ready => {
            finding(Level::Ok, "registry", format!("{registry} answers the registry API"))
        }
        Attempt::NotYet(e) if e.starts_with("status 401") => finding(
            Level::Ok,
            "registry",
            format!("{registry} answers; it wants credentials: `docker login {registry}`"),
        ),
        Attempt::NotYet(e) | Attempt::Failed(e) => finding(
            Level::Fail,
            "registry",
            format!("{registry} does not answer the registry API: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_come_from_the_inspect_output() {
        let text = "Name: default\nNodes:\nName:      default\nStatus:    running\n\
                    Platforms: linux/amd64, linux/amd64/v2, linux/arm64*\n";
        assert_eq!(builder_platforms(text), ["linux/amd64", "linux/amd64/v2", "linux/arm64"]);
        assert!(builder_platforms("Name: x\n").is_empty());
    }
}
