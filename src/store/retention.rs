//! Retention: an issue's per-recipient rows are kept for `retention.deliveries` and then
//! deleted, its counts living on in `issue_totals` (kept by triggers since migration 10, so
//! deleting a finished row changes no number); events older than `retention.events` go the
//! same way; readers who left are erased after `retention.unsubscribed` when it is set.
//! Everything is deleted in small batches, each its own short write transaction, with a
//! pause between them so a send's ledger writer or a one-click unsubscribe waiting for the
//! lock gets it at once. Freed pages are handed back with `PRAGMA incremental_vacuum`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use crate::store::{self, privacy, IssueNumber};

/// Rows deleted per write transaction: a few milliseconds of work on a slow disk.
pub const BATCH: i64 = 2_000;
/// Pages returned to the file system per write transaction.
const VACUUM_PAGES: i64 = 256;
/// The pause between two batches, longer than SQLite's first busy-handler naps, so a
/// waiting writer takes its turn.
const YIELD: Duration = Duration::from_millis(15);

/// What to keep, resolved against a clock.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Issues whose slot is before this have their delivery rows folded.
    pub deliveries_before: DateTime<Utc>,
    /// Events recorded before this are deleted.
    pub events_before: DateTime<Utc>,
    /// Unsubscribed and bounced readers who left before this are erased.
    pub erase_left_before: Option<DateTime<Utc>>,
}

impl Policy {
    pub fn at(now: DateTime<Utc>, config: &crate::config::retention::RetentionConfig) -> Policy {
        // A window longer than the calendar reaches keeps everything.
        let back = |d: Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        Policy {
            deliveries_before: back(config.deliveries),
            events_before: back(config.events),
            erase_left_before: config.unsubscribed.map(back),
        }
    }
}

/// One issue whose rows were (or would be) folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedIssue {
    pub number: IssueNumber,
    pub rows: u64,
}

/// What a compaction did, or would do for a dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub issues: Vec<FoldedIssue>,
    pub events: u64,
    /// Webhook announcements every receiver has had, deleted.
    pub announcements: u64,
    pub erased: u64,
    /// Bytes handed back to the file system by the incremental vacuum.
    pub bytes_returned: u64,
    /// Bytes of free pages left inside the file (reused by new rows), when the file
    /// predates incremental vacuum.
    pub bytes_free: u64,
    /// The file's size (without its WAL) after the run.
    pub file_bytes: u64,
    /// Whether the file returns freed pages (`auto_vacuum = INCREMENTAL`).
    pub incremental: bool,
    /// The longest single write transaction, and the step it belonged to.
    pub longest_lock: Duration,
    pub longest_lock_in: &'static str,
}

/// Finished issues past the window whose rows are (still) there: a run killed half-way is
/// picked up where it stopped.
fn due_issues(conn: &Connection, before: DateTime<Utc>) -> rusqlite::Result<Vec<IssueNumber>> {
    conn.prepare(
        "SELECT number FROM issues
         WHERE slot < ?1 AND state IN ('complete', 'skipped')
           AND EXISTS (SELECT 1 FROM deliveries WHERE issue = issues.number)
         ORDER BY number",
    )?
    .query_map([store::timestamp(before)], |r| r.get(0))?
    .collect()
}

/// Finished issues past the window, rows or not, never marked compacted.
fn unmarked_issues(conn: &Connection, before: DateTime<Utc>) -> rusqlite::Result<Vec<IssueNumber>> {
    conn.prepare(
        "SELECT i.number FROM issues i JOIN issue_totals t ON t.issue = i.number
         WHERE i.slot < ?1 AND i.state IN ('complete', 'skipped') AND t.compacted_at IS NULL
         ORDER BY i.number",
    )?
    .query_map([store::timestamp(before)], |r| r.get(0))?
    .collect()
}

fn page_bytes(conn: &Connection, pragma: &str) -> rusqlite::Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, pragma, |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok((pages * size) as u64)
}

