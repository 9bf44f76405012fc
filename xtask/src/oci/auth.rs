//! Logins: what the client may do in a repository, a registry's challenge, and the
//! credentials `docker login` left (config file, credential store, credential helpers).

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::run::plan::Step;

/// What the client may do in a repository, for a bearer token's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Access {
    Pull,
    Push,
}

impl Access {
    pub(crate) fn scope(self, name: &str) -> String {
        match self {
            Access::Pull => format!("repository:{name}:pull"),
            Access::Push => format!("repository:{name}:pull,push"),
        }
    }
}

/// Credentials for one registry, as `docker login` stored them.
#[derive(Clone)]
pub(crate) enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth refresh token (`identitytoken`), traded at the token service.
    Identity(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Identity(_) => f.write_str("Identity(***)"),
        }
    }
}

/// The scheme (lowercase) and parameters of a `WWW-Authenticate` value.
pub(crate) fn parse_challenge(challenge: &str) -> (String, BTreeMap<String, String>) {
    let challenge = challenge.trim();
    let (scheme, rest) = challenge.split_once(' ').unwrap_or((challenge, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key, value.to_owned());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

/// The credentials `docker login` stored for `key` (a registry host, or Docker Hub's URL):
/// from the registry's credential helper, the credential store, or `auths` in the config file.
pub(crate) fn docker_credentials(root: &Utf8Path, key: &str) -> Result<Option<Credentials>> {
    let Some(file) = docker_config_file() else { return Ok(None) };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {file}")),
    };
    let config: Value =
        serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))?;
    credentials_in(&config, key, |helper| helper_credentials(root, helper, key))
        .with_context(|| format!("cannot read the credentials for {key} (from {file})"))
}

/// Where the docker client keeps its config (registry logins): `$DOCKER_CONFIG/config.json`,
/// else `~/.docker/config.json`; `None` without either variable. The one place that says so,
/// for our registry client and for cosign's container alike.
pub fn docker_config_file() -> Option<Utf8PathBuf> {
    let dir = match std::env::var("DOCKER_CONFIG") {
        Ok(dir) if !dir.is_empty() => Utf8PathBuf::from(dir),
        _ => Utf8PathBuf::from(std::env::var("HOME").ok()?).join(".docker"),
    };
    Some(dir.join("config.json"))
}

/// [`docker_credentials`] once the config is read; `helper` asks a credential helper.
pub(crate) fn credentials_in(
    config: &Value,
    key: &str,
    helper: impl Fn(&str) -> Result<Option<Credentials>>,
) -> Result<Option<Credentials>> {
    let bare = |k: &str| {
        k.trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    };
    if let Some(name) = config["credHelpers"]
        .as_object()
        .and_then(|h| h.iter().find(|(k, _)| bare(k) == bare(key)))
        .and_then(|(_, v)| v.as_str())
    {
        return helper(name);
    }
    let auths = config["auths"].as_object();
    let entry = auths.and_then(|a| {
        a.iter()
            .find(|(k, _)| bare(k) == bare(key) || bare(k).split('/').next() == Some(&bare(key)))
    });
    if let Some((_, entry)) = entry {
        if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::Identity(token.to_owned())));
        }
        if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .context("its `auth` is not base64")?;
            let decoded = String::from_utf8(decoded).context("its `auth` is not UTF-8")?;
            let (username, password) =
                decoded.split_once(':').context("its `auth` is not USER:PASSWORD")?;
            return Ok(Some(Credentials::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
    }
    match config["credsStore"].as_str().filter(|s| !s.is_empty()) {
        Some(store) => helper(store),
        None => Ok(None),
    }
}

