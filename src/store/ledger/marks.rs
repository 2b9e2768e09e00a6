//! During a send: the sending marks, outcomes, held bounces and what goes back to pending.

use super::*;
use crate::store::relays::RelayId;

/// What happened to one delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        reply: String,
    },
    /// 4xx or a connection fault: try again at `retry_at_ms`, unless attempts are used up.
    Retry {
        reply: String,
        retry_at_ms: i64,
    },
    /// 4xx or a connection fault with no retry left in this run: failed (temporary). A
    /// later run re-queues it until the issue's deadline (see `requeue_deferred`).
    Deferred {
        reply: String,
    },
    /// 5xx: never retried. `bounce` also marks the subscriber bounced (user unknown).
    Permanent {
        reply: String,
        bounce: bool,
    },
    /// The subscriber is no longer active.
    Skipped,
}

/// The reply a `sent` row keeps: none for a plain 250 (`250 2.0.0 Ok: queued as …` says
/// nothing the state does not), the text for anything else a server accepted with.
pub(super) fn kept_reply(reply: &str) -> Option<&str> {
    let plain = reply == "250" || reply.starts_with("250 ") || reply.starts_with("250-");
    (!plain).then_some(reply)
}

/// Opens a group of delivery updates (the ledger writer's group commit): takes the write
/// lock at once, so the group never fails half-way on "database is locked".
pub fn begin_group(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
}

/// Commits a group opened by [`begin_group`].
pub fn commit_group(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("COMMIT")
}

/// Marks a delivery as under way, counting the attempt, if it is still pending and its
/// subscriber still active (checked here, at the last moment, not when the batch was read).
/// Returns false when the message must not go out. Must be durable before the message body
/// is transferred. `relay`, when given, is noted on the delivery as the relay it goes to.
pub fn mark_sending(
    conn: &Connection,
    number: IssueNumber,
    subscriber_id: SubscriberId,
    relay: Option<RelayId>,
) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE deliveries SET state = 2, attempts = attempts + 1, relay = coalesce(?3, relay)
             WHERE issue = ?1 AND subscriber_id = ?2 AND state = 0
               AND EXISTS (SELECT 1 FROM subscribers WHERE id = ?2 AND status = 'active')",
        )?
        .execute(params![number, subscriber_id, relay.map(|r| r.0)])?;
    Ok(changed == 1)
}

/// Records the outcome of an attempt.
pub fn record_outcome(
    conn: &Connection,
    number: IssueNumber,
    subscriber_id: SubscriberId,
    outcome: &Outcome,
    max_attempts: u32,
) -> rusqlite::Result<()> {
    if let Outcome::Sent { reply } = outcome {
        // The id a hosted relay gave the message, for the events its webhook reports.
        crate::store::provider_webhooks::record_reply_id(conn, reply, number, subscriber_id)?;
    }
    match outcome {
        Outcome::Sent { reply } => conn
            .prepare_cached(
                "UPDATE deliveries SET state = 1, failure = NULL, last_reply = ?, sent_at = ?
                 WHERE issue = ? AND subscriber_id = ?",
            )?
            .execute(params![
                kept_reply(reply),
                Utc::now().timestamp(),
                number,
                subscriber_id
            ])?,
        Outcome::Retry { reply, retry_at_ms } => conn
            .prepare_cached(
                "UPDATE deliveries SET
                    state = CASE WHEN attempts >= ?1 THEN 3 ELSE 0 END,
                    failure = CASE WHEN attempts >= ?1 THEN 'temporary' ELSE NULL END,
                    last_reply = ?2, next_attempt_ms = ?3
                 WHERE issue = ?4 AND subscriber_id = ?5",
            )?
            .execute(params![
                max_attempts,
                reply,
                retry_at_ms,
                number,
                subscriber_id
            ])?,
        Outcome::Deferred { reply } => conn
            .prepare_cached(
                "UPDATE deliveries SET state = 3, failure = 'temporary', last_reply = ?
                 WHERE issue = ? AND subscriber_id = ?",
            )?
            .execute(params![reply, number, subscriber_id])?,
        Outcome::Permanent { reply, bounce } => conn
            .prepare_cached(
                // A "no such mailbox" refusal is held here, not applied: the reader is marked
                // bounced only when the run ends without finding that the relay refuses
                // everyone (see `apply_held_bounces` and `release_held_bounces`).
                "UPDATE deliveries SET state = 3, failure = 'permanent', last_reply = ?,
                        bounce_held = ?
                 WHERE issue = ? AND subscriber_id = ?",
            )?
            .execute(params![reply, *bounce, number, subscriber_id])?,
        Outcome::Skipped => conn
            .prepare_cached(
                "UPDATE deliveries SET state = 4 WHERE issue = ? AND subscriber_id = ?",
            )?
            .execute(params![number, subscriber_id])?,
    };
    Ok(())
}

