//! `cargo xtask bench`: each measurement against a peer in the same run, interleaved, reported
//! as a ratio, so that the figure does not depend on how fast this machine is today.

mod deploy;
mod devloop;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::json;

use crate::image::platform::PlatformList;
use crate::image::version::Revision;
use crate::image::{self, ImageName};
use crate::oci;
use crate::run::docker;
use crate::run::label::RunId;
use crate::run::plan::{self, Step, Streams};
use crate::stack::{self, Mode, Stack};
use crate::tasks::faults;
use crate::tasks::registry::Throwaway;
use crate::tasks::release;

pub use deploy::{DeployPeer, deploy};
pub use devloop::devloop;

/// A no-op `cargo xtask build server` (nothing changed since the last build) against the
/// bare `docker buildx build` a user would type for the same target, each warmed up first.
pub fn build(root: &Utf8Path, runs: u32) -> Result<Report> {
    docker::require_buildx()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ours = Step::new(&cargo, root).args(["xtask", "build", "server"]);
    let peer = bare_build(root);
    let (ours_times, peer_times) = measure(&ours, &peer, runs)?;
    let _ = docker::cli(root).args(["image", "rm", BARE_TAG]).capture();
    Ok(Report {
        name: "build",
        ours: Side::new("cargo xtask build server (no-op)", ours_times),
        peer: Side::new("docker buildx build (no-op)", peer_times),
        others: Vec::new(),
        note: None,
    })
}

/// A warm `cargo xtask --help` (cargo's freshness check included) against `docker compose
/// --help`, the command-line tool the stack scripts called.
pub fn startup(root: &Utf8Path, runs: u32) -> Result<Report> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ours = Step::new(&cargo, root).args(["xtask", "--help"]);
    let peer = docker::cli(root).args(["compose", "--help"]);
    let (ours_times, peer_times) = measure(&ours, &peer, runs)?;
    Ok(Report {
        name: "startup",
        ours: Side::new("cargo xtask --help (warm)", ours_times),
        peer: Side::new("docker compose --help", peer_times),
        others: Vec::new(),
        note: None,
    })
}

/// The tag the bare build gives its image (removed afterwards).
const BARE_TAG: &str = "memories/bench-bare-build:latest";

/// The bare build of the server's runtime target, into the image store, as a user types it.
fn bare_build(root: &Utf8Path) -> Step {
    let entry = ImageName::SERVER.entry();
    docker::cli(root)
        .args(["buildx", "build", "--load", "--file", &entry.dockerfile, "--target"])
        .args([entry.target.as_str(), "--tag", BARE_TAG, "."])
}

/// `cargo xtask build` of every image for `platforms` from an empty BuildKit cache (pruned
/// before every run), with a warm registry cache (`--cache registry=...`, written by one build
/// before the first run) against the same with nothing, interleaved. The warm side writes the
/// cache back as well, as a CI run does.
pub fn cache(root: &Utf8Path, runs: u32, platforms: &PlatformList) -> Result<Report> {
    docker::require_buildx()?;
    let registry = Throwaway::start(root)?;
    let exe = plan::this_xtask()?;
    let cache = format!("registry={}/bench/cache", registry.address);
    let namespace = format!("{}/bench", registry.address);
    let space = cache_space();
    let build = |cached: bool| {
        let step = Step::new(&exe, root)
            .args(["build", "--platform", &platforms.to_string(), "--registry"])
            .arg(&namespace)
            .env(image::CACHE_SPACE_VAR, &space);
        if cached { step.args(["--cache", &cache]) } else { step }
    };
    // The build cache this machine had goes before the cache is written, not before the
    // first timed run: removing a large one keeps the disk busy after the prune returns. The
    // first warm run after pruning a CI run's 46 GB took 26.5 s, where warm runs after pruning
    // one build took 21 to 24 s. What the prune cannot remove (the cache that images built
    // straight into the store hold) is out of reach of this benchmark's builds: they keep
    // their cache apart ([`cache_space`]).
    docker::buildx(root, None).args(["prune", "--all", "--force"]).run()?;
    say!("writing the registry cache: {}", build(true));
    build(true).run()?;
    let mut samples = [Vec::new(), Vec::new()];
    for run in 1..=runs {
        for side in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
            let what = if side == 0 { "with the registry cache" } else { "from nothing" };
            say!("run {run}/{runs}: build from an empty BuildKit cache, {what}");
            // Without the images the last build left in the store, or a build with the same
            // inputs would answer from there (`nothing to build`) and time no build at all.
            // They go before the prune: images built straight into the store hold their
            // cache, which a prune then leaves for the next build to take.
            registry.untag_local(&namespace);
            docker::buildx(root, None).args(["prune", "--all", "--force"]).run()?;
            samples[side].push(time(&build(side == 0))?);
        }
    }
    registry.untag_local(&namespace);
    let [warm, cold] = samples;
    Ok(Report {
        name: "cache",
        ours: Side::new(
            format!("build {platforms}, empty BuildKit cache, warm registry cache"),
            warm,
        ),
        peer: Side::new(format!("build {platforms}, empty BuildKit cache, no cache"), cold),
        others: Vec::new(),
        note: None,
    })
}

