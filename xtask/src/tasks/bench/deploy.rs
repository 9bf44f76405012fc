//! `cargo xtask bench deploy`: requests that fail, and how slow they get, during an update of
//! the production stack on Docker Swarm from version A to version B under a steady load
//! through the proxy. Ours is `cargo xtask prod deploy --swarm` (start-first servers, healthcheck
//! gated; services whose image content did not change keep running); the peer is the same
//! images deployed the naive way: `docker stack deploy` of the same definition without our
//! update settings (swarm's defaults: stop-first, one task at a time) and with every service
//! moved to B's image.
//!
//! A and B are two real commits: A is HEAD, checked out in a clone (so the work tree's
//! uncommitted changes do not count), and B is a commit on top of it in that clone that changes
//! only the server's code: what a release that changed the server looks like. Every image of B
//! has new labels; the db and proxy keep their layers (each image has its own epoch), so ours
//! keeps them running.
//!
//! With `--monitoring`, both sides are ours and the question is what monitoring costs: the
//! measured side runs with `MONITORING=on` (Prometheus scraping every replica every 5 s, the
//! servers pushing their metrics over OTLP every 5 s to the receiver, which it scrapes too), the
//! peer with it off. After the measured update, `prod status --stack` must see every server
//! replica up and the OTLP receiver answering, or the run fails: monitoring that did not run
//! would cost nothing.
//!
//! The load goes over HTTPS, as clients reach a prod stack: the proxy serves the benchmark's
//! certificate for `localhost` (`xtask/src/stack/tls/bench.pem`, issued by `bench-ca.pem`, valid until
//! 2100; made for this and nothing else), and each request makes a new TLS connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use super::{Report, Side, free_port};
use crate::image::version::Revision;
use crate::image::{self, BuildRequest, ImageName};
use crate::run::plan::{self, Step};
use crate::stack::monitoring::JobFigures;
use crate::stack::services::Model;
use crate::stack::tls::Edge;
use crate::stack::{self, Mode, Stack};
use crate::tasks::registry::Throwaway;
use crate::{run::docker, stack::swarm, tasks::prod};

/// Requests per second of the load, alternating inserts and searches.
const RATE: u32 = 50;
/// A request that takes longer than this has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const VERSION_A: &str = "1.0.0";
const VERSION_B: &str = "1.0.1";
const DIMENSIONS: usize = 384;

/// What ours is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployPeer {
    /// The same images deployed the naive way (`docker stack deploy`, swarm's defaults).
    Naive,
    /// Ours again, monitoring off, while ours runs with it on.
    Unmonitored,
}

/// What one request saw.
struct Outcome {
    latency: Duration,
    failure: Option<String>,
}

/// The load of one update: every request sent while it ran.
struct Load {
    stop: Arc<AtomicBool>,
    ticker: JoinHandle<Vec<Outcome>>,
}

impl Load {
    /// Sends [`RATE`] requests a second to the proxy's HTTPS `port`, each on a thread of its
    /// own, so that a stalled request never holds back the next.
    fn start(port: u16, agent: ureq::Agent) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let ticker = std::thread::spawn(move || {
            let (sender, results) = mpsc::channel();
            let started = Instant::now();
            let mut workers = Vec::new();
            let mut n = 0u32;
            while !stopped.load(Ordering::SeqCst) {
                let sender = sender.clone();
                let agent = agent.clone();
                workers.push(std::thread::spawn(move || {
                    let _ = sender.send(one_request(&agent, port, n as usize));
                }));
                n += 1;
                let next = started + Duration::from_secs_f64(f64::from(n) / f64::from(RATE));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            drop(sender);
            for worker in workers {
                let _ = worker.join();
            }
            results.into_iter().collect()
        });
        Load { stop, ticker }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.ticker.join().unwrap_or_default()
    }
}

