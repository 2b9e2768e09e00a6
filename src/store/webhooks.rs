//! The outgoing webhooks' outbox. Announcements are written by the triggers of migration 13
//! in the same transaction as the change they report; here they are fanned out to each
//! configured receiver, picked in order (never ahead of an earlier one for the same
//! subscriber), and marked delivered, retried or given up.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::store;

/// One announcement due for one receiver.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub outbox_id: i64,
    pub event_type: String,
    pub data: String,
    pub created_at: String,
    pub attempts: u32,
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// The subscriber it is about (none for an issue's announcements).
    pub subscriber_id: Option<i64>,
    /// Not to be tried before this time (ms since the epoch).
    pub next_attempt_ms: i64,
}

/// Gives the receiver at `endpoint` a pending delivery of every announcement of one of
/// `types` written since its last fan-out. Returns how many were added. A receiver seen
/// for the first time starts from the announcements written after that moment: adding one
/// to the config does not replay the outbox's past to it.
pub fn fan_out(conn: &Connection, endpoint: &str, types: &[String]) -> rusqlite::Result<usize> {
    let types = serde_json::to_string(types).expect("strings serialise");
    // Looked at first without the write lock: most passes find nothing new.
    let cursor: Option<i64> = conn
        .prepare_cached("SELECT last_outbox_id FROM webhook_cursors WHERE endpoint = ?")?
        .query_row([endpoint], |r| r.get(0))
        .optional()?;
    let top: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM webhook_outbox")?
        .query_row([], |r| r.get(0))?;
    let Some(cursor) = cursor else {
        conn.prepare_cached(
            "INSERT INTO webhook_cursors (endpoint, last_outbox_id) VALUES (?1, ?2)
             ON CONFLICT (endpoint) DO NOTHING",
        )?
        .execute(params![endpoint, top])?;
        return Ok(0);
    };
    if top <= cursor {
        return Ok(0);
    }
    store::in_write_transaction(conn, |tx| {
        let cursor: i64 = tx
            .prepare_cached("SELECT last_outbox_id FROM webhook_cursors WHERE endpoint = ?")?
            .query_row([endpoint], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let top: Option<i64> = tx
            .prepare_cached("SELECT max(id) FROM webhook_outbox")?
            .query_row([], |r| r.get(0))?;
        let Some(top) = top.filter(|t| *t > cursor) else {
            return Ok(0);
        };
        let added = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO webhook_deliveries (outbox_id, endpoint, subscriber_id, state)
                 SELECT id, ?1, subscriber_id, 'pending' FROM webhook_outbox
                 WHERE id > ?2 AND id <= ?3 AND type IN (SELECT value FROM json_each(?4))",
            )?
            .execute(params![endpoint, cursor, top, types])?;
        tx.prepare_cached(
            "INSERT INTO webhook_cursors (endpoint, last_outbox_id) VALUES (?1, ?2)
             ON CONFLICT (endpoint) DO UPDATE SET last_outbox_id = excluded.last_outbox_id",
        )?
        .execute(params![endpoint, top])?;
        Ok(added)
    })
}

/// Starts the receiver at `endpoint` from the announcements written from now on, unless it
/// was seen before. The sender calls it before the web process takes requests, so nothing
/// that process changes can slip between its start and the first fan-out.
pub fn register(conn: &Connection, endpoint: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO webhook_cursors (endpoint, last_outbox_id)
         SELECT ?1, coalesce(max(id), 0) FROM webhook_outbox WHERE true
         ON CONFLICT (endpoint) DO NOTHING",
    )?
    .execute([endpoint])?;
    Ok(())
}

