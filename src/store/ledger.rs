//! The delivery ledger: one row per issue (keyed by its slot, so a slot can only ever have
//! one issue) and one row per (issue, subscriber) delivery, whose state is written before and
//! after every SMTP transaction so a crash can always be resumed without losing anyone.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::mail::address::SubscriberEmail;
use crate::store::events;
use crate::store::{self, IssueNumber, SubscriberId};

mod marks;
pub use marks::*;

/// A delivery's `state` column holds a small integer (migration 15: SQLite stores 0 and 1 in
/// no bytes, so the rows of a sent issue stay small). The SQL in this module and in
/// `marks` writes the numbers; this is what they mean.
pub const STATE_NAMES: [&str; 5] = ["pending", "sent", "sending", "failed", "skipped"];

/// The name of a stored delivery state, for output (`subscribers show`, tests).
pub fn state_name(code: i64) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| STATE_NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueState {
    /// Created; deliveries are pending or under way.
    Sending,
    /// Stopped because the SMTP server could not be reached; resumed by the next send.
    Paused,
    Complete,
    /// A slot with no new comparison, recorded so it is not retried.
    Skipped,
}

impl IssueState {
    /// Started and not finished: deliveries are pending, or the issue is paused.
    pub fn is_unfinished(self) -> bool {
        matches!(self, IssueState::Sending | IssueState::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IssueState::Sending => "sending",
            IssueState::Paused => "paused",
            IssueState::Complete => "complete",
            IssueState::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<Self> {
        Ok(match s {
            "sending" => IssueState::Sending,
            "paused" => IssueState::Paused,
            "complete" => IssueState::Complete,
            "skipped" => IssueState::Skipped,
            other => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("unknown issue state `{other}`").into(),
                ))
            }
        })
    }
}

/// An issue as recorded.
#[derive(Debug, Clone)]
pub struct Issue {
    pub number: IssueNumber,
    pub slot: DateTime<Utc>,
    pub window_after: DateTime<Utc>,
    pub cutoff: DateTime<Utc>,
    pub subject: String,
    pub slugs: Vec<String>,
    pub state: IssueState,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Per-state delivery counts of one issue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub sending: u64,
    pub sent: u64,
    pub failed: u64,
    /// Of `failed`, those that failed only temporarily (retries used up, or given up at
    /// the deadline).
    pub failed_temporarily: u64,
    pub skipped: u64,
    /// Of `pending`, those never attempted yet (as opposed to waiting for a retry).
    pub untried: u64,
}

impl DeliveryCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.sending + self.sent + self.failed + self.skipped
    }

    /// Deliveries that still need an SMTP transaction.
    pub fn outstanding(&self) -> u64 {
        self.pending + self.sending
    }
}

fn ts(t: DateTime<Utc>) -> String {
    store::timestamp(t)
}

fn parse_ts(s: String) -> rusqlite::Result<DateTime<Utc>> {
    store::parse_timestamp(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("`{s}` is not a timestamp").into(),
        )
    })
}

const ISSUE_COLUMNS: &str =
    "number, slot, window_after, cutoff, subject, state, created_at, completed_at";

fn issue_from_row(conn: &Connection, row: &rusqlite::Row<'_>) -> rusqlite::Result<Issue> {
    let number: IssueNumber = row.get(0)?;
    let mut stmt = conn
        .prepare_cached("SELECT slug FROM issue_comparisons WHERE issue = ? ORDER BY position")?;
    let slugs = stmt
        .query_map([number], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Issue {
        number,
        slot: parse_ts(row.get(1)?)?,
        window_after: parse_ts(row.get(2)?)?,
        cutoff: parse_ts(row.get(3)?)?,
        subject: row.get(4)?,
        slugs,
        state: IssueState::parse(&row.get::<_, String>(5)?)?,
        created_at: parse_ts(row.get(6)?)?,
        completed_at: row.get::<_, Option<String>>(7)?.map(parse_ts).transpose()?,
    })
}

