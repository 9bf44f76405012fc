//! `cargo xtask bench`: each measurement against a peer in the same run, interleaved, reported
//! as a ratio, so that the figure does not depend on how fast this machine is today.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::json;
use xshell::Shell;

use crate::cli::ImageName;
use crate::docker;
use crate::image::{self, BuildRequest};
use crate::plan::Step;
use crate::version::Revision;

/// A no-op `cargo xtask build server` against a bare `docker buildx build` of the same
/// Dockerfile and target, with the same tags and labels, so both produce the same image.
pub fn build(sh: &Shell, root: &Utf8Path, runs: u32, json: bool) -> Result<()> {
    docker::require_buildx(sh)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ours = Step::new(&cargo, root).args(["xtask", "build", "server"]);
    let peer = bare_build(root, &Revision::read(sh, root)?);
    let (ours_times, peer_times) = measure(&ours, &peer, runs)?;
    let report = Report::new(
        "cargo xtask build server (no-op)",
        ours_times,
        "docker buildx build (no-op)",
        peer_times,
    );
    report.print(json);
    Ok(())
}

/// The hand-written `docker buildx build` that gives what `cargo xtask build server` gives.
fn bare_build(root: &Utf8Path, revision: &Revision) -> Step {
    let request = BuildRequest { images: vec![ImageName::Server], ..BuildRequest::default() };
    let plan = image::plan(root, revision, &request);
    let target = &plan.bake["target"]["server"];
    let mut step = docker::buildx(root, None).args(["build", "--load"]);
    step = step.args(["--file", target["dockerfile"].as_str().unwrap_or_default()]);
    step = step.args(["--target", target["target"].as_str().unwrap_or_default()]);
    for tag in target["tags"].as_array().into_iter().flatten() {
        step = step.args(["--tag", tag.as_str().unwrap_or_default()]);
    }
    for (key, value) in target["labels"].as_object().into_iter().flatten() {
        step = step
            .args(["--label".to_owned(), format!("{key}={}", value.as_str().unwrap_or_default())]);
    }
    step.arg(".")
}

fn measure(ours: &Step, peer: &Step, runs: u32) -> Result<(Vec<Duration>, Vec<Duration>)> {
    eprintln!("warming up: {ours}");
    time(ours)?;
    eprintln!("warming up: {peer}");
    time(peer)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        eprintln!("run {run}/{runs}");
        // Alternate which side goes first, so neither always runs on a just-warmed cache.
        if run % 2 == 1 {
            a.push(time(ours)?);
            b.push(time(peer)?);
        } else {
            b.push(time(peer)?);
            a.push(time(ours)?);
        }
    }
    Ok((a, b))
}

fn time(step: &Step) -> Result<Duration> {
    let start = Instant::now();
    let output = Command::new(&step.program)
        .args(&step.args)
        .current_dir(&step.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start `{step}`"))?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        bail!("`{step}` failed during the benchmark: {last}");
    }
    Ok(elapsed)
}

/// Two sides of one benchmark, with their samples.
pub struct Report {
    ours: (&'static str, Vec<Duration>),
    peer: (&'static str, Vec<Duration>),
}

impl Report {
    pub fn new(
        ours: &'static str,
        a: Vec<Duration>,
        peer: &'static str,
        b: Vec<Duration>,
    ) -> Report {
        Report { ours: (ours, a), peer: (peer, b) }
    }

    pub fn ratio(&self) -> f64 {
        median(&self.ours.1).as_secs_f64() / median(&self.peer.1).as_secs_f64().max(1e-9)
    }

    fn print(&self, json: bool) {
        if json {
            let side = |(name, samples): &(&str, Vec<Duration>)| {
                json!({
                    "name": name,
                    "median_ms": ms(median(samples)),
                    "samples_ms": samples.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                })
            };
            println!(
                "{:#}",
                json!({"ours": side(&self.ours), "peer": side(&self.peer), "ratio": self.ratio()})
            );
            return;
        }
        println!("{:<36} {:>6} {:>10} {:>10} {:>10}", "", "runs", "median", "min", "max");
        for (name, samples) in [&self.ours, &self.peer] {
            let min = samples.iter().min().copied().unwrap_or_default();
            let max = samples.iter().max().copied().unwrap_or_default();
            println!(
                "{name:<36} {:>6} {:>9.0}ms {:>8.0}ms {:>8.0}ms",
                samples.len(),
                ms(median(samples)),
                ms(min),
                ms(max)
            );
        }
        println!("{:<36} {:>6} {:>10.2}x", "ratio (ours / peer, medians)", "", self.ratio());
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median; the mean of the middle two for an even count.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_builds_the_same_image_by_hand() {
        let revision = Revision {
            version: crate::version::AppVersion::parse("1.0.0").unwrap(),
            commit: "1234567890123456789012345678901234567890".into(),
            dirty: false,
            created: "2020-01-01T00:00:00Z".into(),
            source: None,
        };
        let step = bare_build(Utf8Path::new("/repo"), &revision).to_string();
        assert!(
            step.starts_with(
                "docker buildx build --load --file docker/server/Dockerfile --target runtime \
                 --tag memories/server:1.0.0 --tag memories/server:1.0.0-1234567 --tag memories/server:sha-1234567 \
                 --label org.opencontainers.image.created=2020-01-01T00:00:00Z"
            ),
            "{step}"
        );
        assert!(step.ends_with(" ."), "{step}");
    }

    #[test]
    fn medians_and_ratios() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(median(&ms(&[5, 1, 3])), Duration::from_millis(3));
        assert_eq!(median(&ms(&[4, 1, 3, 2])), Duration::from_micros(2500));
        assert_eq!(median(&[]), Duration::ZERO);
        let report = Report::new("a", ms(&[120, 130, 110]), "b", ms(&[100, 90, 110]));
        assert!((report.ratio() - 1.2).abs() < 1e-9);
    }
}