/// The cache space ([`image::CACHE_SPACE_VAR`]) of a benchmark's builds "from an empty cache":
/// `docker buildx prune --all` leaves the cache that images in the store hold (those built
/// straight into it: their layers are the cache's), and a build of the same steps would take
/// them from there. A space of this run's own meets none of it; within the run, each build
/// starts after the last one's images are gone and the cache is pruned.
fn cache_space() -> String {
    format!("bench-{}", RunId::name_of_this_process())
}

/// A release of every image for amd64 and arm64 against the same release for amd64 alone, each
/// from a cold BuildKit cache (pruned before every run), pushed to a throwaway registry.
pub fn release(root: &Utf8Path, runs: u32) -> Result<Report> {
    docker::require_buildx()?;
    let registry = Throwaway::start(root)?;
    let exe = plan::this_xtask()?;
    let sides = [release::DEFAULT_PLATFORMS, "linux/amd64"];
    let space = cache_space();
    let mut samples = [Vec::new(), Vec::new()];
    for run in 1..=runs {
        for side in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
            say!("run {run}/{runs}: release for {} from a cold cache", sides[side]);
            let namespace = format!("{}/bench-{run}-{side}", registry.address);
            docker::buildx(root, None).args(["prune", "--all", "--force"]).run()?;
            let step = Step::new(&exe, root)
                .args(["release", "--registry", &namespace, "--platform", sides[side]])
                .arg("--allow-dirty")
                .env(image::CACHE_SPACE_VAR, &space);
            samples[side].push(time(&step)?);
            // The next run starts without this one's images as well as without its cache.
            registry.untag_local(&namespace);
        }
    }
    let [multi, single] = samples;
    Ok(Report {
        name: "release",
        ours: Side::new("release amd64+arm64 (cold cache)", multi),
        peer: Side::new("release amd64 (cold cache)", single),
        others: Vec::new(),
        note: None,
    })
}

