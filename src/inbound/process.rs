//! Acting on one inbound message: classify it, find the subscriber and delivery it
//! concerns, record the events and apply the hygiene rules, all in one transaction together
//! with the note that the message was handled, so reading it again changes nothing.
//!
//! Only signed evidence acts: a VERP tag (on the address the message came to, or quoted in
//! the report) or a Message-ID whose MAC verifies. A bounce, complaint or unsubscribe with
//! anything less (an address, an unsigned or legacy Message-ID) is kept as unattributed,
//! with what it claims, for the operator to see; it changes no subscriber.

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::{classify, Attribution, Context, Ignored, Inbound, Kind, Severity};
use crate::mail::verp::{Purpose, VerpKey};
use crate::store::events::{self, Channel, Effect, EventKind, Hygiene, NewEvent, Source};
use crate::store::unattributed::{self, NewReport};
use crate::store::{self as db, IssueNumber, SubscriberId};

/// What the processor needs beyond the message.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub key: Option<&'a VerpKey>,
    pub hygiene: Hygiene,
    /// The envelope recipient, when the MTA passes it.
    pub envelope_recipient: Option<&'a str>,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub subscriber_id: SubscriberId,
    pub issue: Option<IssueNumber>,
    pub kind: EventKind,
    pub effect: Effect,
}

/// What handling a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        events: Vec<Applied>,
        attributed_by: &'static str,
    },
    /// Handled before (same Message-ID or same bytes): nothing done.
    Duplicate,
    Ignored(Ignored),
    /// A bounce, complaint or unsubscribe without signed evidence of the delivery it
    /// concerns: kept as unattributed (with the reason), nothing applied.
    Unattributed(String),
}

/// Classifies and applies one raw message. Errors are database errors only: the message
/// itself can never make this fail.
pub fn process(
    conn: &Connection,
    raw: &[u8],
    settings: Settings<'_>,
) -> rusqlite::Result<(Inbound, Outcome)> {
    let inbound = classify(
        raw,
        Context {
            key: settings.key,
            envelope_recipient: settings.envelope_recipient,
        },
    );
    if let Kind::Ignored(why) = &inbound.kind {
        return Ok((inbound.clone(), Outcome::Ignored(why.clone())));
    }
    let key = dedupe_key(&inbound, raw);
    let outcome = db::in_write_transaction(conn, |tx| -> rusqlite::Result<Outcome> {
        if events::is_processed(tx, &key)? {
            return Ok(Outcome::Duplicate);
        }
        let (targets, by) = match targets(tx, &inbound)? {
            Ok(found) => found,
            Err(why) => {
                // Remembered under a key of its own: a forged report that borrows the
                // Message-ID of a genuine one to come must not make it a duplicate.
                if !events::mark_processed(tx, &format!("unattributed:{key}"), "unattributed")? {
                    return Ok(Outcome::Duplicate);
                }
                keep_unattributed(tx, &inbound, &why)?;
                return Ok(Outcome::Unattributed(why));
            }
        };
        let mut applied = Vec::new();
        for t in targets {
            let effect = events::record(
                tx,
                &NewEvent {
                    subscriber_id: t.subscriber_id,
                    issue: t.issue,
                    kind: t.kind,
                    source: Source::Inbound,
                    status: t.status.as_deref(),
                    diagnostic: t.diagnostic.as_deref(),
                },
                settings.hygiene,
            )?;
            applied.push(Applied {
                subscriber_id: t.subscriber_id,
                issue: t.issue,
                kind: t.kind,
                effect,
            });
        }
        events::mark_processed(tx, &key, inbound.kind.label())?;
        Ok(Outcome::Applied {
            events: applied,
            attributed_by: by,
        })
    })?;
    Ok((inbound, outcome))
}

/// The report's own Message-ID when it has one, else a hash of its bytes.
pub fn dedupe_key(inbound: &Inbound, raw: &[u8]) -> String {
    match &inbound.message_id {
        Some(id) => format!("message-id:{id}"),
        None => format!("sha256:{:x}", Sha256::digest(raw)),
    }
}

struct Target {
    subscriber_id: SubscriberId,
    issue: Option<IssueNumber>,
    kind: EventKind,
    status: Option<String>,
    diagnostic: Option<String>,
}

