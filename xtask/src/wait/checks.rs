//! The checks behind each probe kind: network protocols spoken directly, Docker through its
//! CLI (with its event stream as a wake-up signal), files through the file system.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::postgres;
use super::{Attempt, Check, Clock, Probe};
use crate::plan::{Running, Step, Stream, Streams};

pub fn for_probe(probe: &Probe) -> Box<dyn Check> {
    Box::new(ProbeCheck { probe: probe.clone(), events: None, container: None })
}

struct ProbeCheck {
    probe: Probe,
    /// `docker events` for the probe's container, started on the first wait.
    events: Option<Events>,
    /// The container of a compose service, once found (it keeps its id until recreated).
    container: Option<String>,
}

impl Check for ProbeCheck {
    fn attempt(&mut self, timeout: Duration) -> Attempt {
        match &self.probe {
            Probe::Tcp { host, port } => match connect(host, *port, timeout) {
                Ok(_) => Attempt::Ready,
                Err(e) => Attempt::NotYet(e),
            },
            Probe::Http { host, port, path, status, contains } => {
                http(host, *port, path, *status, contains.as_deref(), timeout)
            }
            Probe::Postgres { host, port, user, password, database, allow_cleartext } => {
                postgres::attempt(
                    &postgres::Target {
                        host,
                        port: *port,
                        user,
                        password: password.as_deref(),
                        database,
                        allow_cleartext: *allow_cleartext,
                    },
                    timeout,
                )
            }
            Probe::Redis { host, port, password } => {
                redis(host, *port, password.as_deref(), timeout)
            }
            Probe::Healthy { container } => health(container, timeout),
            Probe::ComposeHealthy { project, service } => {
                let found = match &self.container {
                    Some(id) => Ok(Some(id.clone())),
                    None => compose_container(project, service, timeout),
                };
                match found {
                    Ok(Some(id)) => {
                        let attempt = health(&id, timeout);
                        // A container that vanished (recreated) is looked up again next time.
                        self.container = match &attempt {
                            Attempt::NotYet(e) if e.starts_with("no container") => None,
                            _ => Some(id),
                        };
                        attempt
                    }
                    Ok(None) => Attempt::NotYet(format!(
                        "no container yet for service {service} of project {project}"
                    )),
                    Err(e) => Attempt::NotYet(e),
                }
            }
            Probe::Log { container, text, times } => log(container, text, *times, timeout),
            Probe::Exec { container, argv } => {
                let mut args = vec!["exec", container.as_str()];
                args.extend(argv.iter().map(String::as_str));
                match docker(&args, timeout) {
                    Ok(_) => Attempt::Ready,
                    Err(e) => Attempt::NotYet(e),
                }
            }
            Probe::File { path } => {
                if std::path::Path::new(path).exists() {
                    Attempt::Ready
                } else {
                    Attempt::NotYet(format!("{path} does not exist"))
                }
            }
        }
    }

    fn wait_for_change(&mut self, clock: &dyn Clock, timeout: Duration) {
        let filter = match &self.probe {
            Probe::Healthy { container } => format!("container={container}"),
            Probe::ComposeHealthy { project, .. } => {
                format!("label=com.docker.compose.project={project}")
            }
            _ => return clock.sleep(timeout),
        };
        let events = self.events.get_or_insert_with(|| Events::start(&filter));
        match &events.receiver {
            // A health change, start, death or creation prompts a new look.
            Some(receiver) => {
                let _ = receiver.recv_timeout(timeout);
            }
            None => clock.sleep(timeout),
        }
    }

    fn max_interval(&self, configured: Duration) -> Duration {
        match self.probe {
            // Health changes arrive as events; polling is only the fallback.
            Probe::Healthy { .. } | Probe::ComposeHealthy { .. } => {
                configured.max(Duration::from_secs(1))
            }
            _ => configured,
        }
    }
}

