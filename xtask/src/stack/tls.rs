//! How the prod stack's edge serves HTTPS, from its settings, checked before anything changes:
//! certificate files (`TLS_CERT_FILE`, `TLS_KEY_FILE`; parsed, in their validity period, the
//! key matching the certificate), a certificate over ACME (`ACME_DOMAIN`, `ACME_EMAIL`,
//! `ACME_SERVER`, `ACME_CA_FILE`), or plain HTTP on purpose (`TLS=off`). Each way adds its
//! compose files over `compose/prod.yaml` (see `compose/https.yaml`).
//!
//! Certificates are read with rustls' PEM parser and its ring provider (both already built for
//! the registry client); the validity period is read from the certificate's DER by the few
//! lines below, as nothing in the build parses X.509 fields.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::stack::Stack;

/// How the edge serves: which compose files go over `compose/prod.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    /// Plain HTTP on `PROXY_PORT` (`TLS=off`): TLS ends somewhere in front of the stack.
    Plain,
    /// HTTPS with the certificate chain and key of `TLS_CERT_FILE` and `TLS_KEY_FILE`.
    Files,
    /// HTTPS with a certificate obtained over ACME; `ca` when `ACME_CA_FILE` is given.
    Acme { ca: bool },
}

impl Edge {
    /// The compose files this way of serving adds, in order.
    pub fn files(&self) -> Vec<String> {
        let files: &[&str] = match self {
            Edge::Plain => &[],
            Edge::Files => &["compose/https.yaml", "compose/tls-files.yaml"],
            Edge::Acme { ca: false } => &["compose/https.yaml", "compose/acme.yaml"],
            Edge::Acme { ca: true } => {
                &["compose/https.yaml", "compose/acme.yaml", "compose/acme-ca.yaml"]
            }
        };
        files.iter().map(|f| (*f).to_owned()).collect()
    }

    /// The way the settings ask for, without reading or checking any file: for the tasks that
    /// only look at a stack (down, status), so that they name the same files as `up` did.
    pub fn chosen(stack: &Stack) -> Option<Edge> {
        let set = |key: &str| stack.setting(key).is_some_and(|v| !v.is_empty());
        if stack.setting("TLS").is_some_and(|v| v == "off") {
            Some(Edge::Plain)
        } else if set("TLS_CERT") || set("TLS_CERT_FILE") {
            Some(Edge::Files)
        } else if set("ACME_DOMAIN") {
            Some(Edge::Acme { ca: set("ACME_CA") || set("ACME_CA_FILE") })
        } else {
            None
        }
    }

    /// The way the settings ask for, every setting and file it needs checked.
    pub fn checked(stack: &Stack) -> Result<Edge> {
        let set = |key: &str| stack.setting(key).is_some_and(|v| !v.is_empty());
        let files =
            set("TLS_CERT") || set("TLS_CERT_FILE") || set("TLS_KEY") || set("TLS_KEY_FILE");
        let acme = set("ACME_DOMAIN");
        match stack.setting("TLS").filter(|v| !v.is_empty()).as_deref() {
            Some("off") if files || acme => bail!(
                "TLS=off, but {} set too: remove TLS=off to serve HTTPS, or the other settings \
                 to serve plain HTTP",
                if files { "TLS_CERT_FILE/TLS_KEY_FILE are" } else { "ACME_DOMAIN is" }
            ),
            Some("off") => return Ok(Edge::Plain),
            Some(other) => bail!(
                "TLS={other} is not a choice: the only value is off (plain HTTP); HTTPS comes \
                 from TLS_CERT_FILE and TLS_KEY_FILE, or from ACME_DOMAIN"
            ),
            None => {}
        }
        if files && acme {
            bail!(
                "both certificate files (TLS_CERT_FILE, TLS_KEY_FILE) and ACME_DOMAIN are set: \
                 keep one way to get the certificate"
            );
        }
        if files {
            let cert = required(stack, "TLS_CERT")?;
            let key = required(stack, "TLS_KEY")?;
            check_pair(&cert, &key, now()).context("the certificate files cannot be served")?;
            return Ok(Edge::Files);
        }
        if acme {
            return check_acme(stack);
        }
        bail!(
            "the prod stack serves HTTPS: give a certificate with TLS_CERT_FILE=FILE and \
             TLS_KEY_FILE=FILE, or get one over ACME with ACME_DOMAIN=NAME and ACME_EMAIL=ADDRESS, \
             or set TLS=off to serve plain HTTP behind a TLS terminator of your own"
        )
    }
}