pub fn issue_by_slot(conn: &Connection, slot: DateTime<Utc>) -> rusqlite::Result<Option<Issue>> {
    conn.query_row(
        &format!("SELECT {ISSUE_COLUMNS} FROM issues WHERE slot = ?"),
        [ts(slot)],
        |row| issue_from_row(conn, row),
    )
    .optional()
}

pub fn issue(conn: &Connection, number: IssueNumber) -> rusqlite::Result<Option<Issue>> {
    conn.query_row(
        &format!("SELECT {ISSUE_COLUMNS} FROM issues WHERE number = ?"),
        [number],
        |row| issue_from_row(conn, row),
    )
    .optional()
}

/// Every issue, newest first.
pub fn issues(conn: &Connection) -> rusqlite::Result<Vec<Issue>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ISSUE_COLUMNS} FROM issues ORDER BY slot DESC"
    ))?;
    let rows = stmt.query_map([], |row| issue_from_row(conn, row))?;
    rows.collect()
}

/// Issues that were started but not finished (sending or paused), oldest first.
pub fn unfinished_issues(conn: &Connection) -> rusqlite::Result<Vec<Issue>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ISSUE_COLUMNS} FROM issues WHERE state IN ('sending', 'paused') ORDER BY slot"
    ))?;
    let rows = stmt.query_map([], |row| issue_from_row(conn, row))?;
    rows.collect()
}

/// The cutoff of the latest issue before `slot`: where the next window starts.
pub fn previous_cutoff(
    conn: &Connection,
    slot: DateTime<Utc>,
) -> rusqlite::Result<Option<DateTime<Utc>>> {
    conn.query_row(
        "SELECT max(cutoff) FROM issues WHERE slot < ?",
        [ts(slot)],
        |r| r.get::<_, Option<String>>(0),
    )?
    .map(parse_ts)
    .transpose()
}

/// Every comparison slug already carried by an issue.
pub fn sent_slugs(conn: &Connection) -> rusqlite::Result<HashSet<String>> {
    let mut stmt = conn.prepare("SELECT slug FROM issue_comparisons")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// A rendered digest as the ledger keeps it: the HTML and text split at each reader's
/// unsubscribe link (see `digest::render::RenderedDigest`, which converts to and from it).
#[derive(Debug, Clone)]
pub struct StoredDigest {
    pub subject: String,
    pub preheader: String,
    pub comparison_count: usize,
    pub html_parts: Vec<String>,
    pub text_parts: Vec<String>,
}

/// The digest stored with an issue, so a resumed send mails exactly what was started.
pub fn stored_digest(conn: &Connection, number: IssueNumber) -> rusqlite::Result<StoredDigest> {
    conn.query_row(
        "SELECT subject, preheader, comparison_count, html_parts, text_parts FROM issues WHERE number = ?",
        [number],
        |r| {
            let json = |i: usize| -> rusqlite::Result<Vec<String>> {
                let s: String = r.get(i)?;
                serde_json::from_str(&s).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
                })
            };
            Ok(StoredDigest {
                subject: r.get(0)?,
                preheader: r.get(1)?,
                comparison_count: r.get::<_, i64>(2)? as usize,
                html_parts: json(3)?,
                text_parts: json(4)?,
            })
        },
    )
}

/// The number the next issue will get.
pub fn next_issue_number(conn: &Connection) -> rusqlite::Result<IssueNumber> {
    conn.query_row("SELECT coalesce(max(number), 0) + 1 FROM issues", [], |r| {
        r.get(0)
    })
}

/// What `create_issue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new issue with this many recipients.
    New {
        number: IssueNumber,
        recipients: u64,
    },
    /// Another process created the slot's issue first.
    Existing { number: IssueNumber },
}

/// A new issue: its slot, window and rendered digest.
pub struct NewIssue<'a> {
    pub slot: DateTime<Utc>,
    pub window_after: DateTime<Utc>,
    pub cutoff: DateTime<Utc>,
    pub slugs: Vec<String>,
    pub digest: &'a StoredDigest,
    /// Record the slot as skipped (no deliveries) instead of sending.
    pub skipped: bool,
}

