//! A PostgreSQL readiness check over the wire protocol (v3): start a session, authenticate
//! (trust or SCRAM-SHA-256; a cleartext password only when the spec allows it), run `SELECT 1`.
//! A server that is starting up, shutting down or recovering answers SQLSTATE 57P03 and is not
//! ready; a refused password is final.
//!
//! The server is not trusted: it must prove that it knows the password (the SCRAM server
//! signature), it cannot make us hash for longer than [`MAX_ITERATIONS`] allow or past the
//! attempt's deadline, and it never gets the password in cleartext unless asked for.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::Attempt;
use super::net::connect;

pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
    /// Send the password in cleartext if the server asks for it (`?require_auth=password`).
    pub allow_cleartext: bool,
}

/// The most PBKDF2 iterations a server may ask for. PostgreSQL's default is 4096; a server
/// asking for more than this is not one we hash for (2,000,000,000 would take minutes).
pub const MAX_ITERATIONS: u32 = 1_000_000;

pub fn attempt(target: &Target<'_>, timeout: Duration) -> Attempt {
    let deadline = Instant::now() + timeout;
    let mut stream = match connect(target.host, target.port, timeout) {
        Ok(s) => s,
        Err(e) => return Attempt::NotYet(e),
    };
    match session(&mut stream, target, deadline) {
        Ok(()) => {
            let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
            Attempt::Ready
        }
        Err(outcome) => outcome,
    }
}

/// A server message: its type byte and body.
struct Message {
    kind: u8,
    body: Vec<u8>,
}

fn session(stream: &mut TcpStream, target: &Target<'_>, deadline: Instant) -> Result<(), Attempt> {
    let io = |e: std::io::Error| Attempt::NotYet(format!("connection dropped: {e}"));
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    for (key, value) in [("user", target.user), ("database", target.database)] {
        startup.extend_from_slice(key.as_bytes());
        startup.push(0);
        startup.extend_from_slice(value.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    stream.write_all(&packet).map_err(io)?;

    let mut scram: Option<Scram> = None;
    let mut queried = false;
    loop {
        let message = read_message(stream, deadline)?;
        match message.kind {
            b'E' => return Err(error_response(&message.body)),
            b'R' => {
                let code = u32::from_be_bytes(
                    message.body.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]),
                );
                match code {
                    0 => {
                        if scram.as_ref().is_some_and(|s| !s.verified) {
                            return Err(Attempt::NotYet(
                                "the server accepted us without proving that it knows the password \
                                 (no SCRAM signature): not trusted"
                                    .into(),
                            ));
                        }
                    }
                    3 if !target.allow_cleartext => {
                        return Err(Attempt::NotYet(
                            "the server asks for the password in cleartext; not sent \
                             (add ?require_auth=password to the spec to allow it)"
                                .into(),
                        ));
                    }
                    3 => {
                        let password = password(target)?;
                        let mut body = password.as_bytes().to_vec();
                        body.push(0);
                        send(stream, b'p', &body).map_err(io)?;
                    }
                    10 => {
                        let mechanisms = String::from_utf8_lossy(&message.body[4..]).into_owned();
                        if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                            return Err(Attempt::Failed(format!(
                                "the server offers only {} authentication, which this probe does not speak",
                                mechanisms.trim_matches('\0').replace('\0', ", ")
                            )));
                        }
                        let state = Scram::new(password(target)?);
                        let first = state.client_first();
                        let mut body = b"SCRAM-SHA-256\0".to_vec();
                        body.extend_from_slice(&(first.len() as u32).to_be_bytes());
                        body.extend_from_slice(first.as_bytes());
                        send(stream, b'p', &body).map_err(io)?;
                        scram = Some(state);
                    }
                    11 => {
                        let state = scram
                            .as_mut()
                            .ok_or_else(|| Attempt::NotYet("unexpected SASL message".into()))?;
                        let server_first = String::from_utf8_lossy(&message.body[4..]).into_owned();
                        let last =
                            state.client_final(&server_first, deadline).map_err(Attempt::NotYet)?;
                        send(stream, b'p', last.as_bytes()).map_err(io)?;
                    }
                    12 => {
                        let state = scram
                            .as_mut()
                            .ok_or_else(|| Attempt::NotYet("unexpected SASL message".into()))?;
                        let server_final = String::from_utf8_lossy(&message.body[4..]).into_owned();
                        state.verify_server_final(&server_final).map_err(Attempt::NotYet)?;
                    }
                    5 => {
                        return Err(Attempt::Failed(
                            "the server asks for md5 authentication, which this probe does not speak: \
                             use scram-sha-256"
                                .into(),
                        ));
                    }
                    other => {
                        return Err(Attempt::Failed(format!(
                            "unsupported authentication request {other}"
                        )));
                    }
                }
            }
            b'Z' if !queried => {
                send(stream, b'Q', b"SELECT 1\0").map_err(io)?;
                queried = true;
            }
            b'Z' => return Ok(()),
            _ => {}
        }
    }
}

fn password<'a>(target: &Target<'a>) -> Result<&'a str, Attempt> {
    target.password.ok_or_else(|| {
        Attempt::Failed("the server asks for a password and the spec has none".into())
    })
}