/// `docker-credential-NAME get`, given the registry on stdin, as the docker CLI asks it.
pub(crate) fn helper_credentials(
    root: &Utf8Path,
    name: &str,
    key: &str,
) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let step = Step::new(&program, root)
        .arg("get")
        .stdin(key.to_owned())
        .quiet()
        .timeout(Duration::from_secs(30));
    let captured = step.capture().with_context(|| format!("cannot run {program}"))?;
    if !captured.success() {
        let said = format!("{}\n{}", captured.stdout.trim(), captured.stderr.trim());
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        bail!("`{program} get` failed: {}", helper_said(&said));
    }
    let value: Value = serde_json::from_str(&captured.stdout)
        .with_context(|| format!("{program} did not answer JSON"))?;
    let (username, secret) = (
        value["Username"].as_str().unwrap_or_default(),
        value["Secret"].as_str().unwrap_or_default(),
    );
    Ok(match (username, secret) {
        (_, "") => None,
        ("<token>", token) => Some(Credentials::Identity(token.to_owned())),
        (username, password) => Some(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }),
    })
}

/// The first line a failed credential helper printed, fit to show: a line that carries JSON
/// is not shown (a helper that fails after printing its answer prints the secret), and any
/// `Secret` value found in its output is redacted as `***` wherever else it appears.
fn helper_said(said: &str) -> String {
    let mut step = Step::new("docker-credential", ".");
    for line in said.lines() {
        let Ok(value) = serde_json::from_str::<Value>(line.trim()) else { continue };
        for key in ["Secret", "secret", "Password", "password", "token", "access_token"] {
            step = step.secret(value[key].as_str().unwrap_or_default());
        }
    }
    let line = said.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        None => "no output".to_owned(),
        Some(line) if line.contains('{') => {
            "it printed JSON (not shown here: it may hold the secret)".to_owned()
        }
        Some(line) => step.redact(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    #[test]
    fn challenges_are_read_as_registries_send_them() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:acme/server:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(
            params["scope"], "repository:acme/server:pull,push",
            "a comma inside quotes stays"
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((scheme.as_str(), params["realm"].as_str()), ("basic", "Registry Realm"));
    }

    #[test]
    fn credentials_come_from_the_helper_then_auths_then_the_store() {
        let none = |_: &str| -> Result<Option<Credentials>> { Ok(None) };
        let from_helper = |name: &str| -> Result<Option<Credentials>> {
            Ok(Some(Credentials::Basic { username: name.to_owned(), password: "p".into() }))
        };
        let basic = |c: Option<Credentials>| match c {
            Some(Credentials::Basic { username, password }) => Some((username, password)),
            _ => None,
        };
        let config = json!({
            "auths": {
                "ghcr.io": {"auth": base64::engine::general_purpose::STANDARD.encode("me:s3cret")},
                "https://index.docker.io/v1/": {"identitytoken": "refresh"},
            },
            "credHelpers": {"123.dkr.ecr.example": "ecr-login"},
            "credsStore": "desktop",
        });
        let found = credentials_in(&config, "ghcr.io", none).unwrap();
        assert_eq!(basic(found), Some(("me".into(), "s3cret".into())));
        let hub = credentials_in(&config, "https://index.docker.io/v1/", none).unwrap();
        assert!(matches!(hub, Some(Credentials::Identity(t)) if t == "refresh"));
        let ecr = credentials_in(&config, "123.dkr.ecr.example", from_helper).unwrap();
        assert_eq!(basic(ecr), Some(("ecr-login".into(), "p".into())));
        let stored = credentials_in(&config, "quay.io", from_helper).unwrap();
        assert_eq!(basic(stored), Some(("desktop".into(), "p".into())));
        assert!(credentials_in(&json!({}), "quay.io", from_helper).unwrap().is_none());
        let shown = format!(
            "{:?}",
            Credentials::Basic { username: "me".into(), password: "s3cret".into() }
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_failing_helper_never_shows_its_secret() {
        let answered = "{\"ServerURL\":\"ghcr.io\",\"Username\":\"me\",\"Secret\":\"s3cret\"}\n";
        let said = helper_said(&format!("{answered}\nthen s3cret was refused"));
        assert!(!said.contains("s3cret"), "{said}");
        let said = helper_said(&format!("store locked for s3cret\n{answered}"));
        assert_eq!(said, "store locked for ***");
        assert_eq!(helper_said("\n  \n"), "no output");
    }
}