/// Creates the slot's issue and freezes its recipients (the active subscribers now), in one
/// transaction. If the slot already has an issue, returns it unchanged.
pub fn create_issue(conn: &Connection, new: &NewIssue<'_>) -> rusqlite::Result<Created> {
    store::in_write_transaction(conn, |tx| {
        if let Some(existing) = issue_by_slot(tx, new.slot)? {
            return Ok(Created::Existing {
                number: existing.number,
            });
        }
        let now = ts(Utc::now());
        let state = if new.skipped {
            IssueState::Skipped
        } else {
            IssueState::Sending
        };
        tx.execute(
            "INSERT INTO issues (slot, window_after, cutoff, subject, preheader, comparison_count,
                                 html_parts, text_parts, state, created_at, completed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                ts(new.slot),
                ts(new.window_after),
                ts(new.cutoff),
                new.digest.subject,
                new.digest.preheader,
                new.digest.comparison_count as i64,
                serde_json::to_string(&new.digest.html_parts).expect("strings serialise"),
                serde_json::to_string(&new.digest.text_parts).expect("strings serialise"),
                state.as_str(),
                now,
                new.skipped.then(|| now.clone()),
            ],
        )?;
        let number = IssueNumber(tx.last_insert_rowid());
        for (i, slug) in new.slugs.iter().enumerate() {
            tx.execute(
                "INSERT INTO issue_comparisons (issue, position, slug) VALUES (?, ?, ?)",
                params![number, i as i64, slug],
            )?;
        }
        let recipients = if new.skipped {
            0
        } else {
            tx.execute(
                "INSERT INTO deliveries (issue, subscriber_id, state)
                 SELECT ?, id, 0 FROM subscribers WHERE status = 'active'",
                [number],
            )? as u64
        };
        Ok(Created::New { number, recipients })
    })
}

/// Marks the issue complete unless a delivery is still pending or sending (for instance one
/// re-queued by `issues retry` a moment ago). Returns whether it did.
pub fn complete_issue(conn: &Connection, number: IssueNumber) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE issues SET state = 'complete', completed_at = ?1
         WHERE number = ?2 AND NOT EXISTS (
             SELECT 1 FROM deliveries WHERE issue = ?2 AND state IN (0, 2))",
        params![ts(Utc::now()), number],
    )?;
    Ok(changed == 1)
}

pub fn set_issue_state(
    conn: &Connection,
    number: IssueNumber,
    state: IssueState,
) -> rusqlite::Result<()> {
    let completed = (state == IssueState::Complete).then(|| ts(Utc::now()));
    conn.execute(
        "UPDATE issues SET state = ?, completed_at = coalesce(?, completed_at) WHERE number = ?",
        params![state.as_str(), completed, number],
    )?;
    Ok(())
}

/// Pauses the issue and keeps why (`issues.note`): the `issue.paused` announcement, written
/// by the schema's trigger in this same statement, carries the reason.
pub fn pause_issue(conn: &Connection, number: IssueNumber, reason: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE issues SET state = 'paused', note = ? WHERE number = ?",
        params![reason, number],
    )?;
    Ok(())
}

pub fn delivery_counts(conn: &Connection, number: IssueNumber) -> rusqlite::Result<DeliveryCounts> {
    // Kept by triggers on `deliveries` (migration 10) in the transaction of each change,
    // so this is one row, however many readers the issue had or whether its rows remain.
    conn.prepare_cached(
        "SELECT pending, untried, sending, sent, failed_permanent, failed_temporary, skipped
         FROM issue_totals WHERE issue = ?",
    )?
    .query_row([number], |r| {
        let n = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
        Ok(DeliveryCounts {
            pending: n(0)?,
            untried: n(1)?,
            sending: n(2)?,
            sent: n(3)?,
            failed: n(4)? + n(5)?,
            failed_temporarily: n(5)?,
            skipped: n(6)?,
        })
    })
    .optional()
    .map(Option::unwrap_or_default)
}

/// When the issue's per-recipient rows were folded into its totals and deleted (see
/// `store::retention`), if they were.
pub fn compacted_at(
    conn: &Connection,
    number: IssueNumber,
) -> rusqlite::Result<Option<DateTime<Utc>>> {
    conn.prepare_cached("SELECT compacted_at FROM issue_totals WHERE issue = ?")?
        .query_row([number], |r| r.get::<_, Option<i64>>(0))
        .optional()
        .map(|t| {
            t.flatten()
                .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        })
}