/// Runs the pass's write transactions one by one: times how long each held the write lock
/// (from `BEGIN IMMEDIATE` succeeding to its commit, not the wait for a turn behind a
/// send or an unsubscribe), names the step that held it longest, and sizes the next
/// delete by how long the last one took, so a slow disk or a busy processor gets smaller
/// batches instead of longer locks. After each commit the WAL is copied back into the
/// file with a passive checkpoint (which never blocks a writer), so the copying is not done
/// at a commit while a writer waits behind it.
struct Batches<'c> {
    conn: &'c Connection,
    longest: Duration,
    longest_in: &'static str,
    size: i64,
}

/// Below this a batch doubles (up to [`BATCH`]); above [`SLOW`] it halves.
const QUICK: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_millis(40);
const SMALLEST: i64 = 100;

impl<'c> Batches<'c> {
    fn new(conn: &'c Connection) -> Self {
        Batches {
            conn,
            longest: Duration::ZERO,
            longest_in: "",
            size: BATCH,
        }
    }

    fn run<T>(
        &mut self,
        step: &'static str,
        f: impl FnOnce(&Connection, i64) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let tx = store::write_transaction(self.conn)?;
        let started = Instant::now();
        let value = f(&tx, self.size)?;
        tx.commit()?;
        let held = started.elapsed();
        if held > self.longest {
            self.longest = held;
            self.longest_in = step;
        }
        if held > SLOW {
            self.size = (self.size / 2).max(SMALLEST);
        } else if held < QUICK {
            self.size = (self.size * 2).min(BATCH);
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        std::thread::sleep(YIELD);
        Ok(value)
    }
}

/// Turns the connection's automatic checkpoint off while compaction runs (each batch
/// checkpoints passively instead) and back on when dropped.
struct ManualCheckpoints<'c> {
    conn: &'c Connection,
    previous: i64,
}

impl<'c> ManualCheckpoints<'c> {
    fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        let previous = conn.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(ManualCheckpoints { conn, previous })
    }
}

impl Drop for ManualCheckpoints<'_> {
    fn drop(&mut self) {
        let _ = self
            .conn
            .pragma_update(None, "wal_autocheckpoint", self.previous);
    }
}

