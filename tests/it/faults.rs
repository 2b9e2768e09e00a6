//! A state database that is missing, empty, cut short, not a database or damaged, and an
//! issue with nobody to send to: each is one clear error naming the path, and nothing is
//! created or written. Also: debug logging stays small.

use std::path::Path;
use std::time::Duration;

use predicates::prelude::*;

use crate::common::{seed_subscribers, Process, TempSite};
use crate::smtp::TestSmtp;

/// The bundled week's slot.
const AT: &str = "2026-11-23T09:00:00Z";

/// A site with the bundled content, `n` subscribers and SMTP at `port`.
fn site_with_subscribers(n: usize, port: u16) -> TempSite {
    let site = TempSite::with_bundled_content();
    site.write_config(port, "");
    seed_subscribers(&site, n);
    site
}

/// Moves everything in the WAL into the database file, so the file alone holds the data.
fn checkpoint(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
}

fn issue_count(site: &TempSite) -> i64 {
    rusqlite::Connection::open(site.db_path())
        .unwrap()
        .query_row("SELECT count(*) FROM issues", [], |r| r.get(0))
        .unwrap()
}

/// `send`, `issues`, `run` and `preview` against a state file that is there but broken: each
/// fails naming the path and what is wrong, and the file is left exactly as it was.
fn assert_refused_everywhere(site: &TempSite, says: &str) {
    let path = site.db_path();
    let before = std::fs::read(&path).unwrap();
    let shown = "state/verdicts.db";
    for args in [
        vec!["send", "--at", AT, "--yes"],
        vec!["issues"],
        vec!["run"],
        vec!["preview", "--at", AT],
        vec!["subscribers", "count"],
        vec!["subscribers", "add", "late@example.com"],
    ] {
        let out = site
            .cmd()
            .args(&args)
            .timeout(Duration::from_secs(30))
            .assert()
            .code(3)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(shown), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            stderr.contains("backup"),
            "{args:?} says how to restore: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("Created issue"),
            "{args:?}"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );
}

#[test]
fn an_empty_database_file_is_an_error_not_an_empty_list() {
    let site = site_with_subscribers(3, 2525);
    std::fs::write(site.db_path(), b"").unwrap();
    assert_refused_everywhere(&site, "is empty (0 bytes)");
}

#[test]
fn a_truncated_database_file_is_an_error() {
    let site = site_with_subscribers(2000, 2525);
    let path = site.db_path();
    checkpoint(&path);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused_everywhere(&site, "is damaged");
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let site = site_with_subscribers(3, 2525);
    std::fs::write(site.db_path(), "email\nreader0@example.com\n".repeat(20)).unwrap();
    assert_refused_everywhere(&site, "not a SQLite database");
}

#[test]
fn a_missing_state_folder_stops_send_issues_and_run_and_nothing_is_created() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.write_config(server.port(), "");
    site.edit_config(|t| t.replace("state_dir: state", "state_dir: /nonexistent-mount/state"));
    for args in [
        vec!["send", "--at", AT, "--yes"],
        vec!["issues"],
        vec!["run"],
    ] {
        site.cmd()
            .args(&args)
            .timeout(Duration::from_secs(30))
            .assert()
            .code(1)
            .stderr(
                predicate::str::contains(
                    "the state folder /nonexistent-mount/state does not exist",
                )
                .and(predicate::str::contains("mount it")),
            );
    }
    // Preview is read-only and the README's first command: it shows the first issue.
    site.cmd()
        .args(["preview", "--at", AT])
        .assert()
        .success()
        .stdout(predicate::str::contains("Comparisons: 5"));
    assert!(!Path::new("/nonexistent-mount").exists());
    assert_eq!(server.received().len(), 0);
}

#[test]
fn a_missing_database_in_an_existing_folder_is_named_and_not_recreated() {
    let site = TempSite::with_bundled_content();
    std::fs::create_dir_all(site.path().join("state")).unwrap();
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "there is no state database at {}; nothing was created",
            site.db_path().display()
        )));
    // Preview says why it shows a first issue: the folder may be an unmounted disk.
    site.cmd()
        .args(["preview", "--at", AT])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "there is no state database at {}, so this is previewed as the first issue",
            site.db_path().display()
        )));
    // Reading the list shows an empty one and says where it looked.
    site.cmd()
        .args(["subscribers", "count"])
        .assert()
        .success()
        .stdout(predicate::str::contains("total                 0"))
        .stderr(predicate::str::contains(format!(
            "No state database at {} yet",
            site.db_path().display()
        )));
    assert!(!site.db_path().exists());
}

