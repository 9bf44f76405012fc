//! Unit tests of `crate::tasks::prod`, kept beside it so that the module reads as code.

use super::*;
use serde_json::json;

#[test]
fn secrets_are_redacted_from_printed_definitions() {
    let mut definition = json!({"services": {"db": {"environment": {
        "POSTGRES_PASSWORD": "hunter2", "POSTGRES_USER": "memories", "API_TOKEN": "t"
    }}}});
    redact(&mut definition);
    let env = &definition["services"]["db"]["environment"];
    assert_eq!(env["POSTGRES_PASSWORD"], "***");
    assert_eq!(env["API_TOKEN"], "***");
    assert_eq!(env["POSTGRES_USER"], "memories");
    let mut urls = json!({"services": {
        "server": {"environment": {"REDIS_URL": "redis://:hunter2@cache:6379/0"},
                   "command": ["serve", "--db=postgres://me:hunter2@db/app"]},
        "db": {"environment": {"POSTGRES_PASSWORD": "s3cret"},
               "healthcheck": {"test": ["CMD", "check", "--password=s3cret"]}},
    }});
    redact(&mut urls);
    let shown = urls.to_string();
    assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("redis://:***@cache:6379/0"), "{shown}");
    assert!(shown.contains("postgres://me:***@db/app"), "{shown}");
    assert_eq!(
        redact_url_passwords("http://host:80/x and ftp://a@b"),
        "http://host:80/x and ftp://a@b"
    );
}