/// The value of secret setting `key` (or the file `key_FILE` names), which must be set.
fn required(stack: &Stack, key: &str) -> Result<String> {
    stack.secret_value(key)?.with_context(|| {
        format!("{key}_FILE is not set: give the file that holds it (or {key} itself)")
    })
}

fn check_acme(stack: &Stack) -> Result<Edge> {
    let domains = stack.setting("ACME_DOMAIN").unwrap_or_default();
    for name in domains.split(',') {
        check_dns_name(name).with_context(|| format!("ACME_DOMAIN={domains}"))?;
    }
    let email = stack.setting("ACME_EMAIL").unwrap_or_default();
    let valid_email = email
        .split_once('@')
        .is_some_and(|(user, host)| !user.is_empty() && !host.is_empty() && !email.contains(' '));
    if !valid_email {
        bail!(
            "ACME_EMAIL={email:?} is not an address: the ACME account needs a contact address \
             (the CA writes there about expiring certificates)"
        );
    }
    if let Some(server) = stack.setting("ACME_SERVER").filter(|v| !v.is_empty()) {
        if !server.starts_with("https://") {
            bail!("ACME_SERVER={server} is not an https:// URL of an ACME directory");
        }
    }
    for key in ["ACME_RENEW_DAYS", "ACME_CHECK_EVERY", "ACME_RETRY"] {
        if let Some(value) = stack.setting(key).filter(|v| !v.is_empty()) {
            if !value.parse::<u64>().is_ok_and(|n| n > 0) {
                bail!("{key}={value} is not a whole number above 0");
            }
        }
    }
    let ca = match stack.secret_value("ACME_CA")? {
        Some(pem) => {
            certificates(&pem).context("ACME_CA_FILE holds no usable CA certificate")?;
            true
        }
        None => false,
    };
    Ok(Edge::Acme { ca })
}

/// A name a public CA could issue for with the HTTP challenge: no wildcard, no IP address.
fn check_dns_name(name: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.contains('*') {
        bail!("{name} is a wildcard, which needs the DNS challenge: name each host instead");
    }
    if name.len() > 253 || !name.split('.').all(label_ok) {
        bail!("{name:?} is not a DNS name");
    }
    if name.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        bail!("{name} is an IP address: the HTTP challenge needs a DNS name");
    }
    Ok(())
}

/// Seconds since the Unix epoch, now.
fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The certificates of a PEM text, in order; fails when there is none or one does not parse.
fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("it is not PEM: {e:?}"))?;
    if certs.is_empty() {
        bail!("it has no -----BEGIN CERTIFICATE----- block");
    }
    for (i, cert) in certs.iter().enumerate() {
        validity(cert).with_context(|| format!("certificate {} is not X.509", i + 1))?;
    }
    Ok(certs)
}

/// Checks a certificate chain (leaf first) and its key, as PEM, at time `now`: the leaf is in
/// its validity period and the key is the one it certifies.
pub fn check_pair(cert_pem: &str, key_pem: &str, now: i64) -> Result<()> {
    let certs = certificates(cert_pem).context("TLS_CERT_FILE")?;
    let (not_before, not_after) = validity(&certs[0])?;
    if now >= not_after {
        bail!("TLS_CERT_FILE: the certificate expired on {}: renew it", date(not_after));
    }
    if now < not_before {
        bail!("TLS_CERT_FILE: the certificate is valid only from {}", date(not_before));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        anyhow::anyhow!("TLS_KEY_FILE holds no private key in PEM ({e:?}): give the key file")
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        anyhow::anyhow!(
            "TLS_KEY_FILE: the key cannot be used ({e}): give an RSA, ECDSA or Ed25519 key"
        )
    })?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => bail!(
            "TLS_KEY_FILE is not the key of TLS_CERT_FILE's certificate: give the key it was \
             issued for"
        ),
        Err(e) => bail!("TLS_KEY_FILE cannot be matched with the certificate: {e}"),
    }
}

/// The `YYYY-MM-DD HH:MM:SS UTC` of Unix time `t`.
fn date(t: i64) -> String {
    crate::image::version::rfc3339_utc(t).replace('T', " ").replace('Z', " UTC")
}

/// Unix time of a civil date (UTC), Howard Hinnant's days_from_civil.
fn unix(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss
}