/// Folds and deletes what `policy` says is past its window. With `dry_run`, only counts.
pub fn compact(conn: &Connection, policy: &Policy, dry_run: bool) -> rusqlite::Result<Report> {
    let mut report = Report {
        incremental: conn.pragma_query_value(None, "auto_vacuum", |r| r.get::<_, i64>(0))? == 2,
        ..Report::default()
    };
    let mut batches = Batches::new(conn);
    let _manual = ManualCheckpoints::new(conn)?;

    for number in unmarked_issues(conn, policy.deliveries_before)? {
        let rows: i64 = conn.query_row(
            "SELECT count(*) FROM deliveries WHERE issue = ?",
            [number],
            |r| r.get(0),
        )?;
        report.issues.push(FoldedIssue {
            number,
            rows: rows as u64,
        });
        if dry_run {
            continue;
        }
        // Each relay's share, read without the write lock and kept with the mark, so the
        // `Relays:` line of `issues show` outlives the rows.
        let shares = store::relays::shares_of(conn, number)?;
        // Marked first: from here on `issues show` says the detail is gone and `issues
        // retry` refuses, even while the rows are still being deleted. An `issues retry`
        // that re-queued the issue since it was picked (it is `sending` again) leaves it
        // unmarked, so no share read before the retry is kept.
        batches.run("marking an issue compacted", |tx, _| {
            let marked = tx.execute(
                "UPDATE issue_totals SET compacted_at = ?1
                 WHERE issue = ?2 AND compacted_at IS NULL
                   AND EXISTS (SELECT 1 FROM issues WHERE number = ?2
                               AND state IN ('complete', 'skipped'))",
                params![Utc::now().timestamp(), number],
            )?;
            if marked > 0 {
                store::relays::fold_issue(tx, number, &shares)?;
            }
            Ok(marked)
        })?;
    }
    if !dry_run {
        for number in due_issues(conn, policy.deliveries_before)? {
            if !report.issues.iter().any(|f| f.number == number) {
                // Left behind by a run that was killed: its count was reported then.
                report.issues.push(FoldedIssue { number, rows: 0 });
            }
            loop {
                let deleted = batches.run("deleting delivery rows", |tx, size| {
                    tx.prepare_cached(
                        "DELETE FROM deliveries WHERE issue = ?1 AND subscriber_id IN (
                             SELECT subscriber_id FROM deliveries
                             WHERE issue = ?1 AND state IN (1, 3, 4)
                               AND EXISTS (SELECT 1 FROM issues WHERE number = ?1
                                           AND state IN ('complete', 'skipped'))
                             LIMIT ?2)",
                    )?
                    .execute(params![number, size])
                })?;
                if deleted == 0 {
                    break;
                }
            }
            // The relays' message ids find a delivery row; with the rows gone they find
            // nothing, so they go too.
            loop {
                let deleted = batches.run("deleting relay message ids", |tx, size| {
                    tx.prepare_cached(
                        "DELETE FROM relay_message_ids WHERE relay_id IN (
                             SELECT relay_id FROM relay_message_ids WHERE issue = ?1 LIMIT ?2)",
                    )?
                    .execute(params![number, size])
                })?;
                if deleted == 0 {
                    break;
                }
            }
        }
    }

    let events_before = store::timestamp(policy.events_before);
    if dry_run {
        report.events = conn.query_row(
            "SELECT count(*) FROM events WHERE at < ?",
            [&events_before],
            |r| r.get::<_, i64>(0),
        )? as u64;
    } else {
        // Events have no index by time (it would cost every event its bytes), so the
        // rows to delete are found by a read, which takes no lock, walking up by id from
        // where the last batch stopped; the write transaction only deletes those rows.
        let mut after = 0_i64;
        loop {
            let ids: Vec<i64> = conn
                .prepare_cached(
                    "SELECT id FROM events WHERE id > ?1 AND at < ?2 ORDER BY id LIMIT ?3",
                )?
                .query_map(params![after, events_before, batches.size], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let Some(&last) = ids.last() else {
                break;
            };
            after = last;
            let deleted = batches.run("deleting events", |tx, _| {
                let mut delete =
                    tx.prepare_cached("DELETE FROM events WHERE id = ?1 AND at < ?2")?;
                let mut deleted = 0;
                for id in &ids {
                    deleted += delete.execute(params![id, events_before])?;
                }
                Ok(deleted)
            })?;
            report.events += deleted as u64;
        }
    }

    // Announcements for the operator's webhooks, once every receiver has had them (or
    // none is configured): a week covers the sender's 24 hours of retries.
    if !dry_run {
        let before = Utc::now() - chrono::Duration::days(7);
        let up_to = store::webhooks::newest_id(conn)?;
        loop {
            let deleted = batches.run("deleting webhook announcements", |tx, size| {
                store::webhooks::prune(tx, before, up_to, size as usize)
            })?;
            report.announcements += deleted as u64;
            if deleted == 0 {
                break;
            }
        }
    }

    if let Some(before) = policy.erase_left_before {
        let left = privacy::left_before(conn, before)?;
        report.erased = left.len() as u64;
        if !dry_run {
            for email in left {
                batches.run("erasing a reader who left", |tx, _| {
                    privacy::erase(tx, &email, privacy::Reason::Retention).map_err(|e| match e {
                        privacy::EraseError::Store(e) => e,
                        other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
                    })
                })?;
            }
        }
    }

    if !dry_run && report.incremental {
        loop {
            let free = page_bytes(conn, "freelist_count")?;
            if free == 0 {
                break;
            }
            let before = page_bytes(conn, "page_count")?;
            batches.run("handing pages back", |tx, _| {
                tx.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))
            })?;
            let after = page_bytes(conn, "page_count")?;
            report.bytes_returned += before.saturating_sub(after);
            if after >= before {
                break;
            }
        }
    }
    report.bytes_free = page_bytes(conn, "freelist_count")?;
    report.file_bytes = page_bytes(conn, "page_count")?;
    report.longest_lock = batches.longest;
    report.longest_lock_in = batches.longest_in;
    Ok(report)
}

