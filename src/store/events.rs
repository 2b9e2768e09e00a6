//! Subscriber events: every bounce, complaint and unsubscribe, recorded against the
//! delivery it concerns, and the list-hygiene rules that turn them into a status change.
//! Also the inbound messages already handled, so a message read twice changes nothing.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{IssueNumber, SubscriberId};
use crate::store as db;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    HardBounce,
    SoftBounce,
    Complaint,
    Unsubscribe(Channel),
}

/// How a reader unsubscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// RFC 8058 one-click POST from the mail client.
    OneClick,
    /// The button on the unsubscribe page.
    Page,
    /// A message to the List-Unsubscribe mailto address.
    Mailto,
    /// The relay's own unsubscribe link or suppression, reported by its webhook.
    Relay,
    /// The operator's own system, through the JSON API.
    Api,
    /// The operator's `subscribers unsubscribe`.
    Cli,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::OneClick => "one-click",
            Channel::Page => "page",
            Channel::Mailto => "mailto",
            Channel::Relay => "relay",
            Channel::Api => "api",
            Channel::Cli => "cli",
        }
    }
}

impl EventKind {
    fn columns(self) -> (&'static str, Option<&'static str>) {
        match self {
            EventKind::HardBounce => ("hard_bounce", None),
            EventKind::SoftBounce => ("soft_bounce", None),
            EventKind::Complaint => ("complaint", None),
            EventKind::Unsubscribe(c) => ("unsubscribe", Some(c.as_str())),
        }
    }
}

/// Where an event was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Smtp,
    Inbound,
    Web,
    /// A relay's signed event webhook.
    Webhook,
    /// The JSON API.
    Api,
    /// The command line.
    Cli,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Smtp => "smtp",
            Source::Inbound => "inbound",
            Source::Web => "web",
            Source::Webhook => "webhook",
            Source::Api => "api",
            Source::Cli => "cli",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub subscriber_id: SubscriberId,
    /// The issue whose delivery it concerns, when known.
    pub issue: Option<IssueNumber>,
    pub kind: EventKind,
    pub source: Source,
    pub status: Option<&'a str>,
    pub diagnostic: Option<&'a str>,
}

/// When bounces make a subscriber `bounced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hygiene {
    /// Hard bounces (in total) after which the subscriber is never mailed again.
    pub hard_bounces: u32,
    /// Consecutive issues with a bounce after which soft bounces count as dead.
    pub soft_bounce_issues: u32,
}

impl Default for Hygiene {
    fn default() -> Self {
        Hygiene {
            hard_bounces: 1,
            soft_bounce_issues: 3,
        }
    }
}

/// What recording an event did to the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Recorded; the subscriber's status stays as it was.
    Recorded,
    /// The subscriber is now `bounced`.
    Bounced,
    /// The subscriber is now `unsubscribed`.
    Unsubscribed,
}

/// Records an event and applies the hygiene rules, in the caller's transaction (or its own).
/// Unsubscribes and complaints are announced to outgoing webhooks by the schema itself
/// (migration 13's trigger on `events`), in this same transaction, whoever the caller is.
pub fn record(
    conn: &Connection,
    event: &NewEvent<'_>,
    hygiene: Hygiene,
) -> rusqlite::Result<Effect> {
    db::in_write_transaction(conn, |tx| {
        let now = db::timestamp(Utc::now());
        let (kind, channel) = event.kind.columns();
        tx.prepare_cached(
            "INSERT INTO events (subscriber_id, issue, kind, channel, source, status, diagnostic, at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            event.subscriber_id,
            event.issue,
            kind,
            channel,
            event.source.as_str(),
            event.status,
            event.diagnostic,
            now
        ])?;
        let leaves = match event.kind {
            EventKind::HardBounce => {
                hard_bounces(tx, event.subscriber_id)? >= u64::from(hygiene.hard_bounces.max(1))
            }
            EventKind::SoftBounce => match event.issue {
                Some(issue) => bounced_on_consecutive_issues(
                    tx,
                    event.subscriber_id,
                    issue,
                    hygiene.soft_bounce_issues.max(1),
                )?,
                None => false,
            },
            EventKind::Complaint | EventKind::Unsubscribe(_) => {
                let changed = tx
                    .prepare_cached(
                        "UPDATE subscribers SET status = 'unsubscribed', updated_at = ?1,
                                unsubscribed_at = ?1
                         WHERE id = ?2 AND status = 'active'",
                    )?
                    .execute(params![now, event.subscriber_id])?;
                return Ok(if changed == 1 {
                    Effect::Unsubscribed
                } else {
                    Effect::Recorded
                });
            }
        };
        if !leaves {
            return Ok(Effect::Recorded);
        }
        let changed = tx
            .prepare_cached(
                "UPDATE subscribers SET status = 'bounced', updated_at = ?
                 WHERE id = ? AND status = 'active'",
            )?
            .execute(params![now, event.subscriber_id])?;
        Ok(if changed == 1 {
            Effect::Bounced
        } else {
            Effect::Recorded
        })
    })
}

fn hard_bounces(conn: &Connection, subscriber_id: SubscriberId) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM events WHERE subscriber_id = ? AND kind = 'hard_bounce'",
    )?
    .query_row([subscriber_id], |r| r.get::<_, i64>(0))
    .map(|n| n as u64)
}

