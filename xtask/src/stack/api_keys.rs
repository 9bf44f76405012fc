//! `cargo xtask prod keys create|revoke|list`: the prod API's keys. A key is shown once, when
//! it is created; the key file keeps only its SHA-256, one line per key:
//!
//! ```text
//! # memories API keys (cargo xtask prod keys): NAME sha256:HEX CREATED
//! ci sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 2026-12-05T16:40:00Z
//! ```
//!
//! The prod stack reads that file from `API_KEYS_FILE` and gives it to the servers as a secret
//! (`API_KEYS=off` serves without keys, on purpose). The server (`memories.auth`) reads the
//! same format and reloads it when it changes, so a key rotates with no failed request: create
//! the new key, apply (`prod up` or `prod deploy --swarm`), move the clients, revoke the old
//! one, apply again.

use std::io::Read;

use anyhow::{Context, Result, bail};
use base64::Engine;
use camino::Utf8Path;
use serde_json::json;
use sha2::{Digest, Sha256};

/// What `prod keys` does.
#[derive(Debug, Clone)]
pub enum KeysAction {
    Create { name: String },
    Revoke { name: String },
    List,
}

/// One key of the file: its name, the SHA-256 of the key, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub sha256: String,
    pub created: Option<String>,
}

/// The setting that turns keys off for a prod stack, as the value of `API_KEYS`.
pub const OFF: &str = "off";

const HEADER: &str = "# memories API keys (cargo xtask prod keys): NAME sha256:HEX CREATED\n";

/// Reads a key file; `what` names it in errors. Blank lines and `#` comments are skipped.
pub fn parse(text: &str, what: &str) -> Result<Vec<ApiKey>> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = || format!("{what}, line {}", n + 1);
        let (name, hash) = match fields[..] {
            [name, hash] | [name, hash, _] => (name, hash),
            _ => bail!("{}: expected `NAME sha256:HEX [CREATED]`", at()),
        };
        check_name(name).with_context(at)?;
        let Some(hex) = hash.strip_prefix("sha256:") else {
            bail!("{}: the hash of {name} must start with `sha256:`", at());
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            bail!("{}: the hash of {name} is not 64 lowercase hex digits", at());
        }
        if keys.iter().any(|k| k.name == name) {
            bail!("{}: {name} is listed twice", at());
        }
        keys.push(ApiKey {
            name: name.to_owned(),
            sha256: hex.to_owned(),
            created: fields.get(2).map(|c| (*c).to_owned()),
        });
    }
    Ok(keys)
}

/// A key's name: letters, digits, `.`, `_` and `-`, 1 to 64 of them.
fn check_name(name: &str) -> Result<()> {
    let fits = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    if name.is_empty() || name.len() > 64 || !name.bytes().all(fits) {
        bail!("the key name `{name}` must be 1 to 64 letters, digits, `.`, `_` or `-`");
    }
    Ok(())
}

fn render(keys: &[ApiKey]) -> String {
    let mut text = HEADER.to_owned();
    for key in keys {
        text.push_str(&format!("{} sha256:{}", key.name, key.sha256));
        if let Some(created) = &key.created {
            text.push_str(&format!(" {created}"));
        }
        text.push('\n');
    }
    text
}

/// A new key (`mk_` and 32 random bytes, base64url) and its SHA-256 in hex.
fn generate() -> Result<(String, String)> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read random bytes from /dev/urandom")?;
    let key = format!("mk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    Ok((key.clone(), hash(&key)))
}

/// The SHA-256 of a key, in lowercase hex, as the file and the server keep it.
pub fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn read(file: &Utf8Path) -> Result<Vec<ApiKey>> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(&text, file.as_str()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read the key file {file}")),
    }
}

/// Replaces the key file whole (mode 0600): written under a temporary name, then renamed.
fn write(file: &Utf8Path, keys: &[ApiKey]) -> Result<()> {
    let dir = file.parent().filter(|d| !d.as_str().is_empty()).unwrap_or(Utf8Path::new("."));
    let name = file.file_name().context("the key file has no file name")?;
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    crate::stack::write_mode(&partial, render(keys).as_bytes(), 0o600)?;
    std::fs::rename(&partial, file).with_context(|| format!("cannot write the key file {file}"))
}

