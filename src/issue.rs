//! Creating, resuming and delivering the issue of a slot: the one path shared by `send`,
//! `issues retry` and the daemon, so every way of sending obeys the same ledger rules.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::watch;

use crate::config::{Config, TlsMode};
use crate::content::Comparison;
use crate::digest::{self, Window};
use crate::error::UserError;
use crate::ledger::{self, Created, Issue, IssueState, NewIssue};
use crate::message::IssueMessages;
use crate::render::{self, RenderedDigest};
use crate::sender::{self, Delivery, Report};
use crate::token::TokenKey;

pub mod test_send;

/// Where a slot's issue stands after `prepare`.
#[derive(Debug)]
pub enum Prepared {
    /// Deliveries are pending: `created` is false when an earlier run started it.
    Ready { issue: Issue, created: bool },
    /// Already delivered to everyone.
    Complete { issue: Issue },
    /// Recorded as an empty week earlier.
    Skipped { issue: Issue },
    /// Nothing new for this slot. `recorded` if the slot was now recorded as skipped.
    Empty { window: Window, recorded: bool },
}

/// What to do on a slot with no new comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyWeek {
    /// Say so and record nothing (a later send may still find content).
    Leave,
    /// Record the slot as skipped so it is never retried.
    Record,
    /// Send the "nothing new" digest anyway.
    Send,
}

/// The window and comparisons the slot's issue would hold, given the ledger.
pub fn plan<'a>(
    conn: &Connection,
    comparisons: &'a [Comparison],
    slot: DateTime<Utc>,
) -> anyhow::Result<(Window, Vec<&'a Comparison>)> {
    plan_with(Some(conn), comparisons, slot)
}

/// [`plan`], or without a ledger (`None`) the first issue: a seven-day window, nothing sent.
pub fn plan_with<'a>(
    conn: Option<&Connection>,
    comparisons: &'a [Comparison],
    slot: DateTime<Utc>,
) -> anyhow::Result<(Window, Vec<&'a Comparison>)> {
    let (previous, sent) = match conn {
        Some(conn) => (
            ledger::previous_cutoff(conn, slot)?,
            ledger::sent_slugs(conn)?,
        ),
        None => (None, Default::default()),
    };
    let window = Window::new(previous, slot);
    Ok((window, digest::select(comparisons, &window, &sent)))
}

/// Finds the slot's issue, or creates it (rendering the digest and freezing the recipient
/// list) when the slot has none.
pub fn prepare(
    config: &Config,
    conn: &Connection,
    comparisons: &[Comparison],
    slot: DateTime<Utc>,
    on_empty: EmptyWeek,
) -> anyhow::Result<Prepared> {
    if let Some(issue) = ledger::issue_by_slot(conn, slot)? {
        return Ok(classify(issue, false));
    }
    let (window, selected) = plan(conn, comparisons, slot)?;
    if selected.is_empty() && on_empty != EmptyWeek::Send {
        let mut recorded = false;
        if on_empty == EmptyWeek::Record {
            let digest = render::render_issue(config, &[], slot)?;
            ledger::create_issue(
                conn,
                &NewIssue {
                    slot,
                    window_after: window.after,
                    cutoff: window.cutoff,
                    slugs: vec![],
                    digest: &digest,
                    skipped: true,
                },
            )?;
            recorded = true;
        }
        return Ok(Prepared::Empty { window, recorded });
    }
    let digest = render::render_issue(config, &selected, slot)?;
    let created = ledger::create_issue(
        conn,
        &NewIssue {
            slot,
            window_after: window.after,
            cutoff: window.cutoff,
            slugs: selected.iter().map(|c| c.slug.clone()).collect(),
            digest: &digest,
            skipped: false,
        },
    )?;
    let (number, fresh) = match created {
        Created::New { number, .. } => (number, true),
        Created::Existing { number } => (number, false),
    };
    let issue = ledger::issue(conn, number)?.context("issue vanished after creation")?;
    Ok(classify(issue, fresh))
}