/// A running `docker events` whose lines arrive on a channel; stopped on drop.
struct Events {
    _events: Option<Running>,
    receiver: Option<Receiver<()>>,
}

impl Events {
    fn start(filter: &str) -> Events {
        let step = quiet_docker()
            .args(["events", "--filter", filter, "--format", "{{.Action}}"])
            // State changes only: not the exec events every healthcheck run makes.
            .args(["--filter", "event=health_status", "--filter", "event=start"])
            .args(["--filter", "event=die", "--filter", "event=create"]);
        let streams = Streams { stdout: Stream::Piped, ..Streams::SILENT };
        let Ok(mut events) = step.spawn(streams) else {
            return Events { _events: None, receiver: None };
        };
        let stdout = events.stdout().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || sender.send(()).is_err() {
                    break;
                }
            }
        });
        Events { _events: Some(events), receiver: Some(receiver) }
    }
}

/// A quiet `docker` step: probes are not echoed.
fn quiet_docker() -> Step {
    Step::new("docker", ".").quiet()
}

/// Connects to the first address of `host` that accepts, within `timeout`.
pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addresses =
        (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

fn http(
    host: &str,
    port: u16,
    path: &str,
    status: Option<u16>,
    contains: Option<&str>,
    timeout: Duration,
) -> Attempt {
    let deadline = Instant::now() + timeout;
    let mut stream = match connect(host, port, timeout) {
        Ok(s) => s,
        Err(e) => return Attempt::NotYet(e),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: cargo-xtask-wait-for\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return Attempt::NotYet(format!("request not sent: {e}"));
    }
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Attempt::NotYet("no complete answer within the attempt timeout".into());
        }
        let _ = stream.set_read_timeout(Some(remaining));
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if response.is_empty() => return Attempt::NotYet(format!("no answer: {e}")),
            Err(_) => break,
        }
        // The status line is enough unless the body matters.
        if contains.is_none() && response.windows(2).any(|w| w == b"\r\n") {
            break;
        }
        if response.len() > 1 << 20 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    let Some(code) = code else {
        return Attempt::NotYet("the answer is not HTTP".into());
    };
    let status_ok = match status {
        Some(expected) => code == expected,
        None => (200..300).contains(&code),
    };
    if !status_ok {
        let want = status.map_or_else(|| "2xx".to_owned(), |s| s.to_string());
        return Attempt::NotYet(format!("status {code}, want {want}"));
    }
    if let Some(needle) = contains {
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if !body.contains(needle) {
            return Attempt::NotYet(format!("status {code}, but the body lacks `{needle}`"));
        }
    }
    Attempt::Ready
}

