//! Acting on one inbound message: classify it, find the subscriber and delivery it
//! concerns, record the events and apply the hygiene rules, all in one transaction together
//! with the note that the message was handled, so reading it again changes nothing.

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::{classify, Attribution, Context, Ignored, Inbound, Kind, Severity};
use crate::mail::address::SubscriberEmail;
use crate::mail::verp::{Purpose, VerpKey};
use crate::store::events::{self, Channel, Effect, EventKind, Hygiene, NewEvent, Source};
use crate::store::{self as db, subscribers, IssueNumber, SubscriberId};

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
    /// A bounce, complaint or unsubscribe that names no delivery of ours.
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
            Err(why) => return Ok(Outcome::Unattributed(why)),
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
        (kind, Attribution::Addresses(addresses)) => {
            let mut found = Vec::new();
            for address in &addresses {
                let Ok(email) = SubscriberEmail::parse(address) else {
                    continue;
                };
                let Some(sub) = subscribers::find(conn, &email).map_err(|e| e.0)? else {
                    continue;
                };
                let issue = events::latest_sent_issue(conn, sub.id)?;
                let target = match kind {
                    Kind::Bounce(failures) => {
                        let f = failures
                            .iter()
                            .find(|f| {
                                f.final_recipient
                                    .as_deref()
                                    .is_some_and(|r| r.eq_ignore_ascii_case(address))
                            })
                            .unwrap_or(&failures[0]);
                        Target {
                            subscriber_id: sub.id,
                            issue,
                            kind: bounce_kind(f.severity),
                            status: f.status.clone(),
                            diagnostic: f.diagnostic.clone(),
                        }
                    }
                    _ => Target {
                        subscriber_id: sub.id,
                        issue,
                        kind: EventKind::Complaint,
                        status: None,
                        diagnostic: complaint_note(kind),
                    },
                };
                found.push(target);
            }
            if found.is_empty() {
                return Ok(Err(format!(
                    "no subscriber has the address{} {}",
                    if addresses.len() == 1 { "" } else { "es" },
                    addresses.join(", ")
                )));
            }
            Ok(Ok((found, "address")))
        }
        (_, Attribution::Nothing) => Ok(Err("no tag, Message-ID or address to go by".into())),
    }
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
