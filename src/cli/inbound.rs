//! `verdicts inbound`: bounces, complaints and mailto unsubscribes, one message on standard
//! input (a mail pipe) or a whole mbox / Maildir. Built for a mail server's pipe: a message
//! that cannot be used is ignored (exit 0, never bounce a bounce); only a problem on our
//! side (database busy or unreadable, config or secret missing) exits 75 so the mail server
//! keeps the message and tries again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Resumable;
use crate::inbound::mailbox::{self, Stored};
use crate::inbound::process::{process, Applied, Outcome, Settings};
use crate::inbound::{Ignored, Inbound, MAX_MESSAGE_BYTES};
use crate::mail::verp::VerpKey;
use crate::store::events::{Effect, EventKind};
use crate::store::{self};

/// Where the messages come from.
pub enum Source {
    Stdin {
        recipient: Option<String>,
    },
    /// One poll of `inbound.imap`.
    Imap,
    Mbox(PathBuf),
    Maildir(PathBuf),
}

/// Everything below is our side's problem: the message must be kept and retried.
fn retry_later(what: &str, err: impl std::fmt::Display) -> anyhow::Error {
    Resumable(format!(
        "{what}: {err}; the message was not handled and should be delivered again later"
    ))
    .into()
}

pub fn run(config_path: &Path, source: Source) -> anyhow::Result<()> {
    let config = Config::load(config_path).map_err(|e| retry_later("cannot load the config", e))?;
    let key = crate::issue::configured_key(&config)
        .map_err(|e| retry_later("cannot read the signing secret", e))?
        .verp_key();
    let open = || {
        store::open(&config.database_path())
            .map_err(|e| retry_later("cannot open the state database", format!("{e:#}")))
    };
    match source {
        // Each message opens the database itself, so a failure leaves it in the mailbox.
        Source::Imap => {
            let Some(mailbox) = imap_mailbox(&config)? else {
                return crate::error::user_error(format!(
                    "{}: --imap needs an inbound.imap section",
                    config_path.display()
                ));
            };
            let poll = super::runtime::block_on_until_signal(Some(1), |_stop| async move {
                Ok(mailbox.poll().await)
            })?
            .map_err(|e| retry_later("the IMAP poll failed", e))?;
            println!(
                "{}: {} message{} handled and moved to {}, {} left in place.",
                config
                    .inbound
                    .imap
                    .as_ref()
                    .map_or("", |i| i.folder.as_str()),
                poll.handled,
                plural(poll.handled as u64),
                config
                    .inbound
                    .imap
                    .as_ref()
                    .map_or("", |i| i.processed_folder.as_str()),
                poll.left
            );
            if poll.left > 0 {
                return Err(retry_later(
                    "some messages could not be handled",
                    format!("{} left in the mailbox", poll.left),
                ));
            }
            Ok(())
        }
        Source::Stdin { recipient } => {
            let raw = read_bounded(std::io::stdin().lock())
                .map_err(|e| retry_later("cannot read the message", e))?;
            let settings = settings(&config, &key, recipient.as_deref());
            let (inbound, outcome) = process(&open()?, &raw, settings)
                .map_err(|e| retry_later("the state database refused the update", e))?;
            println!("{}", describe(&inbound, &outcome));
            Ok(())
        }
        Source::Mbox(path) => {
            // Read as it goes: a message at a time, never the whole file.
            let file = std::fs::File::open(&path).map_err(|e| {
                crate::error::UserError::new(format!("cannot read {}: {e}", path.display()))
            })?;
            let shown = path.display().to_string();
            let messages = mailbox::Mbox::new(std::io::BufReader::with_capacity(256 * 1024, file))
                .map(move |m| m.map_err(|e| format!("{shown}: {e}")));
            batch(&open()?, &config, &key, &path, messages)
        }
        Source::Maildir(dir) => {
            let files = mailbox::maildir_files(&dir).map_err(|e| {
                crate::error::UserError::new(format!("cannot list {}: {e}", dir.display()))
            })?;
            batch(
                &open()?,
                &config,
                &key,
                &dir,
                files.into_iter().map(|f| {
                    mailbox::read_message_file(&f).map_err(|e| format!("{}: {e}", f.display()))
                }),
            )
        }
    }
}