pub fn run(file: &Utf8Path, action: KeysAction, json: bool) -> Result<()> {
    let mut keys = read(file)?;
    let apply = "apply it with `cargo xtask prod up`, or `prod deploy --swarm` for a swarm stack";
    match action {
        KeysAction::Create { name } => {
            check_name(&name)?;
            if keys.iter().any(|k| k.name == name) {
                bail!(
                    "{file} already has a key named {name}: revoke it first, or pick another name"
                );
            }
            let (key, sha256) = generate()?;
            let created = crate::image::version::rfc3339_utc(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            );
            keys.push(ApiKey { name: name.clone(), sha256, created: Some(created) });
            write(file, &keys)?;
            say!("created key {name} in {file}; it is shown once, below; {apply}");
            match json {
                true => out!("{}", json!({"name": name, "key": key})),
                false => out!("{key}"),
            }
        }
        KeysAction::Revoke { name } => {
            let before = keys.len();
            keys.retain(|k| k.name != name);
            if keys.len() == before {
                bail!("{file} has no key named {name}: `cargo xtask prod keys list` shows them");
            }
            write(file, &keys)?;
            say!("revoked key {name} in {file}; {apply}");
        }
        KeysAction::List => {
            if json {
                let listed: Vec<_> = keys
                    .iter()
                    .map(|k| json!({"name": k.name, "sha256_prefix": &k.sha256[..12], "created": k.created}))
                    .collect();
                out!("{:#}", serde_json::Value::from(listed));
            } else {
                for k in &keys {
                    out!(
                        "{:<24} sha256:{}…  {}",
                        k.name,
                        &k.sha256[..12],
                        k.created.as_deref().unwrap_or("-")
                    );
                }
            }
            if keys.is_empty() {
                say!("{file} holds no key: `cargo xtask prod keys create NAME` makes one");
            }
        }
    }
    Ok(())
}

/// Checks the `API_KEYS` a prod stack gets (the setting, or the file `API_KEYS_FILE` names):
/// `off`, or a key file with at least one key.
pub fn check_setting(value: &str, what: &str) -> Result<()> {
    if value.trim() == OFF {
        return Ok(());
    }
    if parse(value, what)?.is_empty() {
        bail!(
            "{what} holds no key: create one with `cargo xtask prod keys create NAME`, or set \
             API_KEYS=off to serve without keys"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_read_line_by_line_and_a_bad_line_is_named() {
        let hash = hash("mk_test");
        let text =
            format!("# comment\n\nci sha256:{hash} 2026-12-05T16:40:00Z\nops sha256:{hash}\n");
        let keys = parse(&text, "keys").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].created.as_deref(), Some("2026-12-05T16:40:00Z"));
        assert_eq!(parse(&render(&keys), "keys").unwrap(), keys);
        let bad = |text: &str| format!("{:#}", parse(text, "keys").unwrap_err());
        assert!(bad("ci\n").contains("keys, line 1: expected"));
        assert!(bad(&format!("ci md5:{hash}\n")).contains("must start with `sha256:`"));
        assert!(bad("ci sha256:abc\n").contains("not 64 lowercase hex"));
        assert!(bad(&format!("a b sha256:{hash}\n")).contains("line 1"));
        assert!(
            bad(&format!("ci sha256:{hash}\nci sha256:{hash}\n"))
                .contains("line 2: ci is listed twice")
        );
        assert!(bad(&format!("c/i sha256:{hash}\n")).contains("must be 1 to 64 letters"));
    }

    #[test]
    fn a_new_key_is_random_and_only_its_hash_is_kept() {
        let (a, a_hash) = generate().unwrap();
        let (b, _) = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("mk_") && a.len() == 46, "{a}");
        assert_eq!(a_hash, hash(&a));
        let text = render(&[ApiKey { name: "ci".into(), sha256: a_hash, created: None }]);
        assert!(!text.contains(&a), "the file keeps no key");
    }

    #[test]
    fn a_stack_needs_keys_or_off() {
        assert!(check_setting("off\n", "API_KEYS").is_ok());
        let empty = check_setting("# none\n", "API_KEYS_FILE keys.txt").unwrap_err();
        assert!(format!("{empty:#}").contains("holds no key"), "{empty:#}");
        assert!(check_setting(&format!("ci sha256:{}\n", hash("k")), "API_KEYS").is_ok());
    }
}
