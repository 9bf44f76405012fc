//! What prod's Prometheus (the `monitoring` profile, `docker/prometheus`) says about the last
//! five minutes: per scrape job, the request rate, the server-error rate and the p99 latency,
//! how many of its targets answer, and which alerts fire. Asked with `promtool query instant`
//! inside the Prometheus container (it publishes no port), one query at a time; every answer is
//! checked before it is believed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::run::plan::Step;

/// The window every rate is taken over.
pub const WINDOW: &str = "5m";

/// One scrape job's last five minutes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobFigures {
    pub job: String,
    pub targets: u64,
    pub targets_up: u64,
    /// Requests per second, summed over the job's targets; `None` when the job counts none.
    pub requests_per_second: Option<f64>,
    /// Server errors (5xx) per second.
    pub errors_per_second: Option<f64>,
    /// The 99th percentile of request time, in seconds; `None` without requests.
    pub p99_seconds: Option<f64>,
}

impl JobFigures {
    /// Server errors as a share of all requests; `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        match (self.errors_per_second, self.requests_per_second) {
            (_, None) => None,
            (_, Some(total)) if total <= 0.0 => None,
            (errors, Some(total)) => Some(errors.unwrap_or(0.0) / total),
        }
    }
}

/// An alert that is pending or firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub name: String,
    /// `firing` or `pending` (its condition holds, but not yet for its `for:` time).
    pub state: String,
    pub severity: Option<String>,
}

/// What monitoring reports: figures per job, and the alerts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub jobs: Vec<JobFigures>,
    pub alerts: Vec<Alert>,
}

impl Summary {
    pub fn to_json(&self) -> Value {
        let jobs: Vec<Value> = self
            .jobs
            .iter()
            .map(|j| {
                json!({
                    "job": j.job,
                    "targets": j.targets,
                    "targets_up": j.targets_up,
                    "requests_per_second": j.requests_per_second,
                    "errors_per_second": j.errors_per_second,
                    "error_ratio": j.error_ratio(),
                    "p99_seconds": j.p99_seconds,
                })
            })
            .collect();
        let alerts: Vec<Value> = self
            .alerts
            .iter()
            .map(|a| json!({"alert": a.name, "state": a.state, "severity": a.severity}))
            .collect();
        json!({"running": true, "window": WINDOW, "jobs": jobs, "alerts": alerts})
    }

    /// The text `prod status` prints: one line per job, then one per alert (or "no alerts").
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{:<24} {:>8}  {:>10}  {:>8}  {:>9}",
            "MONITORED",
            "UP",
            "REQ/S",
            "5XX",
            format!("P99 ({WINDOW})")
        )];
        for j in &self.jobs {
            let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            lines.push(format!(
                "{:<24} {:>8}  {:>10}  {:>8}  {:>9}",
                j.job,
                format!("{}/{}", j.targets_up, j.targets),
                or_dash(j.requests_per_second.map(|r| format!("{r:.2}"))),
                or_dash(j.error_ratio().map(|r| format!("{:.1}%", r * 100.0))),
                or_dash(j.p99_seconds.map(|s| format!("{:.1} ms", s * 1000.0))),
            ));
        }
        if self.alerts.is_empty() {
            lines.push("alerts: none".to_owned());
        }
        for a in &self.alerts {
            let severity = a.severity.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            lines.push(format!("alert {}: {}{severity}", a.state, a.name));
        }
        lines
    }
}