/// Deliveries left `sending` by a process that died mid-transaction go back to pending:
/// they may have been delivered, and will be re-sent with the same Message-ID.
pub fn requeue_interrupted(conn: &Connection, number: IssueNumber) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE deliveries SET state = 0, next_attempt_ms = 0
         WHERE issue = ? AND state = 2",
        [number],
    )
}

/// A delivery that failed, for `issues show`.
#[derive(Debug, Clone)]
pub struct FailedDelivery {
    pub email: String,
    pub permanent: bool,
    pub attempts: u32,
    pub last_reply: Option<String>,
    pub subscriber_status: String,
}

pub fn failed_deliveries(
    conn: &Connection,
    number: IssueNumber,
) -> rusqlite::Result<Vec<FailedDelivery>> {
    let mut stmt = conn.prepare(
        "SELECT s.email, d.failure, d.attempts, d.last_reply, s.status
         FROM deliveries d INDEXED BY deliveries_failed
         JOIN subscribers s ON s.id = d.subscriber_id
         WHERE d.issue = ? AND d.state = 3 ORDER BY s.email_norm",
    )?;
    let rows = stmt.query_map([number], |r| {
        Ok(FailedDelivery {
            email: r.get(0)?,
            permanent: r.get::<_, Option<String>>(1)?.as_deref() == Some("permanent"),
            attempts: r.get(2)?,
            last_reply: r.get(3)?,
            subscriber_status: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Puts failed deliveries whose subscribers are still active back in the queue with fresh
/// attempts. Returns how many were re-queued.
pub fn requeue_failed(conn: &Connection, number: IssueNumber) -> rusqlite::Result<usize> {
    store::in_write_transaction(conn, |tx| {
        let n = tx.execute(
            "UPDATE deliveries INDEXED BY deliveries_failed
             SET state = 0, failure = NULL, attempts = 0, next_attempt_ms = 0, bounce_held = 0
             WHERE issue = ? AND state = 3
               AND subscriber_id IN (SELECT id FROM subscribers WHERE status = 'active')",
            [number],
        )?;
        if n > 0 {
            tx.execute(
                "UPDATE issues SET state = 'sending', completed_at = NULL WHERE number = ?",
                [number],
            )?;
        }
        Ok(n)
    })
}

/// A delivery ready to be attempted.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub subscriber_id: SubscriberId,
    /// The stored address, parsed once here; an address that no longer parses (edited by
    /// hand) is kept as the reason, and its delivery fails permanently.
    pub email: Result<SubscriberEmail, String>,
    pub name: Option<String>,
    /// False when the subscriber left (or bounced) after the issue was created.
    pub active: bool,
    /// Attempts already spent on this delivery.
    pub attempts: u32,
}

/// Up to `limit` pending deliveries due by `now_ms`, after subscriber `after_id`, in id order.
pub fn due_deliveries(
    conn: &Connection,
    number: IssueNumber,
    after_id: SubscriberId,
    now_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DueDelivery>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.subscriber_id, s.email, s.name, s.status = 'active', d.attempts
         FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
         WHERE d.issue = ? AND d.state = 0 AND d.subscriber_id > ? AND d.next_attempt_ms <= ?
         ORDER BY d.subscriber_id LIMIT ?",
    )?;
    let rows = stmt.query_map(params![number, after_id, now_ms, limit as i64], |r| {
        Ok(DueDelivery {
            subscriber_id: r.get(0)?,
            email: {
                let raw: String = r.get(1)?;
                SubscriberEmail::parse(&raw)
                    .map_err(|e| format!("`{raw}` is not a valid address: {e}"))
            },
            name: r.get(2)?,
            active: r.get(3)?,
            attempts: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// The earliest time a pending delivery of the issue becomes due, if any is pending.
pub fn next_due_ms(conn: &Connection, number: IssueNumber) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT min(next_attempt_ms) FROM deliveries WHERE issue = ? AND state = 0",
        [number],
        |r| r.get(0),
    )
}