#[test]
fn creating_a_database_is_announced_once() {
    let site = TempSite::with_bundled_content();
    site.cmd()
        .args(["subscribers", "add", "ada@example.com"])
        .assert()
        .success()
        .stdout("added ada@example.com\n")
        .stderr(format!(
            "Created a new state database at {}.\n",
            site.db_path().display()
        ));
    site.cmd()
        .args(["subscribers", "add", "grace@example.com"])
        .assert()
        .success()
        .stderr("");
    // Bad input creates nothing: neither a bad address nor a refused first import.
    let other = TempSite::with_bundled_content();
    other
        .cmd()
        .args(["subscribers", "add", "not an address"])
        .assert()
        .code(1);
    std::fs::write(
        other.path().join("bad.csv"),
        "email\nada@example.com\nnope\n",
    )
    .unwrap();
    other
        .cmd()
        .args(["subscribers", "import", "bad.csv"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Created").not());
    assert!(!other.db_path().exists());
    assert_eq!(
        std::fs::read_dir(other.path().join("state"))
            .unwrap()
            .count(),
        0,
        "no temporary file is left behind"
    );
    std::fs::write(other.path().join("good.csv"), "email\nada@example.com\n").unwrap();
    other
        .cmd()
        .args(["subscribers", "import", "good.csv"])
        .assert()
        .success()
        .stdout(predicate::str::contains("imported good.csv: 1 added"))
        .stderr(format!(
            "Created a new state database at {}.\n",
            other.db_path().display()
        ));

    let fresh = TempSite::with_bundled_content();
    fresh.cmd().arg("init").assert().success().stderr(format!(
        "Created a new state database at {}.\n",
        fresh.db_path().display()
    ));
    fresh
        .cmd()
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "already exists and is intact; nothing changed",
        ));
}

#[test]
fn an_issue_for_nobody_needs_allow_empty() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.write_config(server.port(), "");
    site.cmd().arg("init").assert().success();
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("not creating the issue for 2026-11-23T09:00:00Z")
                .and(predicate::str::contains("has no active subscriber"))
                .and(predicate::str::contains("state/verdicts.db"))
                .and(predicate::str::contains("--allow-empty")),
        );
    assert_eq!(
        issue_count(&site),
        0,
        "the week's comparisons are not consumed"
    );

    // Everyone unsubscribed is no different.
    site.cmd()
        .args(["subscribers", "add", "ada@example.com"])
        .assert()
        .success();
    site.cmd()
        .args(["subscribers", "unsubscribe", "ada@example.com"])
        .assert()
        .success();
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .code(1);
    assert_eq!(issue_count(&site), 0);

    site.cmd()
        .args(["send", "--at", AT, "--yes", "--allow-empty"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("Created issue 1")
                .and(predicate::str::contains("0 recipients")),
        );
    assert_eq!(issue_count(&site), 1);
}

#[test]
fn the_daemon_does_not_create_an_issue_for_nobody() {
    let server = TestSmtp::start();
    let site = TempSite::new();
    let published = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    site.add_comparison(
        "fresh.md",
        &crate::common::fixture("valid.md").replace("2026-11-17T12:00:00+00:00", &published),
    );
    site.write_config(server.port(), "");
    site.edit_config(|t| {
        t.replace("cron: \"0 0 9 * * Mon\"", "cron: \"*/2 * * * * *\"")
            .replace("Europe/London", "UTC")
            .replace(
                "127.0.0.1:8080",
                &format!("127.0.0.1:{}", crate::smtp::closed_port()),
            )
    });
    site.cmd().arg("init").assert().success();
    let mut daemon = Process::start(&site, &["run"]);
    std::thread::sleep(Duration::from_secs(5));
    assert!(daemon.is_running(), "the daemon keeps running");
    daemon.sigterm();
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("has no active subscriber"), "{stderr}");
    assert_eq!(issue_count(&site), 0);
}

/// Overwrites one page in the middle of the database file with garbage, as a failing disk
/// or a stray write would.
fn damage_a_page(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let pages = bytes.len() / page;
    assert!(pages > 8, "the database is big enough to damage one page");
    damage_page(path, pages / 2 + 1);
}