/// Switches a file made before incremental vacuum to it, with one full `VACUUM` (which
/// rewrites the file and holds the write lock throughout: for a quiet hour).
pub fn enable_incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")
}

const LAST_PASS: &str = "maintenance_last_pass";

/// When the daemon's last maintenance pass ended.
pub fn last_pass(conn: &Connection) -> rusqlite::Result<Option<DateTime<Utc>>> {
    use rusqlite::OptionalExtension;
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM settings WHERE name = ?",
            [LAST_PASS],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.as_deref().and_then(store::parse_timestamp))
}

pub fn record_pass(conn: &Connection, at: DateTime<Utc>) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![LAST_PASS, store::timestamp(at)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::subscribers::{add, set_status, SubscriberSource, SubscriberStatus};
    use crate::store::testing::{email, store};

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn readers_who_left_before_the_window_are_erased_and_the_rest_stay() {
        let (_dir, conn) = store();
        for who in ["left@example.com", "stays@example.com"] {
            add(&conn, &email(who), None, SubscriberSource::Cli).unwrap();
        }
        set_status(
            &conn,
            &email("left@example.com"),
            SubscriberStatus::Unsubscribed,
        )
        .unwrap();
        let now = Utc::now();
        let policy = Policy {
            deliveries_before: utc("2000-01-01T00:00:00Z"),
            events_before: utc("2000-01-01T00:00:00Z"),
            erase_left_before: Some(now + chrono::Duration::seconds(5)),
        };
        let dry = compact(&conn, &policy, true).unwrap();
        assert_eq!(dry.erased, 1);
        assert!(privacy::is_erased(&conn, &email("left@example.com"))
            .unwrap()
            .is_none());
        let done = compact(&conn, &policy, false).unwrap();
        assert_eq!(done.erased, 1);
        assert!(done.incremental, "new files return freed pages");
        let erased = privacy::is_erased(&conn, &email("left@example.com"))
            .unwrap()
            .unwrap();
        assert_eq!(erased.reason, "retention");
        let left: Vec<String> = conn
            .prepare("SELECT email FROM subscribers")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, ["stays@example.com"]);
    }

    #[test]
    fn events_past_the_window_go_in_batches_however_their_ids_and_times_interleave() {
        let (_dir, conn) = store();
        add(
            &conn,
            &email("reader@example.com"),
            None,
            SubscriberSource::Cli,
        )
        .unwrap();
        // Relays report late: an event recorded after newer ones can carry an older time.
        // Two old events for every new one, more old ones than one batch holds.
        let old = 2 * BATCH + 7;
        let mut new = 0;
        for n in 0..old {
            let record = |at: &str| {
                conn.execute(
                    "INSERT INTO events (subscriber_id, kind, channel, source, at)
                     SELECT id, 'unsubscribe', 'cli', 'cli', ?1 FROM subscribers",
                    [at],
                )
                .unwrap()
            };
            record("2024-01-01T00:00:00Z");
            if n % 2 == 1 {
                new += record("2026-06-01T00:00:00Z") as i64;
            }
        }
        let policy = Policy {
            deliveries_before: utc("2000-01-01T00:00:00Z"),
            events_before: utc("2025-01-01T00:00:00Z"),
            erase_left_before: None,
        };
        assert_eq!(compact(&conn, &policy, true).unwrap().events, old as u64);
        let done = compact(&conn, &policy, false).unwrap();
        assert_eq!(done.events, old as u64);
        assert!(!done.longest_lock_in.is_empty());
        let left: Vec<(String, i64)> = conn
            .prepare("SELECT at, count(*) FROM events GROUP BY at")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, [("2026-06-01T00:00:00Z".to_owned(), new)]);
        assert_eq!(compact(&conn, &policy, false).unwrap().events, 0);
    }
}
