//! A fault-injecting HTTP proxy for a registry: every request in front of the upstream either
//! passes, or gets a 500, a 429 with `Retry-After`, a connection reset or a delay. Which request
//! gets which fault follows from a seed and the request's arrival number, so a failure seen once
//! can be seen again. Used by the release tests, `bench flaky` and
//! `cargo xtask fault-proxy`.
//!
//! Each client connection carries one request: the proxy asks both sides to close after it
//! (`Connection: close`), so request boundaries need no parsing of bodies.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 Internal Server Error, nothing forwarded.
    ServerError,
    /// 429 Too Many Requests with `Retry-After: 1`, nothing forwarded.
    TooManyRequests,
    /// The connection is reset (RST) before any answer.
    Reset,
    /// The request is forwarded after the plan's delay.
    Delay,
}

impl Fault {
    const ALL: [Fault; 4] =
        [Fault::ServerError, Fault::TooManyRequests, Fault::Reset, Fault::Delay];

    fn name(self) -> &'static str {
        match self {
            Fault::ServerError => "500",
            Fault::TooManyRequests => "429",
            Fault::Reset => "reset",
            Fault::Delay => "delay",
        }
    }
}

/// Which share of requests fail, and the seed that picks them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    /// From 0 (none) to 1 (every request).
    pub rate: f64,
    pub seed: u64,
    /// How long a delayed request is held before it is forwarded.
    pub delay: Duration,
}

impl FaultPlan {
    /// The fault for the `n`th request (counting from 0), if any: the same seed gives the same
    /// sequence. The kinds take turns in equal shares.
    pub fn fault(&self, n: u64) -> Option<Fault> {
        let draw = splitmix64(self.seed ^ splitmix64(n));
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        if unit >= self.rate {
            return None;
        }
        Some(Fault::ALL[(splitmix64(draw) % Fault::ALL.len() as u64) as usize])
    }
}

/// Parses a rate given as `0.2` or `20%`.
pub fn parse_rate(raw: &str) -> Result<f64, String> {
    let (number, scale) = match raw.strip_suffix('%') {
        Some(percent) => (percent, 100.0),
        None => (raw, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(value) if (0.0..=scale).contains(&value) => Ok(value / scale),
        _ => Err(format!(
            "`{raw}` is not a failure rate: use a share from 0 to 1 (0.2) or a percentage (20%)"
        )),
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Counts of what the proxy did, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    by_fault: [AtomicU64; 4],
}

impl Stats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests that got a fault (delays included).
    pub fn faults(&self) -> u64 {
        self.by_fault.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    pub fn to_json(&self) -> Value {
        let mut faults = serde_json::Map::new();
        for (fault, count) in Fault::ALL.iter().zip(&self.by_fault) {
            faults.insert(fault.name().to_owned(), count.load(Ordering::SeqCst).into());
        }
        json!({ "requests": self.requests(), "faults": faults })
    }
}

/// A running proxy on a free loopback port; it stops accepting when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub address: String,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, failing requests by `plan`.
    /// Each injected fault is reported on stderr when `verbose`.
    pub fn start(upstream: SocketAddr, plan: FaultPlan, verbose: bool) -> Result<FaultProxy> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("cannot listen on a loopback port")?;
        let address = listener.local_addr().context("cannot read the proxy's address")?;
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_stats, thread_stop) = (stats.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let stats = thread_stats.clone();
                thread::spawn(move || {
                    // A client that went away mid-request is no concern of the proxy's.
                    let _ = serve(client, upstream, plan, &stats, verbose);
                });
            }
        });
        Ok(FaultProxy { address: address.to_string(), stats, stop })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.address);
    }
}

fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    plan: FaultPlan,
    stats: &Stats,
    verbose: bool,
) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some((head, rest)) = read_head(&mut client)? else {
        // A TLS handshake: answering in plain HTTP makes Docker fall back to HTTP for a
        // registry it treats as insecure (any loopback one), as the registry itself would.
        client.write_all(b"HTTP/1.0 400 Bad Request\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    let n = stats.requests.fetch_add(1, Ordering::SeqCst);
    let fault = plan.fault(n);
    if let Some(fault) = fault {
        let index = Fault::ALL.iter().position(|f| *f == fault).expect("a known fault");
        stats.by_fault[index].fetch_add(1, Ordering::SeqCst);
        if verbose {
            let request_line = head.lines().next().unwrap_or_default();
            say!("fault-proxy: request {n} `{request_line}`: {}", fault.name());
        }
    }
    match fault {
        Some(Fault::ServerError) => {
            return answer(client, "500 Internal Server Error", "UNKNOWN", "");
        }
        Some(Fault::TooManyRequests) => {
            return answer(
                client,
                "429 Too Many Requests",
                "TOOMANYREQUESTS",
                "Retry-After: 1\r\n",
            );
        }
        Some(Fault::Reset) => {
            let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
            nix::sys::socket::setsockopt(
                &client.as_fd(),
                nix::sys::socket::sockopt::Linger,
                &linger,
            )
            .map_err(io::Error::from)?;
            drop(client);
            return Ok(());
        }
        Some(Fault::Delay) => thread::sleep(plan.delay),
        None => {}
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(close_after(&head).as_bytes())?;
    server.write_all(&rest)?;
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    client.set_read_timeout(None)?;
    let uploader = thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let copied = io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = uploader.join();
    copied.map(|_| ())
}

/// Reads up to the end of the request head; returns the head and the body bytes read past it,
/// or `None` for a TLS handshake.
fn read_head(client: &mut TcpStream) -> io::Result<Option<(String, Vec<u8>)>> {
    const TLS_HANDSHAKE: u8 = 0x16;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if buffer.first() == Some(&TLS_HANDSHAKE) {
            return Ok(None);
        }
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok(Some((String::from_utf8_lossy(&buffer).into_owned(), rest)));
        }
        if buffer.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too long"));
        }
        let read = client.read(&mut chunk)?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The head with `Connection: close`, so the upstream ends the connection after its answer.
fn close_after(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

/// Answers with a registry-style error and closes.
fn answer(mut client: TcpStream, status: &str, code: &str, extra: &str) -> io::Result<()> {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"injected by fault-proxy"}}]}}"#);
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    // Reads what the client still sends (an upload body), so that closing does not reset the
    // connection before the client has read the answer.
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let _ = io::copy(&mut client, &mut io::sink());
    Ok(())
}