/// Maps an ErrorResponse to an attempt: transient states retry, the rest are final.
fn error_response(body: &[u8]) -> Attempt {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    let text = format!("{message} (SQLSTATE {code})");
    match code.as_str() {
        // Starting up, shutting down, in recovery; too many connections; the database is
        // not created yet (an initialising server creates it).
        "57P03" | "53300" | "3D000" | "57P01" => Attempt::NotYet(text),
        _ => Attempt::Failed(text),
    }
}

fn send(stream: &mut TcpStream, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let mut packet = vec![kind];
    packet.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    packet.extend_from_slice(body);
    stream.write_all(&packet)
}

fn read_message(stream: &mut TcpStream, deadline: Instant) -> Result<Message, Attempt> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Attempt::NotYet("no answer within the attempt timeout".into()));
    }
    let _ = stream.set_read_timeout(Some(remaining));
    let io = |e: std::io::Error| Attempt::NotYet(format!("no complete answer: {e}"));
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).map_err(io)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=1 << 20).contains(&len) {
        return Err(Attempt::Failed(format!("not a PostgreSQL server (message length {len})")));
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).map_err(io)?;
    Ok(Message { kind: header[0], body })
}

/// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: no channel binding.
struct Scram<'a> {
    password: &'a str,
    nonce: String,
    client_first_bare: String,
    /// The signature the server must send back, once the proof is computed.
    server_signature: Option<[u8; 32]>,
    /// The server sent the expected signature.
    verified: bool,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl<'a> Scram<'a> {
    fn new(password: &'a str) -> Scram<'a> {
        Scram::with_nonce(password, BASE64.encode(random_bytes()))
    }

    fn with_nonce(password: &'a str, nonce: String) -> Scram<'a> {
        let client_first_bare = format!("n=,r={nonce}");
        Scram { password, nonce, client_first_bare, server_signature: None, verified: false }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    fn client_final(&mut self, server_first: &str, deadline: Instant) -> Result<String, String> {
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|part| part.strip_prefix(name))
                .ok_or_else(|| format!("the SCRAM challenge has no `{name}`"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err("the SCRAM challenge does not extend our nonce".into());
        }
        let salt = BASE64.decode(field("s=")?).map_err(|_| "the SCRAM salt is not base64")?;
        let iterations: u32 =
            field("i=")?.parse().map_err(|_| "the SCRAM iteration count is not a number")?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "the server asks for {iterations} SCRAM iterations, outside the 1 to {MAX_ITERATIONS} \
                 this probe computes: not a server to send a proof to"
            ));
        }
        let salted = pbkdf2(self.password.as_bytes(), &salt, iterations, deadline)?;
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// Checks the server's `v=` signature: only a server that knows the password can make it.
    fn verify_server_final(&mut self, server_final: &str) -> Result<(), String> {
        let expected = self.server_signature.ok_or("the server ended SCRAM before our proof")?;
        let sent = server_final
            .split(',')
            .find_map(|part| part.strip_prefix("v="))
            .and_then(|v| BASE64.decode(v).ok());
        if sent.as_deref() != Some(expected.as_slice()) {
            return Err("the server's SCRAM signature does not match: it does not know the \
                        password (a different server on this port?); not trusted"
                .into());
        }
        self.verified = true;
        Ok(())
    }
}

/// PBKDF2-HMAC-SHA256 with one output block, as SCRAM needs. Stops at the attempt's deadline
/// and on Ctrl-C: the iteration count is the server's choice.
fn pbkdf2(
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    deadline: Instant,
) -> Result<[u8; 32], String> {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for i in 1..iterations {
        if i % 1024 == 0 {
            if crate::run::interrupt::is_set() {
                return Err("interrupted while computing the SCRAM proof".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the SCRAM proof ({iterations} iterations) did not finish within the attempt timeout"
                ));
            }
        }
        u = hmac(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    Ok(out)
}

fn random_bytes() -> [u8; 18] {
    let mut bytes = [0u8; 18];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(&mut bytes).is_ok() {
            return bytes;
        }
    }
    // No /dev/urandom: a nonce from the clock and pid is still unique per attempt.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        ^ u128::from(std::process::id());
    bytes[..16].copy_from_slice(&seed.to_le_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn scram_matches_the_rfc_7677_example() {
        // RFC 7677, section 3: user "user", password "pencil".
        let mut scram = Scram::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO".into());
        scram.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            scram.client_final(server_first, far()).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let wrong = scram.verify_server_final("v=AAAA").unwrap_err();
        assert!(wrong.contains("does not know the password"), "{wrong}");
        scram.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        assert!(scram.verified);
        assert!(scram.client_final("r=other,s=AA==,i=1", far()).unwrap_err().contains("nonce"));
        let fresh = Scram::with_nonce("x", "abc".into());
        assert_eq!(fresh.client_first(), "n,,n=,r=abc");
    }

    #[test]
    fn scram_bounds_the_work_a_server_can_ask_for() {
        let mut scram = Scram::with_nonce("pw", "abc".into());
        let greedy = scram.client_final("r=abcdef,s=AA==,i=2000000000", far()).unwrap_err();
        assert!(greedy.contains("2000000000 SCRAM iterations"), "{greedy}");
        let started = Instant::now();
        let slow = scram
            .client_final("r=abcdef,s=AA==,i=1000000", Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert!(slow.contains("within the attempt timeout"), "{slow}");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }

    /// A fake server: it answers the startup message with `first` (an authentication request),
    /// then each message we send with what `reply` makes of its body, and reports every body
    /// it receives on the channel.
    fn fake_server(
        first: Vec<u8>,
        reply: fn(&[u8]) -> Option<Vec<u8>>,
    ) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut length = [0u8; 4];
                if stream.read_exact(&mut length).is_err() {
                    continue;
                }
                let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
                let _ = stream.read_exact(&mut startup);
                let _ = send(&mut stream, b'R', &first);
                let mut header = [0u8; 5];
                while stream.read_exact(&mut header).is_ok() {
                    let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
                    let mut body = vec![0u8; len.saturating_sub(4)];
                    let _ = stream.read_exact(&mut body);
                    if let Some(answer) = reply(&body) {
                        let _ = send(&mut stream, b'R', &answer);
                    }
                    let _ = sender.send(body);
                }
            }
        });
        (port, receiver)
    }

    fn target(port: u16, allow_cleartext: bool) -> Target<'static> {
        Target {
            host: "127.0.0.1",
            port,
            user: "memories",
            password: Some("sentinel-pw"),
            database: "memories",
            allow_cleartext,
        }
    }

    fn sent_password(received: &std::sync::mpsc::Receiver<Vec<u8>>) -> bool {
        received.try_iter().any(|body| body.windows(11).any(|w| w == b"sentinel-pw"))
    }

    #[test]
    fn a_server_asking_for_cleartext_gets_no_password_unless_allowed() {
        let (port, received) = fake_server(3u32.to_be_bytes().to_vec(), |_| None);
        let refused = attempt(&target(port, false), Duration::from_secs(2));
        assert!(
            matches!(&refused, Attempt::NotYet(m) if m.contains("require_auth=password")),
            "{refused:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(!sent_password(&received), "the password was sent");
        let _ = attempt(&target(port, true), Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(100));
        assert!(sent_password(&received), "allowed, the password goes out");
    }

    /// An SASL request for SCRAM-SHA-256 and a reply to the client-first message that extends
    /// its nonce and asks for `iterations`.
    fn scram_server(
        reply: fn(&[u8]) -> Option<Vec<u8>>,
    ) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
        let mut first = 10u32.to_be_bytes().to_vec();
        first.extend_from_slice(b"SCRAM-SHA-256\0\0");
        fake_server(first, reply)
    }

    fn challenge(client_first: &[u8], iterations: u32) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(client_first);
        let nonce = text.split("r=").nth(1)?;
        let mut answer = 11u32.to_be_bytes().to_vec();
        answer.extend_from_slice(format!("r={nonce}srv,s=AAAA,i={iterations}").as_bytes());
        Some(answer)
    }

    #[test]
    fn a_server_asking_for_two_billion_iterations_gets_no_proof() {
        let (port, received) = scram_server(|body| challenge(body, 2_000_000_000));
        let started = Instant::now();
        let outcome = attempt(&target(port, false), Duration::from_secs(2));
        assert!(
            matches!(&outcome, Attempt::NotYet(m) if m.contains("2000000000 SCRAM iterations")),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(100));
        let bodies: Vec<Vec<u8>> = received.try_iter().collect();
        assert_eq!(bodies.len(), 1, "only the client-first message goes out");
    }

    #[test]
    fn a_server_that_cannot_sign_is_not_ready() {
        let (port, _received) = scram_server(|body| {
            if body.starts_with(b"SCRAM-SHA-256") {
                challenge(body, 16)
            } else {
                let mut last = 12u32.to_be_bytes().to_vec();
                last.extend_from_slice(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
                Some(last)
            }
        });
        let outcome = attempt(&target(port, false), Duration::from_secs(2));
        assert!(
            matches!(&outcome, Attempt::NotYet(m) if m.contains("does not know the password")),
            "{outcome:?}"
        );
        let (port, _received) = scram_server(|body| {
            if body.starts_with(b"SCRAM-SHA-256") { challenge(body, 16) } else { Some(vec![0; 4]) }
        });
        let skipped = attempt(&target(port, false), Duration::from_secs(2));
        assert!(
            matches!(&skipped, Attempt::NotYet(m) if m.contains("without proving")),
            "{skipped:?}"
        );
    }

    #[test]
    fn transient_server_states_retry_and_others_are_final() {
        let body = |code: &str| {
            format!("SFATAL\0C{code}\0Mthe database system is starting up\0\0").into_bytes()
        };
        assert!(
            matches!(error_response(&body("57P03")), Attempt::NotYet(m) if m.contains("starting up"))
        );
        assert!(
            matches!(error_response(&body("28P01")), Attempt::Failed(m) if m.contains("28P01"))
        );
    }
}