fn redis(host: &str, port: u16, password: Option<&str>, timeout: Duration) -> Attempt {
    let deadline = Instant::now() + timeout;
    let mut stream = match connect(host, port, timeout) {
        Ok(s) => s,
        Err(e) => return Attempt::NotYet(e),
    };
    let mut request = Vec::new();
    if let Some(password) = password {
        request.extend_from_slice(
            format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len()).as_bytes(),
        );
    }
    request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    if let Err(e) = stream.write_all(&request) {
        return Attempt::NotYet(format!("request not sent: {e}"));
    }
    let _ = stream.set_read_timeout(Some(
        deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
    ));
    let mut reader = BufReader::new(stream);
    let replies = if password.is_some() { 2 } else { 1 };
    for _ in 0..replies {
        let mut line = String::new();
        if let Err(e) = reader.read_line(&mut line) {
            return Attempt::NotYet(format!("no answer: {e}"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Attempt::NotYet("the connection closed without an answer".into());
        }
        if let Some(error) = line.strip_prefix('-') {
            // LOADING and BUSY pass; a refused password does not.
            return if error.starts_with("WRONGPASS")
                || error.starts_with("NOAUTH")
                || error.contains("invalid password")
            {
                Attempt::Failed(error.to_owned())
            } else {
                Attempt::NotYet(error.to_owned())
            };
        }
        if line == "+PONG" {
            return Attempt::Ready;
        }
    }
    Attempt::NotYet("no PONG".into())
}

fn health(container: &str, timeout: Duration) -> Attempt {
    let state = match docker(&["inspect", "--format", "{{json .State}}", container], timeout) {
        Ok(json) => json,
        Err(e) if e.contains("No such") || e.contains("no such") => {
            return Attempt::NotYet(format!("no container {container} yet"));
        }
        Err(e) => return Attempt::NotYet(e),
    };
    let state: Value = match serde_json::from_str(&state) {
        Ok(v) => v,
        Err(_) => return Attempt::NotYet("docker inspect printed no state".into()),
    };
    let status = state["Status"].as_str().unwrap_or("unknown");
    if matches!(status, "exited" | "dead") {
        let code = state["ExitCode"].as_i64().unwrap_or(-1);
        return Attempt::Failed(format!("container {container} {status} with code {code}"));
    }
    if matches!(status, "created" | "restarting") {
        // No health state before the container runs: pending, not a missing healthcheck.
        return Attempt::NotYet(format!("container {container} is {status}, not running yet"));
    }
    let Some(health) = state["Health"]["Status"].as_str() else {
        return Attempt::Failed(format!(
            "container {container} has no healthcheck: give it one, or probe its port or log"
        ));
    };
    match health {
        "healthy" => Attempt::Ready,
        "unhealthy" => {
            let last = state["Health"]["Log"]
                .as_array()
                .and_then(|l| l.last())
                .and_then(|l| l["Output"].as_str());
            let detail = last.map(|o| format!(": {}", o.trim())).unwrap_or_default();
            Attempt::Failed(format!("container {container} is unhealthy{detail}"))
        }
        other => Attempt::NotYet(format!("container {container} is {status}, health {other}")),
    }
}

fn compose_container(
    project: &str,
    service: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let ids = compose_service_ps(project, service, "{{.ID}}", timeout)?;
    Ok(ids.lines().next().map(str::to_owned))
}

/// `docker ps --all` of a compose service's containers, one line per container in `format`.
pub fn compose_service_ps(
    project: &str,
    service: &str,
    format: &str,
    timeout: Duration,
) -> Result<String, String> {
    docker(
        &[
            "ps",
            "--all",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            format,
        ],
        timeout,
    )
}

fn log(container: &str, text: &str, times: u32, timeout: Duration) -> Attempt {
    let output = match docker_output(&["logs", container], timeout) {
        Ok((true, out, err)) => out + &err,
        Ok((false, _, err)) => return Attempt::NotYet(first_line(&err)),
        Err(e) => return Attempt::NotYet(e),
    };
    let seen = output.matches(text).count();
    if seen >= times as usize {
        Attempt::Ready
    } else {
        Attempt::NotYet(format!("the log holds `{text}` {seen} of {times} times"))
    }
}

/// Runs `docker ARGS` within `timeout` and returns stdout, or the first line of stderr as the
/// error: the one way a check asks the Docker engine.
pub fn docker(args: &[&str], timeout: Duration) -> Result<String, String> {
    match docker_output(args, timeout)? {
        (true, out, _) => Ok(out.trim().to_owned()),
        (false, _, err) => Err(first_line(&err)),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed without a message")
        .trim()
        .to_owned()
}

/// Runs `docker ARGS` with a time limit: (success, stdout, stderr).
fn docker_output(args: &[&str], timeout: Duration) -> Result<(bool, String, String), String> {
    let step = quiet_docker().args(args.iter().copied()).timeout(timeout);
    let answer = step.capture().map_err(|e| format!("cannot run docker: {e:#}"))?;
    if answer.timed_out {
        return Err(format!("docker {} took longer than {timeout:?}", args.first().unwrap_or(&"")));
    }
    Ok((answer.status.success(), answer.stdout, answer.stderr))
}