/// Overwrites page `number` (1-based, as SQLite counts) with garbage.
fn damage_page(path: &Path, number: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let at = page * (number - 1);
    bytes[at..at + page].fill(0xA5);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damage_in_the_delivery_history_is_left_to_sends_and_the_daemon_not_list_changes() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(3000, server.port());
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let path = site.db_path();
    checkpoint(&path);
    // A leaf page of the ledger's history, as SQLite's dbstat table places it.
    let page: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT pageno FROM dbstat WHERE name = 'deliveries' AND pagetype = 'leaf'
             ORDER BY pageno LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    damage_page(&path, usize::try_from(page).unwrap());
    // A change to the list reads the list, not years of ledger: it goes ahead.
    site.cmd()
        .args(["subscribers", "add", "late@example.com"])
        .assert()
        .success();
    // A send of the damaged issue reads its rows and refuses, saying how to restore.
    // (Damage in an issue nobody is sending is the daily check's: tests/it/history.rs.)
    refuses_as_damaged(&site, &["send", "--at", AT, "--yes"]);
}

/// `verdicts ARGS` exits 3, naming the damaged file, that nothing was written and how to
/// restore.
fn refuses_as_damaged(site: &TempSite, args: &[&str]) {
    site.cmd()
        .args(args)
        .timeout(Duration::from_secs(30))
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains(format!(
                "the state database {} is damaged",
                site.db_path().display()
            ))
            .and(predicate::str::contains("nothing was written"))
            .and(predicate::str::contains("restore the latest backup")),
        );
}

#[test]
fn a_damaged_database_refuses_writes_and_sends_and_says_how_to_restore() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(3000, server.port());
    let path = site.db_path();
    checkpoint(&path);
    damage_a_page(&path);
    let before = std::fs::read(&path).unwrap();
    for args in [
        vec!["subscribers", "add", "late@example.com"],
        vec!["subscribers", "unsubscribe", "reader1@example.com"],
        vec!["subscribers", "import", "readers.csv"],
        vec!["send", "--at", AT, "--yes"],
        vec!["run"],
    ] {
        refuses_as_damaged(&site, &args);
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    assert_eq!(server.received().len(), 0);
}

#[test]
fn debug_logging_of_a_preview_stays_small() {
    let site = TempSite::with_bundled_content();
    for level in ["debug", "trace"] {
        let out = site
            .cmd()
            .env("RUST_LOG", level)
            .args(["preview", "--at", AT])
            .timeout(Duration::from_secs(120))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.len() < 1024 * 1024,
            "RUST_LOG={level} wrote {} bytes of logs",
            out.stderr.len()
        );
    }
    // Naming a dependency still turns its logs on: the filter narrows, it does not mute.
    let out = site
        .cmd()
        .env("RUST_LOG", "info,html5ever=trace")
        .args(["preview", "--at", AT])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("html5ever"),
        "html5ever was named, so it logs"
    );
}

#[test]
fn the_daemon_rides_out_a_state_folder_that_goes_away_and_comes_back() {
    let server = TestSmtp::start();
    let web = crate::smtp::closed_port();
    let site = TempSite::new();
    // Published a few seconds from now, so the slots before it have nothing to send.
    let published = (chrono::Utc::now() + chrono::Duration::seconds(6)).to_rfc3339();
    site.add_comparison(
        "fresh.md",
        &crate::common::fixture("valid.md").replace("2026-11-17T12:00:00+00:00", &published),
    );
    site.write_config(server.port(), "");
    site.edit_config(|t| {
        t.replace("cron: \"0 0 9 * * Mon\"", "cron: \"*/2 * * * * *\"")
            .replace("Europe/London", "UTC")
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{web}"))
    });
    seed_subscribers(&site, 5);
    let mut daemon = Process::start(&site, &["run"]);
    std::thread::sleep(Duration::from_millis(1500));
    // The disk goes away (as an unmount would) across the publication time, then returns.
    let (state, away) = (site.path().join("state"), site.path().join("state.away"));
    std::fs::rename(&state, &away).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    assert!(daemon.is_running(), "the daemon kept running");
    std::fs::rename(&away, &state).unwrap();
    assert_eq!(
        server.wait_for(5, Duration::from_secs(60)),
        5,
        "the issue went out once the folder was back"
    );
    daemon.sigterm();
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("retry_in"), "{stderr}");
    assert_eq!(server.received().len(), 5, "nobody twice");
}
