//! Readers' data rights: everything held about one reader ([`show`], the answer to an
//! access request) and erasure ([`erase`]): the reader's row and every per-recipient row
//! that names them go, the issue totals keep counting what happened, and a salted hash of
//! the address is kept so an old CSV or a stray `subscribers add` cannot bring them back
//! unnoticed ([`is_erased`]).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::mail::address::SubscriberEmail;
use crate::store::{self, SubscriberId};

const SALT_KEY: &str = "erasure_salt";

/// Why an address was erased, as recorded beside its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The reader (through the operator or the API) asked to be forgotten.
    Request,
    /// `retention.unsubscribed`: they left long enough ago.
    Retention,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Request => "request",
            Reason::Retention => "retention",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("`{address}` is not an email address: {reason}")]
    BadAddress { address: String, reason: String },
    #[error(transparent)]
    Store(#[from] rusqlite::Error),
}

/// What [`erase`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// The subscriber row, if the address was on the list.
    pub subscriber: Option<SubscriberId>,
    pub deliveries: u64,
    pub events: u64,
    /// The address had been erased before (its hash was already recorded).
    pub already_erased: bool,
}

/// The salt of the erasure hashes: random, made once per database, never leaving it.
fn salt(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM settings WHERE name = ?")?
        .query_row([SALT_KEY], |r| r.get(0))
        .optional()
}

fn make_salt(conn: &Connection) -> rusqlite::Result<String> {
    if let Some(salt) = salt(conn)? {
        return Ok(salt);
    }
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| rusqlite::Error::ToSqlConversionFailure("no randomness for a salt".into()))?;
    let salt = data_encoding::HEXLOWER.encode(&bytes);
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)",
        params![SALT_KEY, salt],
    )?;
    Ok(salt)
}

fn hash(salt: &str, email: &SubscriberEmail) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(email.normalized().as_bytes());
    data_encoding::HEXLOWER.encode(&h.finalize())
}

/// Erases the reader with this address (in any spelling of the same mailbox): their
/// subscriber row, and with it (by the schema's cascades and explicitly here) their
/// deliveries, events, confirmations, merge records and unattributed reports. The issue
/// totals are not changed: a delivery that went out stays counted. The address's salted
/// hash is recorded even if it was not on the list, so it is refused later. One write
/// transaction (joins the caller's if there is one).
pub fn erase(conn: &Connection, email: &str, reason: Reason) -> Result<Erased, EraseError> {
    let parsed = SubscriberEmail::parse(email).map_err(|e| EraseError::BadAddress {
        address: email.to_owned(),
        reason: e.to_string(),
    })?;
    store::in_write_transaction(conn, |tx| -> Result<Erased, EraseError> {
        let mut erased = Erased::default();
        let id: Option<SubscriberId> = tx
            .prepare_cached("SELECT id FROM subscribers WHERE email_norm = ?")?
            .query_row([parsed.normalized()], |r| r.get(0))
            .optional()?;
        if let Some(id) = id {
            erased.subscriber = Some(id);
            erased.deliveries = tx.query_row(
                "SELECT count(*) FROM deliveries
                 WHERE issue IN (SELECT number FROM issues) AND subscriber_id = ?",
                [id],
                |r| r.get::<_, i64>(0),
            )? as u64;
            erased.events = tx.query_row(
                "SELECT count(*) FROM events WHERE subscriber_id = ?",
                [id],
                |r| r.get::<_, i64>(0),
            )? as u64;
            // Tables that name the reader without a cascading reference. (A table added
            // later that references subscribers without ON DELETE CASCADE goes here.)
            tx.execute(
                "DELETE FROM subscriber_merges WHERE kept_id = ?1 OR removed_id = ?1",
                [id],
            )?;
            tx.execute(
                "DELETE FROM inbound_unattributed WHERE claimed_subscriber = ?1",
                [id],
            )?;
            // Announcements still queued for the operator's webhooks carry the address.
            tx.execute("DELETE FROM webhook_outbox WHERE subscriber_id = ?1", [id])?;
            tx.execute("DELETE FROM subscribers WHERE id = ?", [id])?;
        }
        let salt = make_salt(tx)?;
        let inserted = tx.execute(
            "INSERT INTO erased_addresses (hash, erased_at, reason) VALUES (?1, ?2, ?3)
             ON CONFLICT (hash) DO NOTHING",
            params![
                hash(&salt, &parsed),
                Utc::now().timestamp(),
                reason.as_str()
            ],
        )?;
        erased.already_erased = inserted == 0;
        Ok(erased)
    })
}

