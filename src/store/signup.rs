//! Signups with double opt-in: the pending subscriber, the confirmation each signup asks
//! for (which is also the outbox entry of its mail), confirming, and expiring what was
//! never confirmed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::subscribers::{
    find, get, now, StoreError, Subscriber, SubscriberSource, SubscriberStatus,
};
use crate::mail::address::{SubscriberEmail, SubscriberName};
use crate::store::{self, SubscriberId};

/// One signup request that passed the web endpoint's checks.
#[derive(Debug, Clone)]
pub struct SignupRequest<'a> {
    pub email: &'a SubscriberEmail,
    pub name: Option<&'a SubscriberName>,
    /// `Web` (the form) or `Api` (JSON).
    pub source: SubscriberSource,
    /// Kept only when the operator turned `signup.record_ip` on.
    pub ip: Option<String>,
    /// How long the confirmation link works.
    pub expire_after: Duration,
    /// No second confirmation mail for the same address within this time.
    pub resend_after: Duration,
}

/// What a signup request led to. The visitor sees the same answer for every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupOutcome {
    /// A confirmation mail is queued (a new, pending or unsubscribed address).
    Queued { confirmation: i64 },
    /// A confirmation went to this address a moment ago; no second one.
    RecentlyMailed,
    /// Already receiving the newsletter; nothing to do.
    AlreadyActive,
    /// The address bounced: it gets nothing.
    Refused,
}

/// Records a signup: adds a pending subscriber for a new address and queues a
/// confirmation mail when the address may get one.
pub fn request_signup(
    conn: &Connection,
    req: &SignupRequest<'_>,
) -> Result<SignupOutcome, StoreError> {
    store::in_write_transaction(conn, |conn| {
        let now = now();
        let stamp = store::timestamp(now);
        let name = req.name.map(SubscriberName::as_str);
        let subscriber_id = match find(conn, req.email)? {
            None if store::privacy::is_erased(conn, req.email)?.is_some() => {
                // The reader asked to be forgotten; the form answers as always, mails
                // nothing, and the log names no address.
                tracing::info!(
                    "signup refused: the address was erased at the reader's request                      (`verdicts subscribers add --allow-erased` re-admits it)"
                );
                return Ok(SignupOutcome::Refused);
            }
            None => {
                conn.prepare_cached(
                    "INSERT INTO subscribers (email, email_norm, name, status, source, created_at,
                                              updated_at, signed_up_at, signup_ip)
                     VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?5, ?5, ?6)",
                )?
                .execute(params![
                    req.email.as_str(),
                    req.email.normalized(),
                    name,
                    req.source,
                    stamp,
                    req.ip
                ])?;
                SubscriberId(conn.last_insert_rowid())
            }
            Some(s) => match s.status {
                SubscriberStatus::Active => return Ok(SignupOutcome::AlreadyActive),
                SubscriberStatus::Bounced => return Ok(SignupOutcome::Refused),
                SubscriberStatus::Pending | SubscriberStatus::Unsubscribed => {
                    if mailed_since(conn, s.id, now - req.resend_after)? {
                        return Ok(SignupOutcome::RecentlyMailed);
                    }
                    if s.status == SubscriberStatus::Pending {
                        // A pending signup lives as long as its newest confirmation link.
                        conn.prepare_cached(
                            "UPDATE subscribers SET name = coalesce(?2, name), source = ?3,
                                 updated_at = ?4, signed_up_at = ?4, signup_ip = ?5
                             WHERE id = ?1",
                        )?
                        .execute(params![s.id, name, req.source, stamp, req.ip])?;
                    }
                    s.id
                }
            },
        };
        let expires =
            now + chrono::Duration::from_std(req.expire_after).unwrap_or(chrono::Duration::days(7));
        conn.prepare_cached(
            "INSERT INTO confirmations (subscriber_id, source, signup_ip, created_at, expires_at,
                                        mail_state)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued')",
        )?
        .execute(params![
            subscriber_id,
            req.source,
            req.ip,
            stamp,
            store::timestamp(expires)
        ])?;
        Ok(SignupOutcome::Queued {
            confirmation: conn.last_insert_rowid(),
        })
    })
}

fn mailed_since(
    conn: &Connection,
    id: SubscriberId,
    since: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM confirmations WHERE subscriber_id = ?1 AND created_at > ?2 LIMIT 1",
        )?
        .query_row(params![id, store::timestamp(since)], |_| Ok(()))
        .optional()?
        .is_some())
}