/// The queries a summary is made of, by what they answer.
pub fn queries() -> [(&'static str, String); 5] {
    [
        ("up", "count by (job) (up)".to_owned()),
        ("targets_up", "sum by (job) (up)".to_owned()),
        ("requests", format!("sum by (job) (rate(memories_requests_total[{WINDOW}]))")),
        (
            "errors",
            format!("sum by (job) (rate(memories_requests_total{{status=~\"5..\"}}[{WINDOW}]))"),
        ),
        (
            "p99",
            format!(
                "histogram_quantile(0.99, sum by (job, le) \
                 (rate(memories_request_duration_seconds_bucket[{WINDOW}])))"
            ),
        ),
    ]
}

/// The query of the alerts that are pending or firing.
pub const ALERTS: &str = "ALERTS";

/// `promtool query instant` of `expr`, run by `exec` (a `docker exec` or `compose exec` of the
/// Prometheus container, up to the command).
pub fn query_step(exec: Step, expr: &str) -> Step {
    exec.args(["promtool", "query", "instant", "-o", "json", "http://127.0.0.1:9090", expr])
        .quiet()
        .timeout(Duration::from_secs(15))
}

/// Asks Prometheus through `exec` (see [`query_step`]) for the summary.
pub fn summary(exec: &Step) -> Result<Summary> {
    let ask = |expr: &str| -> Result<Vec<Sample>> {
        let answer = query_step(exec.clone(), expr)
            .read()
            .with_context(|| format!("cannot ask Prometheus for {expr}"))?;
        parse_vector(&answer).with_context(|| format!("Prometheus's answer to {expr}"))
    };
    let mut answers = BTreeMap::new();
    for (name, expr) in queries() {
        answers.insert(name, ask(&expr)?);
    }
    let alerts = ask(ALERTS)?;
    assemble(&answers, &alerts)
}

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// An instant vector as `promtool query instant -o json` prints it (`[{"metric": {...},
/// "value": [time, "value"]}]`). `NaN` (a quantile of no requests) is kept; any other value
/// that is not a number fails.
pub fn parse_vector(answer: &str) -> Result<Vec<Sample>> {
    let raw: Vec<RawSample> = serde_json::from_str(answer.trim()).with_context(|| {
        format!("not an instant vector: {}", answer.chars().take(200).collect::<String>())
    })?;
    raw.into_iter()
        .map(|s| {
            let value =
                match s.value.1.as_str() {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    text => text.parse::<f64>().ok().filter(|v| !v.is_infinite()).with_context(
                        || format!("the sample {:?} has no number: {text:?}", s.metric),
                    )?,
                };
            Ok(Sample { labels: s.metric, value })
        })
        .collect()
}

/// The summary from the answers to [`queries`] (by name) and to [`ALERTS`]. A count that is
/// not a whole, non-negative number, or more targets up than there are, is a lie and fails.
pub fn assemble(answers: &BTreeMap<&str, Vec<Sample>>, alerts: &[Sample]) -> Result<Summary> {
    let by_job = |name: &str| -> BTreeMap<String, f64> {
        answers
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|s| s.labels.get("job").map(|job| (job.clone(), s.value)))
            .collect()
    };
    let count = |value: f64, what: &str, job: &str| -> Result<u64> {
        if value.is_finite() && value >= 0.0 && value.fract() == 0.0 {
            Ok(value as u64)
        } else {
            bail!("Prometheus counts {value} {what} for job {job}: not a count")
        }
    };
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
    let (targets_up, requests, errors, p99) =
        (by_job("targets_up"), by_job("requests"), by_job("errors"), by_job("p99"));
    let mut jobs = Vec::new();
    for (job, targets) in by_job("up") {
        let targets = count(targets, "targets", &job)?;
        let up = count(targets_up.get(&job).copied().unwrap_or(0.0), "targets up", &job)?;
        if up > targets {
            bail!("Prometheus says {up} of {targets} targets of job {job} are up");
        }
        let requests_per_second = finite(requests.get(&job).copied());
        let has_requests = requests_per_second.is_some_and(|r| r > 0.0);
        jobs.push(JobFigures {
            requests_per_second,
            errors_per_second: finite(errors.get(&job).copied())
                .or(requests_per_second.map(|_| 0.0)),
            p99_seconds: finite(p99.get(&job).copied()).filter(|_| has_requests),
            targets_up: up,
            targets,
            job,
        });
    }
    let mut alerts: Vec<Alert> = alerts
        .iter()
        .filter_map(|s| {
            Some(Alert {
                name: s.labels.get("alertname")?.clone(),
                state: s.labels.get("alertstate")?.clone(),
                severity: s.labels.get("severity").cloned(),
            })
        })
        .collect();
    // Firing first, then by name; an alert with one series per replica shows once.
    alerts.sort_by(|a, b| (a.state != "firing", &a.name).cmp(&(b.state != "firing", &b.name)));
    alerts.dedup();
    Ok(Summary { jobs, alerts })
}

#[cfg(test)]
mod tests;
