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

/// The id a hosted relay gives the message in its 250 reply to DATA, when the reply has one
/// of the known shapes: Amazon SES's `250 Ok <message id>`, and `… queued as <id>` with an id
/// long enough to be a relay's (SendGrid's X-Message-Id; a local Postfix queue id is
/// shorter and names nothing a webhook reports).
pub fn relay_id_in_reply(reply: &str) -> Option<&str> {
    static SES: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)^250 (?:2\.\d{1,3}\.\d{1,3} )?ok:? ([0-9a-f]{16}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-[0-9a-f]{6})\s*$",
        )
        .expect("valid regex")
    });
    static QUEUED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)^250 .*queued as <?([A-Za-z0-9_-]{20,64})>?\s*$")
            .expect("valid regex")
    });
    SES.captures(reply)
        .or_else(|| QUEUED.captures(reply))
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
}

/// Records the relay's id for a delivery the relay accepted with `reply`, when the reply
/// carries one. Runs in the ledger writer's transaction.
pub fn record_reply_id(
    conn: &Connection,
    reply: &str,
    issue: IssueNumber,
    subscriber_id: SubscriberId,
) -> rusqlite::Result<()> {
    match relay_id_in_reply(reply) {
        Some(id) => record_relay_message_id(conn, id, issue, subscriber_id),
        None => Ok(()),
    }
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
    fn relay_ids_are_read_from_known_replies_only() {
        assert_eq!(
            relay_id_in_reply(
                "250 Ok 0100018c6f3e0f11-5d2a9b7c-1e2f-4a3b-9c8d-7e6f5a4b3c2d-000000"
            ),
            Some("0100018c6f3e0f11-5d2a9b7c-1e2f-4a3b-9c8d-7e6f5a4b3c2d-000000")
        );
        assert_eq!(
            relay_id_in_reply("250 Ok: queued as jQ8cRAuoQ0e_3XbNsBpVOA"),
            Some("jQ8cRAuoQ0e_3XbNsBpVOA")
        );
        assert_eq!(
            relay_id_in_reply("250 2.0.0 Ok: queued as 4Y3X0m1Gk5z9v"),
            None
        );
        assert_eq!(relay_id_in_reply("250 Great success"), None);
        assert_eq!(relay_id_in_reply("250 2.0.0 Ok"), None);
    }

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
