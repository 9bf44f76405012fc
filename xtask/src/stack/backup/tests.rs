//! Unit tests of `crate::stack::backup`, kept beside it so that the module reads as code.

use serde_json::json;

use super::restore::*;
use super::status::*;
use super::*;

#[test]
fn a_stanza_exists_when_info_says_ok_or_no_valid_backup() {
    let status = |code: i64| format!(r#"[{{"name":"memories","status":{{"code":{code}}}}}]"#);
    assert!(!stanza_exists(&status(1)), "missing stanza path");
    assert!(!stanza_exists(&status(3)), "missing stanza data");
    assert!(stanza_exists(&status(0)) && stanza_exists(&status(2)), "ok, or no valid backup");
    assert!(!stanza_exists("[]") && !stanza_exists("not json"));
}

#[test]
fn pgbackrest_info_is_read_oldest_first() {
    let text = r#"[{"name":"memories","backup":[
        {"label":"20261205-134000F_20261205-135000I","type":"incr",
         "timestamp":{"start":1796481000,"stop":1796481002},
         "info":{"size":31000000,"repository":{"delta":120000,"size":3000000}}},
        {"label":"20261205-134000F","type":"full",
         "timestamp":{"start":1796480400,"stop":1796480405},
         "info":{"size":30000000,"repository":{"delta":2900000,"size":2900000}}}]}]"#;
    let info = parse_info(text).unwrap();
    assert_eq!(info.backups[0].label, "20261205-134000F");
    assert_eq!(info.backups[1].kind, "incr");
    assert_eq!(info.backups[0].stored, 2_900_000);
    assert!(parse_info("[]").unwrap().backups.is_empty());
    assert!(parse_info("not json").is_err());
}

#[test]
fn a_failing_archiver_is_an_error_that_says_how_far_a_restore_reaches() {
    let ok = parse_archiver("2026-12-05T13:40:00Z|||false\n");
    assert_eq!(ok.last_archived.as_deref(), Some("2026-12-05T13:40:00Z"));
    assert!(ok.failing().is_none());
    let failing =
        parse_archiver("2026-12-05T13:40:00Z|2026-12-05T13:45:00Z|00000001000000000000000A|true");
    let why = failing.failing().unwrap();
    assert!(why.contains("00000001000000000000000A") && why.contains("13:40:00Z"), "{why}");
}

#[test]
fn a_restore_target_becomes_pgbackrest_options() {
    assert!(RestoreTarget::Latest.args().is_empty());
    let time = RestoreTarget::Time("2026-12-05 13:40:00+00".into()).args();
    assert_eq!(time, ["--type=time", "--target=2026-12-05 13:40:00+00", "--target-action=promote"]);
    let one = RestoreTarget::Backup("20261205-134000F".into()).args();
    assert_eq!(one, ["--set=20261205-134000F", "--type=immediate", "--target-action=promote"]);
    assert_eq!(bytes(1536), "1.5 kB");
    assert_eq!(bytes(3 << 20), "3.0 MB");
}

fn state(backups: &[(&str, &str, i64)], schedule: &str) -> State {
    let backups = backups
        .iter()
        .map(|(label, kind, started)| Backup {
            label: (*label).into(),
            kind: (*kind).into(),
            started: *started,
            stopped: started + 5,
            size: 1,
            stored: 1,
        })
        .collect();
    State {
        info: Info { backups },
        archiver: parse_archiver("2026-12-05T13:40:00Z|||false"),
        schedule: parse_schedule(schedule),
    }
}

#[test]
fn backups_are_healthy_only_when_one_exists_is_fresh_and_nothing_fails() {
    let day = 86_400;
    let ok = "every=86400\nlast_attempt=1000\nlast_ok=1000\nlast_error=\n";
    assert_eq!(state(&[], ok).health(2000), Health::NoBackup);
    assert_eq!(state(&[("F1", "full", 1000)], ok).health(1000 + day), Health::Ok);
    // Older than the schedule with its slack (half an interval and five minutes): stale.
    let stale = state(&[("F1", "full", 1000)], ok).health(1000 + 2 * day);
    assert!(matches!(&stale, Health::Stale(why) if why.contains("F1") && why.contains("1d")));
    // An incremental backup does not make a full one fresh.
    let incr = state(&[("F1", "full", 1000), ("F1_I2", "incr", 1000 + day)], ok);
    assert!(matches!(incr.health(1000 + 2 * day), Health::Stale(_)));
    // Without a schedule, age alone is no problem.
    assert_eq!(state(&[("F1", "full", 1000)], "").health(1000 + 30 * day), Health::Ok);
    let failed = "every=86400\nlast_attempt=2000\nlast_ok=1000\nlast_error=ERROR: [056]: unable to find primary cluster\n";
    let health = state(&[("F1", "full", 1000)], failed).health(2100);
    assert!(matches!(&health, Health::Failing(why) if why.contains("[056]")), "{health:?}");
    assert_eq!(health.to_json()["status"], "failing");
    let archiving = State {
        archiver: parse_archiver("|2026-12-05T13:45:00Z|00000001000000000000000A|true"),
        ..state(&[("F1", "full", 1000)], ok)
    };
    assert!(matches!(archiving.health(1100), Health::Failing(why) if why.contains("000A")));
}

#[test]
fn the_schedule_file_is_read_and_a_broken_one_means_no_schedule() {
    let schedule = parse_schedule("every=3600\nlast_attempt=5\nlast_ok=5\nlast_error=\n");
    assert_eq!(schedule.every, 3600);
    assert_eq!(schedule.last_ok, Some(5));
    assert!(schedule.failing().is_none());
    assert!(schedule.describe().contains("every 1h"));
    assert_eq!(parse_schedule("garbage\nevery=x\n"), Schedule::default());
    assert_eq!(duration_text(90 * 60), "90m");
    assert_eq!(duration_text(2 * 86_400), "2d");
    assert_eq!(duration_text(5400 + 1), "1.5h");
}

#[test]
fn a_swarm_restore_mounts_what_the_db_service_mounts() {
    let volume = json!({"Type": "volume", "Source": "s_db-data",
        "Target": "/var/lib/postgresql/volume",
        "VolumeOptions": {"Labels": {"com.docker.stack.namespace": "s"}}});
    assert_eq!(
        mount_option(&volume).unwrap(),
        "type=volume,target=/var/lib/postgresql/volume,source=s_db-data,\
         volume-label=com.docker.stack.namespace=s"
    );
    let tmpfs = json!({"Type": "tmpfs", "Target": "/tmp"});
    assert_eq!(mount_option(&tmpfs).unwrap(), "type=tmpfs,target=/tmp");
    let bind = json!({"Type": "bind", "Source": "/srv/a,b", "Target": "/x"});
    assert!(mount_option(&bind).is_err());
}