/// The subscribers (and issues) a message concerns, and how they were found; `Err` says
/// why none was.
#[allow(clippy::type_complexity)]
fn targets(
    conn: &Connection,
    inbound: &Inbound,
) -> rusqlite::Result<Result<(Vec<Target>, &'static str), String>> {
    let attribution = inbound.hints.attribution();
    match (&inbound.kind, attribution) {
        (Kind::Unsubscribe, _) => {
            let Some(tag) = inbound
                .hints
                .verp
                .filter(|t| t.purpose == Purpose::Unsubscribe)
            else {
                return Ok(Err("unsubscribe without a signed tag".into()));
            };
            if !events::has_delivery(conn, tag.issue, tag.subscriber)? {
                return Ok(Err(format!(
                    "no delivery of issue {} to subscriber {}",
                    tag.issue, tag.subscriber
                )));
            }
            Ok(Ok((
                vec![Target {
                    subscriber_id: tag.subscriber,
                    issue: Some(tag.issue),
                    kind: EventKind::Unsubscribe(Channel::Mailto),
                    status: None,
                    diagnostic: None,
                }],
                "verp",
            )))
        }
        (
            kind,
            Attribution::Delivery {
                issue,
                subscriber,
                by,
            },
        ) => {
            if !events::has_delivery(conn, issue, subscriber)? {
                return Ok(Err(format!(
                    "no delivery of issue {issue} to subscriber {subscriber}"
                )));
            }
            let target = match kind {
                Kind::Bounce(failures) => {
                    // One delivery, one recipient: the worst failure reported decides.
                    let worst = failures
                        .iter()
                        .find(|f| f.severity == Severity::Hard)
                        .unwrap_or(&failures[0]);
                    Target {
                        subscriber_id: subscriber,
                        issue: Some(issue),
                        kind: bounce_kind(worst.severity),
                        status: worst.status.clone(),
                        diagnostic: worst.diagnostic.clone(),
                    }
                }
                _ => Target {
                    subscriber_id: subscriber,
                    issue: Some(issue),
                    kind: EventKind::Complaint,
                    status: None,
                    diagnostic: complaint_note(kind),
                },
            };
            Ok(Ok((vec![target], by)))
        }
        (
            _,
            Attribution::UnsignedMessageId {
                issue,
                subscriber,
                trust,
            },
        ) => Ok(Err(format!(
            "the only evidence is a {} Message-ID naming issue {issue}, subscriber {subscriber}, {}",
            trust.as_str(),
            match trust {
                super::IdTrust::Legacy => "of the unsigned form issues had before Message-IDs were signed",
                _ => "whose signature does not verify",
            }
        ))),
        (_, Attribution::Addresses(addresses)) => Ok(Err(format!(
            "the only evidence is the address{} {} named in the report, which anyone can write",
            if addresses.len() == 1 { "" } else { "es" },
            addresses.join(", ")
        ))),
        (_, Attribution::Nothing) => Ok(Err("no signed tag or Message-ID to go by".into())),
    }
}

/// Keeps a report that changed nothing, with what it claims, for the operator.
fn keep_unattributed(conn: &Connection, inbound: &Inbound, why: &str) -> rusqlite::Result<()> {
    let hints = &inbound.hints;
    let claimed = hints
        .message_id
        .as_ref()
        .filter(|m| m.trust != super::IdTrust::Signed)
        .map(|m| (m.issue, m.subscriber, m.trust.as_str()));
    let failure = match &inbound.kind {
        Kind::Bounce(failures) => failures
            .iter()
            .find(|f| f.severity == Severity::Hard)
            .or(failures.first()),
        _ => None,
    };
    let mut addresses = hints.recipients.clone();
    if let Kind::Complaint(c) = &inbound.kind {
        if let Some(r) = &c.recipient {
            if !addresses.iter().any(|a| a.eq_ignore_ascii_case(r)) {
                addresses.push(r.clone());
            }
        }
    }
    let note = complaint_note(&inbound.kind);
    unattributed::record(
        conn,
        &NewReport {
            kind: inbound.kind.label(),
            reason: why,
            claimed,
            addresses: &addresses,
            message_id: inbound.message_id.as_deref(),
            status: failure.and_then(|f| f.status.as_deref()),
            diagnostic: failure
                .and_then(|f| f.diagnostic.as_deref())
                .or(note.as_deref()),
        },
    )
}

fn bounce_kind(severity: Severity) -> EventKind {
    match severity {
        Severity::Hard => EventKind::HardBounce,
        Severity::Soft => EventKind::SoftBounce,
    }
}

fn complaint_note(kind: &Kind) -> Option<String> {
    match kind {
        Kind::Complaint(c) => Some(match &c.reporter {
            Some(r) => format!("{} report from {r}", c.feedback_type),
            None => format!("{} report", c.feedback_type),
        }),
        _ => None,
    }
}
