//! What the relays' event webhooks need beside the shared event path: the signed requests
//! already taken (so a replay inside the freshness window is refused), and the ids relays
//! give messages in their 250 replies (so an event naming only that id finds its delivery).

use std::time::Duration;

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

use super::{IssueNumber, SubscriberId};
use crate::store as db;

/// Takes a request's one-time token (`provider`'s token or signature); false when it was
/// taken before. Tokens older than `window` are forgotten: a request that old is refused
/// as stale anyway. Runs in the caller's transaction.
pub fn take_token(
    conn: &Connection,
    provider: &str,
    token: &str,
    window: Duration,
) -> rusqlite::Result<bool> {
    let now = Utc::now();
    let horizon = now - chrono::Duration::from_std(window * 2).unwrap_or(chrono::Duration::days(1));
    conn.prepare_cached("DELETE FROM webhook_replays WHERE seen_at < ?")?
        .execute([db::timestamp(horizon)])?;
    let n = conn
        .prepare_cached(
            "INSERT INTO webhook_replays (provider, token, seen_at) VALUES (?, ?, ?)
             ON CONFLICT (provider, token) DO NOTHING",
        )?
        .execute(params![provider, token, db::timestamp(now)])?;
    Ok(n == 1)
}

/// True when the token was taken (and not yet forgotten).
pub fn token_taken(conn: &Connection, provider: &str, token: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM webhook_replays WHERE provider = ? AND token = ?")?
        .query_row(params![provider, token], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Records the id a relay gave one delivery (the first record of an id wins).
pub fn record_relay_message_id(
    conn: &Connection,
    relay_id: &str,
    issue: IssueNumber,
    subscriber_id: SubscriberId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO relay_message_ids (relay_id, issue, subscriber_id, recorded_at)
         VALUES (?, ?, ?, ?) ON CONFLICT (relay_id) DO NOTHING",
    )?
    .execute(params![
        relay_id,
        issue,
        subscriber_id,
        db::timestamp(Utc::now())
    ])?;
    Ok(())
}

/// The delivery a relay's message id was recorded for.
pub fn delivery_for_relay_id(
    conn: &Connection,
    relay_id: &str,
) -> rusqlite::Result<Option<(IssueNumber, SubscriberId)>> {
    conn.prepare_cached("SELECT issue, subscriber_id FROM relay_message_ids WHERE relay_id = ?")?
        .query_row([relay_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::store;

    #[test]
    fn a_token_is_taken_once() {
        let (_dir, conn) = store();
        let window = Duration::from_secs(300);
        assert!(take_token(&conn, "mailgun", "abc", window).unwrap());
        assert!(!take_token(&conn, "mailgun", "abc", window).unwrap());
        assert!(take_token(&conn, "sendgrid", "abc", window).unwrap());
        assert!(token_taken(&conn, "mailgun", "abc").unwrap());
        assert!(!token_taken(&conn, "generic", "abc").unwrap());
        assert_eq!(delivery_for_relay_id(&conn, "0100-x").unwrap(), None);
    }
}
