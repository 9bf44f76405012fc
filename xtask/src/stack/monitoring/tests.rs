//! Unit tests of `crate::stack::monitoring`: Prometheus's answers as `promtool` prints them,
//! and the lies a broken or hostile one could tell.

use super::*;

fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        value,
    }
}

fn answers(pairs: Vec<(&'static str, Vec<Sample>)>) -> BTreeMap<&'static str, Vec<Sample>> {
    pairs.into_iter().collect()
}

#[test]
fn promtool_vectors_parse_with_their_labels_and_special_values() {
    let answer = r#"[{"metric":{"job":"server"},"value":[1765000000.123,"2"]},
                     {"metric":{},"value":[1765000000.123,"NaN"]},
                     {"metric":{"le":"+Inf"},"value":[1765000000.123,"+Inf"]}]"#;
    let samples = parse_vector(answer).unwrap();
    assert_eq!(samples[0], sample(&[("job", "server")], 2.0));
    assert!(samples[1].value.is_nan());
    assert_eq!(samples[2].value, f64::INFINITY);
    assert!(parse_vector("[]\n").unwrap().is_empty());
}

#[test]
fn an_answer_that_is_not_an_instant_vector_fails_with_what_came() {
    for lie in [
        "",
        "error: connection refused",
        r#"{"metric":{},"value":[1,"2"]}"#,
        r#"[{"metric":{"job":"server"},"value":[1,"two"]}]"#,
        r#"[{"metric":{"job":1},"value":[1,"2"]}]"#,
        r#"[{"metric":{},"value":[1]}]"#,
    ] {
        let error = format!("{:#}", parse_vector(lie).unwrap_err());
        assert!(error.contains("not an instant vector") || error.contains("no number"), "{error}");
    }
}

#[test]
fn figures_are_per_job_with_the_error_ratio_and_p99_only_where_requests_were_counted() {
    let summary = assemble(
        &answers(vec![
            ("up", vec![sample(&[("job", "server")], 2.0), sample(&[("job", "prometheus")], 1.0)]),
            (
                "targets_up",
                vec![sample(&[("job", "server")], 2.0), sample(&[("job", "prometheus")], 1.0)],
            ),
            ("requests", vec![sample(&[("job", "server")], 4.0)]),
            ("errors", vec![sample(&[("job", "server")], 0.2)]),
            ("p99", vec![sample(&[("job", "server")], 0.0125)]),
        ]),
        &[],
    )
    .unwrap();
    let server = summary.jobs.iter().find(|j| j.job == "server").unwrap();
    assert_eq!((server.targets_up, server.targets), (2, 2));
    assert_eq!(server.error_ratio(), Some(0.05));
    assert_eq!(server.p99_seconds, Some(0.0125));
    let prometheus = summary.jobs.iter().find(|j| j.job == "prometheus").unwrap();
    assert_eq!(prometheus.requests_per_second, None);
    assert_eq!(prometheus.error_ratio(), None);
    let lines = summary.lines().join("\n");
    assert!(lines.contains("server"), "{lines}");
    assert!(lines.contains("2/2") && lines.contains("4.00") && lines.contains("5.0%"), "{lines}");
    assert!(lines.contains("12.5 ms") && lines.contains("alerts: none"), "{lines}");
    let json = summary.to_json();
    assert_eq!(json["jobs"][1]["error_ratio"], 0.05);
    assert_eq!(json["alerts"], json!([]));
}

#[test]
fn no_errors_counted_is_a_zero_rate_and_a_quantile_of_nothing_is_absent() {
    let summary = assemble(
        &answers(vec![
            ("up", vec![sample(&[("job", "server")], 1.0)]),
            ("targets_up", vec![sample(&[("job", "server")], 1.0)]),
            ("requests", vec![sample(&[("job", "server")], 0.0)]),
            ("p99", vec![sample(&[("job", "server")], f64::NAN)]),
        ]),
        &[],
    )
    .unwrap();
    let server = &summary.jobs[0];
    assert_eq!(server.errors_per_second, Some(0.0));
    assert_eq!(server.error_ratio(), None, "no requests, no ratio");
    assert_eq!(server.p99_seconds, None);
}

#[test]
fn counts_that_cannot_be_counts_are_refused() {
    for (up, targets_up) in [(2.5, 1.0), (-1.0, 0.0), (f64::NAN, 0.0), (1.0, 2.0)] {
        let error = assemble(
            &answers(vec![
                ("up", vec![sample(&[("job", "server")], up)]),
                ("targets_up", vec![sample(&[("job", "server")], targets_up)]),
            ]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("job server"), "{error}");
    }
}

#[test]
fn alerts_list_firing_first_once_each_and_skip_series_without_a_name() {
    let alert = |name: &str, state: &str, instance: &str| {
        sample(
            &[
                ("alertname", name),
                ("alertstate", state),
                ("severity", "page"),
                ("instance", instance),
            ],
            1.0,
        )
    };
    let summary = assemble(
        &answers(vec![]),
        &[
            alert("MemoriesServerDown", "pending", "10.0.0.3:8283"),
            alert("MemoriesDatabaseDown", "firing", ""),
            alert("MemoriesServerDown", "pending", "10.0.0.4:8283"),
            sample(&[("alertstate", "firing")], 1.0),
        ],
    )
    .unwrap();
    let names: Vec<(&str, &str)> =
        summary.alerts.iter().map(|a| (a.name.as_str(), a.state.as_str())).collect();
    assert_eq!(names, [("MemoriesDatabaseDown", "firing"), ("MemoriesServerDown", "pending")]);
    let lines = summary.lines().join("\n");
    assert!(lines.contains("alert firing: MemoriesDatabaseDown (page)"), "{lines}");
}

#[test]
fn each_query_is_one_promtool_call_in_the_container() {
    let exec = crate::run::docker::cli(camino::Utf8Path::new("/repo")).args(["exec", "abc"]);
    let step = query_step(exec, "ALERTS");
    let shown = step.to_string();
    assert!(
        shown.ends_with("exec abc promtool query instant -o json http://127.0.0.1:9090 ALERTS"),
        "{shown}"
    );
}
