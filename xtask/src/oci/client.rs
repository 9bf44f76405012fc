//! A client of a registry's HTTP API (the OCI distribution spec): manifests and blobs are read,
//! an OCI archive is pushed blob by blob, and a tag is moved by a manifest copy.
//!
//! Every request is retried on its own when it fails transiently (5xx, 429 after its
//! `Retry-After`, a reset or refused connection, a timeout), with the registry retry policy.
//! That is why releases do not push with `docker push`: it gives up a whole push, hundreds of
//! requests, on one failed request.
//!
//! Authentication is what `docker login` left: the registry's challenge (`WWW-Authenticate`)
//! says basic or bearer, and the credentials come from the Docker config file, a credential
//! store or a credential helper, and go only to the registry's own origin (and the token
//! service its challenge names): an upload `Location` on another host gets none. Bearer tokens
//! are renewed before they run out. Which scheme and which certificates each host gets is
//! [`crate::oci::transport`]'s to say. A blob another repository of the registry holds is
//! mounted, not uploaded again.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;
use ureq::http;

use crate::oci::archive::open_range;
use crate::oci::auth::{Access, Credentials};
use crate::oci::inspect::Inspected;
use crate::oci::manifest::{
    DOCKER_LIST, DOCKER_MANIFEST, Manifest, OCI_INDEX, OCI_MANIFEST, is_index, sha256_digest,
};
use crate::oci::model::{Document, ImageConfig};
use crate::oci::reference::{Reference, Repository, display, display_repo, host_of, origin_of};
use crate::oci::retry::{Failure, RetryPolicy, interruptible_sleep, with_retries};
use crate::oci::transport::Transport;
use crate::run::interrupt::{self, Interrupted};
use crate::run::progress::{Counted, Progress};

mod login;
mod push;

/// The largest manifest read (the distribution spec asks registries to take 4 MiB).
pub(crate) const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest blob read into memory: image configs and attestation statements.
pub(crate) const BLOB_LIMIT: u64 = 64 << 20;
/// Blobs uploaded at once.
pub(crate) const UPLOADERS: usize = 4;

/// A request's body, made anew for each attempt.
#[derive(Clone, Copy)]
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8], &'a str),
    /// `size` bytes of a file from `offset`: a blob inside an OCI archive.
    File {
        path: &'a Utf8Path,
        offset: u64,
        size: u64,
        /// Where the bytes sent are counted; an attempt that fails takes its count back.
        progress: Option<&'a Arc<Progress>>,
    },
}

/// One request: its method, URL, `Accept` header, body, and how much of the answer's body is
/// read (0: none).
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    method: &'a str,
    url: &'a str,
    accept: Option<&'a str>,
    body: Body<'a>,
    limit: u64,
}

impl<'a> Call<'a> {
    fn new(method: &'a str, url: &'a str, limit: u64) -> Call<'a> {
        Call { method, url, accept: None, body: Body::Empty, limit }
    }

    fn with_body(mut self, body: Body<'a>) -> Call<'a> {
        self.body = body;
        self
    }
}

