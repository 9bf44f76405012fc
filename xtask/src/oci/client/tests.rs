//! Unit tests of `crate::oci::client`, kept beside it so that the module reads as code.

use super::*;

#[test]
fn locations_are_made_absolute_and_queries_encoded() {
    let base = "https://ghcr.io/v2/acme/server";
    assert_eq!(
        absolute(base, "/v2/acme/server/blobs/uploads/u1?_state=x"),
        "https://ghcr.io/v2/acme/server/blobs/uploads/u1?_state=x"
    );
    assert_eq!(absolute(base, "https://storage.example/u1"), "https://storage.example/u1");
    assert_eq!(encode("sha256:ab"), "sha256%3Aab");
    assert_eq!(encode("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
}

fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, value.parse().unwrap());
    }
    Answer { status, headers: map, body: body.as_bytes().to_vec() }
}

#[test]
fn statuses_are_absent_transient_or_definite() {
    assert!(status_failure(&answer(201, &[], "")).is_none());
    let absent = status_failure(&answer(
        404,
        &[],
        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
    ));
    assert_eq!(
        absent,
        Some(Failure::Absent {
            reason: "404 Not Found (MANIFEST_UNKNOWN: manifest unknown)".into()
        })
    );
    let limited = status_failure(&answer(429, &[("retry-after", "7")], ""));
    assert_eq!(
        limited,
        Some(Failure::Transient {
            reason: "429 Too Many Requests".into(),
            rate_limited: true,
            retry_after: Some(Duration::from_secs(7))
        })
    );
    assert!(matches!(
        status_failure(&answer(503, &[], "")),
        Some(Failure::Transient { rate_limited: false, .. })
    ));
    assert!(matches!(
        status_failure(&answer(403, &[], "")),
        Some(Failure::Definite { unauthorized: true, .. })
    ));
    let invalid = status_failure(&answer(
        400,
        &[],
        r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
    ));
    assert!(
        matches!(&invalid, Some(Failure::Definite { unauthorized: false, reason }) if reason.contains("DIGEST_INVALID")),
        "{invalid:?}"
    );
}