/// The IMAP mailbox of the config, ready to poll; `None` without `inbound.imap`.
pub fn imap_mailbox(config: &Config) -> anyhow::Result<Option<crate::inbound::imap::Mailbox>> {
    let Some(imap) = config.inbound.imap.clone() else {
        return Ok(None);
    };
    // Only checks tags: the database is opened per message, where its faults mean "retry".
    let key = crate::issue::configured_key(config)?.verp_key();
    let mailbox = crate::inbound::imap::Mailbox::new(
        imap,
        config.database_path(),
        key,
        config.inbound.hygiene,
    )
    .map_err(|e| crate::error::UserError::new(e.to_string()))?;
    Ok(Some(mailbox))
}

fn settings<'a>(config: &Config, key: &'a VerpKey, recipient: Option<&'a str>) -> Settings<'a> {
    Settings {
        key: Some(key),
        hygiene: config.inbound.hygiene,
        envelope_recipient: recipient,
    }
}

/// Reads at most one byte past the limit, then drains the rest so the writer sees its whole
/// message taken (a mail server treats a pipe closed early as a failed delivery).
fn read_bounded(mut input: impl Read) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    (&mut input)
        .take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut raw)?;
    std::io::copy(&mut input, &mut std::io::sink())?;
    Ok(raw)
}

#[derive(Default)]
struct Tally {
    messages: u64,
    hard: u64,
    soft: u64,
    complaints: u64,
    unsubscribes: u64,
    ignored: u64,
    duplicates: u64,
    unattributed: u64,
    unreadable: u64,
    bounced: u64,
    unsubscribed: u64,
}

fn batch(
    conn: &Connection,
    config: &Config,
    key: &VerpKey,
    source: &Path,
    messages: impl Iterator<Item = Result<Stored, String>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut t = Tally::default();
    for raw in messages {
        t.messages += 1;
        let raw = match raw {
            Ok(Stored::Message(raw)) => raw,
            Ok(Stored::TooLarge { bytes }) => {
                let why = Ignored::TooLarge {
                    bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
                };
                info!(result = %format!("ignored: {why}"), "inbound message");
                t.ignored += 1;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "cannot read a message; skipped");
                t.unreadable += 1;
                continue;
            }
        };
        let (inbound, outcome) = process(conn, &raw, settings(config, key, None))
            .map_err(|e| retry_later("the state database refused the update", e))?;
        info!(result = %describe(&inbound, &outcome), "inbound message");
        match &outcome {
            Outcome::Applied { events, .. } => {
                for e in events {
                    match e.kind {
                        EventKind::HardBounce => t.hard += 1,
                        EventKind::SoftBounce => t.soft += 1,
                        EventKind::Complaint => t.complaints += 1,
                        EventKind::Unsubscribe(_) => t.unsubscribes += 1,
                    }
                    match e.effect {
                        Effect::Bounced => t.bounced += 1,
                        Effect::Unsubscribed => t.unsubscribed += 1,
                        Effect::Recorded => {}
                    }
                }
            }
            Outcome::Duplicate => t.duplicates += 1,
            Outcome::Ignored(_) => t.ignored += 1,
            Outcome::Unattributed(_) => t.unattributed += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: {} message{} in {:.2} s ({:.0} messages/s).",
        source.display(),
        t.messages,
        plural(t.messages),
        secs,
        t.messages as f64 / secs.max(1e-9)
    );
    println!(
        "  {} hard bounce{}, {} soft, {} complaint{}, {} mailto unsubscribe{}; {} ignored, {} already handled, {} unattributed (not applied){}.",
        t.hard,
        plural(t.hard),
        t.soft,
        t.complaints,
        plural(t.complaints),
        t.unsubscribes,
        plural(t.unsubscribes),
        t.ignored,
        t.duplicates,
        t.unattributed,
        if t.unreadable > 0 {
            format!(", {} unreadable", t.unreadable)
        } else {
            String::new()
        }
    );
    println!(
        "  Now bounced: {}; now unsubscribed: {}.",
        t.bounced, t.unsubscribed
    );
    if t.unattributed > 0 {
        print_unattributed_total(conn)?;
    }
    Ok(())
}

