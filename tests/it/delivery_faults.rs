//! Faults of the world around a send, as an operator meets them: a relay that throttles
//! everyone, mailboxes that are full, and a state folder whose disk fills mid-send. Each
//! runs `verdicts send` as a child process against the real SMTP test server.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{seed_subscribers, state_at, Process, TempSite, TestConfig, TEST_SECRET};
use crate::delivery::{send, site_with_subscribers};
use crate::smtp::{Behaviour, TestSmtp};
use predicates::prelude::*;

const AT: &str = "2026-11-23T09:00:00Z";
const GMAIL_THROTTLE: &str = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.";
const MAILBOX_FULL: &str = "452 4.2.2 The email account that you tried to reach is over quota.";

/// (state, failure, attempts) of every delivery of issue 1, by email.
fn deliveries(db: &Path) -> HashMap<String, (String, Option<String>, u32)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT s.email, d.state, d.failure, d.attempts FROM deliveries d
             JOIN subscribers s ON s.id = d.subscriber_id WHERE d.issue = 1",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, (state_at(r, 1)?, r.get(2)?, r.get(3)?)))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn a_relay_throttling_every_recipient_pauses_the_issue_and_it_completes_once_lifted() {
    let server = TestSmtp::start_with(Behaviour::default().every_rcpt(GMAIL_THROTTLE));
    let site = site_with_subscribers(
        40,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("concurrency", "4")
            .smtp("retry_base", "50ms")
            .smtp("max_attempts", "3"),
    );
    let db = site.db_path();
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"))
        .stderr(predicate::str::contains("4.7.28"))
        .stdout(predicate::str::contains("sent 0, failed 0"));
    // Nobody failed, and the throttling cost nobody an attempt.
    let d = deliveries(&db);
    assert_eq!(d.len(), 40);
    assert!(
        d.values().all(|(s, _, a)| s == "pending" && *a == 0),
        "{d:?}"
    );
    assert!(server.received().is_empty());
    site.cmd()
        .arg("issues")
        .assert()
        .stdout(predicate::str::contains("paused"));

    server.lift();
    send(&site)
        .success()
        .stdout(predicate::str::contains("Resuming issue 1"))
        .stdout(predicate::str::contains("Totals: 40 sent, 0 failed"));
    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 40);
    assert!(counts.values().all(|&n| n == 1));
}

#[test]
fn full_mailboxes_retry_alone_and_the_issue_completes_only_when_they_are_delivered() {
    let full = [
        "reader2@example.com",
        "reader9@example.com",
        "reader13@example.com",
    ];
    let mut behaviour = Behaviour::default();
    for who in full {
        // Three attempts in the first run, then one per later run: accepted on the fifth.
        behaviour = behaviour.rcpt_reply(who, 4, MAILBOX_FULL);
    }
    let server = TestSmtp::start_with(behaviour);
    let site = site_with_subscribers(
        20,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("concurrency", "4")
            .smtp("retry_base", "50ms")
            .smtp("max_attempts", "3"),
    );
    let db = site.db_path();
    // Every failure is counted, temporary ones too, and the issue is not complete.
    send(&site)
        .code(75)
        .stdout(predicate::str::contains(
            "sent 17, failed 3 (3 temporarily)",
        ))
        .stderr(predicate::str::contains("3 deliveries failed temporarily"));
    let attempts = server.rcpt_attempts();
    for who in full {
        assert_eq!(attempts[who], 3, "{who}");
    }
    assert_eq!(attempts.values().filter(|&&n| n == 1).count(), 17);
    let d = deliveries(&db);
    assert_eq!(
        d["reader2@example.com"],
        ("failed".into(), Some("temporary".into()), 3)
    );
    site.cmd()
        .args(["issues", "show", "1"])
        .assert()
        .stdout(predicate::str::contains("over quota"));

    send(&site)
        .code(75)
        .stdout(predicate::str::contains("sent 0, failed 3 (3 temporarily)"));
    send(&site)
        .success()
        .stdout(predicate::str::contains("sent 3, failed 0"))
        .stdout(predicate::str::contains("Totals: 20 sent, 0 failed"));
    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1));
    assert_eq!(server.rcpt_attempts()["reader9@example.com"], 5);
}