/// Releases through the fault proxy at `rate` against releases straight to the registry (see
/// `Bench::Flaky`): each must complete, and every ref it reports must hold its digest when read
/// back without the proxy.
pub fn flaky(root: &Utf8Path, runs: u32, rate: f64) -> Result<Report> {
    docker::require_buildx()?;
    let registry = Throwaway::start(root)?;
    let upstream: std::net::SocketAddr =
        registry.address.parse().context("the throwaway registry's address")?;
    let exe = plan::this_xtask()?;
    let direct = oci::Registry::new(root);
    let release = |address: &str, namespace: &str| -> Result<(Duration, serde_json::Value)> {
        let step = Step::new(&exe, root)
            .args(["release", "server", "db", "--json", "--allow-dirty", "--registry"])
            .arg(format!("{address}/{namespace}"))
            .quiet();
        let start = Instant::now();
        let output = step.capture()?;
        let elapsed = start.elapsed();
        if !output.success() {
            let last = output.stderr.lines().rev().find(|l| !l.trim().is_empty());
            bail!("`{step}` failed: {}", last.unwrap_or("no output"));
        }
        let reported: serde_json::Value =
            serde_json::from_str(&output.stdout).context("release --json printed no JSON")?;
        // Read back around the proxy: what the registry itself holds.
        for image in reported["images"].as_array().into_iter().flatten() {
            let digest = image["digest"].as_str().unwrap_or_default();
            for reference in image["refs"].as_array().into_iter().flatten() {
                let reference =
                    reference.as_str().unwrap_or_default().replace(address, &registry.address);
                let found = direct
                    .inspect(&reference)?
                    .with_context(|| format!("{reference} is missing"))?;
                if found.digest != digest {
                    bail!("{reference} does not hold the released {digest}");
                }
            }
        }
        Ok((elapsed, reported))
    };
    say!("warming the build cache: one release straight to the registry");
    release(&registry.address, "bench-warm")?;
    let (mut faulty, mut clean) = (Vec::new(), Vec::new());
    let (mut retries, mut injected, mut requests) = (Vec::new(), 0, 0);
    for run in 1..=runs {
        for side in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
            let namespace = format!("bench-{run}-{side}");
            if side == 1 {
                say!("run {run}/{runs}: release straight to the registry");
                clean.push(release(&registry.address, &namespace)?.0);
                continue;
            }
            let plan =
                faults::FaultPlan { rate, seed: u64::from(run), delay: Duration::from_millis(500) };
            let proxy = faults::FaultProxy::start(upstream, plan, false)?;
            say!("run {run}/{runs}: release through {:.0}% faults (seed {run})", rate * 100.0);
            let (elapsed, reported) = release(&proxy.address, &namespace)
                .with_context(|| format!("release {run} through the fault proxy"))?;
            faulty.push(elapsed);
            retries.push(reported["retries"].as_u64().unwrap_or_default());
            injected += proxy.stats.faults();
            requests += proxy.stats.requests();
        }
    }
    retries.sort_unstable();
    let extra = median(&faulty).saturating_sub(median(&clean));
    Ok(Report {
        name: "flaky",
        ours: Side::new(format!("release through {:.0}% faults", rate * 100.0), faulty),
        peer: Side::new("release straight to the registry", clean),
        others: Vec::new(),
        note: Some(format!(
            "{runs} of {runs} releases through faults completed and read back; retries per \
             release {} to {} (median {}); {injected} of {requests} requests got a fault; median \
             extra time {:.1} s",
            retries.first().unwrap_or(&0),
            retries.last().unwrap_or(&0),
            retries[retries.len() / 2],
            extra.as_secs_f64()
        )),
    })
}

/// How long after a port opens each side notices it: ours, and the shell loop we replace.
pub fn wait(root: &Utf8Path, runs: u32) -> Result<Report> {
    let exe = plan::this_xtask()?;
    // The loop of a typical wait_for_service.sh; bash's /dev/tcp stands in where nc is missing.
    let (peer_name, peer_loop) = if which::which("nc").is_ok() {
        ("nc -z; sleep 1 loop", r#"until nc -z 127.0.0.1 "$1"; do sleep 1; done"#)
    } else {
        (
            "/dev/tcp; sleep 1 loop (no nc here)",
            r#"until (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; do sleep 1; done"#,
        )
    };
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        say!("run {run}/{runs}");
        for side in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let delay = Duration::from_millis(300 + seed % 1000);
            let port = free_port()?;
            let step = if side == 0 {
                Step::new(&exe, root)
                    .args(["wait-for", "--quiet", "--timeout", "30s"])
                    .arg(format!("tcp://127.0.0.1:{port}"))
            } else {
                Step::new("bash", root).args(["-c", peer_loop, "bash"]).arg(port.to_string())
            };
            let lag = lag_after_open(&step, port, delay)?;
            if side == 0 { ours.push(lag) } else { peer.push(lag) }
        }
    }
    Ok(Report {
        name: "wait",
        ours: Side::new("cargo xtask wait-for tcp://", ours),
        peer: Side::new(peer_name, peer),
        others: Vec::new(),
        note: None,
    })
}