/// True when each of the last `n` issues delivered to the subscriber (up to and including
/// `issue`) has a bounce recorded. Issues the subscriber was not sent do not break the run.
fn bounced_on_consecutive_issues(
    conn: &Connection,
    subscriber_id: SubscriberId,
    issue: IssueNumber,
    n: u32,
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM events e
                        WHERE e.subscriber_id = d.subscriber_id AND e.issue = d.issue
                          AND e.kind IN ('soft_bounce', 'hard_bounce'))
         FROM deliveries d
         WHERE d.issue IN (SELECT number FROM issues WHERE number <= ?2) AND d.subscriber_id = ?1
           AND d.state IN (1, 3)
         ORDER BY d.issue DESC LIMIT ?3",
    )?;
    let runs = stmt
        .query_map(params![subscriber_id, issue, n], |r| r.get::<_, bool>(0))?
        .collect::<rusqlite::Result<Vec<bool>>>()?;
    Ok(runs.len() == n as usize && runs.iter().all(|b| *b))
}

/// Records an unsubscribe made on the web (the status change itself is the caller's),
/// attributed to the issue most recently sent to the subscriber: the one whose link they
/// followed, as far as anyone can tell.
pub fn record_web_unsubscribe(
    conn: &Connection,
    subscriber_id: SubscriberId,
    channel: Channel,
) -> rusqlite::Result<()> {
    let issue = latest_sent_issue(conn, subscriber_id)?;
    record(
        conn,
        &NewEvent {
            subscriber_id,
            issue,
            kind: EventKind::Unsubscribe(channel),
            source: Source::Web,
            status: None,
            diagnostic: None,
        },
        Hygiene::default(),
    )
    .map(|_| ())
}

/// The issue most recently sent to a subscriber: where an event that names only the
/// address (or a web unsubscribe) is attributed.
pub fn latest_sent_issue(
    conn: &Connection,
    subscriber_id: SubscriberId,
) -> rusqlite::Result<Option<IssueNumber>> {
    conn.prepare_cached(
        "SELECT max(issue) FROM deliveries
         WHERE issue IN (SELECT number FROM issues) AND subscriber_id = ? AND state IN (1, 3)",
    )?
    .query_row([subscriber_id], |r| r.get(0))
}

/// True when the issue was delivered (or attempted) to the subscriber. For an issue whose
/// rows were compacted (`store::retention`) that can no longer be looked up, so a listed
/// subscriber counts: the caller holds signed evidence (a VERP tag or a signed Message-ID)
/// naming this issue and subscriber, which only a real delivery carries.
pub fn has_delivery(
    conn: &Connection,
    issue: IssueNumber,
    subscriber_id: SubscriberId,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE issue = ?1 AND subscriber_id = ?2)
             OR (EXISTS (SELECT 1 FROM issue_totals
                         WHERE issue = ?1 AND compacted_at IS NOT NULL)
                 AND EXISTS (SELECT 1 FROM subscribers WHERE id = ?2))",
    )?
    .query_row(params![issue, subscriber_id], |r| r.get(0))
}

/// Marks an inbound message as handled; false when it already was (nothing to do).
pub fn mark_processed(conn: &Connection, key: &str, outcome: &str) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO inbound_processed (key, outcome, processed_at) VALUES (?, ?, ?)
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![key, outcome, db::timestamp(Utc::now())])?;
    Ok(n == 1)
}

pub fn is_processed(conn: &Connection, key: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM inbound_processed WHERE key = ?")?
        .query_row([key], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Per-issue counts for `issues show`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IssueEvents {
    /// Deliveries the receiving server accepted (250).
    pub delivered: u64,
    /// Deliveries attempted: accepted or refused (what the bounce rate is taken over).
    pub attempted: u64,
    pub hard_bounces: u64,
    pub soft_bounces: u64,
    pub complaints: u64,
    pub one_click: u64,
    pub page: u64,
    pub mailto: u64,
    /// Unsubscribes by any other channel (a relay's webhook, the API).
    pub other_unsubscribes: u64,
}

impl IssueEvents {
    pub fn unsubscribes(&self) -> u64 {
        self.one_click + self.page + self.mailto + self.other_unsubscribes
    }

    pub fn bounces(&self) -> u64 {
        self.hard_bounces + self.soft_bounces
    }
}

/// Counts subscribers, not events: a reader who bounced twice on one issue counts once.
/// Read from the issue's totals (migration 10), which outlive its per-recipient rows.
pub fn issue_events(conn: &Connection, issue: IssueNumber) -> rusqlite::Result<IssueEvents> {
    conn.prepare_cached(
        "SELECT sent, sent + failed_permanent + failed_temporary, hard_bounces, soft_bounces,
                complaints, unsub_one_click, unsub_page, unsub_mailto, unsub_other
         FROM issue_totals WHERE issue = ?",
    )?
    .query_row([issue], |r| {
        let n = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
        Ok(IssueEvents {
            delivered: n(0)?,
            attempted: n(1)?,
            hard_bounces: n(2)?,
            soft_bounces: n(3)?,
            complaints: n(4)?,
            one_click: n(5)?,
            page: n(6)?,
            mailto: n(7)?,
            other_unsubscribes: n(8)?,
        })
    })
    .optional()
    .map(Option::unwrap_or_default)
}

/// Why and when a subscriber last bounced, for `subscribers list --status bounced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceReason {
    pub kind: String,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
    pub at: DateTime<Utc>,
}

pub fn last_bounce(
    conn: &Connection,
    subscriber_id: SubscriberId,
) -> rusqlite::Result<Option<BounceReason>> {
    conn.prepare_cached(
        "SELECT kind, status, diagnostic, at FROM events
         WHERE subscriber_id = ? AND kind IN ('hard_bounce', 'soft_bounce')
         ORDER BY id DESC LIMIT 1",
    )?
    .query_row([subscriber_id], |r| {
        let at: String = r.get(3)?;
        Ok(BounceReason {
            kind: r.get(0)?,
            status: r.get(1)?,
            diagnostic: r.get(2)?,
            at: db::parse_timestamp(&at).unwrap_or_default(),
        })
    })
    .optional()
}