/// A confirmation as the confirmation link names it.
#[derive(Debug, Clone)]
pub struct Confirmation {
    pub id: i64,
    pub subscriber: Subscriber,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// It was used: the link confirmed its subscriber once and never acts again.
    pub used: bool,
    /// Withdrawn unused, when its reader unsubscribed or bounced after it was mailed.
    pub revoked: bool,
}

/// Finds a confirmation and the subscriber it is for.
pub fn confirmation(conn: &Connection, id: i64) -> Result<Option<Confirmation>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT subscriber_id, created_at, expires_at, confirmed_at IS NOT NULL,
                    revoked_at IS NOT NULL
             FROM confirmations WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, SubscriberId>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })
        .optional()?;
    let Some((subscriber_id, created, expires, used, revoked)) = row else {
        return Ok(None);
    };
    let Some(subscriber) = get(conn, subscriber_id)? else {
        return Ok(None);
    };
    let (Some(created_at), Some(expires_at)) = (
        store::parse_timestamp(&created),
        store::parse_timestamp(&expires),
    ) else {
        return Ok(None);
    };
    Ok(Some(Confirmation {
        id,
        subscriber,
        created_at,
        expires_at,
        used,
        revoked,
    }))
}

/// What pressing the confirmation button did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// Pending or unsubscribed until now; receives the next issue.
    Activated(Subscriber),
    /// Confirmed before (or added by the operator): nothing changed.
    AlreadyActive(Subscriber),
    /// The address bounced since it signed up: it stays as it is.
    NotAllowed(Subscriber),
    /// The link was used before, or withdrawn when its reader left after it was mailed:
    /// it changes nothing, ever. Only a new signup brings an unsubscribed reader back.
    Spent(Subscriber),
}

/// Activates the subscriber of a (verified, unexpired) confirmation, recording the consent
/// it carries. A confirmation acts once: used, or withdrawn because its reader unsubscribed
/// or bounced after it was mailed, it never changes anyone again (a reader who is active
/// is told so, and nothing is rewritten).
pub fn confirm(conn: &Connection, id: i64) -> Result<Option<ConfirmOutcome>, StoreError> {
    store::in_write_transaction(conn, |conn| {
        let Some(c) = confirmation(conn, id)? else {
            return Ok(None);
        };
        match c.subscriber.status {
            SubscriberStatus::Active => {
                return Ok(Some(ConfirmOutcome::AlreadyActive(c.subscriber)))
            }
            SubscriberStatus::Bounced => return Ok(Some(ConfirmOutcome::NotAllowed(c.subscriber))),
            SubscriberStatus::Pending | SubscriberStatus::Unsubscribed => {}
        }
        if c.used || c.revoked {
            return Ok(Some(ConfirmOutcome::Spent(c.subscriber)));
        }
        let stamp = store::timestamp(now());
        conn.prepare_cached(
            "UPDATE subscribers
             SET status = 'active', updated_at = ?2, unsubscribed_at = NULL, confirmed_at = ?2,
                 source = c.source, signed_up_at = c.created_at, signup_ip = c.signup_ip
             FROM (SELECT source, created_at, signup_ip FROM confirmations WHERE id = ?3) AS c
             WHERE subscribers.id = ?1",
        )?
        .execute(params![c.subscriber.id, stamp, id])?;
        // Used now; the subscriber's other open links have nothing left to confirm.
        conn.prepare_cached(
            "UPDATE confirmations SET confirmed_at = ?2 WHERE id = ?1 AND confirmed_at IS NULL",
        )?
        .execute(params![id, stamp])?;
        conn.prepare_cached(
            "UPDATE confirmations SET revoked_at = ?3
             WHERE subscriber_id = ?1 AND id <> ?2 AND confirmed_at IS NULL AND revoked_at IS NULL",
        )?
        .execute(params![c.subscriber.id, id, stamp])?;
        let subscriber = get(conn, c.subscriber.id)?.expect("updated in this transaction");
        Ok(Some(ConfirmOutcome::Activated(subscriber)))
    })
}

/// A confirmation mail waiting to be sent.
#[derive(Debug, Clone)]
pub struct QueuedMail {
    pub id: i64,
    pub email: SubscriberEmail,
    pub name: Option<SubscriberName>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub attempts: u32,
}

