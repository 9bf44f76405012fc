//! How the client reaches a registry host, and what it trusts there.
//!
//! Plain HTTP for a loopback registry (Docker treats those as insecure), TLS everywhere else
//! with Mozilla's root certificates. A host with a directory in Docker's `certs.d`
//! (`/etc/docker/certs.d/HOST[:PORT]/`, `~/.config/docker/certs.d/...`, or the directories in
//! `MEMORIES_CERTS_D`) is spoken to over TLS, loopback or not, trusting the CA files there
//! (`*.crt`) instead of the public roots, and showing the client certificate there (`NAME.cert`
//! with `NAME.key`) for mutual TLS. `MEMORIES_REGISTRY_CA` names one more PEM bundle of CAs,
//! trusted for every registry. Loopback hosts bypass HTTP proxies, as Go's clients do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, parse_pem};

use crate::oci::reference::is_loopback;

/// Where Docker keeps per-registry certificates, as its daemon reads them.
const SYSTEM_CERTS_D: &str = "/etc/docker/certs.d";

/// How one host is reached.
pub(crate) struct Route {
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    pub(crate) agent: ureq::Agent,
    /// What a certificate is checked against, for errors: "Mozilla's root certificates" or
    /// the CA files by name.
    pub(crate) trust: String,
}

/// The routes to every host met so far, each made once.
pub(crate) struct Transport {
    /// Through `HTTPS_PROXY`/`HTTP_PROXY` when set (`NO_PROXY` honoured).
    proxied: ureq::Agent,
    /// For loopback addresses, which no proxy reaches.
    direct: ureq::Agent,
    certs_dirs: Vec<Utf8PathBuf>,
    extra_ca: Option<Utf8PathBuf>,
    routes: Mutex<HashMap<String, Arc<Route>>>,
}

fn agent(proxy: Option<ureq::Proxy>, tls: TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent("memories-xtask")
        .proxy(proxy)
        .tls_config(tls)
        // A redirect keeps the `Authorization` header only on the same host; blob storage on
        // another host gets none (as Docker's client does).
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .timeout_per_write(Some(Duration::from_secs(60)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .build()
        .into()
}

impl Transport {
    /// The routes as this process's environment sets them (see the module's documentation).
    pub(crate) fn from_env() -> Transport {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let certs_dirs = match var("MEMORIES_CERTS_D") {
            Some(dirs) => {
                dirs.split(':').filter(|d| !d.is_empty()).map(Utf8PathBuf::from).collect()
            }
            None => {
                let mut dirs = vec![Utf8PathBuf::from(SYSTEM_CERTS_D)];
                let config = var("XDG_CONFIG_HOME")
                    .map(Utf8PathBuf::from)
                    .or_else(|| var("HOME").map(|h| Utf8PathBuf::from(h).join(".config")));
                dirs.extend(config.map(|c| c.join("docker/certs.d")));
                dirs
            }
        };
        Transport {
            proxied: agent(ureq::Proxy::try_from_env(), TlsConfig::default()),
            direct: agent(None, TlsConfig::default()),
            certs_dirs,
            extra_ca: var("MEMORIES_REGISTRY_CA").map(Utf8PathBuf::from),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The route to `host` (`name[:port]`, as in a ref or a URL); an error names a certificate
    /// file that cannot be used.
    pub(crate) fn route(&self, host: &str) -> Result<Arc<Route>> {
        if let Some(route) = self.routes.lock().expect("not poisoned").get(host) {
            return Ok(route.clone());
        }
        let route = Arc::new(self.make_route(host)?);
        self.routes.lock().expect("not poisoned").insert(host.to_owned(), route.clone());
        Ok(route)
    }

    fn make_route(&self, host: &str) -> Result<Route> {
        let loopback = is_loopback(host);
        let mut cas: Vec<(Utf8PathBuf, Vec<Certificate<'static>>)> = Vec::new();
        let mut client: Option<(Utf8PathBuf, ClientCert)> = None;
        let mut has_dir = false;
        for dir in self.certs_dirs.iter().map(|d| d.join(host)) {
            if !dir.is_dir() {
                continue;
            }
            has_dir = true;
            let mut names: Vec<Utf8PathBuf> = dir
                .read_dir_utf8()
                .with_context(|| format!("cannot read {dir}"))?
                .filter_map(|e| e.ok().map(|e| e.into_path()))
                .collect();
            names.sort();
            for file in names {
                match file.extension() {
                    Some("crt") => cas.push((file.clone(), certificates(&file)?)),
                    Some("cert") if client.is_none() => {
                        let key = file.with_extension("key");
                        let chain = certificates(&file)?;
                        let key = private_key(&key).with_context(|| {
                            format!(
                                "{file} is a client certificate, and its key {key} cannot be used"
                            )
                        })?;
                        client = Some((file.clone(), ClientCert::new_with_certs(&chain, key)));
                    }
                    _ => {}
                }
            }
        }
        if let Some(file) = &self.extra_ca {
            cas.push((file.clone(), certificates(file).context("from MEMORIES_REGISTRY_CA")?));
        }
        let direct = || if loopback { self.direct.clone() } else { self.proxied.clone() };
        if !has_dir && (loopback || (cas.is_empty() && client.is_none())) {
            let scheme = if loopback { "http" } else { "https" };
            let trust = "Mozilla's root certificates".to_owned();
            return Ok(Route { scheme, agent: direct(), trust });
        }
        let mut tls = TlsConfig::builder();
        let trust = if cas.is_empty() {
            "Mozilla's root certificates".to_owned()
        } else {
            let roots: Vec<Certificate<'static>> =
                cas.iter().flat_map(|(_, certs)| certs.iter().cloned()).collect();
            tls = tls.root_certs(RootCerts::new_with_certs(&roots));
            let files: Vec<&str> = cas.iter().map(|(f, _)| f.as_str()).collect();
            format!("the CA in {}", files.join(", "))
        };
        if let Some((_, cert)) = client {
            tls = tls.client_cert(Some(cert));
        }
        let proxy = if loopback { None } else { ureq::Proxy::try_from_env() };
        Ok(Route { scheme: "https", agent: agent(proxy, tls.build()), trust })
    }
}

/// Every certificate of a PEM file.
fn certificates(file: &Utf8Path) -> Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        if let PemItem::Certificate(cert) =
            item.with_context(|| format!("{file} is not a PEM file"))?
        {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        bail!("{file} holds no PEM certificate");
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(file: &Utf8Path) -> Result<PrivateKey<'static>> {
    let pem = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    for item in parse_pem(&pem) {
        if let PemItem::PrivateKey(key) =
            item.with_context(|| format!("{file} is not a PEM file"))?
        {
            return Ok(key);
        }
    }
    bail!("{file} holds no PEM private key")
}
