//! Logging in: what a 401's challenge asks for (basic credentials, or a bearer token from
//! the token service it names), from the credentials `docker login` left, renewed before a
//! token runs out.

use std::time::{Duration, Instant};

use anyhow::Result;
use base64::Engine as _;
use serde_json::Value;

use super::{Authorization, Body, Call, Client, MANIFEST_LIMIT, encode, status_failure};
use crate::oci::auth::{Access, Credentials, docker_credentials, parse_challenge};
use crate::oci::reference::{Repository, display_repo};
use crate::oci::retry::Failure;

impl Client {
    /// A new login for `key` in place of `stale`. One login at a time: parallel requests that
    /// meet the same 401 or the same expiry ask for one token, and the others take it.
    pub(super) fn renew(
        &self,
        repo: &Repository,
        access: Access,
        key: &str,
        stale: Option<&Authorization>,
        challenge: &str,
    ) -> Result<Result<Authorization, Failure>> {
        let _authorizing = self.authorizing.lock().expect("not poisoned");
        let current = self.authorizations.lock().expect("not poisoned").get(key).cloned();
        if let Some(current) = current {
            if stale.is_none_or(|s| s.value != current.value) && !current.expired() {
                return Ok(Ok(current));
            }
        }
        let renewed = self.authorize(repo, access, challenge)?;
        if let Ok(login) = &renewed {
            self.authorizations.lock().expect("not poisoned").insert(key.to_owned(), login.clone());
        }
        Ok(renewed)
    }

    /// The `Authorization` value a 401's challenge asks for: basic credentials, or a bearer
    /// token from the registry's token service (with the credentials, if there are any).
    pub(super) fn authorize(
        &self,
        repo: &Repository,
        access: Access,
        challenge: &str,
    ) -> Result<Result<Authorization, Failure>> {
        let credentials = self.credentials_for(repo)?;
        let login = |value: String, lasts: Option<Duration>| Authorization {
            value,
            // Renewed early, with a fifth of its life left: a request sent just before the end
            // can wait in a queue and arrive after it.
            expires: lasts.map(|d| Instant::now() + d.mul_f64(0.8)),
            challenge: challenge.to_owned(),
        };
        let unauthorized =
            |reason: String| Ok(Err(Failure::Definite { reason, unauthorized: true }));
        let (scheme, params) = parse_challenge(challenge);
        match scheme.as_str() {
            "basic" => match credentials {
                Some(Credentials::Basic { username, password }) => {
                    let pair = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"));
                    Ok(Ok(login(format!("Basic {pair}"), None)))
                }
                _ => unauthorized(format!(
                    "{} asks for a login, and there is none for it",
                    repo.registry
                )),
            },
            "bearer" => {
                let Some(realm) = params.get("realm") else {
                    return unauthorized(format!(
                        "{} asks for a token but names no token service",
                        repo.registry
                    ));
                };
                let service = params.get("service").cloned().unwrap_or_default();
                let scope = access.scope(&repo.name);
                Ok(self
                    .token(repo, realm, &service, &scope, credentials.as_ref())
                    .map(|(token, lasts)| login(format!("Bearer {token}"), Some(lasts))))
            }
            _ => unauthorized(format!(
                "{} answered 401 without a challenge this client knows (`{challenge}`)",
                repo.registry
            )),
        }
    }

    /// A bearer token for `scope`, asked of the token service at `realm`, and how long it
    /// lasts (its `expires_in`; 60 s when the service does not say, as the spec has it).
    pub(super) fn token(
        &self,
        repo: &Repository,
        realm: &str,
        service: &str,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(String, Duration), Failure> {
        let query = format!("service={}&scope={}", encode(service), encode(scope));
        // One attempt: the request it serves is the one retried.
        let attempt = match credentials {
            Some(Credentials::Identity(refresh)) => {
                let form = format!(
                    "grant_type=refresh_token&refresh_token={}&client_id=memories-xtask&{query}",
                    encode(refresh)
                );
                let body = Body::Bytes(form.as_bytes(), "application/x-www-form-urlencoded");
                self.exchange(&Call::new("POST", realm, MANIFEST_LIMIT).with_body(body), None)
            }
            Some(Credentials::Basic { username, password }) => {
                let pair = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                let url = format!("{realm}?{query}");
                let basic = format!("Basic {pair}");
                self.exchange(&Call::new("GET", &url, MANIFEST_LIMIT), Some(&basic))
            }
            None => {
                let url = format!("{realm}?{query}");
                self.exchange(&Call::new("GET", &url, MANIFEST_LIMIT), None)
            }
        };
        let answer = match attempt.and_then(|a| status_failure(&a).map_or(Ok(a), Err)) {
            Ok(answer) => answer,
            Err(Failure::Absent { reason } | Failure::Definite { reason, .. }) => {
                return Err(Failure::Definite {
                    reason: format!(
                        "the token service {realm} refused {}: {reason}",
                        display_repo(repo)
                    ),
                    unauthorized: true,
                });
            }
            Err(Failure::Transient { reason, rate_limited, retry_after }) => {
                let reason = format!("the token service {realm}: {reason}");
                return Err(Failure::Transient { reason, rate_limited, retry_after });
            }
        };
        let value: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        let lasts = Duration::from_secs(value["expires_in"].as_u64().unwrap_or(60));
        match value["token"].as_str().or_else(|| value["access_token"].as_str()) {
            Some(token) if !token.is_empty() => Ok((token.to_owned(), lasts)),
            _ => Err(Failure::Definite {
                reason: format!("{realm} answered without a token"),
                unauthorized: true,
            }),
        }
    }

    pub(super) fn credentials_for(&self, repo: &Repository) -> Result<Option<Credentials>> {
        let mut known = self.credentials.lock().expect("not poisoned");
        if let Some(found) = known.get(&repo.registry) {
            return Ok(found.clone());
        }
        let found = docker_credentials(&self.root, repo.credentials_key())?;
        known.insert(repo.registry.clone(), found.clone());
        Ok(found)
    }
}