/// Up to `limit` queued confirmation mails due at `now_ms` (milliseconds since the epoch)
/// whose links have not expired, oldest first.
pub fn due_mails(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<QueuedMail>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, s.email, s.name, c.created_at, c.expires_at, c.attempts
         FROM confirmations c JOIN subscribers s ON s.id = c.subscriber_id
         WHERE c.mail_state = 'queued' AND c.next_attempt_ms <= ?1 AND c.expires_at > ?2
         ORDER BY c.next_attempt_ms, c.id LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![now_ms, store::timestamp(Utc::now()), limit as i64],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, u32>(5)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, email, name, created, expires, attempts) = row?;
        // Rows were validated on the way in; one edited by hand into nonsense is skipped.
        let (Ok(email), Some(created_at), Some(expires_at)) = (
            SubscriberEmail::parse(&email),
            store::parse_timestamp(&created),
            store::parse_timestamp(&expires),
        ) else {
            continue;
        };
        let name = name.and_then(|n| SubscriberName::parse(&n).ok().flatten());
        out.push(QueuedMail {
            id,
            email,
            name,
            created_at,
            expires_at,
            attempts,
        });
    }
    Ok(out)
}

/// When the next queued mail is due (milliseconds since the epoch), if any is queued.
pub fn next_due_ms(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT min(next_attempt_ms) FROM confirmations WHERE mail_state = 'queued'",
        )?
        .query_row([], |r| r.get(0))?)
}

/// Records a confirmation mail the server accepted.
pub fn mark_sent(conn: &Connection, id: i64, reply: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE confirmations SET mail_state = 'sent', attempts = attempts + 1, last_reply = ?2,
             sent_at = ?3
         WHERE id = ?1",
    )?
    .execute(params![id, reply, store::timestamp(now())])?;
    Ok(())
}

/// Records a failed attempt: retried at `next_ms`, or given up on when `None`.
pub fn mark_attempt_failed(
    conn: &Connection,
    id: i64,
    reply: &str,
    next_ms: Option<i64>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE confirmations
         SET attempts = attempts + 1, last_reply = ?2,
             mail_state = CASE WHEN ?3 IS NULL THEN 'failed' ELSE 'queued' END,
             next_attempt_ms = coalesce(?3, next_attempt_ms)
         WHERE id = ?1",
    )?
    .execute(params![id, reply, next_ms])?;
    Ok(())
}

/// What [`expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub signups: usize,
    pub confirmations: usize,
}

