//! `verdicts backup` against a live send: the copy is consistent, and restoring it and
//! resuming delivers the issue to everyone, re-sending only what was in flight.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use predicates::prelude::*;

use crate::common::{seed_subscribers, state_code, TempSite, TEST_SECRET};
use crate::smtp::{Behaviour, TestSmtp};

const AT: &str = "2026-11-23T09:00:00Z";
const READERS: usize = 300;
const CONCURRENCY: usize = 4;

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

fn deliveries_in(conn: &rusqlite::Connection, state: &str) -> HashSet<String> {
    let mut stmt = conn
        .prepare(
            "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.state = ?",
        )
        .unwrap();
    stmt.query_map([state_code(state)], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_backup_taken_during_a_send_restores_and_resumes_without_loss() {
    let server = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(30)));
    let site = TempSite::with_bundled_content();
    site.write_config(server.port(), &format!("  concurrency: {CONCURRENCY}"));
    seed_subscribers(&site, READERS);

    let mut send = Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .args(["send", "--at", AT, "--yes"])
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // A backup while the send writes to the ledger: a complete, self-contained snapshot.
    assert!(server.wait_for(60, Duration::from_secs(60)) >= 60);
    site.cmd()
        .args(["backup", "backups/running.db"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with(format!(
            "Backed up {} to backups/running.db (",
            site.path().join("state/verdicts.db").display()
        )));
    assert!(send.try_wait().unwrap().is_none(), "the send kept going");
    let copy = rusqlite::Connection::open(site.path().join("backups/running.db")).unwrap();
    let check: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let total: i64 = copy
        .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total as usize, READERS, "every delivery is in the copy");
    let received: HashSet<String> = server.count_by_recipient().into_keys().collect();
    let sent = deliveries_in(&copy, "sent");
    assert!(!sent.is_empty());
    assert!(
        sent.is_subset(&received),
        "the copy records nothing as sent that was not"
    );
    assert!(!site.path().join("backups/running.db-wal").exists());
    drop(copy);

    // The sender is frozen mid-send, backed up, and killed; then the state folder is lost.
    assert!(server.wait_for(150, Duration::from_secs(60)) >= 150);
    signal(send.id(), "-STOP");
    std::thread::sleep(Duration::from_millis(300));
    site.cmd()
        .args(["backup", "backups/last.db"])
        .timeout(Duration::from_secs(30))
        .assert()
        .success();
    signal(send.id(), "-KILL");
    send.wait().unwrap();
    let state = site.path().join("state");
    for name in ["verdicts.db", "verdicts.db-wal", "verdicts.db-shm"] {
        let _ = std::fs::remove_file(state.join(name));
    }

    // Restore as docs/operations.md says: copy the backup into place, then resume.
    std::fs::copy(
        site.path().join("backups/last.db"),
        state.join("verdicts.db"),
    )
    .unwrap();
    let restored = rusqlite::Connection::open(state.join("verdicts.db")).unwrap();
    let in_flight = deliveries_in(&restored, "sending");
    drop(restored);
    assert!(in_flight.len() <= CONCURRENCY, "{in_flight:?}");
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .stdout(predicate::str::contains("Resuming issue 1"));

    let counts = server.count_by_recipient();
    for i in 0..READERS {
        let who = format!("reader{i}@example.com");
        let n = counts.get(&who).copied().unwrap_or(0);
        assert!(n >= 1, "{who} never got the issue");
        assert!(
            n == 1 || in_flight.contains(&who),
            "{who} got {n} copies but was not in flight at the backup"
        );
        assert!(n <= 2, "{who} got {n} copies");
    }
    let conn = rusqlite::Connection::open(state.join("verdicts.db")).unwrap();
    assert_eq!(deliveries_in(&conn, "sent").len(), READERS);
}
