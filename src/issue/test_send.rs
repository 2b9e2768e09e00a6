//! Test copies (`send --test`): the issue of a slot, built exactly as its subscribers get
//! it (same digest, headers, DKIM signature), sent to a few addresses an editor names so
//! they can look at it in real mail clients first. Nothing is recorded: no issue is
//! created, no delivery written, and the subscriber list is not read.

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::address::SubscriberEmail;
use crate::config::Config;
use crate::content::Comparison;
use crate::ledger::{self, IssueState};
use crate::message::{Recipient, TestCopy};
use crate::render::{self, RenderedDigest};
use crate::sender::{self, Attempt};
use crate::token::TokenKey;

/// The issue a test send copies.
pub struct TestIssue {
    pub number: i64,
    pub slot: DateTime<Utc>,
    pub digest: RenderedDigest,
    /// The ledger already holds this issue (its digest is the stored one).
    pub stored: bool,
}

/// The issue of `slot` as subscribers get it: the ledger's, when a send has created it,
/// otherwise `comparisons` rendered as a send would create it now. `None` for a slot with
/// nothing to send.
pub fn issue_for(
    config: &Config,
    conn: Option<&Connection>,
    slot: DateTime<Utc>,
    comparisons: &[&Comparison],
) -> anyhow::Result<Option<TestIssue>> {
    if let Some(conn) = conn {
        if let Some(existing) = ledger::issue_by_slot(conn, slot)? {
            if existing.state == IssueState::Skipped {
                return Ok(None);
            }
            return Ok(Some(TestIssue {
                number: existing.number,
                slot,
                digest: ledger::stored_digest(conn, existing.number)?,
                stored: true,
            }));
        }
    }
    if comparisons.is_empty() {
        return Ok(None);
    }
    let number = match conn {
        Some(conn) => ledger::next_issue_number(conn)?,
        None => 1,
    };
    Ok(Some(TestIssue {
        number,
        slot,
        digest: render::render_issue(config, comparisons, slot)?,
        stored: false,
    }))
}

/// What became of one test copy.
pub struct TestResult {
    pub address: SubscriberEmail,
    /// The server's acceptance, or why the copy was not accepted.
    pub outcome: Result<String, String>,
}

/// Sends one copy of `issue` to each address over one SMTP session. The Subject starts
/// with `[TEST]` unless `exact`; the unsubscribe links are the sample subscriber's.
pub async fn send(
    config: &Config,
    issue: &TestIssue,
    to: &[SubscriberEmail],
    exact: bool,
    key: TokenKey,
    password: Option<String>,
) -> anyhow::Result<Vec<TestResult>> {
    let messages = super::issue_messages(config, issue.number, issue.slot, &issue.digest, key)?
        .as_test_copy(TestCopy {
            run: Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string(),
            exact,
        });
    let recipients: Vec<Recipient> = to
        .iter()
        .zip(1..)
        .map(|(address, place)| Recipient {
            subscriber_id: place,
            email: address.address().clone(),
            name: None,
        })
        .collect();
    let attempts =
        sender::send_unrecorded(&config.smtp, password.as_deref(), &messages, &recipients).await;
    Ok(to
        .iter()
        .zip(attempts)
        .map(|(address, attempt)| TestResult {
            address: address.clone(),
            outcome: match attempt {
                Attempt::Sent(reply) => Ok(reply),
                Attempt::Temporary(reply)
                | Attempt::Permanent { reply, .. }
                | Attempt::Connection(reply) => Err(reply),
                Attempt::LedgerGone | Attempt::NotDue => {
                    Err("not sent (no ledger is involved; this is a bug)".into())
                }
            },
        })
        .collect())
}
