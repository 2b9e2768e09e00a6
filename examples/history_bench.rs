//! The engine of `scripts/bench-history`: builds a list of ROWS readers with the store's
//! own import, then adds weekly sent issues through the store's own ledger calls (the
//! issue created with its recipients frozen, each delivery marked sending and recorded as
//! sent in group commits, as the ledger writer does; one in 200 refused with a 550), runs
//! the retention pass after each issue as the daemon would with the default retention, and
//! at each requested issue count prints one row: file size, what `issues`, `issues show N`,
//! a send's start-up, `backup` and `subscribers add` cost on it, and bytes per delivery
//! row. Beside every retention pass, a one-click unsubscribe loop measures its latency;
//! afterwards it puts its readers back and removes its own events.
//!
//! Usage: history_bench DIR ROWS ISSUES...   (ISSUES ascending, e.g. 0 13 52)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::Connection;
use verdicts::config::retention::RetentionConfig;
use verdicts::store::events::{self, Channel};
use verdicts::store::ledger::{self, NewIssue, Outcome, StoredDigest};
use verdicts::store::subscribers::{self, SubscriberSource, SubscriberStatus};
use verdicts::store::{self, health, retention, IssueNumber, SubscriberId};

const GROUP: usize = 1000;

fn slot(k: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap() + chrono::Duration::weeks(k)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn file_mb(conn: &Connection) -> f64 {
    let pages: i64 = conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    let size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    (pages * size) as f64 / 1e6
}

fn digest() -> StoredDigest {
    StoredDigest {
        subject: "A vs B + 4 more".into(),
        preheader: "This week's verdicts".into(),
        comparison_count: 5,
        html_parts: vec!["<html>".repeat(2000), "</html>".into()],
        text_parts: vec!["text ".repeat(1500), "end".into()],
    }
}

/// One sent issue, written the way a send writes it.
fn send_issue(conn: &Connection, k: i64) -> IssueNumber {
    let digest = digest();
    let created = ledger::create_issue(
        conn,
        &NewIssue {
            slot: slot(k),
            window_after: slot(k - 1),
            cutoff: slot(k),
            slugs: vec![format!("comparison-{k}")],
            digest: &digest,
            skipped: false,
        },
    )
    .unwrap();
    let ledger::Created::New { number, .. } = created else {
        panic!("slot {k} already had an issue");
    };
    let mut after = SubscriberId(0);
    loop {
        let due = ledger::due_deliveries(conn, number, after, i64::MAX, GROUP).unwrap();
        let Some(last) = due.last() else { break };
        after = last.subscriber_id;
        ledger::begin_group(conn).unwrap();
        for d in &due {
            ledger::mark_sending(conn, number, d.subscriber_id, None).unwrap();
            let outcome = if d.subscriber_id.get() % 200 == 7 {
                Outcome::Permanent {
                    reply:
                        "550 5.1.1 <reader@example.org>: Recipient address rejected: User unknown"
                            .into(),
                    bounce: false,
                }
            } else {
                Outcome::Sent {
                    reply: format!("250 2.0.0 Ok: queued as 4F{:08X}", d.subscriber_id.get()),
                }
            };
            ledger::record_outcome(conn, number, d.subscriber_id, &outcome, 4).unwrap();
        }
        ledger::commit_group(conn).unwrap();
    }
    ledger::complete_issue(conn, number).unwrap();
    number
}

/// Bytes per delivery row (from `dbstat`: the table now, the table and its index by
/// subscriber in the layout release 9 wrote, with text states and timestamps and every 250
/// reply kept), for the rows of `issue`.
fn bytes_per_row(conn: &Connection, issue: IssueNumber) -> (f64, f64) {
    let measure = |table: &str| -> f64 {
        let bytes: i64 = conn
            .query_row(
                "SELECT coalesce(sum(pgsize - unused), 0) FROM dbstat WHERE name = ?",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        let rows: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        bytes as f64 / rows.max(1) as f64
    };
    // Since migration 15 the table has no second index.
    let now = measure("deliveries");
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE d9 (
             issue INTEGER NOT NULL, subscriber_id INTEGER NOT NULL, state TEXT NOT NULL,
             failure TEXT, attempts INTEGER NOT NULL DEFAULT 0,
             next_attempt_ms INTEGER NOT NULL DEFAULT 0, last_reply TEXT, sent_at TEXT,
             bounce_held INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (issue, subscriber_id)) WITHOUT ROWID;
         CREATE INDEX temp.d9_by_subscriber ON d9 (subscriber_id);
         INSERT INTO d9 SELECT issue, subscriber_id,
             CASE state WHEN 0 THEN 'pending' WHEN 1 THEN 'sent' WHEN 2 THEN 'sending'
                        WHEN 3 THEN 'failed' ELSE 'skipped' END,
             failure, attempts, next_attempt_ms,
             coalesce(last_reply, '250 2.0.0 Ok: queued as 4F' || printf('%08X', subscriber_id)),
             strftime('%Y-%m-%dT%H:%M:%SZ', sent_at, 'unixepoch'), bounce_held
         FROM deliveries WHERE issue = {issue};"
    ))
    .unwrap();
    let bytes: i64 = conn
        .query_row(
            "SELECT coalesce(sum(pgsize - unused), 0) FROM dbstat('temp')
             WHERE name IN ('d9', 'd9_by_subscriber')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM d9", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch("DROP TABLE temp.d9").unwrap();
    (now, bytes as f64 / rows.max(1) as f64)
}

/// The retention pass as the daemon runs it on the day of slot `k`, with a one-click
/// unsubscribe loop (its own connection, the web handler's transaction) beside it.
/// Returns the pass's longest write lock and every unsubscribe's latency.
fn retention_beside_unsubscribes(
    conn: &Connection,
    path: &Path,
    k: i64,
    rows: i64,
    next_reader: &mut i64,
    probe_events: &mut usize,
) -> ((Duration, &'static str), Vec<Duration>) {
    let done = Arc::new(AtomicBool::new(false));
    let start_at = *next_reader;
    let unsubscriber = {
        let done = done.clone();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let conn = store::open(&path).unwrap();
            let mut latencies = Vec::new();
            let mut touched = Vec::new();
            let mut id = start_at;
            while !done.load(Ordering::Relaxed) {
                id = id % rows + 1;
                touched.push(id);
                let t = Instant::now();
                store::in_write_transaction(&conn, |tx| -> rusqlite::Result<()> {
                    subscribers::set_status_by_id(
                        tx,
                        SubscriberId(id),
                        SubscriberStatus::Unsubscribed,
                    )
                    .map_err(|e| e.0)?;
                    events::record_web_unsubscribe(tx, SubscriberId(id), Channel::OneClick)
                })
                .unwrap();
                latencies.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            // Back on the list, so the next issue goes to everyone again, and the probe's
            // own traces go: its unsubscribes (tens of thousands a pass, far more than a
            // list sees) measure latency; they are not the history whose size is measured.
            // The issues' totals keep counting them (deleted events stay counted).
            touched.sort_unstable();
            touched.dedup();
            let removed = store::in_write_transaction(&conn, |tx| -> rusqlite::Result<usize> {
                let mut removed = 0;
                for &id in &touched {
                    subscribers::set_status_by_id(tx, SubscriberId(id), SubscriberStatus::Active)
                        .map_err(|e| e.0)?;
                    removed += tx.execute(
                        "DELETE FROM events WHERE subscriber_id = ? AND kind = 'unsubscribe'
                           AND source = 'web'",
                        [id],
                    )?;
                    tx.execute("DELETE FROM webhook_outbox WHERE subscriber_id = ?", [id])?;
                }
                Ok(removed)
            })
            .unwrap();
            (latencies, id, removed)
        })
    };
    let policy = retention::Policy::at(slot(k), &RetentionConfig::default());
    let report = retention::compact(conn, &policy, false).unwrap();
    done.store(true, Ordering::Relaxed);
    let (latencies, last, removed) = unsubscriber.join().unwrap();
    *next_reader = last;
    *probe_events += removed;
    ((report.longest_lock, report.longest_lock_in), latencies)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: history_bench DIR ROWS ISSUES...");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let rows: i64 = args[2].parse().expect("ROWS is a number");
    let mut checkpoints: Vec<i64> = args[3..]
        .iter()
        .map(|a| a.parse().expect("ISSUES are numbers"))
        .collect();
    checkpoints.sort_unstable();
    let path = dir.join("verdicts.db");
    let (mut conn, _) = store::create(&path).unwrap();

    let mut csv = String::from("email,name,status\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "reader{}@list{}.example.org,Reader {i},active\n",
            (i * 7919) % rows,
            i % 500
        ));
    }
    let (_, import) = timed(|| {
        store::csv::import_csv(
            &mut conn,
            csv.as_bytes(),
            store::csv::ImportOptions::default(),
            |_, _| {},
        )
        .unwrap()
    });
    drop(csv);
    eprintln!("imported {rows} readers in {}", secs(import));

    println!(
        "| sent issues in the ledger | database | `issues` | `issues show N` | send start-up (checks + creating the issue) | daemon start checks | `backup` | `subscribers add` | bytes per delivery row (release 9 layout) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut sent = 0;
    let mut last_issue = None;
    let mut unsubscribe_latencies = Vec::new();
    let mut longest_lock = (Duration::ZERO, "");
    let mut next_reader = 1;
    let mut probe_events = 0;
    let mut issue_mb = Vec::new();
    for &target in &checkpoints {
        while sent < target {
            sent += 1;
            let before = file_mb(&conn);
            let (number, took) = timed(|| send_issue(&conn, sent));
            let after = file_mb(&conn);
            issue_mb.push(after - before);
            last_issue = Some(number);
            let (lock, latencies) = retention_beside_unsubscribes(
                &conn,
                &path,
                sent,
                rows,
                &mut next_reader,
                &mut probe_events,
            );
            if lock.0 > longest_lock.0 {
                longest_lock = lock;
            }
            unsubscribe_latencies.extend(latencies);
            eprintln!(
                "issue {sent}: recorded in {}, file {:.1} MB",
                secs(took),
                file_mb(&conn)
            );
        }
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let size = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
        let (_, list) = timed(|| {
            for issue in ledger::issues(&conn).unwrap() {
                ledger::delivery_counts(&conn, issue.number).unwrap();
                events::issue_events(&conn, issue.number).unwrap();
            }
        });
        let show = match last_issue {
            Some(n) => {
                timed(|| {
                    ledger::delivery_counts(&conn, n).unwrap();
                    events::issue_events(&conn, n).unwrap();
                    ledger::failed_deliveries(&conn, n).unwrap();
                })
                .1
            }
            None => Duration::ZERO,
        };
        let (_, startup) = timed(|| {
            health::check_for_send(&conn, &path, &[]).unwrap();
            let tx = store::write_transaction(&conn).unwrap();
            let digest = digest();
            ledger::create_issue(
                &tx,
                &NewIssue {
                    slot: slot(sent + 1),
                    window_after: slot(sent),
                    cutoff: slot(sent + 1),
                    slugs: vec!["next-week".into()],
                    digest: &digest,
                    skipped: false,
                },
            )
            .unwrap();
            tx.rollback().unwrap();
        });
        let (_, daemon) = timed(|| {
            let unfinished: Vec<_> = ledger::unfinished_issues(&conn)
                .unwrap()
                .iter()
                .map(|i| i.number)
                .collect();
            health::check_for_send(&conn, &path, &unfinished).unwrap();
        });
        let copy = dir.join("backup.db");
        let (_, backup) = timed(|| store::backup(&conn, &copy).unwrap());
        let _ = std::fs::remove_file(&copy);
        let (_, add) = timed(|| {
            health::quick_check_tables(&conn, &path, health::LIST_TABLES).unwrap();
            let email =
                verdicts::mail::address::SubscriberEmail::parse(&format!("late{sent}@example.org"))
                    .unwrap();
            subscribers::add(&conn, &email, None, SubscriberSource::Cli).unwrap();
        });
        let per_row = match last_issue {
            Some(n) if sent > 0 => {
                let (now, old) = bytes_per_row(&conn, n);
                format!("{now:.1} ({old:.1})")
            }
            _ => "—".into(),
        };
        println!(
            "| {sent} | {size:.0} MB | {} | {} | {} | {} | {} | {} | {per_row} |",
            secs(list),
            secs(show),
            secs(startup),
            secs(daemon),
            secs(backup),
            secs(add)
        );
    }
    if !issue_mb.is_empty() {
        let first: Vec<_> = issue_mb.iter().take(13).collect();
        println!(
            "\nA sent issue adds {:.1} MB while its rows are kept (mean of the first {} issues).",
            first.iter().copied().sum::<f64>() / first.len() as f64,
            first.len()
        );
    }
    unsubscribe_latencies.sort_unstable();
    if !unsubscribe_latencies.is_empty() {
        let p =
            |q: f64| unsubscribe_latencies[((unsubscribe_latencies.len() - 1) as f64 * q) as usize];
        println!(
            "One-click unsubscribes beside the retention passes: {} measured, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; the passes' longest write lock {:.1} ms ({}).",
            unsubscribe_latencies.len(),
            p(0.5).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3,
            p(1.0).as_secs_f64() * 1e3,
            longest_lock.0.as_secs_f64() * 1e3,
            longest_lock.1
        );
        println!(
            "After each pass the probe put its readers back and removed its {probe_events} unsubscribe events (and their webhook announcements): they measure latency, not the list's history; the issues' totals still count them."
        );
    }
}