#[test]
fn past_give_up_after_the_issue_completes_and_says_whom_it_gave_up_on() {
    let server = TestSmtp::start_with(Behaviour::default().rcpt_reply(
        "reader1@example.com",
        100,
        MAILBOX_FULL,
    ));
    let site = site_with_subscribers(
        4,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("retry_base", "50ms")
            .smtp("max_attempts", "2")
            .smtp("give_up_after", "0s"),
    );
    send(&site)
        .success()
        .stdout(predicate::str::contains("Totals: 3 sent, 1 failed"))
        .stdout(predicate::str::contains(
            "Gave up on 1 delivery still failing temporarily",
        ));
    site.cmd()
        .arg("issues")
        .assert()
        .stdout(predicate::str::contains("complete"));
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "16m"), or says why it cannot: mounting needs root.
    /// Outside CI a test may skip then; in CI (`CI=true`) it must not.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output();
        match status {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI must be able to mount a tmpfs (it runs as root): {why}"
                );
                eprintln!("skipping: cannot mount a small tmpfs (needs root): {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes zeros to `file` until the file system is full.
fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

#[test]
fn a_disk_filling_mid_send_stops_it_with_the_cause_and_the_resume_misses_nobody() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let state: PathBuf = fs.path().join("state");
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.write_config(
        server.port(),
        "  concurrency: 2\n  rate_per_second: 40\n  retry_base: 50ms",
    );
    site.edit_config(|c| {
        c.replace(
            "state_dir: state",
            &format!("state_dir: {}", state.display()),
        )
    });
    seed_subscribers(&site, 400);

    let mut child = Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .args(["send", "--at", AT, "--yes"])
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(server.wait_for(20, Duration::from_secs(30)) >= 20);
    let filler = fs.path().join("filler");
    fill(&filler);
    let filled = Instant::now();

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if filled.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the send still runs 30 s after the disk filled");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stopped_after = filled.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the state database is full: free space on the file system holding {}",
            state.display()
        )),
        "{stderr}"
    );
    assert!(stopped_after < Duration::from_secs(10), "{stopped_after:?}");
    let before = server.received().len();
    assert!(before < 400, "it stopped mid-send ({before} sent)");

    std::fs::remove_file(&filler).unwrap();
    send(&site)
        .success()
        .stdout(predicate::str::contains("Resuming issue 1"))
        .stdout(predicate::str::contains("Totals: 400 sent, 0 failed"));
    // Nobody is missing; only the few in flight when the disk filled may have a second
    // copy (with the same Message-ID).
    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 400);
    let twice = counts.values().filter(|&&n| n > 1).count();
    assert!(twice <= 2, "{twice} got two copies");
}

#[test]
fn the_daemon_resumes_a_throttled_issue_by_itself_once_the_relay_lifts() {
    let server = TestSmtp::start_with(Behaviour::default().every_rcpt(GMAIL_THROTTLE));
    let site = site_with_subscribers(
        10,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("retry_base", "50ms")
            .smtp("max_attempts", "3")
            .smtp("pause_max", "1s"),
    );
    send(&site).code(75);
    let tried = server.rcpt_attempts().values().sum::<usize>();

    let daemon = Process::start(&site, &["run"]);
    // Still throttled: the daemon tries again on its own, pauses again, sends nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.rcpt_attempts().values().sum::<usize>() <= tried {
        assert!(Instant::now() < deadline, "the daemon never retried");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.received().is_empty());

    server.lift();
    let delivered = server.wait_for(10, Duration::from_secs(30));
    let complete = (0..100).any(|_| {
        let out = site.cmd().arg("issues").output().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        String::from_utf8_lossy(&out.stdout).contains("complete")
    });
    daemon.sigterm();
    let (_, logged) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(delivered, 10, "{logged}");
    assert!(complete, "{logged}");
    assert!(
        logged.contains("issue paused; resuming it later"),
        "{logged}"
    );
    assert!(server.count_by_recipient().values().all(|&n| n == 1));
    let d = deliveries(&site.db_path());
    assert!(d.values().all(|(s, _, _)| s == "sent"), "{d:?}");
}