/// `12 unattributed reports: see …`, when any are kept.
fn print_unattributed_total(conn: &Connection) -> anyhow::Result<()> {
    let total = store::unattributed::count(conn)?;
    if total > 0 {
        println!(
            "{total} unattributed report{}: see `verdicts inbound --unattributed`.",
            plural(total)
        );
    }
    Ok(())
}

/// `verdicts inbound --unattributed`: the reports kept without applying them, newest first.
pub fn list_unattributed(config: &Config, limit: usize) -> anyhow::Result<()> {
    let conn = store::open(&config.database_path())?;
    let total = store::unattributed::count(&conn)?;
    if total == 0 {
        println!("No unattributed reports.");
        return Ok(());
    }
    let reports = store::unattributed::newest(&conn, limit)?;
    println!(
        "{total} unattributed report{} (never applied){}:",
        plural(total),
        if (reports.len() as u64) < total {
            format!(", the newest {}", reports.len())
        } else {
            String::new()
        }
    );
    for r in reports {
        let mut claims = Vec::new();
        if let (Some(issue), Some(subscriber)) = (r.claimed_issue, r.claimed_subscriber) {
            claims.push(format!(
                "issue {issue} to subscriber {subscriber}{} by a {} Message-ID",
                r.claimed_email
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                r.message_id_trust.as_deref().unwrap_or("unsigned")
            ));
        }
        if let Some(a) = &r.addresses {
            claims.push(format!("names {a}"));
        }
        println!(
            "{}  {:<11}  {}",
            r.received_at.format("%Y-%m-%d %H:%M:%S"),
            kind_name(&r.kind),
            if claims.is_empty() {
                "names no one".to_string()
            } else {
                claims.join("; ")
            }
        );
        println!("    why: {}", r.reason);
        match (&r.status, &r.diagnostic) {
            (Some(s), Some(d)) if d.contains(s.as_str()) => println!("    said: {d}"),
            (Some(s), Some(d)) => println!("    said: {s} {d}"),
            (Some(s), None) => println!("    said: {s}"),
            (None, Some(d)) => println!("    said: {d}"),
            (None, None) => {}
        }
    }
    Ok(())
}

fn kind_name(label: &str) -> &str {
    match label {
        "hard" => "hard bounce",
        "soft" => "soft bounce",
        other => other,
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// One line saying what a message was and what it did.
fn describe(inbound: &Inbound, outcome: &Outcome) -> String {
    let kind = inbound.kind.label();
    match outcome {
        Outcome::Applied {
            events,
            attributed_by,
        } => {
            let each: Vec<String> = events.iter().map(describe_event).collect();
            format!("{kind}: {} (by {attributed_by})", each.join("; "))
        }
        Outcome::Duplicate => format!("{kind}: already handled, nothing changed"),
        Outcome::Ignored(why) => format!("ignored: {why}"),
        Outcome::Unattributed(why) => format!(
            "{kind} not applied: {why}; kept as unattributed (see `verdicts inbound --unattributed`)"
        ),
    }
}

fn describe_event(a: &Applied) -> String {
    let issue = a
        .issue
        .map(|i| format!(" of issue {i}"))
        .unwrap_or_default();
    let effect = match a.effect {
        Effect::Bounced => ", now bounced",
        Effect::Unsubscribed => ", now unsubscribed",
        Effect::Recorded => "",
    };
    format!("subscriber {}{issue}{effect}", a.subscriber_id)
}