/// One DER element: its tag and contents, and what follows it.
fn element(der: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first().context("truncated DER")?;
    let (&first, rest) = rest.split_first().context("truncated DER")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            bail!("bad DER length");
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        bail!("truncated DER");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// A certificate's validity period (notBefore, notAfter) in Unix time.
fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64)> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = element(cert.as_ref())?;
    let (tbs_tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE || tbs_tag != SEQUENCE {
        bail!("not a certificate");
    }
    // version [0] (optional), serialNumber, signature, issuer, validity.
    let (first, _, mut rest) = element(tbs)?;
    let skip = if first == 0xa0 { 3 } else { 2 };
    for _ in 0..skip {
        rest = element(rest)?.2;
    }
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        bail!("no validity period");
    }
    let (t1, not_before, rest) = element(validity)?;
    let (t2, not_after, _) = element(rest)?;
    Ok((time(t1, not_before)?, time(t2, not_after)?))
}

/// An X.509 time: UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, value: &[u8]) -> Result<i64> {
    let text = std::str::from_utf8(value).context("a time that is not text")?;
    let digits = text.strip_suffix('Z').context("a time that is not UTC")?;
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse()?, &digits[4..]),
        _ => bail!("an unknown time form {text:?}"),
    };
    let n = |i: usize| -> Result<i64> { Ok(rest[i..i + 2].parse()?) };
    Ok(unix(year, n(0)?, n(2)?, n(4)?, n(6)?, n(8)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
    // -subj /CN=memories.test -not_before 20200101000000Z -not_after 20210101000000Z` (EXPIRED)
    // and `-not_before 20250101000000Z -not_after 21000101000000Z` (LONG), each with its key;
    // OTHER_KEY is a third key.
    const EXPIRED: &str = include_str!("tls/expired.pem");
    const EXPIRED_KEY: &str = include_str!("tls/expired.key");
    const LONG: &str = include_str!("tls/long.pem");
    const LONG_KEY: &str = include_str!("tls/long.key");
    const OTHER_KEY: &str = include_str!("tls/other.key");

    const JAN_2026: i64 = 1_767_225_600;

    #[test]
    fn a_good_pair_passes_and_bad_ones_say_why() {
        check_pair(LONG, LONG_KEY, JAN_2026).unwrap();
        let expired = check_pair(EXPIRED, EXPIRED_KEY, JAN_2026).unwrap_err().to_string();
        assert!(expired.contains("expired on 2021-01-01 00:00:00 UTC"), "{expired}");
        let early = check_pair(LONG, LONG_KEY, 1_700_000_000).unwrap_err().to_string();
        assert!(early.contains("valid only from 2025-01-01 00:00:00 UTC"), "{early}");
        let mismatch = check_pair(LONG, OTHER_KEY, JAN_2026).unwrap_err().to_string();
        assert!(mismatch.contains("is not the key of"), "{mismatch}");
        let swapped = format!("{:#}", check_pair(LONG_KEY, LONG, JAN_2026).unwrap_err());
        assert!(swapped.contains("no -----BEGIN CERTIFICATE----- block"), "{swapped}");
        let no_key = format!("{:#}", check_pair(LONG, LONG, JAN_2026).unwrap_err());
        assert!(no_key.contains("TLS_KEY_FILE holds no private key"), "{no_key}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let garbage = format!("{:#}", check_pair(garbage, LONG_KEY, JAN_2026).unwrap_err());
        assert!(garbage.contains("certificate 1 is not X.509"), "{garbage}");
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(unix(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(unix(2026, 1, 1, 0, 0, 0), JAN_2026);
        assert_eq!(date(unix(2100, 2, 28, 23, 59, 58)), "2100-02-28 23:59:58 UTC");
        assert_eq!(date(unix(2024, 2, 29, 12, 0, 1)), "2024-02-29 12:00:01 UTC");
        assert_eq!(time(0x17, b"491231235959Z").unwrap(), unix(2049, 12, 31, 23, 59, 59));
        assert_eq!(time(0x17, b"500101000000Z").unwrap(), unix(1950, 1, 1, 0, 0, 0));
        assert!(time(0x17, b"500101000000+0100").is_err());
    }

    #[test]
    fn acme_names_are_dns_names_a_public_ca_can_check() {
        check_dns_name("memories.example.com").unwrap();
        check_dns_name("a-b.test").unwrap();
        for bad in ["*.example.com", "-a.test", "a..test", "", "10.0.0.1", "a_b.test", "a.test."] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_way_adds_its_files() {
        assert!(Edge::Plain.files().is_empty());
        assert_eq!(Edge::Files.files(), ["compose/https.yaml", "compose/tls-files.yaml"]);
        assert_eq!(
            Edge::Acme { ca: true }.files(),
            ["compose/https.yaml", "compose/acme.yaml", "compose/acme-ca.yaml"]
        );
    }
}