/// The `n`th request: an insert for even `n`, a search for odd.
fn one_request(agent: &ureq::Agent, port: u16, n: usize) -> Outcome {
    let started = Instant::now();
    let mut embedding = vec!["0".to_owned(); DIMENSIONS];
    embedding[n % DIMENSIONS] = "1".into();
    let base = format!("https://localhost:{port}");
    let result = if n % 2 == 0 {
        let body =
            format!("{{\"text\": \"bench deploy {n}\", \"embedding\": [{}]}}", embedding.join(","));
        let request = agent.post(format!("{base}/v1/memories"));
        let request =
            request.header("Content-Type", "application/json").header("Connection", "close");
        request.config().timeout_global(Some(REQUEST_TIMEOUT)).build().send(body.as_str())
    } else {
        let url = format!("{base}/v1/memories/search?k=3&embedding={}", embedding.join(","));
        let request = agent.get(url).header("Connection", "close");
        request.config().timeout_global(Some(REQUEST_TIMEOUT)).build().call()
    };
    let failure = match result {
        Ok(answer) if answer.status().is_success() => None,
        Ok(answer) => Some(format!("status {}", answer.status().as_u16())),
        Err(err) => Some(err.to_string()),
    };
    Outcome { latency: started.elapsed(), failure }
}

/// Swarm mode for the benchmark: the engine's own when it is a manager, else one started here
/// and left again at the end.
struct Swarm {
    root: Utf8PathBuf,
    started: bool,
}

impl Swarm {
    fn join(root: &Utf8Path) -> Result<Swarm> {
        let state = docker::cli(root)
            .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .quiet()
            .read()
            .context("cannot ask the engine about swarm mode")?;
        if state.trim() == "active" {
            return Ok(Swarm { root: root.to_owned(), started: false });
        }
        say!(
            "starting a one-node swarm for the benchmark (left again at the end); containers on \
             bridge networks, such as a dev stack, may lose their name resolution until recreated"
        );
        docker::cli(root).args(["swarm", "init", "--advertise-addr", "127.0.0.1"]).run()?;
        Ok(Swarm { root: root.to_owned(), started: true })
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.started {
            let _ = docker::cli(&self.root).args(["swarm", "leave", "--force"]).run_regardless();
            // `swarm init` made it, and `swarm leave` keeps it.
            let gateway = docker::cli(&self.root).args(["network", "rm", "docker_gwbridge"]);
            let _ = gateway.quiet().capture_regardless();
        }
    }
}

/// One side's swarm stack: its name and proxy port, and where its images and its password
/// come from; removed with its volumes when dropped.
struct BenchStack<'a> {
    root: &'a Utf8Path,
    revision: &'a Revision,
    /// The throwaway registry's namespace that holds both versions.
    namespace: &'a str,
    env_file: &'a Utf8Path,
    name: String,
    /// The proxy's plain-HTTP port (it only redirects) and its HTTPS port, where the load goes.
    port: u16,
    https_port: u16,
    /// Runs with MONITORING=on and the servers pushing over OTLP.
    monitoring: bool,
}