/// An erased address's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasedAddress {
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// Whether (and when) this address was erased.
pub fn is_erased(
    conn: &Connection,
    email: &SubscriberEmail,
) -> rusqlite::Result<Option<ErasedAddress>> {
    let Some(salt) = salt(conn)? else {
        return Ok(None);
    };
    conn.prepare_cached("SELECT erased_at, reason FROM erased_addresses WHERE hash = ?")?
        .query_row([hash(&salt, email)], |r| {
            Ok(ErasedAddress {
                at: DateTime::from_timestamp(r.get(0)?, 0).unwrap_or_default(),
                reason: r.get(1)?,
            })
        })
        .optional()
}

/// Lets the hash record go again (`--allow-erased`): the operator re-admitted the address.
pub fn forget_erasure(conn: &Connection, email: &SubscriberEmail) -> rusqlite::Result<()> {
    if let Some(salt) = salt(conn)? {
        conn.execute(
            "DELETE FROM erased_addresses WHERE hash = ?",
            [hash(&salt, email)],
        )?;
    }
    Ok(())
}

/// The message an erased address is refused with, naming it and the way through.
pub fn refusal(email: &str, erased: &ErasedAddress) -> String {
    format!(
        "`{email}` was erased on {} ({}); the reader asked to be forgotten, so it is not \
         added again unless you pass --allow-erased",
        erased.at.format("%Y-%m-%d"),
        match erased.reason.as_str() {
            "retention" => "retention.unsubscribed",
            _ => "an erasure request",
        }
    )
}

/// Addresses of readers who unsubscribed or bounced before `before`.
pub fn left_before(conn: &Connection, before: DateTime<Utc>) -> rusqlite::Result<Vec<String>> {
    conn.prepare(
        "SELECT email FROM subscribers
         WHERE status IN ('unsubscribed', 'bounced')
           AND coalesce(unsubscribed_at, updated_at) < ?",
    )?
    .query_map([store::timestamp(before)], |r| r.get(0))?
    .collect()
}

