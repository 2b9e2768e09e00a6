//! The relays an issue goes out through: their rows (by configured name), which relay took
//! each delivery, and the per-second counts of messages handed to each relay that the
//! per-second, hourly and daily limits are measured against, so a restart or a resumed
//! issue never starts a window again.

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{IssueNumber, SubscriberId};

/// A relay's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayId(pub i64);

/// The row of the relay named `name`, created on first use of the name.
pub fn ensure(conn: &Connection, name: &str) -> rusqlite::Result<RelayId> {
    conn.execute(
        "INSERT INTO relays (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
        [name],
    )?;
    conn.query_row("SELECT id FROM relays WHERE name = ?", [name], |r| {
        r.get(0).map(RelayId)
    })
}

/// When the relay was first handed a message (ms since the epoch), if ever.
pub fn first_used_ms(conn: &Connection, relay: RelayId) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT first_used_ms FROM relays WHERE id = ?",
        [relay.0],
        |r| r.get(0),
    )
    .optional()
    .map(Option::flatten)
}

/// Adds `n` messages handed to `relay` in `second` (seconds since the epoch) to its count:
/// what its limits are measured against. Written in the same transaction as their marks.
pub fn count_handed(
    conn: &Connection,
    relay: RelayId,
    second: i64,
    n: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO relay_usage (relay, second, handed) VALUES (?1, ?2, ?3)
         ON CONFLICT (relay, second) DO UPDATE SET handed = handed + ?3",
    )?
    .execute(params![relay.0, second, n as i64])?;
    Ok(())
}

/// Records `now_ms` as the relay's first use, unless it has one (the warm-up ramp's day 1).
pub fn note_first_use(conn: &Connection, relay: RelayId, now_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE relays SET first_used_ms = ? WHERE id = ? AND first_used_ms IS NULL",
    )?
    .execute(params![now_ms, relay.0])?;
    Ok(())
}

/// The relay's per-second counts from `since_second` on, oldest first: what the limits'
/// windows are measured against when a run starts.
pub fn usage_since(
    conn: &Connection,
    relay: RelayId,
    since_second: i64,
) -> rusqlite::Result<Vec<(i64, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT second, handed FROM relay_usage WHERE relay = ? AND second >= ? ORDER BY second",
    )?;
    let rows = stmt.query_map(params![relay.0, since_second], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// Drops counts older than `before_second` (no limit's window reaches that far back).
pub fn prune_usage(conn: &Connection, before_second: i64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM relay_usage WHERE second < ?", [before_second])
}

/// How many of the issue's deliveries each relay took (sent) and was handed without
/// success (failed or still pending after an attempt), by relay name, in name order.
/// Deliveries never handed to a relay are not counted. For a compacted issue, the shares
/// folded before its rows went ([`fold_issue`]).
pub fn per_issue(conn: &Connection, number: IssueNumber) -> rusqlite::Result<Vec<RelayTally>> {
    let folded = tallies(
        conn,
        "SELECT r.name, t.sent, t.not_sent
         FROM issue_relay_totals t JOIN relays r ON r.id = t.relay_id
         WHERE t.issue = ? ORDER BY r.name",
        number,
    )?;
    if !folded.is_empty() {
        return Ok(folded);
    }
    tallies(
        conn,
        "SELECT r.name,
                sum(CASE WHEN d.state = 1 THEN 1 ELSE 0 END),
                sum(CASE WHEN d.state <> 1 THEN 1 ELSE 0 END)
         FROM deliveries d JOIN relays r ON r.id = d.relay
         WHERE d.issue = ?
         GROUP BY r.name ORDER BY r.name",
        number,
    )
}

/// Each relay's share of the issue as its delivery rows say, by relay id: read (without
/// the write lock) before compaction deletes the rows, and kept with [`fold_issue`].
pub fn shares_of(conn: &Connection, number: IssueNumber) -> rusqlite::Result<Vec<(i64, u64, u64)>> {
    conn.prepare_cached(
        "SELECT relay, sum(state = 1), sum(state <> 1) FROM deliveries
         WHERE issue = ? AND relay IS NOT NULL GROUP BY relay",
    )?
    .query_map([number], |r| {
        Ok((
            r.get(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })?
    .collect()
}

/// Keeps `shares` (from [`shares_of`]) as the issue's relay totals.
pub fn fold_issue(
    conn: &Connection,
    number: IssueNumber,
    shares: &[(i64, u64, u64)],
) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT OR REPLACE INTO issue_relay_totals (issue, relay_id, sent, not_sent)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for &(relay, sent, not_sent) in shares {
        insert.execute(params![number, relay, sent as i64, not_sent as i64])?;
    }
    Ok(())
}

fn tallies(conn: &Connection, sql: &str, number: IssueNumber) -> rusqlite::Result<Vec<RelayTally>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([number], |r| {
        Ok(RelayTally {
            relay: r.get(0)?,
            sent: r.get::<_, i64>(1)? as u64,
            not_sent: r.get::<_, i64>(2)? as u64,
        })
    })?;
    rows.collect()
}

/// The name of the relay that last took (or was handed) one delivery.
pub fn delivery_relay(
    conn: &Connection,
    number: IssueNumber,
    subscriber_id: SubscriberId,
) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT r.name FROM deliveries d JOIN relays r ON r.id = d.relay
         WHERE d.issue = ? AND d.subscriber_id = ?",
        params![number, subscriber_id],
        |r| r.get(0),
    )
    .optional()
}

/// One relay's share of an issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTally {
    pub relay: String,
    /// Deliveries this relay accepted.
    pub sent: u64,
    /// Deliveries last handed to this relay that it has not accepted (failed, or waiting
    /// for a retry).
    pub not_sent: u64,
}
