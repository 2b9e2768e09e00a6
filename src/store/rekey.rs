//! Migration 8's step that SQL cannot do: every subscriber's `email_norm` recomputed as the
//! mailbox key ([`SubscriberEmail::normalized`]), and rows that turn out to be one mailbox
//! (`ada@…` and `"ada"@…`, or a domain in both IDNA forms) merged into one, so nobody gets
//! every issue twice.
//!
//! How a merge decides: the oldest row (lowest id) is kept, with its id, so links already
//! sent for it keep working. Its status becomes the most recent decision among the rows
//! (the latest `updated_at` of the rows that are not `pending`; a pending signup is nobody's
//! decision yet): a reader who unsubscribed through one spelling stays unsubscribed, one who
//! came back through another stays subscribed. The removed rows' deliveries, events and
//! confirmations move to the kept row (where both rows have a delivery for one issue, the
//! one that was sent is kept). Every merge is written to `subscriber_merges` and logged.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use crate::mail::address::SubscriberEmail;

/// One subscriber row as the merge sees it.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    email: String,
    status: String,
    updated_at: String,
    unsubscribed_at: Option<String>,
}

/// What the step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rekeyed {
    /// Rows whose key changed.
    pub rekeyed: usize,
    /// Rows merged into another (and removed).
    pub merged: usize,
}

/// Recomputes every key and merges duplicates, inside the migration's transaction.
///
/// The old keys were unique, so only a row whose key changes can meet another: the pass
/// over the list streams and keeps just those rows (usually few) in memory.
pub fn run(conn: &Connection) -> rusqlite::Result<Rekeyed> {
    let mut moving: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    {
        let mut stmt = conn.prepare("SELECT id, email, email_norm FROM subscribers")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, email, old): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            // A row edited by hand into something that is no address keeps its key.
            let Some(key) = new_key(&email) else {
                continue;
            };
            if key != old {
                moving.entry(key).or_default().push(id);
            }
        }
    }
    let mut done = Rekeyed::default();
    let now = crate::store::timestamp(chrono::Utc::now());
    let mut rekey = Vec::new();
    for (key, mut ids) in moving {
        // The row that holds this key already, if its own key stays.
        let holder: Option<(i64, String)> = conn
            .query_row(
                "SELECT id, email FROM subscribers WHERE email_norm = ?1",
                [&key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, email)) = holder {
            if new_key(&email).as_ref() == Some(&key) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let kept = ids[0];
        if ids.len() > 1 {
            let rows = ids
                .iter()
                .map(|id| row(conn, *id))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            merge(conn, &rows, &now)?;
            done.merged += ids.len() - 1;
        }
        let current: String = conn.query_row(
            "SELECT email_norm FROM subscribers WHERE id = ?1",
            [kept],
            |r| r.get(0),
        )?;
        if current != key {
            rekey.push((kept, key));
        }
    }
    // Two passes, so a key can move to a row whose old key another row still holds.
    for (id, _) in &rekey {
        conn.execute(
            "UPDATE subscribers SET email_norm = char(1) || id WHERE id = ?1",
            [id],
        )?;
    }
    for (id, key) in &rekey {
        conn.execute(
            "UPDATE subscribers SET email_norm = ?2 WHERE id = ?1",
            params![id, key],
        )?;
    }
    done.rekeyed = rekey.len();
    if done.merged > 0 || done.rekeyed > 0 {
        tracing::warn!(
            merged = done.merged,
            rekeyed = done.rekeyed,
            "one mailbox, one subscriber: addresses re-keyed, duplicate spellings merged \
             (see the subscriber_merges table)"
        );
    }
    Ok(done)
}

fn new_key(email: &str) -> Option<String> {
    SubscriberEmail::parse(email).ok().map(|e| e.normalized())
}

fn row(conn: &Connection, id: i64) -> rusqlite::Result<Row> {
    conn.query_row(
        "SELECT id, email, status, updated_at, unsubscribed_at FROM subscribers WHERE id = ?1",
        [id],
        |r| {
            Ok(Row {
                id: r.get(0)?,
                email: r.get(1)?,
                status: r.get(2)?,
                updated_at: r.get(3)?,
                unsubscribed_at: r.get(4)?,
            })
        },
    )
}

