//! History with a bounded cost, as an operator meets it: per-issue totals that survive
//! compaction (and a kill -9 in the middle of one), the retention window's edges (retry
//! inside it, "compacted" outside, a late bounce after it), readers' access and erasure
//! requests, the upgrade of a database holding real sent issues, and damage in an old
//! issue's pages found by the daemon's scheduled check without stopping this week's send.

use std::time::{Duration, Instant};

use predicates::prelude::*;

use crate::common::{fixture, seed_subscribers, Process, TempSite, TestConfig};
use crate::inbound::{arf, dsn, inbound_site, mailto_of, pipe, send_week, statuses, to};
use crate::smtp::{Behaviour, TestSmtp};

/// A clock past the default 90-day window for the weeks `send_week` sends.
const LATER: &str = "2027-06-01T00:00:00Z";
/// A clock inside the window.
const SOON: &str = "2026-12-01T00:00:00Z";

fn stdout(site: &TempSite, args: &[&str]) -> String {
    let out = site
        .cmd()
        .args(args)
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

fn compact_at(site: &TempSite, now: &str) -> String {
    let out = site
        .cmd()
        .arg("compact")
        .env("VERDICTS_NOW", now)
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

fn count(site: &TempSite, sql: &str) -> i64 {
    site.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// `issues show N` without its per-recipient section, which compaction replaces.
fn totals_part(show: &str) -> String {
    show.lines()
        .take_while(|l| !l.starts_with("Failed recipients") && !l.starts_with("Per-recipient"))
        .filter(|l| !l.starts_with("  "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two sent weeks with a refusal at RCPT, a hard bounce, a complaint and a mailto
/// unsubscribe, as `inbound.rs` produces them.
fn two_weeks_with_everything(server: &TestSmtp) -> TempSite {
    let site = inbound_site(server.port());
    let week1 = send_week(&site, server, 0);
    let dead = to(&week1, "dead@example.net");
    pipe(
        &site,
        dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1"),
    );
    pipe(&site, arf(&to(&week1, "annoyed@example.net")));
    let leaving = to(&week1, "leaving@example.net");
    pipe(
        &site,
        format!(
            "From: leaving@example.net\r\nTo: {}\r\nSubject: stop\r\nMessage-ID: <bye@example.net>\r\n\r\nNo more.\r\n",
            mailto_of(&leaving)
        ),
    );
    send_week(&site, server, 1);
    site
}

#[test]
fn totals_survive_compaction_and_the_window_edges_hold() {
    let server = TestSmtp::start_with(Behaviour::default().unknown("refused@example.net"));
    let site = two_weeks_with_everything(&server);
    let list_before = stdout(&site, &["issues"]);
    let show_before = stdout(&site, &["issues", "show", "1"]);
    assert!(
        show_before.contains("Bounces:     2 (33.33%): 2 hard, 0 soft"),
        "{show_before}"
    );
    assert!(show_before.contains("Complaints:  1"), "{show_before}");
    assert!(
        show_before.contains("refused@example.net  permanent"),
        "{show_before}"
    );

    // Inside the window: nothing is folded, the failed list stays and retry works.
    let out = compact_at(&site, SOON);
    assert!(
        out.contains("No issue is older than retention.deliveries"),
        "{out}"
    );
    assert_eq!(stdout(&site, &["issues", "show", "1"]), show_before);
    site.cmd()
        .args(["issues", "retry", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "has no failed delivery to a subscriber who is still active",
        ));

    // Outside it: both issues are folded, every number stays, the detail is gone.
    let out = compact_at(&site, LATER);
    assert!(
        out.contains("Folded issue 1 into its totals: 6 delivery rows."),
        "{out}"
    );
    assert!(out.contains("Folded issue 2 into its totals"), "{out}");
    assert_eq!(count(&site, "SELECT count(*) FROM deliveries"), 0);
    assert_eq!(stdout(&site, &["issues"]), list_before);
    let show_after = stdout(&site, &["issues", "show", "1"]);
    assert_eq!(totals_part(&show_after), totals_part(&show_before));
    assert!(
        show_after.contains("Failed recipients: 1 (their detail was compacted on"),
        "{show_after}"
    );
    site.cmd()
        .args(["issues", "retry", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "issue 1's per-recipient detail was compacted",
        ));
    // A second run finds nothing left to do.
    let out = compact_at(&site, LATER);
    assert!(out.contains("No issue is older"), "{out}");

    // A late bounce for a compacted issue, on its signed tag: counted and applied.
    let week1: Vec<_> = server.received()[..5].to_vec();
    let loyal = to(&week1, "loyal@example.net");
    let out = pipe(
        &site,
        dsn(&loyal.mail_from, "loyal@example.net", "failed", "5.1.1"),
    );
    assert!(out.contains("now bounced"), "{out}");
    assert_eq!(statuses(&site)["loyal@example.net"], "bounced");
    let show_late = stdout(&site, &["issues", "show", "1"]);
    assert!(
        show_late.contains("Bounces:     3 (50.00%): 3 hard, 0 soft"),
        "{show_late}"
    );
}

#[test]
fn a_kill_during_compaction_leaves_the_totals_exact() {
    const READERS: usize = 12_000;
    let server = TestSmtp::start_with(Behaviour::default().unknown("reader7@example.com"));
    let site = TempSite::with_bundled_content();
    site.configure(
        &TestConfig::default()
            .smtp_port(server.port())
            .smtp("concurrency", 16),
    );
    seed_subscribers(&site, READERS);
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .timeout(Duration::from_secs(600))
        .assert()
        .success();
    let show_before = stdout(&site, &["issues", "show", "1"]);
    let list_before = stdout(&site, &["issues"]);

    let mut compact = std::process::Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_NOW", LATER)
        .arg("compact")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some rows are gone and some are left.
    let watch = site.db();
    let started = Instant::now();
    let left = loop {
        let left: i64 = watch
            .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        if left < READERS as i64 {
            compact.kill().unwrap();
            break left;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "compaction never started"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    compact.wait().unwrap();
    assert!(left > 0, "killed before the last batch");
    let remaining: i64 = watch
        .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert!(remaining > 0, "rows were left behind by the kill");
    // Half-way, the numbers are already the same ones.
    assert_eq!(stdout(&site, &["issues"]), list_before);

    let out = compact_at(&site, LATER);
    assert!(out.contains("Folded issue 1 into its totals"), "{out}");
    assert_eq!(count(&site, "SELECT count(*) FROM deliveries"), 0);
    assert_eq!(stdout(&site, &["issues"]), list_before);
    assert_eq!(
        totals_part(&stdout(&site, &["issues", "show", "1"])),
        totals_part(&show_before)
    );
}

#[test]
fn an_access_request_shows_everything_and_an_erasure_keeps_erased_readers_out() {
    let server = TestSmtp::start();
    let site = inbound_site(server.port());
    send_week(&site, &server, 0);
    let list_before = stdout(&site, &["issues"]);

    let json: serde_json::Value = serde_json::from_str(&stdout(
        &site,
        &["subscribers", "show", "LOYAL@example.net"],
    ))
    .unwrap();
    assert_eq!(json["subscriber"]["email"], "loyal@example.net");
    assert_eq!(json["subscriber"]["status"], "active");
    assert_eq!(json["consent"]["source"], "cli");
    assert_eq!(json["deliveries"][0]["issue"], 1);
    assert_eq!(json["deliveries"][0]["state"], "sent");
    assert!(json["deliveries"][0]["sent_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(json["events"].as_array().unwrap().len(), 0);

    site.cmd()
        .args(["subscribers", "erase", "loyal@example.net"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "erased loyal@example.net: the subscriber, 1 delivery and 0 events",
        ));
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM subscribers WHERE email = 'loyal@example.net'"
        ),
        0
    );
    assert_eq!(
        stdout(&site, &["issues"]),
        list_before,
        "the issue still counts the copy that went out"
    );
    site.cmd()
        .args(["subscribers", "show", "loyal@example.net"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("it was erased on"));

    // An old CSV holding the address: refused, naming it and why; nothing imported.
    let csv = site.path().join("old.csv");
    std::fs::write(
        &csv,
        "email,name,status\nnew@example.net,New,active\nLoyal@Example.net,Loyal,active\n",
    )
    .unwrap();
    let readers = count(&site, "SELECT count(*) FROM subscribers");
    site.cmd()
        .args(["subscribers", "import"])
        .arg(&csv)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "line 3: `Loyal@Example.net` was erased on",
        ))
        .stderr(predicate::str::contains("unless you pass --allow-erased"));
    assert_eq!(count(&site, "SELECT count(*) FROM subscribers"), readers);
    site.cmd()
        .args(["subscribers", "add", "loyal@example.net"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "`loyal@example.net` was erased on",
        ));

    // The operator decides otherwise.
    site.cmd()
        .args(["subscribers", "import", "--allow-erased"])
        .arg(&csv)
        .assert()
        .success();
    assert_eq!(
        count(&site, "SELECT count(*) FROM subscribers"),
        readers + 2
    );
    // Re-admitted: the erasure record went with the import, so the reader is an ordinary
    // subscriber again (shown, not refused) and nothing of them is held as erased.
    assert_eq!(count(&site, "SELECT count(*) FROM erased_addresses"), 0);
    site.cmd()
        .args(["subscribers", "show", "loyal@example.net"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"status\": \"active\""));
}

/// Takes a database back to the layout release 9 wrote (migration 10 undone: text
/// timestamps, every 250 reply kept, no totals), as an older verdicts left it.
fn back_to_release_9(conn: &rusqlite::Connection) {
    // Whatever migrations after 9 created goes, whatever they added to release 9's tables
    // is dropped, found by comparing with a file built from migrations 1 to 9 alone.
    let release_9 = rusqlite::Connection::open_in_memory().unwrap();
    for sql in &verdicts::store::MIGRATIONS[..9] {
        release_9.execute_batch(sql).unwrap();
    }
    let objects = |db: &rusqlite::Connection| -> Vec<(String, String)> {
        let mut stmt = db
            .prepare(
                "SELECT type, name FROM sqlite_master
                 WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL
                 ORDER BY CASE type WHEN 'trigger' THEN 0 WHEN 'view' THEN 1
                                    WHEN 'index' THEN 2 ELSE 3 END",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let columns = |db: &rusqlite::Connection, table: &str| -> Vec<String> {
        let mut stmt = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let old = objects(&release_9);
    conn.execute_batch("PRAGMA foreign_keys = OFF; BEGIN;")
        .unwrap();
    for (kind, name) in objects(conn) {
        if !old.contains(&(kind.clone(), name.clone())) {
            conn.execute_batch(&format!("DROP {kind} IF EXISTS \"{name}\";"))
                .unwrap();
        } else if kind == "table" && name != "deliveries" {
            let keep = columns(&release_9, &name);
            for column in columns(conn, &name) {
                if !keep.contains(&column) {
                    conn.execute_batch(&format!(
                        "ALTER TABLE \"{name}\" DROP COLUMN \"{column}\";"
                    ))
                    .unwrap();
                }
            }
        }
    }
    conn.execute_batch(
        "CREATE TABLE deliveries_9 (
             issue INTEGER NOT NULL REFERENCES issues (number),
             subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
             state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
             failure TEXT CHECK (failure IN ('temporary', 'permanent')),
             attempts INTEGER NOT NULL DEFAULT 0,
             next_attempt_ms INTEGER NOT NULL DEFAULT 0,
             last_reply TEXT,
             sent_at TEXT,
             bounce_held INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (issue, subscriber_id)
         ) WITHOUT ROWID;
         INSERT INTO deliveries_9 (issue, subscriber_id, state, failure, attempts,
                                   next_attempt_ms, last_reply, sent_at, bounce_held)
         SELECT issue, subscriber_id,
                CASE state WHEN 0 THEN 'pending' WHEN 1 THEN 'sent' WHEN 2 THEN 'sending'
                           WHEN 3 THEN 'failed' ELSE 'skipped' END,
                failure, attempts, next_attempt_ms,
                coalesce(last_reply, CASE WHEN state = 1
                                          THEN '250 2.0.0 Ok: queued as ' || hex(randomblob(5)) END),
                strftime('%Y-%m-%dT%H:%M:%SZ', sent_at, 'unixepoch'), bounce_held
         FROM deliveries;
         DROP TABLE deliveries;
         ALTER TABLE deliveries_9 RENAME TO deliveries;
         CREATE INDEX deliveries_by_subscriber ON deliveries (subscriber_id);
         PRAGMA user_version = 9;
         COMMIT;
         PRAGMA foreign_keys = ON;",
    )
    .unwrap();
}

#[test]
fn upgrading_a_database_with_sent_issues_keeps_every_number() {
    let server = TestSmtp::start_with(Behaviour::default().unknown("refused@example.net"));
    let site = two_weeks_with_everything(&server);
    let printed = |site: &TempSite| {
        [
            stdout(site, &["issues"]),
            stdout(site, &["issues", "show", "1"]),
            stdout(site, &["issues", "show", "2"]),
        ]
    };
    let before = printed(&site);
    let sent_at: i64 = count(
        &site,
        "SELECT sent_at FROM deliveries WHERE issue = 1 AND state = 1 LIMIT 1",
    );
    back_to_release_9(&site.db());
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM deliveries WHERE last_reply LIKE '250 %'"
        ),
        count(
            &site,
            "SELECT count(*) FROM deliveries WHERE state = 'sent'"
        )
    );

    // The first command of the new binary upgrades the file.
    assert_eq!(printed(&site), before);
    assert_eq!(
        count(&site, "PRAGMA user_version"),
        verdicts::store::schema_version()
    );
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM deliveries WHERE state = 1 AND last_reply IS NOT NULL"
        ),
        0,
        "plain 250 replies are not kept"
    );
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM deliveries WHERE sent_at IS NOT NULL AND typeof(sent_at) <> 'integer'"
        ),
        0
    );
    assert_eq!(
        count(
            &site,
            "SELECT sent_at FROM deliveries WHERE issue = 1 AND state = 1 LIMIT 1"
        ),
        sent_at
    );
    assert!(
        before[1].contains("refused@example.net  permanent"),
        "{}",
        before[1]
    );
}

/// Overwrites page `number` (1-based) of the file with garbage.
fn damage_page(path: &std::path::Path, number: i64) {
    let mut bytes = std::fs::read(path).unwrap();
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let at = page * (usize::try_from(number).unwrap() - 1);
    bytes[at..at + page].fill(0xA5);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damage_in_an_old_issue_is_found_by_the_scheduled_check_and_this_weeks_send_goes_out() {
    const READERS: usize = 3000;
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.configure(
        &TestConfig::default()
            .smtp_port(server.port())
            .schedule("*/2 * * * * *", "UTC"),
    );
    seed_subscribers(&site, READERS);
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .timeout(Duration::from_secs(300))
        .assert()
        .success();
    let path = site.db_path();
    {
        let conn = site.db();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    // A leaf in the middle of the old issue's rows, in tree order.
    let page: i64 = site
        .db()
        .query_row(
            "SELECT pageno FROM dbstat WHERE name = 'deliveries' AND pagetype = 'leaf'
             ORDER BY path LIMIT 1 OFFSET (SELECT count(*) / 2 FROM dbstat
                                           WHERE name = 'deliveries' AND pagetype = 'leaf')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    damage_page(&path, page);

    // This week's comparison, published an hour ago, goes out on the next slot.
    let published = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    site.add_comparison(
        "fresh.md",
        &fixture("valid.md").replace("2026-11-17T12:00:00+00:00", &published),
    );
    let mut daemon = Process::start(&site, &["run"]);
    assert!(
        server.wait_for(2 * READERS, Duration::from_secs(300)) >= 2 * READERS,
        "this week's issue reached every reader"
    );
    let log = daemon.wait_for_log("scheduled integrity check", Duration::from_secs(120));
    assert!(
        log.contains(&format!(
            "scheduled integrity check: the state database {} is damaged",
            path.display()
        )),
        "{log}"
    );
    assert!(log.contains("restore the latest backup"), "{log}");
    daemon.sigterm();
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        count(
            &site,
            "SELECT sent FROM issue_totals WHERE issue = (SELECT max(number) FROM issues)"
        ),
        READERS as i64
    );
    // `check --db` finds the same damage on demand.
    site.cmd()
        .args(["check", "--db"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("is damaged"));
}

/// A clock past every window, whatever day the tests run on.
const FAR: &str = "2099-01-01T00:00:00Z";

#[test]
fn events_and_readers_who_left_go_after_their_windows_and_an_old_file_is_vacuumed_once() {
    let server = TestSmtp::start_with(Behaviour::default().unknown("refused@example.net"));
    let site = two_weeks_with_everything(&server);
    site.edit_config(|t| t + "retention:\n  events: 30d\n  unsubscribed: 60d\n");
    let list_before = stdout(&site, &["issues"]);
    let totals_before = totals_part(&stdout(&site, &["issues", "show", "1"]));
    let events = count(&site, "SELECT count(*) FROM events");
    let left: Vec<String> = {
        let conn = site.db();
        let mut stmt = conn
            .prepare("SELECT email FROM subscribers WHERE status IN ('unsubscribed', 'bounced')")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let stayed = count(
        &site,
        "SELECT count(*) FROM subscribers WHERE status = 'active'",
    );
    assert!(
        events >= 3,
        "the fixture records a bounce, a complaint and an unsubscribe"
    );
    assert!(left.len() >= 3, "{left:?}");

    // Today everything is inside both windows: nothing goes.
    let out = stdout(&site, &["compact"]);
    assert!(
        out.contains("Deleted 0 events older than retention.events."),
        "{out}"
    );
    assert!(
        out.contains("Erased 0 readers who left before retention.unsubscribed."),
        "{out}"
    );

    // A file made before incremental vacuum existed.
    site.db()
        .execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
        .unwrap();
    assert_eq!(count(&site, "PRAGMA auto_vacuum"), 0);

    // Past the windows, a dry run says what would go and changes nothing.
    let out = String::from_utf8(
        site.cmd()
            .args(["compact", "--dry-run"])
            .env("VERDICTS_NOW", FAR)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(
        out.contains(&format!(
            "Would delete {events} events older than retention.events."
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Would erase {} readers who left before retention.unsubscribed.",
            left.len()
        )),
        "{out}"
    );
    assert!(out.contains("Dry run: nothing changed."), "{out}");
    assert_eq!(count(&site, "SELECT count(*) FROM events"), events);
    assert_eq!(
        count(&site, "SELECT count(*) FROM subscribers"),
        stayed + left.len() as i64
    );

    // The real run, with --vacuum: events and leavers go, every total stays, and the file
    // is rewritten once so that later passes hand freed pages back by themselves.
    let out = String::from_utf8(
        site.cmd()
            .args(["compact", "--vacuum"])
            .env("VERDICTS_NOW", FAR)
            .timeout(Duration::from_secs(120))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(
        out.contains(&format!(
            "Deleted {events} events older than retention.events."
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Erased {} readers who left before retention.unsubscribed.",
            left.len()
        )),
        "{out}"
    );
    assert!(
        out.contains("Rewrote the file with incremental vacuum on"),
        "{out}"
    );
    assert_eq!(count(&site, "PRAGMA auto_vacuum"), 2, "incremental");
    assert_eq!(count(&site, "SELECT count(*) FROM events"), 0);
    assert_eq!(count(&site, "SELECT count(*) FROM subscribers"), stayed);
    assert_eq!(count(&site, "SELECT count(*) FROM deliveries"), 0);
    assert_eq!(stdout(&site, &["issues"]), list_before);
    assert_eq!(
        totals_part(&stdout(&site, &["issues", "show", "1"])),
        totals_before
    );
    for email in &left {
        site.cmd()
            .args(["subscribers", "show", email])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("was erased on"));
        site.cmd()
            .args(["subscribers", "add", email])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("was erased on"));
    }

    // The next pass finds nothing, and reports space handed back rather than kept.
    let out = compact_at(&site, FAR);
    assert!(out.contains("No issue is older"), "{out}");
    assert!(out.contains("Returned "), "{out}");
}