/// The first `limit` pending deliveries for `endpoint`, in the order the changes were
/// made, due or not (the sender skips those that are not, and everything after them for
/// the same subscriber, so that each subscriber's announcements arrive in order).
pub fn pending(
    conn: &Connection,
    endpoint: &str,
    limit: usize,
) -> rusqlite::Result<Vec<DueDelivery>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.outbox_id, o.type, o.data, o.created_at, d.attempts, d.first_attempt_at,
                d.subscriber_id, d.next_attempt_ms
         FROM webhook_deliveries d JOIN webhook_outbox o ON o.id = d.outbox_id
         WHERE d.endpoint = ?1 AND d.state = 'pending'
         ORDER BY d.outbox_id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![endpoint, limit as i64], |r| {
        let first: Option<String> = r.get(5)?;
        Ok(DueDelivery {
            outbox_id: r.get(0)?,
            event_type: r.get(1)?,
            data: r.get(2)?,
            created_at: r.get(3)?,
            attempts: r.get(4)?,
            first_attempt_at: first.as_deref().and_then(store::parse_timestamp),
            subscriber_id: r.get(6)?,
            next_attempt_ms: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// When the next pending delivery for `endpoint` is due (ms since the epoch).
pub fn next_due_ms(conn: &Connection, endpoint: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT min(next_attempt_ms) FROM webhook_deliveries
         WHERE endpoint = ? AND state = 'pending'",
    )?
    .query_row([endpoint], |r| r.get(0))
}

/// Records an attempt: delivered (`Ok(status)`), or failed with the status (if any) and
/// error, to be tried again at `retry_at_ms` or, when `None`, given up.
pub fn record_attempt(
    conn: &Connection,
    outbox_id: i64,
    endpoint: &str,
    outcome: Result<u16, (Option<u16>, &str)>,
    retry_at_ms: Option<i64>,
) -> rusqlite::Result<()> {
    let now = store::timestamp(Utc::now());
    match outcome {
        Ok(status) => conn
            .prepare_cached(
                "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1,
                        first_attempt_at = coalesce(first_attempt_at, ?1), last_attempt_at = ?1,
                        delivered_at = ?1, last_status = ?2, last_error = NULL
                 WHERE outbox_id = ?3 AND endpoint = ?4",
            )?
            .execute(params![now, status, outbox_id, endpoint])?,
        Err((status, error)) => conn
            .prepare_cached(
                "UPDATE webhook_deliveries SET attempts = attempts + 1,
                        state = CASE WHEN ?5 IS NULL THEN 'failed' ELSE 'pending' END,
                        next_attempt_ms = coalesce(?5, next_attempt_ms),
                        first_attempt_at = coalesce(first_attempt_at, ?1), last_attempt_at = ?1,
                        last_status = ?2, last_error = ?3
                 WHERE outbox_id = ?4 AND endpoint = ?6",
            )?
            .execute(params![
                now,
                status,
                error,
                outbox_id,
                retry_at_ms,
                endpoint
            ])?,
    };
    Ok(())
}

/// One delivery as `verdicts webhooks` lists it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub outbox_id: i64,
    pub endpoint: String,
    pub event_type: String,
    pub state: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub last_attempt_at: Option<String>,
}

/// The most recent deliveries (only the failed and still-retrying ones with `failures`).
pub fn recent(
    conn: &Connection,
    limit: usize,
    failures: bool,
) -> rusqlite::Result<Vec<DeliveryRow>> {
    let mut stmt = conn.prepare(
        "SELECT d.outbox_id, d.endpoint, o.type, d.state, d.attempts, d.last_status,
                d.last_error, o.created_at, d.last_attempt_at
         FROM webhook_deliveries d JOIN webhook_outbox o ON o.id = d.outbox_id
         WHERE NOT ?1 OR d.state = 'failed' OR (d.state = 'pending' AND d.attempts > 0)
         ORDER BY d.outbox_id DESC, d.endpoint LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![failures, limit as i64], |r| {
        Ok(DeliveryRow {
            outbox_id: r.get(0)?,
            endpoint: r.get(1)?,
            event_type: r.get(2)?,
            state: r.get(3)?,
            attempts: r.get(4)?,
            last_status: r.get(5)?,
            last_error: r.get(6)?,
            created_at: r.get(7)?,
            last_attempt_at: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// A receiver that gave up on a delivery (after failing for the whole retry window) and
/// has accepted nothing since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingReceiver {
    pub endpoint: String,
    pub given_up: u64,
    pub last_error: Option<String>,
    pub since: String,
}

pub fn failing_receivers(conn: &Connection) -> rusqlite::Result<Vec<FailingReceiver>> {
    let mut stmt = conn.prepare(
        "SELECT f.endpoint, count(*), max(f.last_attempt_at),
                (SELECT last_error FROM webhook_deliveries l
                 WHERE l.endpoint = f.endpoint AND l.state = 'failed'
                 ORDER BY l.last_attempt_at DESC LIMIT 1),
                min(f.first_attempt_at)
         FROM webhook_deliveries f
         WHERE f.state = 'failed'
         GROUP BY f.endpoint
         HAVING max(f.last_attempt_at) >= coalesce(
             (SELECT max(delivered_at) FROM webhook_deliveries ok
              WHERE ok.endpoint = f.endpoint AND ok.state = 'delivered'), '')
         ORDER BY f.endpoint",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(FailingReceiver {
            endpoint: r.get(0)?,
            given_up: r.get::<_, i64>(1)? as u64,
            last_error: r.get(3)?,
            since: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
        })
    })?;
    rows.collect()
}

/// The newest id handed to an announcement, kept or pruned: where a pruning loop stops.
pub fn newest_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'webhook_outbox'), 0),
                    coalesce((SELECT max(id) FROM webhook_outbox), 0))",
        [],
        |r| r.get(0),
    )
}