/// Time-to-ready of the dev stack: ours against `docker compose up --wait`, same files.
pub fn stack(root: &Utf8Path, runs: u32) -> Result<Report> {
    docker::require_engine()?;
    let revision = Revision::read(root)?;
    let exe = plan::this_xtask()?;
    let tag = stack::tag(&revision);
    let probe = Stack::new(root, Mode::Dev, "memories-bench-check".into(), &[], tag.clone());
    // Both sides start from built images: build them first (a no-op when nothing changed).
    stack::build(&probe, &probe.model()?, &revision)?;
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    let (mut ours_lag, mut peer_lag) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        say!("run {run}/{runs}");
        for side in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
            let project = stack::unique_project("memories-bench");
            let stack = Stack::new(root, Mode::Dev, project.clone(), &[], tag.clone());
            let ports = [("DEV_SERVER_PORT", free_port()?), ("DEV_DB_PORT", free_port()?)];
            let mut step = if side == 0 {
                Step::new(&exe, root)
                    .args(["dev", "up", "--no-build"])
                    .env("COMPOSE_PROJECT_NAME", &project)
            } else {
                stack.compose().args(["up", "--detach", "--wait"])
            };
            for (key, port) in ports {
                step = step.env(key, &port.to_string());
            }
            let timed = time(&step);
            let finished = std::time::SystemTime::now();
            let own_start = slowest_own_start(root, &project);
            let mut down =
                stack.compose().args(["down", "--volumes", "--remove-orphans", "--timeout", "2"]);
            for (key, port) in ports {
                down = down.env(key, &port.to_string());
            }
            let _ = down.quiet().run_regardless();
            let elapsed = timed?;
            let done =
                finished.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            let lag = own_start.map(|ready| Duration::from_secs_f64((done - ready).max(0.0)));
            let (times, lags) =
                if side == 0 { (&mut ours, &mut ours_lag) } else { (&mut peer, &mut peer_lag) };
            times.push(elapsed);
            lags.extend(lag);
        }
    }
    Ok(Report {
        name: "stack",
        ours: Side::new("cargo xtask dev (to ready)", ours),
        peer: Side::new("docker compose up --wait", peer),
        others: Vec::new(),
        note: Some(format!(
            "after the slowest service's own \"ready\" log line, ours finished {:.0} ms later, compose {:.0} ms (medians)",
            ms(median(&ours_lag)),
            ms(median(&peer_lag))
        )),
    })
}

/// Every benchmark but `release` (which clears the build cache), each with its default runs,
/// in one table.
pub fn all(root: &Utf8Path, json: bool) -> Result<()> {
    let reports = [wait(root, 15)?, stack(root, 5)?, build(root, 5)?, startup(root, 20)?];
    if json {
        let value: Vec<serde_json::Value> = reports.iter().map(Report::to_json).collect();
        out!("{:#}", json!({ "benchmarks": value }));
        return Ok(());
    }
    let width =
        reports.iter().flat_map(|r| [r.ours.name.len(), r.peer.name.len()]).max().unwrap_or(0);
    out!(
        "{:<8} {:<width$} {:>10}   {:<width$} {:>10} {:>7}",
        "bench",
        "ours",
        "median",
        "peer",
        "median",
        "ratio"
    );
    for r in &reports {
        out!(
            "{:<8} {:<width$} {:>8.1}ms   {:<width$} {:>8.1}ms {:>6.2}x",
            r.name,
            r.ours.name,
            ms(median(&r.ours.samples)),
            r.peer.name,
            ms(median(&r.peer.samples)),
            r.ratio()
        );
    }
    for r in &reports {
        if let Some(note) = &r.note {
            out!("{}: {note}", r.name);
        }
    }
    Ok(())
}