/// Everything held about one reader, for an access request.
#[derive(Debug, Clone, Serialize)]
pub struct ReaderRecord {
    pub subscriber: SubscriberRow,
    pub consent: Consent,
    pub confirmations: Vec<ConfirmationRow>,
    pub events: Vec<EventRow>,
    /// Deliveries still held (older ones are folded into issue totals and name nobody).
    pub deliveries: Vec<DeliveryRow>,
    /// The reader's community votes, one per tool.
    pub votes: Vec<store::tracking::ReaderVote>,
    /// Clicks recorded with the reader's id (only with `tracking.clicks: per-reader`).
    pub clicks: Vec<ClickRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClickRow {
    pub at: String,
    pub issue: i64,
    pub target: String,
    /// Why the click was counted as a machine's, if it was.
    pub machine: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscriberRow {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub unsubscribed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Consent {
    pub source: String,
    pub signed_up_at: String,
    pub confirmed_at: Option<String>,
    pub signup_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfirmationRow {
    pub created_at: String,
    pub mail_state: String,
    pub sent_at: Option<String>,
    pub confirmed_at: Option<String>,
    pub signup_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub at: String,
    pub kind: String,
    pub channel: Option<String>,
    pub source: String,
    pub issue: Option<i64>,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub issue: i64,
    pub subject: String,
    pub state: String,
    pub failure: Option<String>,
    pub attempts: i64,
    pub sent_at: Option<String>,
    pub last_reply: Option<String>,
}

/// The reader with this address and everything recorded about them, or `None`.
pub fn show(conn: &Connection, email: &SubscriberEmail) -> rusqlite::Result<Option<ReaderRecord>> {
    let row = conn
        .query_row(
            "SELECT id, email, name, status, created_at, updated_at, unsubscribed_at, source,
                    signed_up_at, confirmed_at, signup_ip
             FROM subscribers WHERE email_norm = ?",
            [email.normalized()],
            |r| {
                Ok((
                    SubscriberRow {
                        id: r.get(0)?,
                        email: r.get(1)?,
                        name: r.get(2)?,
                        status: r.get(3)?,
                        created_at: r.get(4)?,
                        updated_at: r.get(5)?,
                        unsubscribed_at: r.get(6)?,
                    },
                    Consent {
                        source: r.get(7)?,
                        signed_up_at: r.get(8)?,
                        confirmed_at: r.get(9)?,
                        signup_ip: r.get(10)?,
                    },
                ))
            },
        )
        .optional()?;
    let Some((subscriber, consent)) = row else {
        return Ok(None);
    };
    let id = subscriber.id;
    let confirmations = conn
        .prepare(
            "SELECT created_at, mail_state, sent_at, confirmed_at, signup_ip FROM confirmations
             WHERE subscriber_id = ? ORDER BY id",
        )?
        .query_map([id], |r| {
            Ok(ConfirmationRow {
                created_at: r.get(0)?,
                mail_state: r.get(1)?,
                sent_at: r.get(2)?,
                confirmed_at: r.get(3)?,
                signup_ip: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let events = conn
        .prepare(
            "SELECT at, kind, channel, source, issue, status, diagnostic FROM events
             WHERE subscriber_id = ? ORDER BY id",
        )?
        .query_map([id], |r| {
            Ok(EventRow {
                at: r.get(0)?,
                kind: r.get(1)?,
                channel: r.get(2)?,
                source: r.get(3)?,
                issue: r.get(4)?,
                status: r.get(5)?,
                diagnostic: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let deliveries = conn
        .prepare(
            "SELECT d.issue, i.subject, d.state, d.failure, d.attempts, d.sent_at, d.last_reply
             FROM deliveries d JOIN issues i ON i.number = d.issue
             WHERE d.issue IN (SELECT number FROM issues) AND d.subscriber_id = ?
             ORDER BY d.issue",
        )?
        .query_map([id], |r| {
            let sent_at: Option<i64> = r.get(5)?;
            Ok(DeliveryRow {
                issue: r.get(0)?,
                subject: r.get(1)?,
                state: store::ledger::state_name(r.get(2)?).to_owned(),
                failure: r.get(3)?,
                attempts: r.get(4)?,
                sent_at: sent_at
                    .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                    .map(store::timestamp),
                last_reply: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let votes = store::tracking::reader_votes(conn, SubscriberId(id))?;
    let clicks = conn
        .prepare(
            "SELECT at, issue, target, machine FROM clicks WHERE subscriber_id = ? ORDER BY id",
        )?
        .query_map([id], |r| {
            Ok(ClickRow {
                at: r.get(0)?,
                issue: r.get(1)?,
                target: r.get(2)?,
                machine: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(ReaderRecord {
        subscriber,
        consent,
        confirmations,
        events,
        deliveries,
        votes,
        clicks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::signup::{request_signup, SignupOutcome, SignupRequest};
    use crate::store::subscribers::{add, SubscriberSource};
    use crate::store::testing::{email, store};

    #[test]
    fn an_erased_address_is_known_in_any_spelling_and_only_by_its_hash() {
        let (_dir, conn) = store();
        add(
            &conn,
            &email("Ada@Example.com"),
            None,
            SubscriberSource::Cli,
        )
        .unwrap();
        let erased = erase(&conn, "ada@EXAMPLE.com", Reason::Request).unwrap();
        assert!(erased.subscriber.is_some());
        assert!(!erased.already_erased);
        assert!(is_erased(&conn, &email("ADA@example.com"))
            .unwrap()
            .is_some());
        assert!(is_erased(&conn, &email("bob@example.com"))
            .unwrap()
            .is_none());
        let stored: String = conn
            .query_row("SELECT hash FROM erased_addresses", [], |r| r.get(0))
            .unwrap();
        assert!(!stored.contains("ada"), "only a hash is kept: {stored}");
        assert_eq!(stored.len(), 64);
        assert!(
            erase(&conn, "ada@example.com", Reason::Request)
                .unwrap()
                .already_erased
        );
        let err = erase(&conn, "not an address", Reason::Request).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("`not an address` is not an email address"));
    }

    #[test]
    fn a_signup_of_an_erased_address_is_refused_without_a_mail() {
        let (_dir, conn) = store();
        erase(&conn, "gone@example.com", Reason::Request).unwrap();
        let e = email("gone@example.com");
        let outcome = request_signup(
            &conn,
            &SignupRequest {
                email: &e,
                name: None,
                source: SubscriberSource::Web,
                ip: None,
                expire_after: std::time::Duration::from_secs(3600),
                resend_after: std::time::Duration::from_secs(3600),
            },
        )
        .unwrap();
        assert_eq!(outcome, SignupOutcome::Refused);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM subscribers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
