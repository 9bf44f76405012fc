//! A PostgreSQL readiness check over the wire protocol (v3): start a session, authenticate
//! (trust, password or SCRAM-SHA-256), run `SELECT 1`. A server that is starting up, shutting
//! down or recovering answers SQLSTATE 57P03 and is not ready; a refused password is final.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::Attempt;
use super::checks::connect;

pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub database: &'a str,
}

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
                    0 => {}
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
                        let last = state.client_final(&server_first).map_err(Attempt::NotYet)?;
                        send(stream, b'p', last.as_bytes()).map_err(io)?;
                    }
                    12 => {}
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
        Scram { password, nonce, client_first_bare }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    fn client_final(&self, server_first: &str) -> Result<String, String> {
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
        let salted = pbkdf2(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }
}

/// PBKDF2-HMAC-SHA256 with one output block, as SCRAM needs.
fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
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

    #[test]
    fn scram_matches_the_rfc_7677_example() {
        // RFC 7677, section 3: user "user", password "pencil".
        let scram = Scram {
            password: "pencil",
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
        };
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            scram.client_final(server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(scram.client_final("r=other,s=AA==,i=1").unwrap_err().contains("nonce"));
        let fresh = Scram::with_nonce("x", "abc".into());
        assert_eq!(fresh.client_first(), "n,,n=,r=abc");
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
