//! Test copies (`send --test`): the issue of a slot, built exactly as its subscribers get
//! it (same digest, headers, DKIM signature), sent to a few addresses an editor names so
//! they can look at it in real mail clients first. Nothing is recorded: no issue is
//! created, no delivery written, and the subscriber list is not read.

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::{Dispatcher, EmptyWeek, Plan};
use crate::content::Comparison;
use crate::delivery::{self, Attempt};
use crate::digest::render::{self, RenderedDigest};
use crate::mail::address::SubscriberEmail;
use crate::mail::message::{Recipient, TestCopy};
use crate::store::ledger::{self, IssueState};
use crate::store::{IssueNumber, SubscriberId};

/// The issue a test send copies.
#[derive(Debug)]
pub struct TestIssue {
    pub number: IssueNumber,
    pub slot: DateTime<Utc>,
    pub digest: RenderedDigest,
    /// The ledger already holds this issue (its digest is the stored one).
    pub stored: bool,
}

/// What became of one test copy.
#[derive(Debug)]
pub struct TestResult {
    pub address: SubscriberEmail,
    /// The server's acceptance, or why the copy was not accepted.
    pub outcome: Result<String, String>,
}

impl Dispatcher<'_> {
    /// The issue of `slot` as subscribers get it: the ledger's, when a send has created it;
    /// otherwise what a send would create now (against the ledger when there is one, or
    /// `comparisons` as given when there is none). `None` for a slot with nothing to send.
    pub fn test_issue(
        &self,
        conn: Option<&Connection>,
        comparisons: &[Comparison],
        slot: DateTime<Utc>,
    ) -> anyhow::Result<Option<TestIssue>> {
        let Some(conn) = conn else {
            let (_, selected) = super::plan(None, comparisons, slot)?;
            if selected.is_empty() {
                return Ok(None);
            }
            return Ok(Some(TestIssue {
                number: IssueNumber(1),
                slot,
                digest: render::render_issue(self.config, &selected, slot)?,
                stored: false,
            }));
        };
        Ok(
            match self.plan(conn, comparisons, slot, EmptyWeek::Leave)? {
                Plan::Existing(issue) if issue.state == IssueState::Skipped => None,
                Plan::Existing(issue) => Some(TestIssue {
                    number: issue.number,
                    slot,
                    digest: RenderedDigest::from(ledger::stored_digest(conn, issue.number)?),
                    stored: true,
                }),
                Plan::New { digest, .. } => Some(TestIssue {
                    number: ledger::next_issue_number(conn)?,
                    slot,
                    digest,
                    stored: false,
                }),
                Plan::Empty { .. } => None,
            },
        )
    }

    /// Sends one copy of `issue` to each address over one SMTP session. The Subject starts
    /// with `[TEST]` unless `exact`; the unsubscribe links are the sample subscriber's.
    pub async fn send_test(
        &self,
        issue: &TestIssue,
        to: &[SubscriberEmail],
        exact: bool,
    ) -> Vec<TestResult> {
        let messages = self
            .messages(issue.number, issue.slot, &issue.digest)
            .as_test_copy(TestCopy {
                run: Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string(),
                exact,
            });
        let recipients: Vec<Recipient> = to
            .iter()
            .zip(1..)
            .map(|(address, place)| Recipient {
                subscriber_id: SubscriberId(place),
                email: address.clone(),
                name: None,
            })
            .collect();
        let attempts = delivery::send_unrecorded(
            &self.config.smtp,
            self.password.as_deref(),
            &messages,
            &recipients,
        )
        .await;
        to.iter()
            .zip(attempts)
            .map(|(address, attempt)| TestResult {
                address: address.clone(),
                outcome: match attempt {
                    Attempt::Sent(reply) => Ok(reply),
                    Attempt::Temporary(reply)
                    | Attempt::Permanent { reply, .. }
                    | Attempt::Connection(reply) => Err(reply),
                    Attempt::LedgerGone | Attempt::NotDue => {
                        Err("not sent: no ledger is involved in a test send".into())
                    }
                },
            })
            .collect()
    }
}