/// One answer, its body read whole (up to the request's limit).
pub(crate) struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A login held for a registry and scope: the `Authorization` value, when it runs out (a bearer
/// token's `expires_in`), and the challenge it answered, so that it is renewed without a 401.
#[derive(Clone)]
pub(crate) struct Authorization {
    value: String,
    expires: Option<Instant>,
    challenge: String,
}

impl Authorization {
    fn expired(&self) -> bool {
        self.expires.is_some_and(|at| Instant::now() >= at)
    }
}

/// A registry API client; cheap to share between threads.
pub struct Client {
    transport: Transport,
    policy: RetryPolicy,
    root: Utf8PathBuf,
    /// Logins by registry and, for bearer tokens, scope.
    authorizations: Mutex<HashMap<String, Authorization>>,
    /// The repository of each registry's blobs this run saw there, by `registry digest`.
    blobs: Mutex<HashMap<String, String>>,
    /// Held while a 401 is answered with a login.
    authorizing: Mutex<()>,
    /// Credentials looked up so far, by registry (`None`: there are none).
    credentials: Mutex<HashMap<String, Option<Credentials>>>,
}

impl Client {
    pub fn new(root: &Utf8Path, policy: RetryPolicy) -> Client {
        Client {
            transport: Transport::from_env(),
            policy,
            root: root.to_owned(),
            authorizations: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
            authorizing: Mutex::new(()),
            credentials: Mutex::new(HashMap::new()),
        }
    }

    /// The manifest or index under `reference`, its media type and digest, or `None` when the
    /// registry has nothing there. A manifest asked for by digest must hash to it.
    pub fn manifest(&self, reference: &Reference) -> Result<Option<Manifest>> {
        let repo = &reference.repository;
        let url = format!("{}/manifests/{}", self.base(repo)?, reference.reference);
        let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
        let what = format!("reading {}", display(reference));
        let call = Call { accept: Some(&accept), ..Call::new("GET", &url, MANIFEST_LIMIT) };
        let answer = self.retried(&what, || self.send(repo, Access::Pull, &call))?;
        let answer = match answer {
            Ok(answer) => answer,
            Err(Failure::Absent { .. }) => return Ok(None),
            Err(failure) => {
                return Err(explain(&format!("cannot read {}", display(reference)), failure));
            }
        };
        let digest = sha256_digest(&answer.body);
        if reference.reference.starts_with("sha256:") && reference.reference != digest {
            bail!(
                "{} answered a manifest whose digest is {digest}: the registry is corrupt or lying",
                display(reference)
            );
        }
        let document =
            Document::parse(&answer.body, &format!("the manifest of {}", display(reference)))?;
        let media_type = document
            .media_type
            .clone()
            .or_else(|| {
                answer
                    .header("content-type")
                    .map(|t| t.split(';').next().unwrap_or(t).trim().to_owned())
            })
            .unwrap_or_else(|| OCI_MANIFEST.to_owned());
        Ok(Some(Manifest { bytes: answer.body, media_type, digest, document }))
    }

    /// A blob read into memory (an image config, an attestation), checked against its digest.
    pub fn blob(&self, repo: &Repository, digest: &str) -> Result<Vec<u8>> {
        let url = format!("{}/blobs/{digest}", self.base(repo)?);
        let what = format!("reading blob {digest} of {}", display_repo(repo));
        let call = Call::new("GET", &url, BLOB_LIMIT);
        let answer = self.retried(&what, || self.send(repo, Access::Pull, &call))?;
        let answer = answer.map_err(|f| {
            explain(&format!("cannot read blob {digest} of {}", display_repo(repo)), f)
        })?;
        let actual = sha256_digest(&answer.body);
        if actual != digest {
            bail!(
                "blob {digest} of {} hashes to {actual}: the registry is corrupt or lying",
                display_repo(repo)
            );
        }
        Ok(answer.body)
    }

    /// Stores `manifest` under `reference` (a tag or its digest).
    pub fn put_manifest(&self, reference: &Reference, manifest: &Manifest) -> Result<()> {
        let repo = &reference.repository;
        let url = format!("{}/manifests/{}", self.base(repo)?, reference.reference);
        let what = format!("writing {}", display(reference));
        let body = Body::Bytes(&manifest.bytes, &manifest.media_type);
        let answer = self.retried(&what, || {
            self.send(repo, Access::Push, &Call::new("PUT", &url, MANIFEST_LIMIT).with_body(body))
        })?;
        let answer =
            answer.map_err(|f| explain(&format!("cannot write {}", display(reference)), f))?;
        if let Some(stored) = answer.header("docker-content-digest") {
            if stored != manifest.digest {
                bail!("{} stored the manifest {} as {stored}", display(reference), manifest.digest);
            }
        }
        Ok(())
    }

    /// Copies the manifest at `source` to the tag of `target` in the same repository: the
    /// digest stays, no blob moves.
    pub fn copy(&self, source: &Reference, target: &Reference) -> Result<()> {
        if source.repository != target.repository {
            bail!(
                "cannot copy {} to {}: a manifest copy stays inside one repository",
                display(source),
                display(target)
            );
        }
        let manifest = self.manifest(source)?.with_context(|| {
            format!("cannot copy {}: the registry does not have it", display(source))
        })?;
        self.put_manifest(target, &manifest)
    }

    /// What the registry holds under `reference`: the digest and entries of the index (or
    /// manifest) there, and the config of each platform's image. `None` when the registry
    /// has nothing there.
    pub fn inspect(&self, reference: &Reference) -> Result<Option<Inspected>> {
        let Some(top) = self.manifest(reference)? else { return Ok(None) };
        let repo = &reference.repository;
        let config_of = |manifest: &Manifest| -> Result<ImageConfig> {
            let config = manifest.document.config.as_ref().with_context(|| {
                format!("{} holds a manifest without a config", display(reference))
            })?;
            let bytes = self.blob(repo, &config.digest)?;
            serde_json::from_slice(&bytes).with_context(|| {
                format!("config {} of {} is not an image config", config.digest, display(reference))
            })
        };
        if !is_index(&top.media_type) {
            return Ok(Some(Inspected::manifest(top.digest.clone(), config_of(&top)?)));
        }
        let mut images = BTreeMap::new();
        for entry in &top.document.manifests {
            let Some(platform) = entry.platform_name() else { continue };
            let child = Reference { repository: repo.clone(), reference: entry.digest.clone() };
            let manifest = self.manifest(&child)?.with_context(|| {
                format!(
                    "{} lists {}, which the registry does not have",
                    display(reference),
                    entry.digest
                )
            })?;
            images.insert(platform, config_of(&manifest)?);
        }
        Ok(Some(Inspected::index(top.digest, top.document.manifests, images)))
    }

    /// Retries one request with the client's policy, stopping on Ctrl-C.
    fn retried(
        &self,
        what: &str,
        attempt: impl FnMut() -> Result<Result<Answer, Failure>>,
    ) -> Result<Result<Answer, Failure>> {
        with_retries(what, &self.policy, attempt, interruptible_sleep)
    }

    /// The repository's API base, with the scheme its host's route takes.
    fn base(&self, repo: &Repository) -> Result<String> {
        Ok(repo.base(self.transport.route(repo.api_host())?.scheme))
    }

    /// One attempt of one request: with the login held for the registry when the request goes
    /// to the registry's own origin (a `Location` on another host gets none), renewed first
    /// when it has expired, and once more after a 401 with what its challenge asks for.
    fn send(
        &self,
        repo: &Repository,
        access: Access,
        call: &Call<'_>,
    ) -> Result<Result<Answer, Failure>> {
        let key = format!("{} {}", repo.registry, access.scope(&repo.name));
        let own_origin = origin_of(call.url) == origin_of(&self.base(repo)?);
        let mut challenged = false;
        loop {
            if interrupt::is_set() {
                return Err(Interrupted.into());
            }
            let mut held = match own_origin {
                true => {
                    let held = self.authorizations.lock().expect("not poisoned");
                    // A push token (`pull,push`) serves reads too.
                    let push = format!("{} {}", repo.registry, Access::Push.scope(&repo.name));
                    held.get(&key).or_else(|| held.get(&push)).cloned()
                }
                false => None,
            };
            if let Some(stale) = held.as_ref().filter(|a| a.expired()) {
                // A token that has run out is renewed before the request, not after it: a
                // blob upload with a stale token is cut off in the middle of its body.
                let challenge = stale.challenge.clone();
                match self.renew(repo, access, &key, Some(stale), &challenge)? {
                    Ok(renewed) => held = Some(renewed),
                    Err(failure) => return Ok(Err(failure)),
                }
            }
            let answer = match self.exchange(call, held.as_ref().map(|a| a.value.as_str())) {
                Ok(answer) => answer,
                Err(_) if interrupt::is_set() => return Err(Interrupted.into()),
                Err(failure) => return Ok(Err(failure)),
            };
            if answer.status == 401 && own_origin && !challenged {
                challenged = true;
                let challenge = answer.header("www-authenticate").unwrap_or_default().to_owned();
                match self.renew(repo, access, &key, held.as_ref(), &challenge)? {
                    Ok(_) => continue,
                    Err(failure) => return Ok(Err(failure)),
                }
            }
            return Ok(status_failure(&answer).map_or(Ok(answer), Err));
        }
    }

    /// One HTTP exchange; a transport failure is classified.
    fn exchange(&self, call: &Call<'_>, authorization: Option<&str>) -> Result<Answer, Failure> {
        let Call { method, url, accept, body, limit } = *call;
        let route = self
            .transport
            .route(host_of(url))
            .map_err(|e| Failure::Definite { reason: format!("{e:#}"), unauthorized: false })?;
        let agent = &route.agent;
        let mut request = http::Request::builder().method(method).uri(url);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        fn built<B>(
            url: &str,
            request: http::request::Builder,
            body: B,
        ) -> Result<http::Request<B>, Failure> {
            request.body(body).map_err(|e| Failure::Definite {
                reason: format!("{url}: {e}"),
                unauthorized: false,
            })
        }
        let response = match body {
            // Some registries refuse a POST without a length.
            Body::Empty if method == "POST" => {
                let request = request.header("Content-Length", "0");
                agent.run(built(url, request, ureq::SendBody::none())?)
            }
            Body::Empty => agent.run(built(url, request, ureq::SendBody::none())?),
            Body::Bytes(bytes, media_type) => {
                let request = request
                    .header("Content-Type", media_type)
                    .header("Content-Length", bytes.len().to_string());
                let mut bytes = io::Cursor::new(bytes);
                agent.run(built(url, request, ureq::SendBody::from_reader(&mut bytes))?)
            }
            Body::File { path, offset, size, progress } => {
                let reader = open_range(path, offset, size).map_err(|e| Failure::Definite {
                    reason: format!("cannot read {path}: {e}"),
                    unauthorized: false,
                })?;
                let request = request
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Length", size.to_string());
                match progress {
                    Some(progress) => {
                        let counted = Counted::new(reader, progress.clone());
                        let attempt = counted.attempt.clone();
                        let body = ureq::SendBody::from_owned_reader(counted);
                        let sent = agent.run(built(url, request, body)?);
                        if !sent.as_ref().is_ok_and(|r| r.status().is_success()) {
                            progress.take_back(attempt.load(std::sync::atomic::Ordering::SeqCst));
                        }
                        sent
                    }
                    None => {
                        agent.run(built(url, request, ureq::SendBody::from_owned_reader(reader))?)
                    }
                }
            }
        };
        let mut response =
            response.map_err(|e| transport_failure(method, url, &e, &route.trust))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if method == "HEAD" || limit == 0 {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map_err(|e| transport_failure(method, url, &e, &route.trust))?
        };
        Ok(Answer { status, headers, body })
    }
}

/// What an answer's status means: `None` for success.
pub(crate) fn status_failure(answer: &Answer) -> Option<Failure> {
    let status = answer.status;
    if (200..300).contains(&status) {
        return None;
    }
    let reason = format!("{status} {}{}", reason_phrase(status), registry_errors(&answer.body));
    Some(match status {
        404 => Failure::Absent { reason },
        429 => Failure::Transient { reason, rate_limited: true, retry_after: retry_after(answer) },
        408 | 500..=599 => {
            Failure::Transient { reason, rate_limited: false, retry_after: retry_after(answer) }
        }
        401 | 403 => Failure::Definite { reason, unauthorized: true },
        _ => Failure::Definite { reason, unauthorized: false },
    })
}

pub(crate) fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

/// The registry's own words, from its `{"errors": [{"code", "message"}]}` body.
pub(crate) fn registry_errors(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return String::new() };
    let said: Vec<String> = value["errors"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let code = e["code"].as_str().unwrap_or_default();
            let message = e["message"].as_str().unwrap_or_default();
            format!("{code}: {message}").trim_matches([' ', ':']).to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if said.is_empty() { String::new() } else { format!(" ({})", said.join("; ")) }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and is not read).
pub(crate) fn retry_after(answer: &Answer) -> Option<Duration> {
    answer.header("retry-after")?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn blob_key(repo: &Repository, digest: &str) -> String {
    format!("{} {digest}", repo.registry)
}

/// A transport error: the connection failing or timing out is transient; a name that does not
/// resolve, TLS refusing the certificate or the handshake, or a peer that does not speak HTTP
/// is definite, and says what to fix. `trust` is what the certificate was checked against.
pub(crate) fn transport_failure(
    method: &str,
    url: &str,
    error: &ureq::Error,
    trust: &str,
) -> Failure {
    let reason = format!("{method} {url}: {error}");
    let definite = |reason: String| Failure::Definite { reason, unauthorized: false };
    let host = host_of(url);
    let tls = |cause: &dyn std::fmt::Display| {
        definite(format!(
            "{method} {url}: TLS with {host} failed ({cause}); its certificate was checked \
             against {trust}: for a private CA, put it in /etc/docker/certs.d/{host}/ca.crt \
             (as Docker reads it) or name it with MEMORIES_REGISTRY_CA"
        ))
    };
    match error {
        ureq::Error::HostNotFound => definite(format!("{reason} (check the registry's name)")),
        ureq::Error::Io(io) => {
            if let Some(cause) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return tls(cause);
            }
            let text = io.to_string();
            if text.contains("failed to lookup address") && !text.contains("Temporary failure") {
                return definite(format!(
                    "{method} {url}: the name {host} does not resolve ({text}): check the \
                     registry's name"
                ));
            }
            Failure::Transient { reason, rate_limited: false, retry_after: None }
        }
        ureq::Error::Tls(cause) => tls(cause),
        ureq::Error::Rustls(cause) => tls(cause),
        ureq::Error::Pem(_) | ureq::Error::BadUri(_) | ureq::Error::Http(_) => definite(reason),
        ureq::Error::Protocol(_) => definite(format!(
            "{reason}: {host} does not answer HTTP there (a TLS port spoken to in plain HTTP, \
             or another service)"
        )),
        ureq::Error::BodyExceedsLimit(limit) => {
            definite(format!("{method} {url}: the answer is larger than {limit} bytes"))
        }
        _ => Failure::Transient { reason, rate_limited: false, retry_after: None },
    }
}

pub(crate) fn explain(doing: &str, failure: Failure) -> anyhow::Error {
    crate::oci::retry::explain(doing, failure)
}

/// A location the registry answered, made absolute against its API base.
pub(crate) fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end = base.find("://").map_or(0, |at| at + 3);
    let origin = match base[origin_end..].find('/') {
        Some(at) => &base[..origin_end + at],
        None => base,
    };
    format!("{origin}/{}", location.trim_start_matches('/'))
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests;