fn classify(issue: Issue, created: bool) -> Prepared {
    match issue.state {
        IssueState::Complete => Prepared::Complete { issue },
        IssueState::Skipped => Prepared::Skipped { issue },
        IssueState::Sending | IssueState::Paused => Prepared::Ready { issue, created },
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The SMTP password, when a username is configured. Refuses to send credentials in the
/// clear to anything but this machine.
pub fn smtp_password(config: &Config) -> anyhow::Result<Option<String>> {
    let smtp = &config.smtp;
    let Some(user) = &smtp.username else {
        return Ok(None);
    };
    if smtp.tls == TlsMode::None && !is_loopback(&smtp.host) {
        return Err(UserError::new(format!(
            "refusing to log in to {} as {user} without TLS: the password would cross the network in clear text. Set smtp.tls to starttls or tls",
            smtp.host
        ))
        .into());
    }
    match std::env::var(&smtp.password_env) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Err(UserError::new(format!(
            "smtp.username is set but the environment variable {} (smtp.password_env) holding the password is not",
            smtp.password_env
        ))
        .into()),
    }
}

/// The key that signs unsubscribe links; sending without one is refused.
pub fn token_key(config: &Config) -> anyhow::Result<TokenKey> {
    TokenKey::from_env(&config.secret_env).map_err(|e| UserError::new(e.to_string()).into())
}

/// Every copy of an issue, for subscribers or for a test send, is built from this: the
/// configured newsletter, signed with the configured DKIM key.
fn issue_messages(
    config: &Config,
    number: i64,
    slot: DateTime<Utc>,
    digest: &RenderedDigest,
    key: TokenKey,
) -> anyhow::Result<IssueMessages> {
    let dkim = crate::dkim::load(config)?;
    Ok(IssueMessages::new(&config.newsletter, number, slot, digest, key).with_dkim(dkim))
}

/// Delivers the issue's pending deliveries (see [`sender::deliver`]).
pub async fn deliver(
    config: &Config,
    issue: &Issue,
    key: TokenKey,
    password: Option<String>,
    progress_bar: bool,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Report> {
    let conn = crate::db::open(&config.database_path())?;
    let digest = ledger::stored_digest(&conn, issue.number)?;
    drop(conn);
    let messages = issue_messages(config, issue.number, issue.slot, &digest, key)?;
    sender::deliver(
        Delivery {
            db_path: config.database_path(),
            issue: issue.number,
            messages: Arc::new(messages),
            smtp: config.smtp.clone(),
            password,
            progress_bar,
        },
        stop,
    )
    .await
}

/// The digest a send for `slot` would deliver, for the deliverability checks: the stored one
/// of an unfinished issue, or a fresh render of what a new issue would hold. `None` when
/// nothing would be sent (the issue is complete or skipped, or the week is empty).
pub fn pending_digest(
    config: &Config,
    conn: &Connection,
    comparisons: &[Comparison],
    slot: DateTime<Utc>,
) -> anyhow::Result<Option<RenderedDigest>> {
    if let Some(existing) = ledger::issue_by_slot(conn, slot)? {
        return Ok(match existing.state {
            IssueState::Sending | IssueState::Paused => {
                Some(ledger::stored_digest(conn, existing.number)?)
            }
            IssueState::Complete | IssueState::Skipped => None,
        });
    }
    let (_, selected) = plan(conn, comparisons, slot)?;
    if selected.is_empty() {
        return Ok(None);
    }
    Ok(Some(render::render_issue(config, &selected, slot)?))
}

/// A one-line account of a run.
pub fn summary_line(number: i64, report: &Report) -> String {
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        report.sent as f64 / secs
    } else {
        0.0
    };
    format!(
        "Issue {number}: sent {}, failed {}, skipped {}, retrying {} in {:.1} s ({:.0} msgs/s). Totals: {} sent, {} failed, {} skipped, {} pending of {}.",
        report.sent,
        report.failed,
        report.skipped,
        report.counts.pending,
        secs,
        rate,
        report.counts.sent,
        report.counts.failed,
        report.counts.skipped,
        report.counts.outstanding(),
        report.counts.total(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["smtp.example.com", "10.0.0.1", "192.168.1.1"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