/// The status a merged mailbox keeps: the most recent decision among its rows.
fn decided(rows: &[Row]) -> &Row {
    let rank = |s: &str| match s {
        "bounced" => 3,
        "unsubscribed" => 2,
        "active" => 1,
        _ => 0,
    };
    rows.iter()
        .filter(|r| r.status != "pending")
        .max_by(|a, b| {
            a.updated_at
                .cmp(&b.updated_at)
                .then(rank(&a.status).cmp(&rank(&b.status)))
        })
        .unwrap_or(&rows[0])
}

fn merge(conn: &Connection, rows: &[Row], now: &str) -> rusqlite::Result<()> {
    let kept = &rows[0];
    let decision = decided(rows);
    conn.execute(
        "UPDATE subscribers SET status = ?2, unsubscribed_at = ?3, updated_at = ?4,
             name = coalesce(name, (SELECT name FROM subscribers WHERE id = ?5))
         WHERE id = ?1",
        params![
            kept.id,
            decision.status,
            decision.unsubscribed_at,
            decision.updated_at,
            decision.id
        ],
    )?;
    let referencing: Vec<(String, String)> = conn
        .prepare(
            "SELECT m.name, f.\"from\" FROM sqlite_master m, pragma_foreign_key_list(m.name) f
             WHERE m.type = 'table' AND f.\"table\" = 'subscribers' AND m.name != 'deliveries'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for removed in &rows[1..] {
        // A delivery of one issue to both rows: keep the one that went out.
        conn.execute(
            "DELETE FROM deliveries WHERE subscriber_id = ?1 AND state != 'sent' AND issue IN
                 (SELECT issue FROM deliveries WHERE subscriber_id = ?2 AND state = 'sent')",
            params![kept.id, removed.id],
        )?;
        conn.execute(
            "UPDATE OR IGNORE deliveries SET subscriber_id = ?1 WHERE subscriber_id = ?2",
            params![kept.id, removed.id],
        )?;
        conn.execute(
            "DELETE FROM deliveries WHERE subscriber_id = ?1",
            [removed.id],
        )?;
        for (table, column) in &referencing {
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            let (t, c) = (quote(table), quote(column));
            conn.execute(
                &format!("UPDATE OR IGNORE {t} SET {c} = ?1 WHERE {c} = ?2"),
                params![kept.id, removed.id],
            )?;
            conn.execute(&format!("DELETE FROM {t} WHERE {c} = ?1"), [removed.id])?;
        }
        conn.execute("DELETE FROM subscribers WHERE id = ?1", [removed.id])?;
        conn.execute(
            "INSERT INTO subscriber_merges (kept_id, kept_email, removed_id, removed_email,
                 removed_status, status_after, merged_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                kept.id,
                kept.email,
                removed.id,
                removed.email,
                removed.status,
                decision.status,
                now
            ],
        )?;
    }
    Ok(())
}

/// The row a subscriber id was merged into by migration 8, and the address it had, so a
/// link signed for the removed row still reaches the mailbox.
pub fn merged_into(
    conn: &Connection,
    removed: crate::store::SubscriberId,
) -> rusqlite::Result<Option<(crate::store::SubscriberId, String)>> {
    if !has_merges(conn)? {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT kept_id, removed_email FROM subscriber_merges WHERE removed_id = ?1",
    )?
    .query_row([removed.get()], |r| {
        Ok((crate::store::SubscriberId(r.get(0)?), r.get(1)?))
    })
    .optional()
}

/// The addresses migration 8 merged into subscriber `kept`, so a confirmation link signed
/// for one of them still confirms the mailbox.
pub fn merged_emails(
    conn: &Connection,
    kept: crate::store::SubscriberId,
) -> rusqlite::Result<Vec<String>> {
    if !has_merges(conn)? {
        return Ok(Vec::new());
    }
    conn.prepare_cached("SELECT removed_email FROM subscriber_merges WHERE kept_id = ?1")?
        .query_map([kept.get()], |r| r.get(0))?
        .collect()
}

