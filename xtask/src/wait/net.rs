//! The network probe family, spoken directly: a TCP connect, an HTTP GET, a Redis PING; and
//! an HTTPS GET through ureq (rustls), the registry client's HTTP stack.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use ureq::tls::{PemItem, RootCerts, TlsConfig, parse_pem};

use super::Attempt;

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

pub fn http(
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
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    judge(code, status, contains, body)
}

/// An HTTPS client for readiness: no proxy (a probe asks the service itself), no redirect
/// followed (a redirect is the answer), any status returned as it is; trusting the CA
/// certificates of PEM file `ca`, else Mozilla's roots.
pub fn https_agent(ca: Option<&str>) -> Result<ureq::Agent, String> {
    let mut tls = TlsConfig::builder();
    if let Some(file) = ca {
        let pem = std::fs::read(file).map_err(|e| format!("cannot read --ca {file}: {e}"))?;
        let mut roots = Vec::new();
        for item in parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(cert)) => roots.push(cert),
                Ok(_) => {}
                Err(e) => return Err(format!("--ca {file} is not a PEM file: {e}")),
            }
        }
        if roots.is_empty() {
            return Err(format!("--ca {file} holds no PEM certificate"));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    }
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent("cargo-xtask-wait-for")
        .tls_config(tls.build())
        .build()
        .into())
}

/// `GET https://HOST:PORT/PATH` through `agent`, judged as [`http`] judges its answer.
pub fn https(
    agent: &ureq::Agent,
    probe: (&str, u16, &str),
    status: Option<u16>,
    contains: Option<&str>,
    timeout: Duration,
) -> Attempt {
    let (host, port, path) = probe;
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let request = agent.get(format!("https://{host}:{port}{path}"));
    let answer = request.config().timeout_global(Some(timeout)).build().call();
    let mut response = match answer {
        Ok(response) => response,
        Err(e) => return Attempt::NotYet(e.to_string()),
    };
    let code = response.status().as_u16();
    let body = match contains {
        Some(_) => response.body_mut().with_config().limit(1 << 20).read_to_string().ok(),
        None => None,
    };
    judge(code, status, contains, body.as_deref().unwrap_or(""))
}

/// Whether an HTTP answer with status `code` and `body` is what the probe wants.
fn judge(code: u16, status: Option<u16>, contains: Option<&str>, body: &str) -> Attempt {
    let status_ok = match status {
        Some(expected) => code == expected,
        None => (200..300).contains(&code),
    };
    if !status_ok {
        let want = status.map_or_else(|| "2xx".to_owned(), |s| s.to_string());
        return Attempt::NotYet(format!("status {code}, want {want}"));
    }
    if let Some(needle) = contains {
        if !body.contains(needle) {
            return Attempt::NotYet(format!("status {code}, but the body lacks `{needle}`"));
        }
    }
    Attempt::Ready
}

pub fn redis(host: &str, port: u16, password: Option<&str>, timeout: Duration) -> Attempt {
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
            // The first word of a RESP error is its code: LOADING and BUSY pass; a refused
            // password does not (older servers say `ERR invalid password`).
            let code = error.split_whitespace().next().unwrap_or_default();
            return if matches!(code, "WRONGPASS" | "NOAUTH") || error == "ERR invalid password" {
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