/// Gives back the attempts spent while the relay was down, throttling or refusing
/// everyone, so such a run never uses up a recipient's tries: their deliveries (pending,
/// or failed by that run) are queued again.
pub fn refund_attempts(
    conn: &Connection,
    number: IssueNumber,
    subscriber_ids: &[SubscriberId],
) -> rusqlite::Result<()> {
    store::in_write_transaction(conn, |tx| {
        let mut stmt = tx.prepare_cached(
            "UPDATE deliveries SET attempts = max(attempts - 1, 0), state = 0,
                    failure = NULL, next_attempt_ms = 0, bounce_held = 0
             WHERE issue = ? AND subscriber_id = ? AND state IN (0, 3)",
        )?;
        for id in subscriber_ids {
            stmt.execute(params![number, id])?;
        }
        Ok(())
    })
}

/// Deliveries of the issue whose "no such mailbox" refusal is still held.
pub fn held_bounces(conn: &Connection, number: IssueNumber) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT count(*) FROM deliveries WHERE issue = ? AND bounce_held = 1")?
        .query_row([number], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// Applies the held refusals of a run that ended with the relay judged sound: each is
/// recorded as a hard bounce (and the hygiene rules mark the reader bounced), like one that
/// arrives by mail later. In batches, so the write lock is never held for long. Returns how
/// many readers it marked bounced.
pub fn apply_held_bounces(
    conn: &Connection,
    number: IssueNumber,
    hygiene: events::Hygiene,
) -> rusqlite::Result<u64> {
    const BATCH: i64 = 500;
    let mut bounced = 0;
    loop {
        let done = store::in_write_transaction(conn, |tx| -> rusqlite::Result<bool> {
            let held: Vec<(SubscriberId, Option<String>)> = tx
                .prepare_cached(
                    "SELECT subscriber_id, last_reply FROM deliveries
                     WHERE issue = ? AND bounce_held = 1 LIMIT ?",
                )?
                .query_map(params![number, BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (subscriber_id, reply) in &held {
                let status = reply.as_deref().and_then(crate::inbound::enhanced_status);
                let effect = events::record(
                    tx,
                    &events::NewEvent {
                        subscriber_id: *subscriber_id,
                        issue: Some(number),
                        kind: events::EventKind::HardBounce,
                        source: events::Source::Smtp,
                        status: status.as_deref(),
                        diagnostic: reply.as_deref(),
                    },
                    hygiene,
                )?;
                if effect == events::Effect::Bounced {
                    bounced += 1;
                }
                tx.prepare_cached(
                    "UPDATE deliveries SET bounce_held = 0 WHERE issue = ? AND subscriber_id = ?",
                )?
                .execute(params![number, subscriber_id])?;
            }
            Ok(held.len() < BATCH as usize)
        })?;
        if done {
            return Ok(bounced);
        }
    }
}

/// Queues the held refusals of the issue again with their attempt given back: the run that
/// recorded them did not end with a verdict on the relay (it was interrupted, or the relay
/// turned out to refuse everyone), so they are asked again. Returns how many.
pub fn release_held_bounces(conn: &Connection, number: IssueNumber) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE deliveries SET state = 0, failure = NULL, next_attempt_ms = 0,
                attempts = max(attempts - 1, 0), bounce_held = 0
         WHERE issue = ? AND bounce_held = 1",
        [number],
    )
}

/// Puts the deliveries that failed only temporarily back in the queue, keeping their
/// attempt count (so each gets one more attempt per run). Returns how many.
pub fn requeue_deferred(conn: &Connection, number: IssueNumber) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE deliveries INDEXED BY deliveries_failed
         SET state = 0, failure = NULL, next_attempt_ms = 0
         WHERE issue = ? AND state = 3 AND failure IS 'temporary'",
        [number],
    )
}

/// Fails every delivery still pending, as a temporary failure with `reason` as its last
/// reply: the issue's deadline passed. Returns how many.
pub fn give_up_pending(
    conn: &Connection,
    number: IssueNumber,
    reason: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE deliveries SET state = 3, failure = 'temporary',
                last_reply = coalesce(last_reply || ' / ', '') || ?
         WHERE issue = ? AND state = 0",
        params![reason, number],
    )
}