/// Removes pending subscribers who signed up more than `expire_after` ago and never
/// confirmed, and confirmations whose links have expired.
pub fn expire(conn: &Connection, expire_after: Duration) -> Result<Expired, StoreError> {
    store::in_write_transaction(conn, |conn| {
        let now = now();
        let cutoff =
            now - chrono::Duration::from_std(expire_after).unwrap_or(chrono::Duration::days(7));
        let signups = conn
            .prepare_cached(
                "DELETE FROM subscribers WHERE status = 'pending' AND signed_up_at <= ?1",
            )?
            .execute([store::timestamp(cutoff)])?;
        let confirmations = conn
            .prepare_cached("DELETE FROM confirmations WHERE expires_at <= ?1")?
            .execute([store::timestamp(now)])?;
        Ok(Expired {
            signups,
            confirmations,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::subscribers::{add, set_status, AddOutcome};
    use crate::store::testing::{email, store};

    fn request(e: &SubscriberEmail) -> SignupRequest<'_> {
        SignupRequest {
            email: e,
            name: None,
            source: SubscriberSource::Web,
            ip: None,
            expire_after: Duration::from_secs(3600),
            resend_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn who_gets_a_confirmation_depends_on_their_status() {
        let (_dir, conn) = store();
        let new = email("new@example.com");
        assert!(matches!(
            request_signup(&conn, &request(&new)).unwrap(),
            SignupOutcome::Queued { .. }
        ));
        assert_eq!(
            find(&conn, &new).unwrap().unwrap().status,
            SubscriberStatus::Pending
        );
        // Asking again within the hour queues nothing.
        assert_eq!(
            request_signup(&conn, &request(&new)).unwrap(),
            SignupOutcome::RecentlyMailed
        );

        let active = email("active@example.com");
        add(&conn, &active, None, SubscriberSource::Cli).unwrap();
        assert_eq!(
            request_signup(&conn, &request(&active)).unwrap(),
            SignupOutcome::AlreadyActive
        );

        let bounced = email("bounced@example.com");
        add(&conn, &bounced, None, SubscriberSource::Cli).unwrap();
        set_status(&conn, &bounced, SubscriberStatus::Bounced).unwrap();
        assert_eq!(
            request_signup(&conn, &request(&bounced)).unwrap(),
            SignupOutcome::Refused
        );

        let gone = email("gone@example.com");
        add(&conn, &gone, None, SubscriberSource::Cli).unwrap();
        set_status(&conn, &gone, SubscriberStatus::Unsubscribed).unwrap();
        let SignupOutcome::Queued { confirmation } =
            request_signup(&conn, &request(&gone)).unwrap()
        else {
            panic!("an unsubscribed reader may come back")
        };
        // Still unsubscribed until they confirm; then active, with the web consent.
        assert_eq!(
            find(&conn, &gone).unwrap().unwrap().status,
            SubscriberStatus::Unsubscribed
        );
        let Some(ConfirmOutcome::Activated(s)) = confirm(&conn, confirmation).unwrap() else {
            panic!("not activated")
        };
        assert_eq!(s.status, SubscriberStatus::Active);
        assert_eq!(s.source, SubscriberSource::Web);
        assert!(s.confirmed_at.is_some());
        assert!(matches!(
            confirm(&conn, confirmation).unwrap(),
            Some(ConfirmOutcome::AlreadyActive(_))
        ));
    }

    #[test]
    fn a_confirmation_acts_once_and_never_undoes_a_later_unsubscribe() {
        let (_dir, conn) = store();
        let ada = email("ada@example.com");
        let SignupOutcome::Queued { confirmation: used } =
            request_signup(&conn, &request(&ada)).unwrap()
        else {
            panic!()
        };
        // A second link mailed while pending (the resend window passed).
        let mut again = request(&ada);
        again.resend_after = Duration::ZERO;
        let SignupOutcome::Queued {
            confirmation: spare,
        } = request_signup(&conn, &again).unwrap()
        else {
            panic!()
        };
        let Some(ConfirmOutcome::Activated(s)) = confirm(&conn, used).unwrap() else {
            panic!()
        };
        let confirmed_at = s.confirmed_at;
        set_status(&conn, &ada, SubscriberStatus::Unsubscribed).unwrap();
        // Neither the used link nor the one never clicked brings the reader back.
        for id in [used, spare] {
            assert!(matches!(
                confirm(&conn, id).unwrap(),
                Some(ConfirmOutcome::Spent(_))
            ));
        }
        let now = find(&conn, &ada).unwrap().unwrap();
        assert_eq!(now.status, SubscriberStatus::Unsubscribed);
        assert_eq!(now.confirmed_at, confirmed_at, "not rewritten");
        // A signup after leaving gets a link of its own, which works once.
        let SignupOutcome::Queued {
            confirmation: fresh,
        } = request_signup(&conn, &again).unwrap()
        else {
            panic!()
        };
        assert!(matches!(
            confirm(&conn, fresh).unwrap(),
            Some(ConfirmOutcome::Activated(_))
        ));
        // A link mailed before a bounce is withdrawn with it.
        let bob = email("bob@example.com");
        let SignupOutcome::Queued { confirmation: bobs } =
            request_signup(&conn, &request(&bob)).unwrap()
        else {
            panic!()
        };
        set_status(&conn, &bob, SubscriberStatus::Bounced).unwrap();
        assert!(confirmation(&conn, bobs).unwrap().unwrap().revoked);
    }

    #[test]
    fn unconfirmed_signups_expire_and_confirmed_ones_stay() {
        let (_dir, conn) = store();
        let a = email("a@example.com");
        let mut req_a = request(&a);
        req_a.expire_after = Duration::from_secs(1);
        request_signup(&conn, &req_a).unwrap();
        let b = email("b@example.com");
        let SignupOutcome::Queued { confirmation } = request_signup(&conn, &request(&b)).unwrap()
        else {
            panic!()
        };
        confirm(&conn, confirmation).unwrap();
        let AddOutcome::Added(_) =
            add(&conn, &email("c@example.com"), None, SubscriberSource::Cli).unwrap()
        else {
            panic!()
        };
        std::thread::sleep(Duration::from_millis(2100));
        let expired = expire(&conn, Duration::from_secs(1)).unwrap();
        assert_eq!(expired.signups, 1);
        assert!(find(&conn, &a).unwrap().is_none());
        assert!(find(&conn, &b).unwrap().is_some());
    }
}
