//! Unit tests of `crate::run::plan`, kept beside it so that the module reads as code.

use super::*;

#[test]
fn steps_display_as_pasteable_command_lines() {
    let step = Step::new("docker", "/repo")
        .args(["buildx", "bake", "--set", "*.labels.x=a b", "it's"])
        .stdin("{}".into());
    assert_eq!(step.to_string(), "docker buildx bake --set '*.labels.x=a b' 'it'\\''s' <stdin");
    assert_eq!(step.short(), "docker buildx bake");
}

#[test]
fn secrets_are_redacted_in_the_echo_the_json_and_errors() {
    let step = Step::new("docker", "/repo")
        .args(["login", "--password", "it's hunter2"])
        .env("PGPASSWORD", "it's hunter2")
        .secret("hunter2")
        .stdin("pw=it's hunter2".into());
    let shown = step.to_string();
    let expected = "PGPASSWORD='it'\\''s ***' docker login --password 'it'\\''s ***' <stdin";
    assert_eq!(shown, expected);
    let json = step.to_json().to_string();
    assert!(!json.contains("hunter2"), "{json}");
    let failing = Step::new("sh", ".").args(["hunter2", "-c"]).secret("hunter2");
    assert_eq!(failing.short(), "sh ***");
}

#[test]
fn spawned_steps_stream_and_are_stopped_when_dropped() {
    use std::io::{Read, Write};
    let piped = Streams { stdin: Stream::Piped, stdout: Stream::Piped, stderr: Stream::Null };
    let mut cat = Step::new("cat", ".").quiet().spawn(piped).unwrap();
    let (mut input, mut output) = (cat.stdin().unwrap(), cat.stdout().unwrap());
    input.write_all(b"streamed").unwrap();
    drop(input);
    let mut text = String::new();
    output.read_to_string(&mut text).unwrap();
    assert_eq!(text, "streamed");
    assert!(cat.wait().unwrap().success());

    let sleeper = Step::new("sleep", ".").arg("30").quiet().spawn(Streams::SILENT).unwrap();
    let pid = nix::unistd::Pid::from_raw(sleeper.child.id() as i32);
    drop(sleeper);
    // Reaped: the pid no longer names a process of ours.
    assert!(nix::sys::signal::kill(pid, None).is_err());
}

#[test]
fn failing_step_names_the_command_and_status() {
    let step = Step::new("false", ".").arg("--flag");
    let err = step.run().unwrap_err().to_string();
    assert_eq!(err, "`false` failed with exit status 1");
    let missing = Step::new("definitely-not-a-program-xtask", ".").run().unwrap_err();
    assert!(missing.to_string().contains("cannot start"), "{missing}");
}

#[test]
fn captured_steps_keep_both_streams_and_stop_at_their_timeout() {
    let said = Step::new("sh", ".").args(["-c", "echo out; echo err >&2; exit 3"]);
    let captured = said.capture().unwrap();
    assert_eq!((captured.stdout.as_str(), captured.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!(captured.status.code(), Some(3));
    assert!(!captured.success() && !captured.timed_out);

    let slow = Step::new("sleep", ".").arg("5").timeout(Duration::from_millis(100));
    let started = Instant::now();
    let captured = slow.capture().unwrap();
    assert!(captured.timed_out && !captured.success());
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}
