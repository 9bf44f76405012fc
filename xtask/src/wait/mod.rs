//! `cargo xtask wait-for`: readiness as data. Probes run concurrently in one loop each, under
//! one global deadline, with a per-attempt timeout and a jittered backoff; definite failures
//! (an unhealthy or exited container, a refused password) end the wait at once.
//!
//! The parts: [`spec`] parses probe specs, [`engine`] runs the wait, [`display`] shows it,
//! and one file per probe family observes: [`net`] (TCP, HTTP, Redis), [`postgres`] and
//! [`docker`] (containers, compose services, logs), dispatched by [`checks`].

pub mod checks;
mod display;
pub mod docker;
mod engine;
pub mod net;
mod postgres;
pub mod spec;

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

pub use engine::{
    Attempt, Check, Clock, ProbeReport, State, SystemClock, TimedOut, Verdict, WaitOptions,
    outcome_result, until_ready, wait, within_task,
};
pub use spec::Probe;

use display::Status;

/// Parses `60s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw_trim = raw.trim();
    let split = raw_trim.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(raw_trim.len());
    let (number, unit) = raw_trim.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration: use e.g. 500ms, 30s, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{raw}`: unknown unit `{unit}`: use ms, s, m or h")),
    };
    if !(seconds > 0.0 && seconds < 86_400.0 * 7.0) {
        return Err(format!("`{raw}` is out of range: use more than 0 and less than a week"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The readiness checks for `probes`.
pub fn checks(probes: &[Probe]) -> Vec<(String, Box<dyn Check>)> {
    probes.iter().map(|p| (p.to_string(), checks::for_probe(p))).collect()
}

/// What `cargo xtask wait-for` waits for, and how it reports.
#[derive(Debug, Clone)]
pub struct Request {
    pub probes: Vec<Probe>,
    /// The one deadline for all probes.
    pub timeout: Duration,
    /// The longest pause between two attempts of one probe.
    pub max_interval: Duration,
    /// Done when any probe is ready, instead of all.
    pub any: bool,
    /// The CA certificates (a PEM file) that https probes trust instead of Mozilla's roots.
    pub ca: Option<String>,
    /// The result as JSON on stdout.
    pub json: bool,
    /// Nothing on stderr but errors.
    pub quiet: bool,
}

/// `cargo xtask wait-for`.
pub fn run(args: &Request) -> Result<()> {
    let mut probes = args.probes.clone();
    if let Some(file) = &args.ca {
        // A CA file that cannot be used is bad input, refused now rather than retried.
        net::https_agent(Some(file)).map_err(|e| anyhow::anyhow!(e))?;
        let mut any_https = false;
        for probe in &mut probes {
            if let Probe::Https { ca, .. } = probe {
                *ca = Some(file.clone());
                any_https = true;
            }
        }
        if !any_https {
            anyhow::bail!("--ca {file} is for https:// probes, and none is given");
        }
    }
    let options = WaitOptions {
        timeout: args.timeout,
        max_interval: args.max_interval,
        any: args.any,
        cancel: Some(crate::run::interrupt::flag()),
        ..WaitOptions::default()
    };
    let mut status = Status::new(args.quiet, args.probes.len());
    let clock = SystemClock::new();
    let outcome =
        wait(checks(&probes), options, &clock, |event, reports| status.update(event, reports));
    status.finish(&outcome.reports);
    if args.json {
        let verdict = match outcome.verdict {
            Verdict::Ready => "ready",
            Verdict::TimedOut => "timed_out",
            Verdict::Failed => "failed",
            Verdict::Interrupted => "interrupted",
        };
        let probes: Vec<_> = outcome.reports.iter().map(ProbeReport::to_json).collect();
        out!(
            "{:#}",
            json!({"verdict": verdict, "elapsed_ms": outcome.elapsed.as_millis() as u64, "probes": probes})
        );
    }
    outcome_result(&outcome, args.timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit `d`"));
        assert!(parse_duration("0s").unwrap_err().contains("out of range"));
    }
}
