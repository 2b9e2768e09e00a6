//! Inbound reports that named no delivery by signed evidence: kept to be shown and
//! counted, never applied. What they claim is whatever the sender wrote, so nothing here
//! refers to a subscriber or an issue by a foreign key, and the table keeps only the newest
//! [`KEEP`] rows (a flood of forged reports cannot grow the file without end).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::{IssueNumber, SubscriberId};
use crate::store as db;

/// Rows kept; older ones are dropped as new ones arrive.
pub const KEEP: i64 = 100_000;

/// Longest text kept from a report (reason, addresses, diagnostic), in characters.
const MAX_TEXT: usize = 500;

/// One report to keep.
#[derive(Debug, Clone, Default)]
pub struct NewReport<'a> {
    /// `hard`, `soft`, `complaint` or `unsubscribe`.
    pub kind: &'a str,
    /// Why it was not applied.
    pub reason: &'a str,
    /// The delivery an unsigned Message-ID names, and how far it is from proof
    /// (`legacy` or `forged`).
    pub claimed: Option<(IssueNumber, SubscriberId, &'a str)>,
    /// The addresses the report names.
    pub addresses: &'a [String],
    /// The report's own Message-ID.
    pub message_id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub diagnostic: Option<&'a str>,
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

/// Keeps a report, in the caller's transaction.
pub fn record(conn: &Connection, r: &NewReport<'_>) -> rusqlite::Result<()> {
    let addresses = (!r.addresses.is_empty()).then(|| bounded(&r.addresses.join(", ")));
    let (issue, subscriber, trust) = match r.claimed {
        Some((i, s, t)) => (Some(i), Some(s), Some(t)),
        None => (None, None, None),
    };
    conn.prepare_cached(
        "INSERT INTO inbound_unattributed
             (received_at, kind, reason, claimed_issue, claimed_subscriber, message_id_trust,
              claimed_addresses, counted_issue, report_message_id, status, diagnostic)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                 coalesce((SELECT number FROM issues WHERE number = ?4),
                          (SELECT max(number) FROM issues)),
                 ?8, ?9, ?10)",
    )?
    .execute(params![
        db::timestamp(Utc::now()),
        r.kind,
        bounded(r.reason),
        issue,
        subscriber,
        trust,
        addresses,
        r.message_id.map(bounded),
        r.status.map(bounded),
        r.diagnostic.map(bounded),
    ])?;
    let id = conn.last_insert_rowid();
    conn.prepare_cached("DELETE FROM inbound_unattributed WHERE id <= ?1")?
        .execute([id - KEEP])?;
    Ok(())
}

/// One kept report, as `verdicts inbound --unattributed` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub received_at: DateTime<Utc>,
    pub kind: String,
    pub reason: String,
    pub claimed_issue: Option<IssueNumber>,
    pub claimed_subscriber: Option<SubscriberId>,
    /// The address of the claimed subscriber, if there is one with that id.
    pub claimed_email: Option<String>,
    pub message_id_trust: Option<String>,
    pub addresses: Option<String>,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
}

/// The newest `limit` reports, newest first.
pub fn newest(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Report>> {
    let mut stmt = conn.prepare_cached(
        "SELECT u.received_at, u.kind, u.reason, u.claimed_issue, u.claimed_subscriber,
                s.email, u.message_id_trust, u.claimed_addresses, u.status, u.diagnostic
         FROM inbound_unattributed u LEFT JOIN subscribers s ON s.id = u.claimed_subscriber
         ORDER BY u.id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        let at: String = r.get(0)?;
        Ok(Report {
            received_at: db::parse_timestamp(&at).unwrap_or_default(),
            kind: r.get(1)?,
            reason: r.get(2)?,
            claimed_issue: r.get(3)?,
            claimed_subscriber: r.get(4)?,
            claimed_email: r.get(5)?,
            message_id_trust: r.get(6)?,
            addresses: r.get(7)?,
            status: r.get(8)?,
            diagnostic: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// Reports kept in all.
pub fn count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT count(*) FROM inbound_unattributed")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// Reports counted under one issue (see the migration for which issue that is).
pub fn count_for_issue(conn: &Connection, issue: IssueNumber) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT count(*) FROM inbound_unattributed WHERE counted_issue = ?1")?
        .query_row([issue], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::store;

    #[test]
    fn reports_are_kept_bounded_and_listed_newest_first() {
        let (_dir, conn) = store();
        let addresses = vec!["a@example.com".to_string(), "x".repeat(2000)];
        for kind in ["hard", "complaint"] {
            record(
                &conn,
                &NewReport {
                    kind,
                    reason: "only an address",
                    claimed: Some((IssueNumber(3), SubscriberId(9), "legacy")),
                    addresses: &addresses,
                    ..NewReport::default()
                },
            )
            .unwrap();
        }
        assert_eq!(count(&conn).unwrap(), 2);
        let listed = newest(&conn, 10).unwrap();
        assert_eq!(listed[0].kind, "complaint");
        assert_eq!(listed[0].claimed_issue, Some(IssueNumber(3)));
        assert_eq!(listed[0].claimed_email, None, "no subscriber 9");
        assert_eq!(
            listed[0].addresses.as_ref().unwrap().chars().count(),
            MAX_TEXT
        );
        // No issue 3 and no issue at all: counted under none.
        assert_eq!(count_for_issue(&conn, IssueNumber(3)).unwrap(), 0);
        assert_eq!(newest(&conn, 1).unwrap().len(), 1);
    }
}