/// False before migration 8 (a database opened read-only by an older check, say).
fn has_merges(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'subscriber_merges'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The merges migration 8 made, for a report: (kept address, removed address, status after).
pub fn merges(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String)>> {
    if !has_merges(conn)? {
        return Ok(Vec::new());
    }
    conn.prepare(
        "SELECT kept_email, removed_email, status_after FROM subscriber_merges ORDER BY id",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
    .collect()
}

#[cfg(test)]
mod tests {
    use crate::store::{open, MAILBOX_KEYS, MIGRATIONS};
    use rusqlite::Connection;

    #[test]
    fn duplicate_spellings_are_merged_into_the_oldest_row_with_the_latest_decision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verdicts.db");
        {
            // A database as the release before migration 8 left it.
            let conn = Connection::open(&path).unwrap();
            let before = MIGRATIONS.iter().position(|m| *m == MAILBOX_KEYS).unwrap();
            for m in &MIGRATIONS[..before] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", before as i64)
                .unwrap();
            conn.execute_batch(
                "INSERT INTO subscribers (id, email, email_norm, status, source, created_at,
                                          updated_at, signed_up_at, unsubscribed_at)
                 VALUES
                 (1, 'ada@example.com', 'ada@example.com', 'active', 'cli', 't', '2026-01-01', 't', NULL),
                 (2, '\"ada\"@example.com', '\"ada\"@example.com', 'unsubscribed', 'web', 't',
                     '2026-02-01', 't', '2026-02-01'),
                 (3, 'leser@bücher.example', 'leser@bücher.example', 'active', 'cli', 't', '2026-01-01', 't', NULL),
                 (4, 'Leser@XN--BCHER-KVA.example', 'leser@xn--bcher-kva.example', 'pending', 'web', 't',
                     '2026-03-01', 't', NULL),
                 (5, 'solo@Example.com', 'solo@example.com', 'active', 'cli', 't', 't', 't', NULL);
                 INSERT INTO issues (number, slot, window_after, cutoff, subject, preheader,
                                     comparison_count, html_parts, text_parts, state, created_at)
                 VALUES (1, 's', 'w', 'c', 'subj', 'pre', 1, '[]', '[]', 'complete', 'x'),
                        (2, 's2', 'w', 'c', 'subj', 'pre', 1, '[]', '[]', 'complete', 'x');
                 INSERT INTO deliveries (issue, subscriber_id, state) VALUES
                     (1, 1, 'failed'), (1, 2, 'sent'), (2, 2, 'sent'), (1, 4, 'sent');
                 INSERT INTO events (subscriber_id, kind, channel, source, at)
                     VALUES (2, 'unsubscribe', 'one-click', 'web', '2026-02-01');",
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let rows: Vec<(i64, String, String)> = conn
            .prepare("SELECT id, email_norm, status FROM subscribers ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            [
                (1, "ada@example.com".into(), "unsubscribed".into()),
                (3, "leser@xn--bcher-kva.example".into(), "active".into()),
                (5, "solo@example.com".into(), "active".into()),
            ]
        );
        let deliveries: Vec<(i64, i64, String)> = conn
            .prepare(
                "SELECT issue, subscriber_id, state FROM deliveries ORDER BY issue, subscriber_id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    crate::store::ledger::state_name(r.get(2)?).to_owned(),
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            deliveries,
            [
                (1, 1, "sent".into()),
                (1, 3, "sent".into()),
                (2, 1, "sent".into())
            ]
        );
        let events: i64 = conn
            .query_row(
                "SELECT count(*) FROM events WHERE subscriber_id = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(events, 1);
        let merges = super::merges(&conn).unwrap();
        assert_eq!(
            merges,
            [
                (
                    "ada@example.com".into(),
                    "\"ada\"@example.com".into(),
                    "unsubscribed".into()
                ),
                (
                    "leser@bücher.example".into(),
                    "Leser@XN--BCHER-KVA.example".into(),
                    "active".into()
                ),
            ]
        );
    }
}