/// `cargo xtask fault-proxy`: prints the proxy's address on stdout, serves until Ctrl-C or
/// SIGTERM, then prints what it did as JSON on stdout.
pub fn run(upstream: &str, plan: FaultPlan) -> Result<()> {
    use std::net::ToSocketAddrs;
    let Some(upstream) = upstream.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        bail!("`{upstream}` is not HOST:PORT of a reachable host: e.g. 127.0.0.1:5000");
    };
    let proxy = FaultProxy::start(upstream, plan, true)?;
    out!("{}", proxy.address);
    say!(
        "fault-proxy: {} -> {upstream}, failing {:.0}% of requests (seed {}); Ctrl-C stops",
        proxy.address,
        plan.rate * 100.0,
        plan.seed
    );
    while !crate::run::interrupt::is_set() {
        thread::sleep(Duration::from_millis(50));
    }
    say!(
        "fault-proxy: {} of {} requests got a fault",
        proxy.stats.faults(),
        proxy.stats.requests()
    );
    out!("{}", proxy.stats.to_json());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_seed_gives_the_same_faults_at_the_asked_rate() {
        let plan = FaultPlan { rate: 0.2, seed: 7, delay: MS };
        let first: Vec<Option<Fault>> = (0..10_000).map(|n| plan.fault(n)).collect();
        let again: Vec<Option<Fault>> = (0..10_000).map(|n| plan.fault(n)).collect();
        assert_eq!(first, again);
        let failed = first.iter().filter(|f| f.is_some()).count();
        assert!((1800..2200).contains(&failed), "{failed} of 10000");
        for kind in Fault::ALL {
            let count = first.iter().filter(|f| **f == Some(kind)).count();
            assert!((400..600).contains(&count), "{kind:?}: {count}");
        }
        let other = FaultPlan { rate: 0.2, seed: 8, delay: MS };
        assert_ne!(first, (0..10_000).map(|n| other.fault(n)).collect::<Vec<_>>());
        assert!((0..1000).all(|n| FaultPlan { rate: 0.0, seed: 1, delay: MS }.fault(n).is_none()));
        assert!((0..1000).all(|n| FaultPlan { rate: 1.0, seed: 1, delay: MS }.fault(n).is_some()));
    }

    #[test]
    fn rates_read_as_shares_or_percentages() {
        assert_eq!(parse_rate("0.2"), Ok(0.2));
        assert_eq!(parse_rate("20%"), Ok(0.2));
        assert!(parse_rate("1.5").unwrap_err().contains("from 0 to 1"));
        assert!(parse_rate("x").is_err());
    }

    #[test]
    fn the_upstream_is_asked_to_close_after_one_request() {
        let head = "GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(close_after(head), "GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    }

    /// A real round trip through the proxy to a tiny upstream, and each fault as a client sees it.
    #[test]
    fn requests_pass_or_fail_as_planned() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        thread::spawn(move || {
            for stream in upstream.incoming() {
                let mut stream = stream.unwrap();
                let mut seen = [0u8; 1024];
                let _ = stream.read(&mut seen);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        let get = |address: &str| -> io::Result<String> {
            let mut stream = TcpStream::connect(address)?;
            stream.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        };
        let clean =
            FaultProxy::start(upstream_address, FaultPlan { rate: 0.0, seed: 1, delay: MS }, false)
                .unwrap();
        assert!(get(&clean.address).unwrap().ends_with("\r\n\r\nok"));
        assert_eq!(clean.stats.requests(), 1);

        let faulty =
            FaultProxy::start(upstream_address, FaultPlan { rate: 1.0, seed: 3, delay: MS }, false)
                .unwrap();
        let plan = FaultPlan { rate: 1.0, seed: 3, delay: MS };
        for n in 0..8 {
            let answer = get(&faulty.address);
            match plan.fault(n).unwrap() {
                Fault::ServerError => assert!(answer.unwrap().starts_with("HTTP/1.1 500")),
                Fault::TooManyRequests => {
                    let answer = answer.unwrap();
                    assert!(
                        answer.starts_with("HTTP/1.1 429") && answer.contains("Retry-After: 1")
                    );
                }
                Fault::Reset => {
                    let err = answer.unwrap_err();
                    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
                }
                Fault::Delay => assert!(answer.unwrap().ends_with("ok")),
            }
        }
        assert_eq!(faulty.stats.faults(), 8);
    }
}