impl BenchStack<'_> {
    /// The prod stack on this side's proxy port, its password in the env file.
    fn prod_stack(&self) -> Stack {
        let tag = stack::tag(self.revision);
        let mut stack = Stack::new(self.root, Mode::Prod, self.name.clone(), &[], tag);
        stack.env_files = vec![self.env_file.to_owned()];
        stack.extra_files = Edge::Files.files();
        stack.vars = vec![
            ("PROXY_PORT".to_owned(), self.port.to_string()),
            ("HTTPS_PORT".to_owned(), self.https_port.to_string()),
        ];
        stack
    }

    /// `cargo xtask prod deploy --swarm` of `version`, as a user runs it.
    fn ours(&self, version: &str) -> Result<()> {
        let mut step = Step::new(&plan::this_xtask()?, self.root);
        for (key, value) in self.monitoring_env() {
            step = step.env(key, value);
        }
        step.args([
            "prod",
            "deploy",
            "--swarm",
            "--stack",
            &self.name,
            "--registry",
            self.namespace,
        ])
        .args(["--version", version, "--env-file", self.env_file.as_str(), "--timeout", "300s"])
        .env("PROXY_PORT", &self.port.to_string())
        .env("HTTPS_PORT", &self.https_port.to_string())
        .run()
        .with_context(|| format!("cargo xtask prod deploy of {version} failed"))
    }

    /// The settings of this side's monitoring, on or off.
    fn monitoring_env(&self) -> Vec<(&'static str, &'static str)> {
        if self.monitoring {
            vec![
                ("MONITORING", "on"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://otlp:4318/v1/metrics"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ]
        } else {
            vec![("MONITORING", "off")]
        }
    }

    /// What monitoring saw, as `prod status --stack` asks it: each scrape job's targets up, in
    /// one line; an error unless both server replicas and the OTLP receiver answer and the
    /// receiver holds pushed requests.
    fn monitoring_seen(&self) -> Result<String> {
        let stack = self.prod_stack();
        let statuses = swarm::status(self.root, &self.name)?;
        let summary = match prod::status::swarm_monitoring(&stack, &self.name, &statuses)? {
            prod::status::Monitoring::Running(summary) => summary,
            prod::status::Monitoring::Absent(why) => {
                anyhow::bail!("monitoring on the swarm stack {}: {why}", self.name)
            }
        };
        let job = |name: &str| summary.jobs.iter().find(|j| j.job == name);
        let up = |j: &JobFigures| j.targets_up == j.targets && j.targets > 0;
        let server_up = job("server").is_some_and(|j| up(j) && j.targets == 2);
        let pushed = job("otlp").is_some_and(|j| up(j) && j.requests_per_second > Some(0.0));
        let seen: Vec<String> = summary
            .jobs
            .iter()
            .map(|j| format!("{} {}/{}", j.job, j.targets_up, j.targets))
            .collect();
        if !server_up || !pushed {
            anyhow::bail!(
                "monitoring on the swarm stack {} is not whole: {}",
                self.name,
                summary.lines().join("; ")
            );
        }
        Ok(seen.join(", "))
    }

    /// The naive update to version B: every service moved to B's image, deployed with swarm's
    /// default update settings.
    fn naive(&self) -> Result<()> {
        let stack = self.prod_stack();
        let merged = stack::merged_definition(&stack)?;
        let model = Model::from_definition(&merged)?;
        let source = swarm::Source::Registry {
            registry: self.namespace.to_owned(),
            version: VERSION_B.to_owned(),
        };
        let images = swarm::resolve_images(&stack, &model, self.revision, &source)?.images;
        let mut deployment = swarm::deployment(&stack, merged, &self.name, &images)?;
        if let Some(services) = deployment.definition["services"].as_object_mut() {
            for service in services.values_mut() {
                if let Some(deploy) = service.get_mut("deploy").and_then(Value::as_object_mut) {
                    deploy.remove("update_config");
                    deploy.remove("rollback_config");
                }
            }
        }
        prod::apply(&stack, &self.name, &deployment, &source, Duration::from_secs(300))
    }
}

impl Drop for BenchStack<'_> {
    fn drop(&mut self) {
        let _ = docker::cli(self.root).args(["stack", "rm", &self.name]).run_regardless();
        // `stack rm` returns before the containers are gone; the next stack must not meet them.
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let left = docker::cli(self.root)
                .args(["ps", "--all", "--quiet", "--filter", &label])
                .quiet()
                .capture_regardless();
            if left.is_ok_and(|c| c.stdout.trim().is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // `stack rm` keeps volumes: the database's goes too.
        let volumes = docker::cli(self.root)
            .args(["volume", "ls", "--quiet", "--filter", &label])
            .quiet()
            .capture_regardless();
        let volumes = volumes.map(|c| c.stdout).unwrap_or_default();
        if !volumes.trim().is_empty() {
            let remove = docker::cli(self.root).args(["volume", "rm", "--force"]);
            let _ = remove.args(volumes.split_whitespace()).quiet().capture_regardless();
        }
    }
}

/// Pushes version A of the server, db and proxy images (and prometheus for `monitoring`), built
/// from HEAD in a clone in `work`, and version B, built from a second commit there that changes
/// only the server's code.
fn push_versions(
    root: &Utf8Path,
    namespace: &str,
    work: &Utf8Path,
    monitoring: bool,
) -> Result<()> {
    let checkout = work.join("checkout");
    let git = |dir: &Utf8Path, args: &[&str]| -> Result<String> {
        let step = Step::new("git", dir).args(args.iter().copied()).quiet();
        Ok(step.capture()?.stdout_of(&step)?.trim().to_owned())
    };
    let head = git(root, &["rev-parse", "HEAD"])?;
    git(root, &["clone", "--quiet", "--no-checkout", ".", checkout.as_str()])?;
    git(&checkout, &["checkout", "--quiet", "--detach", &head])?;
    for version in [VERSION_A, VERSION_B] {
        if version == VERSION_B {
            let file = checkout.join("app/src/memories/__init__.py");
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
            std::fs::write(&file, format!("{text}# The deploy benchmark's version B.\n"))
                .with_context(|| format!("cannot write {file}"))?;
            git(&checkout, &["add", "app/src/memories/__init__.py"])?;
            let identity = ["-c", "user.name=bench", "-c", "user.email=bench@bench.invalid"];
            let commit = ["commit", "--quiet", "--message", "The deploy benchmark's version B"];
            git(&checkout, &[&identity[..], &commit[..]].concat())?;
        }
        let revision = Revision::read(&checkout)?;
        let mut images = vec![ImageName::SERVER, ImageName::DB, ImageName::named("proxy")];
        if monitoring {
            images.extend([ImageName::named("prometheus"), ImageName::named("otlp")]);
        }
        let request = BuildRequest { images, ..BuildRequest::default() };
        let built = image::execute(&image::plan(&checkout, &revision, &request))?;
        for image in &built {
            let remote = format!("{namespace}/{}:{version}", image.image);
            docker::cli(root).args(["tag", &image.refs[1], &remote]).run()?;
            docker::cli(root).args(["push", "--quiet", &remote]).run()?;
        }
    }
    Ok(())
}

/// Runs `update` under the load and returns what the load saw.
fn under_load(
    port: u16,
    agent: &ureq::Agent,
    update: impl FnOnce() -> Result<()>,
) -> Result<Vec<Outcome>> {
    let load = Load::start(port, agent.clone());
    std::thread::sleep(Duration::from_secs(2));
    let updated = update();
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.finish();
    updated.map(|()| outcomes)
}

/// ` (N reason, M reason)`: why requests failed, most common first; empty when none did.
fn reasons(outcomes: &[Outcome]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for failure in outcomes.iter().filter_map(|o| o.failure.as_deref()) {
        *counts.entry(failure).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    if counts.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = counts.iter().map(|(why, n)| format!("{n} {why}")).collect();
    format!(" ({})", shown.join(", "))
}

fn p99(outcomes: &[Outcome]) -> Duration {
    super::percentile(&latencies(outcomes), 99)
}

fn latencies(outcomes: &[Outcome]) -> Vec<Duration> {
    outcomes.iter().map(|o| o.latency).collect()
}

pub fn deploy(root: &Utf8Path, runs: u32, peer: DeployPeer) -> Result<Report> {
    let monitoring = peer == DeployPeer::Unmonitored;
    docker::require_cli()?;
    let work = root.join(format!("target/xtask/bench-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {work}"))?;
    let result = (|| {
        let _swarm = Swarm::join(root)?;
        let registry = Throwaway::start(root)?;
        let namespace = format!("{}/bench-deploy", registry.address);
        let revision = Revision::read(root)?;
        let env_file = work.join("secrets.env");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tls = root.join("xtask/src/stack/tls");
        let password = format!(
            "POSTGRES_PASSWORD=bench-{nanos:x}\nAPI_KEYS=off\nTLS_CERT_FILE={tls}/bench.pem\n\
             TLS_KEY_FILE={tls}/bench.key\n"
        );
        let ca = tls.join("bench-ca.pem");
        let agent = crate::wait::net::https_agent(Some(ca.as_str())).map_err(anyhow::Error::msg)?;
        stack::write_mode(&env_file, password.as_bytes(), 0o600)?;
        type Measured = ([Vec<Outcome>; 2], [Vec<Duration>; 2], Vec<String>);
        let measured = (|| -> Result<Measured> {
            push_versions(root, &namespace, &work, monitoring)?;
            let mut seen: [Vec<Outcome>; 2] = [Vec::new(), Vec::new()];
            let mut p99s: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
            let mut monitored = Vec::new();
            for run in 1..=runs {
                for side in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
                    let stack = BenchStack {
                        root,
                        revision: &revision,
                        namespace: &namespace,
                        env_file: &env_file,
                        name: format!("membench{side}r{run}p{}", std::process::id()),
                        port: free_port()?,
                        https_port: free_port()?,
                        monitoring: monitoring && side == 0,
                    };
                    let who = match (side, peer) {
                        (0, DeployPeer::Naive) => "ours",
                        (0, DeployPeer::Unmonitored) => "ours with monitoring",
                        (_, DeployPeer::Naive) => "naive",
                        (_, DeployPeer::Unmonitored) => "ours without monitoring",
                    };
                    say!("run {run}/{runs}: {who} deploys {VERSION_A}");
                    stack.ours(VERSION_A)?;
                    say!("run {run}/{runs}: {who} update to {VERSION_B} under load");
                    let outcomes = under_load(stack.https_port, &agent, || match (side, peer) {
                        (1, DeployPeer::Naive) => stack.naive(),
                        _ => stack.ours(VERSION_B),
                    })?;
                    p99s[side].push(p99(&outcomes));
                    seen[side].extend(outcomes);
                    if stack.monitoring {
                        monitored.push(stack.monitoring_seen()?);
                    }
                }
            }
            Ok((seen, p99s, monitored))
        })();
        // Whatever happened, the local tags of the registry's images go with it.
        registry.untag_local(&namespace);
        let (seen, p99s, monitored) = measured?;
        let per_run = |p99s: &[Duration]| -> String {
            let each: Vec<String> = p99s.iter().map(|d| format!("{:.0}", super::ms(*d))).collect();
            each.join(", ")
        };
        let [ours_seen, naive_seen] = seen;
        let failed = |o: &[Outcome]| o.iter().filter(|o| o.failure.is_some()).count();
        let (ours_name, peer_name) = match peer {
            DeployPeer::Naive => ("ours", "naive"),
            DeployPeer::Unmonitored => ("monitored", "unmonitored"),
        };
        let watched = if monitored.is_empty() {
            String::new()
        } else {
            format!("; monitoring saw, after each update: {}", monitored.join("; "))
        };
        let note = format!(
            "failed requests: {ours_name} {} of {}{}, {peer_name} {} of {}{}; p99 latency: \
             {ours_name} {:.0} ms, {peer_name} {:.0} ms ({RATE} requests/s over HTTPS through \
             the proxy, each on a new connection; a request fails on a non-2xx \
             answer, an error or {}s without one); p99 of each run: {ours_name} {} ms, \
             {peer_name} {} ms{watched}",
            failed(&ours_seen),
            ours_seen.len(),
            reasons(&ours_seen),
            failed(&naive_seen),
            naive_seen.len(),
            reasons(&naive_seen),
            super::ms(p99(&ours_seen)),
            super::ms(p99(&naive_seen)),
            REQUEST_TIMEOUT.as_secs(),
            per_run(&p99s[0]),
            per_run(&p99s[1]),
        );
        let (ours_label, peer_label) = match peer {
            DeployPeer::Naive => {
                ("request latency, prod deploy (ours)", "request latency, naive stack deploy")
            }
            DeployPeer::Unmonitored => (
                "request latency, prod deploy, monitoring on",
                "request latency, prod deploy, monitoring off",
            ),
        };
        Ok(Report {
            name: "deploy",
            ours: Side::new(ours_label, latencies(&ours_seen)),
            peer: Side::new(peer_label, latencies(&naive_seen)),
            others: Vec::new(),
            note: Some(note),
        })
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let outcomes: Vec<Outcome> = (1..=200)
            .map(|ms| Outcome { latency: Duration::from_millis(ms), failure: None })
            .collect();
        assert_eq!(p99(&outcomes), Duration::from_millis(198));
        assert_eq!(p99(&[]), Duration::ZERO);
    }
}
