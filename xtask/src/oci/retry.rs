//! Registry failures classified once (absent, transient, definite), and retried with a
//! bounded, jittered backoff when transient.
//!
//! Our own requests are classified from their HTTP answers ([`crate::oci::client`]). Other
//! registry clients (cosign) report a registry's answer only as text, so [`classify`] is the
//! one place that reads it.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::run::interrupt::{self, Interrupted};

/// Why a registry operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The registry does not have the ref (404, `manifest unknown`, `not found`).
    Absent { reason: String },
    /// Worth another try: 5xx, 429, a reset or refused connection, a timeout; `retry_after` is
    /// how long the registry asked to be left alone (`Retry-After`).
    Transient { reason: String, rate_limited: bool, retry_after: Option<Duration> },
    /// Retrying cannot help: 401/403, a bad name, anything not known to be transient.
    Definite { reason: String, unauthorized: bool },
}

/// Reads what the docker CLI said about a failed registry operation.
pub fn classify(stderr: &str, timed_out: Option<Duration>) -> Failure {
    let reason = last_line(stderr).to_owned();
    if let Some(limit) = timed_out {
        return Failure::Transient {
            reason: format!("no answer within {}s", limit.as_secs()),
            rate_limited: false,
            retry_after: None,
        };
    }
    let text = stderr.to_ascii_lowercase();
    let status = http_status(stderr);
    if status == Some(429) || text.contains("toomanyrequests") || text.contains("too many requests")
    {
        return Failure::Transient { reason, rate_limited: true, retry_after: None };
    }
    if status.is_some_and(|s| (500..600).contains(&s)) {
        return Failure::Transient { reason, rate_limited: false, retry_after: None };
    }
    let unauthorized = matches!(status, Some(401 | 403))
        || ["unauthorized", "denied", "forbidden", "authentication required"]
            .iter()
            .any(|word| text.contains(word));
    if unauthorized {
        return Failure::Definite { reason, unauthorized: true };
    }
    if status == Some(404)
        || ["not found", "manifest unknown", "name unknown"].iter().any(|w| text.contains(w))
    {
        return Failure::Absent { reason };
    }
    const NETWORK: [&str; 10] = [
        "connection reset",
        "connection refused",
        "broken pipe",
        "use of closed network connection",
        "i/o timeout",
        "tls handshake timeout",
        "context deadline exceeded",
        "server misbehaving",
        "unexpected eof",
        "no response",
    ];
    let eof = text.lines().any(|l| l.trim_end().ends_with(": eof"));
    if eof || NETWORK.iter().any(|w| text.contains(w)) {
        return Failure::Transient { reason, rate_limited: false, retry_after: None };
    }
    Failure::Definite { reason, unauthorized: false }
}

/// The first HTTP status in the text, as Go's registry clients print it: `...: 500 Internal
/// Server Error`, `HTTP status: 429 Too Many Requests`, and go-containerregistry's (cosign's)
/// `unexpected status code 500 Internal Server Error`.
pub(crate) fn http_status(text: &str) -> Option<u16> {
    let colons = text.match_indices(": ").map(|(at, sep)| at + sep.len());
    let codes = text.match_indices("status code ").map(|(at, sep)| at + sep.len());
    colons.chain(codes).find_map(|start| {
        let rest = &text[start..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = rest[digits.len()..].chars().nth(1);
        let status: u16 = digits.parse().ok()?;
        let phrase = rest[digits.len()..].starts_with(' ') && after.is_some_and(char::is_uppercase);
        (digits.len() == 3 && (100..600).contains(&status) && phrase).then_some(status)
    })
}

pub(crate) fn last_line(text: &str) -> &str {
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim();
    line.strip_prefix("ERROR: ").or_else(|| line.strip_prefix("error: ")).unwrap_or(line)
}

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The pause before the second attempt; it doubles with each attempt.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// The shortest pause after a 429: the docker CLI does not show `Retry-After`, so a rate
    /// limit is waited out for at least this long.
    pub rate_limited: Duration,
}

impl RetryPolicy {
    /// For registry operations: 12 attempts, pauses from 0.5 s up to 10 s (about 75 s in all).
    pub const REGISTRY: RetryPolicy = RetryPolicy {
        attempts: 12,
        first: Duration::from_millis(500),
        max: Duration::from_secs(10),
        rate_limited: Duration::from_secs(2),
    };