/// When the slowest service of `project` said it was ready, by its own log: the server's
/// "Application startup complete" and the database's last "ready to accept connections".
fn slowest_own_start(root: &Utf8Path, project: &str) -> Option<f64> {
    let mut latest: Option<f64> = None;
    for (service, line) in [
        ("server", "Application startup complete"),
        ("db", "database system is ready to accept connections"),
    ] {
        let id = docker::cli(root)
            .args(["ps", "--quiet"])
            .args(["--filter", &format!("label=com.docker.compose.project={project}")])
            .args(["--filter", &format!("label=com.docker.compose.service={service}")])
            .quiet()
            .capture()
            .ok()?
            .stdout;
        let logs =
            docker::cli(root).args(["logs", "--timestamps", id.trim()]).quiet().capture().ok()?;
        let text = logs.stdout + &logs.stderr;
        let at = text
            .lines()
            .filter(|l| l.contains(line))
            .filter_map(|l| crate::image::version::parse_rfc3339_utc(l.split_whitespace().next()?))
            .fold(None, |max: Option<f64>, t| Some(max.map_or(t, |m| m.max(t))))?;
        latest = Some(latest.map_or(at, |l| l.max(at)));
    }
    latest
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts the waiter, opens the port after `delay`, and returns how long the waiter took to
/// exit after that.
fn lag_after_open(step: &Step, port: u16, delay: Duration) -> Result<Duration> {
    let mut waiter = step.clone().quiet().spawn(Streams::SILENT)?;
    std::thread::sleep(delay);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("cannot open port {port} for the benchmark"))?;
    let opened = Instant::now();
    let status = waiter.wait()?;
    let lag = opened.elapsed();
    drop(listener);
    if !status.success() {
        bail!("`{step}` failed during the benchmark with {status}");
    }
    Ok(lag)
}

fn measure(ours: &Step, peer: &Step, runs: u32) -> Result<(Vec<Duration>, Vec<Duration>)> {
    say!("warming up: {ours}");
    time(ours)?;
    say!("warming up: {peer}");
    time(peer)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        say!("run {run}/{runs}");
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
    let output = step.clone().quiet().capture()?;
    let elapsed = start.elapsed();
    if !output.success() {
        let stderr = &output.stderr;
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        bail!("`{step}` failed during the benchmark: {last}");
    }
    Ok(elapsed)
}

/// One side of a benchmark: what ran, and how long each run took.
pub struct Side {
    pub name: String,
    pub samples: Vec<Duration>,
}

impl Side {
    pub fn new(name: impl Into<String>, samples: Vec<Duration>) -> Side {
        Side { name: name.into(), samples }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "median_ms": ms(median(&self.samples)),
            "p90_ms": ms(p90(&self.samples)),
            "samples_ms": self.samples.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        })
    }
}

/// Ours against a peer measured in the same run.
pub struct Report {
    pub name: &'static str,
    pub ours: Side,
    pub peer: Side,
    /// More sides, shown beside the two the ratio compares.
    pub others: Vec<Side>,
    /// A line that says more than the timings do.
    pub note: Option<String>,
}

impl Report {
    /// Ours over the peer, by medians: below 1 is faster.
    pub fn ratio(&self) -> f64 {
        median(&self.ours.samples).as_secs_f64()
            / median(&self.peer.samples).as_secs_f64().max(1e-9)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "bench": self.name,
            "ours": self.ours.to_json(),
            "peer": self.peer.to_json(),
            "others": self.others.iter().map(Side::to_json).collect::<Vec<_>>(),
            "ratio": self.ratio(),
            "note": self.note,
        })
    }

    pub fn print(&self, json: bool) {
        if json {
            out!("{:#}", self.to_json());
            return;
        }
        let sides: Vec<&Side> = [&self.ours, &self.peer].into_iter().chain(&self.others).collect();
        let width = sides.iter().map(|s| s.name.len()).max().unwrap_or(0).max(28);
        out!("{:<width$} {:>5} {:>9} {:>9} {:>9} {:>9}", "", "runs", "median", "p90", "min", "max");
        for side in sides {
            let s = &side.samples;
            let min = s.iter().min().copied().unwrap_or_default();
            let max = s.iter().max().copied().unwrap_or_default();
            out!(
                "{:<width$} {:>5} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms",
                side.name,
                s.len(),
                ms(median(s)),
                ms(p90(s)),
                ms(min),
                ms(max)
            );
        }
        out!("{:<width$} {:>5} {:>8.2}x", "ratio (ours / peer, medians)", "", self.ratio());
        if let Some(note) = &self.note {
            out!("{note}");
        }
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

/// The 90th percentile, by nearest rank.
pub fn p90(samples: &[Duration]) -> Duration {
    percentile(samples, 90)
}

/// The `pct`th percentile, by nearest rank.
pub fn percentile(samples: &[Duration], pct: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[(n * pct).div_ceil(100) - 1],
    }
}

#[cfg(test)]
mod tests;