/// Forgets up to `limit` announcements older than `before` that no receiver still waits
/// for: delivered or given up everywhere, and behind every receiver's cursor. While no
/// receiver has ever been configured nobody will read them (a receiver added later starts
/// from the changes after it), so they all go, whatever their age. Only ids up to `up_to`
/// are looked at, so a caller that loops stops even while changes keep coming. Returns how
/// many went.
pub fn prune(
    conn: &Connection,
    before: DateTime<Utc>,
    up_to: i64,
    limit: usize,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM webhook_outbox WHERE id IN (
             SELECT o.id FROM webhook_outbox o
             WHERE (o.created_at < ?1 OR NOT EXISTS (SELECT 1 FROM webhook_cursors))
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.outbox_id = o.id AND d.state = 'pending')
               AND o.id < coalesce((SELECT min(last_outbox_id) FROM webhook_cursors),
                                   9223372036854775807)
               AND o.id <= ?3
             ORDER BY o.id LIMIT ?2)",
    )?
    .execute(params![store::timestamp(before), limit as i64, up_to])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::address::SubscriberName;
    use crate::store::events::{self, Channel, EventKind, Hygiene, NewEvent, Source};
    use crate::store::subscribers::{self, SubscriberSource, SubscriberStatus};
    use crate::store::testing::{email, store};

    fn types(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT type FROM webhook_outbox ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn changes_announce_themselves_in_their_own_transaction() {
        let (_dir, conn) = store();
        // An operator's add is not announced; an API add without double opt-in is.
        subscribers::add(&conn, &email("a@example.com"), None, SubscriberSource::Cli).unwrap();
        let name = SubscriberName::parse("Bea").unwrap();
        let added = subscribers::add(
            &conn,
            &email("b@example.com"),
            name.as_ref(),
            SubscriberSource::Api,
        )
        .unwrap();
        let crate::store::subscribers::AddOutcome::Added(b) = added else {
            panic!("added")
        };
        assert_eq!(types(&conn), ["subscriber.confirmed"]);
        events::record(
            &conn,
            &NewEvent {
                subscriber_id: b.id,
                issue: None,
                kind: EventKind::Unsubscribe(Channel::Api),
                source: Source::Api,
                status: None,
                diagnostic: None,
            },
            Hygiene::default(),
        )
        .unwrap();
        subscribers::set_status(&conn, &email("a@example.com"), SubscriberStatus::Bounced).unwrap();
        assert_eq!(
            types(&conn),
            [
                "subscriber.confirmed",
                "subscriber.unsubscribed",
                "subscriber.bounced"
            ]
        );
        let data: String = conn
            .query_row("SELECT data FROM webhook_outbox WHERE id = 2", [], |r| {
                r.get(0)
            })
            .unwrap();
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data["channel"], "api");
        assert_eq!(data["email"], "b@example.com");
        assert_eq!(data["name"], "Bea");

        // A change rolled back takes its announcement with it.
        let tx = crate::store::write_transaction(&conn).unwrap();
        subscribers::add(&tx, &email("c@example.com"), None, SubscriberSource::Api).unwrap();
        drop(tx);
        assert_eq!(types(&conn).len(), 3);
    }

    #[test]
    fn each_receiver_gets_its_events_once_and_failures_are_named() {
        let (_dir, conn) = store();
        let only_paused = vec!["issue.paused".to_owned()];
        let confirmed = vec!["subscriber.confirmed".to_owned()];
        // Seen for the first time, a receiver starts from now: the past is not replayed.
        subscribers::add(
            &conn,
            &email("old@example.com"),
            None,
            SubscriberSource::Api,
        )
        .unwrap();
        assert_eq!(
            fan_out(&conn, "https://a.example/hook", &confirmed).unwrap(),
            0
        );
        assert_eq!(
            fan_out(&conn, "https://b.example/hook", &only_paused).unwrap(),
            0
        );
        for who in ["a@example.com", "b@example.com"] {
            subscribers::add(&conn, &email(who), None, SubscriberSource::Api).unwrap();
        }
        assert_eq!(
            fan_out(&conn, "https://a.example/hook", &confirmed).unwrap(),
            2
        );
        assert_eq!(
            fan_out(&conn, "https://b.example/hook", &only_paused).unwrap(),
            0
        );
        // Fanned out once: a second pass adds nothing.
        assert_eq!(
            fan_out(&conn, "https://a.example/hook", &confirmed).unwrap(),
            0
        );
        let due = pending(&conn, "https://a.example/hook", 10).unwrap();
        assert_eq!(due.len(), 2);
        assert!(due[0].outbox_id < due[1].outbox_id);

        record_attempt(
            &conn,
            due[0].outbox_id,
            "https://a.example/hook",
            Ok(204),
            None,
        )
        .unwrap();
        record_attempt(
            &conn,
            due[1].outbox_id,
            "https://a.example/hook",
            Err((Some(500), "answered HTTP 500")),
            None,
        )
        .unwrap();
        assert!(pending(&conn, "https://a.example/hook", 10)
            .unwrap()
            .is_empty());
        let failing = failing_receivers(&conn).unwrap();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].endpoint, "https://a.example/hook");
        assert_eq!(failing[0].last_error.as_deref(), Some("answered HTTP 500"));
        let rows = recent(&conn, 10, true).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, "failed");
    }

    #[test]
    fn old_announcements_go_once_no_receiver_waits_for_them() {
        let (_dir, conn) = store();
        let old = |n: usize| {
            for _ in 0..n {
                conn.execute(
                    "INSERT INTO webhook_outbox (type, data, created_at)
                     VALUES ('issue.created', '{}', '2020-01-01T00:00:00.000Z')",
                    [],
                )
                .unwrap();
            }
        };
        let left = |conn: &Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM webhook_outbox", [], |r| r.get(0))
                .unwrap()
        };
        let now = Utc::now();
        // No receiver configured: all of them go, a batch at a time.
        old(3);
        assert_eq!(prune(&conn, now, i64::MAX, 2).unwrap(), 2);
        assert_eq!(prune(&conn, now, i64::MAX, 2).unwrap(), 1);
        assert_eq!(left(&conn), 0);
        // A receiver whose cursor stands at the fifth, with a retry pending on the fourth:
        // only what is behind the cursor and not pending goes.
        old(6);
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM webhook_outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        conn.execute(
            "INSERT INTO webhook_cursors (endpoint, last_outbox_id) VALUES ('https://crm.example/', ?)",
            [ids[4]],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO webhook_deliveries (outbox_id, endpoint, state) VALUES (?, 'https://crm.example/', 'pending')",
            [ids[3]],
        )
        .unwrap();
        assert_eq!(prune(&conn, now, i64::MAX, 100).unwrap(), 3);
        assert_eq!(left(&conn), 3);
        // With a receiver, nothing younger than `before` goes.
        let long_ago = now - chrono::Duration::days(36500);
        assert_eq!(prune(&conn, long_ago, i64::MAX, 100).unwrap(), 0);
        // With none ever configured, everything does: nobody will read it.
        conn.execute("DELETE FROM webhook_deliveries", []).unwrap();
        conn.execute("DELETE FROM webhook_cursors", []).unwrap();
        assert_eq!(prune(&conn, long_ago, i64::MAX, 100).unwrap(), 3);
        // Only up to the id the caller saw first: what arrives meanwhile waits for the
        // next pass, so a pruning loop ends under a steady stream of changes, even once
        // the table has been emptied (ids are never handed out twice).
        let seen = newest_id(&conn).unwrap();
        old(2);
        assert_eq!(prune(&conn, now, seen, 100).unwrap(), 0);
        assert_eq!(left(&conn), 2);
        assert!(newest_id(&conn).unwrap() > seen);
    }
}