    /// The pause after failed attempt `attempt` (1-based), with `jitter` in [0, 1) taking off
    /// up to half of it, so that parallel clients do not retry in step.
    pub fn pause(&self, attempt: u32, rate_limited: bool, jitter: f64) -> Duration {
        let doubled = self.first.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let mut pause = doubled.min(self.max);
        if rate_limited {
            pause = pause.max(self.rate_limited);
        }
        pause.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// Retries of registry operations made by this process, for reports and benchmarks.
static RETRIES: AtomicU64 = AtomicU64::new(0);

pub fn retries() -> u64 {
    RETRIES.load(Ordering::SeqCst)
}

/// Runs `attempt` until it succeeds, fails definitely, or runs out of attempts; each retry is
/// said on stderr with what failed and when the next try comes. `Absent` is returned as is.
pub fn with_retries<T>(
    what: &str,
    policy: &RetryPolicy,
    mut attempt: impl FnMut() -> Result<Result<T, Failure>>,
    mut pause: impl FnMut(Duration) -> Result<()>,
) -> Result<Result<T, Failure>> {
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt()? {
            Err(Failure::Transient { reason, rate_limited, retry_after })
                if tried < policy.attempts =>
            {
                let mut wait = policy.pause(tried, rate_limited, jitter());
                // A registry's own word on when to come back wins, up to a minute.
                if let Some(after) = retry_after {
                    wait = wait.max(after.min(Duration::from_secs(60)));
                }
                say!(
                    "registry: {what} failed ({reason}); transient, attempt {tried} of {}, \
                     retrying in {:.1}s",
                    policy.attempts,
                    wait.as_secs_f64()
                );
                RETRIES.fetch_add(1, Ordering::SeqCst);
                pause(wait)?;
            }
            Err(Failure::Transient { reason, rate_limited, retry_after }) => {
                let reason = format!("{reason} (transient, still failing after {tried} attempts)");
                return Ok(Err(Failure::Transient { reason, rate_limited, retry_after }));
            }
            other => return Ok(other),
        }
    }
}

pub(crate) fn jitter() -> f64 {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps, waking early with [`Interrupted`] on Ctrl-C or SIGTERM.
pub fn interruptible_sleep(total: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + total;
    while std::time::Instant::now() < deadline {
        if interrupt::is_set() {
            return Err(Interrupted.into());
        }
        std::thread::sleep(Duration::from_millis(50).min(total));
    }
    Ok(())
}

/// Says what failed, with the fix where one is known.
pub fn explain(doing: &str, failure: Failure) -> anyhow::Error {
    match failure {
        Failure::Absent { reason } => anyhow!("{doing}: {reason}"),
        Failure::Transient { reason, .. } => {
            anyhow!("{doing}: {reason}: check that the registry is up, then run it again")
        }
        Failure::Definite { reason, unauthorized: true } => anyhow!(
            "{doing}: {reason}: log in with `docker login` (to the registry host) with an \
             account that may push there"
        ),
        Failure::Definite { reason, unauthorized: false } => anyhow!("{doing}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(rate_limited: bool) -> impl Fn(&Failure) -> bool {
        move |f| matches!(f, Failure::Transient { rate_limited: r, .. } if *r == rate_limited)
    }

    /// The answers below are what docker 28 and buildx 0.13 printed against the fault proxy.
    #[test]
    fn answers_are_classified_once() {
        let server = "unexpected status from HEAD request to http://127.0.0.1:33643/v2/t1/debian/blobs/sha256:17c4: 500 Internal Server Error";
        assert!(transient(false)(&classify(server, None)));
        let reset = "failed to do request: Head \"https://127.0.0.1:41401/v2/t2/debian/blobs/sha256:9320\": read tcp 127.0.0.1:52114->127.0.0.1:41401: read: connection reset by peer";
        assert!(transient(false)(&classify(reset, None)));
        let closed = "failed commit on ref \"manifest-sha256:6b66\": failed to do request: Put \"https://127.0.0.1:44873/v2/t6/debian/manifests/1\": readfrom tcp 127.0.0.1:56454->127.0.0.1:44873: write tcp 127.0.0.1:56454->127.0.0.1:44873: use of closed network connection";
        assert!(transient(false)(&classify(closed, None)));
        let limited = "ERROR: unexpected status from POST request to http://127.0.0.1:1/v2/x/blobs/uploads/: 429 Too Many Requests";
        assert!(transient(true)(&classify(limited, None)));
        let cosign = "Error: signing [r/server@sha256:ab]: GET http://127.0.0.1:1/v2/server/manifests/sha256-ab.sig: unexpected status code 500 Internal Server Error: unknown";
        assert!(transient(false)(&classify(cosign, None)), "{:?}", classify(cosign, None));
        assert!(transient(false)(&classify("Head \"http://r/v2/\": EOF", None)));
        assert!(transient(false)(&classify(
            "dial tcp 127.0.0.1:9: connect: connection refused",
            None
        )));
        assert!(transient(false)(&classify("", Some(Duration::from_secs(60)))));

        let absent = |text| matches!(classify(text, None), Failure::Absent { .. });
        assert!(absent("ERROR: 127.0.0.1:1/acme/server:1.0.0: not found"));
        assert!(absent("manifest unknown: manifest unknown"));

        let denied = classify(
            "unexpected status from HEAD request to https://ghcr.io/v2/acme/server/manifests/1.0.0: 401 Unauthorized",
            None,
        );
        assert!(matches!(denied, Failure::Definite { unauthorized: true, .. }), "{denied:?}");
        let forbidden = classify("denied: requested access to the resource is denied", None);
        assert!(matches!(forbidden, Failure::Definite { unauthorized: true, .. }));
        let unknown = classify("ERROR: invalid reference format", None);
        assert_eq!(
            unknown,
            Failure::Definite { reason: "invalid reference format".into(), unauthorized: false }
        );
    }

    #[test]
    fn pauses_double_up_to_the_bound_and_rate_limits_wait_longer() {
        let policy = RetryPolicy::REGISTRY;
        let pauses: Vec<u128> = (1..=7).map(|n| policy.pause(n, false, 0.0).as_millis()).collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(policy.pause(1, true, 0.0), Duration::from_secs(2));
        assert_eq!(
            policy.pause(3, false, 0.999_999).as_millis(),
            1000,
            "jitter takes off up to half"
        );
    }

    #[test]
    fn transient_failures_are_retried_definite_ones_never() {
        let policy = RetryPolicy { attempts: 4, ..RetryPolicy::REGISTRY };
        let mut answers = vec![
            Err(Failure::Transient {
                reason: "500".into(),
                rate_limited: false,
                retry_after: None,
            }),
            Err(Failure::Transient {
                reason: "429".into(),
                rate_limited: true,
                retry_after: Some(Duration::from_secs(3)),
            }),
            Ok("done"),
        ]
        .into_iter();
        let mut paused = Vec::new();
        let result = with_retries(
            "pushing x",
            &policy,
            || Ok(answers.next().unwrap()),
            |d| {
                paused.push(d);
                Ok(())
            },
        );
        assert_eq!(result.unwrap(), Ok("done"));
        assert_eq!(paused.len(), 2);
        assert!(paused[1] >= Duration::from_secs(3), "a Retry-After is waited out: {paused:?}");

        let answered_always = |failure: Failure| {
            let mut calls = 0;
            let result = with_retries(
                "pushing x",
                &policy,
                || {
                    calls += 1;
                    Ok::<Result<(), _>, _>(Err(failure.clone()))
                },
                |_| Ok(()),
            );
            (result.unwrap(), calls)
        };
        let (definite, calls) =
            answered_always(Failure::Definite { reason: "401".into(), unauthorized: true });
        assert!(matches!(definite, Err(Failure::Definite { .. })));
        assert_eq!(calls, 1);

        let (exhausted, calls) = answered_always(Failure::Transient {
            reason: "reset".into(),
            rate_limited: false,
            retry_after: None,
        });
        let Err(Failure::Transient { reason, .. }) = exhausted else { panic!() };
        assert_eq!(calls, 4);
        assert!(reason.contains("after 4 attempts"), "{reason}");
    }
}
