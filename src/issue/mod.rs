//! How an issue gets sent: the one dispatcher behind `send`, `send --dry-run`, `issues retry`
//! and the daemon. [`Dispatcher`] loads what sending needs once (the token key, the SMTP
//! password, the DKIM key); [`Dispatcher::prepare`] plans the slot, renders the digest and
//! runs the deliverability gate once each; [`Dispatcher::execute`] takes the sender lock,
//! creates or resumes the issue and delivers it. Progress is reported as [`Event`]s that the
//! CLI prints and the daemon logs.

mod dry_run;
mod test_send;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::watch;

use crate::config::{Config, TlsMode};
use crate::content::Comparison;
use crate::deliverability::{self as lint, Finding, Refused};
use crate::delivery::{self, Delivery, Finish, Report};
use crate::digest::render::{self, RenderedDigest};
use crate::digest::{self, Window};
use crate::error::UserError;
use crate::mail::dkim::DkimSigner;
use crate::mail::message::IssueMessages;
use crate::mail::token::TokenKey;
use crate::store::ledger::{self, Created, DeliveryCounts, Issue, IssueState, NewIssue};
use crate::store::lock::SenderLock;
use crate::store::{self, IssueNumber};

pub use dry_run::DryRun;
pub use test_send::{TestIssue, TestResult};

mod secrets;
pub use secrets::*;

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

/// The window and comparisons the slot's issue would hold, given the ledger; without a
/// ledger (`None`) the first issue: a seven-day window, nothing sent.
pub fn plan<'a>(
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

/// A slot's issue as planned, before anything is written.
#[derive(Debug)]
pub enum Plan {
    /// The slot already has an issue (unfinished, complete or skipped).
    Existing(Issue),
    /// A new issue: its window, comparisons and digest, rendered once.
    New {
        window: Window,
        slugs: Vec<String>,
        digest: RenderedDigest,
    },
    /// Nothing new for this slot.
    Empty { window: Window },
}

/// A planned send that passed the deliverability gate.
#[derive(Debug)]
pub struct Prepared {
    pub slot: DateTime<Utc>,
    pub plan: Plan,
    /// The digest that will go out (stored or new), for the confirmation question.
    pub subject: Option<String>,
    /// Whether `prepare` checked the tables a send touches in this process, so `execute`
    /// need not read them a second time.
    checked: bool,
}

/// What a new issue will be, for the operator's confirmation.
#[derive(Debug)]
pub struct Confirmation<'a> {
    pub slot: DateTime<Utc>,
    pub comparisons: usize,
    pub subject: &'a str,
    pub recipients: u64,
}

/// Asked before a new issue is created; an error stops the send.
pub type Confirm<'c> = &'c dyn Fn(&Confirmation<'_>) -> anyhow::Result<()>;

/// Progress of a send, as it happens.
#[derive(Debug)]
pub enum Event<'a> {
    /// Deliverability findings on the digest about to go out (only when there are some).
    Findings {
        findings: &'a [Finding],
        dkim: Option<&'a DkimSigner>,
    },
    /// Another process holds the sender lock; waiting for it.
    WaitingForLock,
    AlreadySent {
        issue: &'a Issue,
        counts: DeliveryCounts,
    },
    SkippedWeek {
        issue: &'a Issue,
    },
    Empty {
        slot: DateTime<Utc>,
        window: &'a Window,
        recorded: bool,
    },
    Created {
        issue: &'a Issue,
        recipients: u64,
    },
    Resuming {
        issue: &'a Issue,
        counts: DeliveryCounts,
    },
    Finished {
        issue: &'a Issue,
        report: &'a Report,
    },
}

/// How a send ended. (Returned once per send, so its size does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Nothing to deliver: already sent, recorded as empty, or an empty week.
    NothingToSend,
    /// The deliverability gate refused the digest.
    Refused(Refused),
    /// Stopped before the issue was touched (a stop request while waiting for the lock).
    Stopped,
    /// A delivery run ended (complete, paused or interrupted).
    Delivered { issue: Issue, report: Report },
}

/// Everything sending needs that does not change between issues, loaded once.
pub struct Dispatcher<'a> {
    pub config: &'a Config,
    key: TokenKey,
    password: Option<String>,
    dkim: Option<DkimSigner>,
    allow_empty: bool,
    /// The fallback relays with their passwords (`smtp:` as a list).
    fallbacks: Vec<(crate::config::SmtpConfig, Option<String>)>,
}

impl<'a> Dispatcher<'a> {
    /// For sending: the token key must be set, and the SMTP password when a username is.
    pub fn for_sending(config: &'a Config) -> anyhow::Result<Self> {
        Ok(Dispatcher {
            key: token_key(config)?,
            password: smtp_password(config)?,
            dkim: crate::mail::dkim::load(config)?,
            allow_empty: false,
            fallbacks: delivery::relays::fallbacks_with_passwords(config)?,
            config,
        })
    }

    /// For writing messages to files: no SMTP login is needed.
    pub fn for_files(config: &'a Config) -> anyhow::Result<Self> {
        Ok(Dispatcher {
            key: token_key(config)?,
            password: None,
            dkim: crate::mail::dkim::load(config)?,
            allow_empty: false,
            fallbacks: Vec::new(),
            config,
        })
    }

    /// Whether a new issue may be created with no active subscriber (`--allow-empty`).
    /// Without it that is refused: the issue would go to nobody, yet its comparisons would
    /// count as sent and never go out.
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    pub fn dkim(&self) -> Option<&DkimSigner> {
        self.dkim.as_ref()
    }

    /// Plans the slot's issue against the ledger, rendering the digest of a new one.
    pub fn plan(
        &self,
        conn: &Connection,
        comparisons: &[Comparison],
        slot: DateTime<Utc>,
        on_empty: EmptyWeek,
    ) -> anyhow::Result<Plan> {
        if let Some(issue) = ledger::issue_by_slot(conn, slot)? {
            return Ok(Plan::Existing(issue));
        }
        let (window, selected) = plan(Some(conn), comparisons, slot)?;
        if selected.is_empty() && on_empty != EmptyWeek::Send {
            return Ok(Plan::Empty { window });
        }
        Ok(Plan::New {
            window,
            slugs: selected.iter().map(|c| c.slug.clone()).collect(),
            digest: {
                // The subscribers' votes so far, where they have passed the minimum.
                let voted = crate::tracking::community::with_votes(conn, self.config, &selected)?;
                let voted: Vec<&Comparison> = voted.iter().collect();
                render::render_issue(self.config, &voted, slot)?
            },
        })
    }

    /// The deliverability findings on a digest, and whether they stop the send.
    pub fn gate(&self, digest: &RenderedDigest, force: bool) -> (Vec<Finding>, Option<Refused>) {
        lint::review(self.config, digest, self.dkim.as_ref(), force)
    }

    /// Plans the slot, runs the deliverability gate on what would go out, and asks
    /// `confirm` before a new issue is created. Nothing is written.
    pub fn prepare(
        &self,
        comparisons: &[Comparison],
        slot: DateTime<Utc>,
        on_empty: EmptyWeek,
        force: bool,
        confirm: Option<Confirm<'_>>,
        events: &mut dyn FnMut(Event<'_>),
    ) -> anyhow::Result<Result<Prepared, Refused>> {
        let path = self.config.database_path();
        let conn = store::open(&path)?;
        store::health::check_for_send(&conn, &path, &[])?;
        let plan = self.plan(&conn, comparisons, slot, on_empty)?;
        if let Plan::Existing(issue) = &plan {
            store::health::check_for_send(&conn, &path, &[issue.number])?;
        }
        let stored;
        let digest = match &plan {
            Plan::New { digest, .. } => Some(digest),
            Plan::Existing(issue) if issue.state.is_unfinished() => {
                stored = RenderedDigest::from(ledger::stored_digest(&conn, issue.number)?);
                Some(&stored)
            }
            _ => None,
        };
        if let Some(digest) = digest {
            let (findings, refused) = self.gate(digest, force);
            if !findings.is_empty() {
                events(Event::Findings {
                    findings: &findings,
                    dkim: self.dkim.as_ref(),
                });
            }
            if let Some(refused) = refused {
                return Ok(Err(refused));
            }
        }
        if let (Plan::New { slugs, digest, .. }, Some(confirm)) = (&plan, confirm) {
            if !slugs.is_empty() {
                confirm(&Confirmation {
                    slot,
                    comparisons: slugs.len(),
                    subject: &digest.subject,
                    recipients: store::subscribers::count_by_status(&conn)?
                        .get(store::subscribers::SubscriberStatus::Active),
                })?;
            }
        }
        let subject = digest.map(|d| d.subject.clone());
        Ok(Ok(Prepared {
            slot,
            plan,
            subject,
            checked: true,
        }))
    }

    /// Resumes an unfinished issue: its stored digest was checked when it was created.
    pub async fn resume(
        &self,
        issue: Issue,
        stop: watch::Receiver<bool>,
        events: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> anyhow::Result<Outcome> {
        let prepared = Prepared {
            slot: issue.slot,
            subject: Some(issue.subject.clone()),
            plan: Plan::Existing(issue),
            checked: false,
        };
        self.execute(prepared, false, false, stop, events).await
    }

    /// Takes the sender lock (waiting for another sender, stoppably), creates the prepared
    /// issue or resumes the slot's existing one, and delivers it.
    pub async fn execute(
        &self,
        prepared: Prepared,
        record_empty: bool,
        progress_bar: bool,
        stop: watch::Receiver<bool>,
        events: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> anyhow::Result<Outcome> {
        let Some(_lock) = sender_lock(self.config, stop.clone(), events).await? else {
            return Ok(Outcome::Stopped);
        };
        let path = self.config.database_path();
        let conn = store::open(&path)?;
        // Nothing is written into a damaged file: the error says how to restore.
        if !prepared.checked {
            let issue = match &prepared.plan {
                Plan::Existing(issue) => vec![issue.number],
                _ => Vec::new(),
            };
            store::health::check_for_send(&conn, &path, &issue)?;
        }
        // The links about to be mailed are signed with this key: from now on it is the one.
        record_secret(self.config, &conn, &self.key)?;
        let slot = prepared.slot;
        let (issue, created) = match prepared.plan {
            Plan::Existing(issue) => (issue, false),
            Plan::Empty { window } => {
                // Another process may have created the slot's issue meanwhile.
                if let Some(issue) = ledger::issue_by_slot(&conn, slot)? {
                    (issue, false)
                } else {
                    if record_empty {
                        let digest = render::render_issue(self.config, &[], slot)?;
                        create(&conn, slot, &window, vec![], &digest, true)?;
                    }
                    events(Event::Empty {
                        slot,
                        window: &window,
                        recorded: record_empty,
                    });
                    return Ok(Outcome::NothingToSend);
                }
            }
            Plan::New {
                window,
                slugs,
                digest,
            } => match self.create_new(&conn, slot, &window, slugs, &digest)? {
                Created::New { number, .. } => (load(&conn, number)?, true),
                Created::Existing { number } => (load(&conn, number)?, false),
            },
        };
        // Whoever held the lock may have finished the issue while we waited.
        let issue = load(&conn, issue.number)?;
        let counts = ledger::delivery_counts(&conn, issue.number)?;
        match issue.state {
            IssueState::Complete => {
                events(Event::AlreadySent {
                    issue: &issue,
                    counts,
                });
                return Ok(Outcome::NothingToSend);
            }
            IssueState::Skipped => {
                events(Event::SkippedWeek { issue: &issue });
                return Ok(Outcome::NothingToSend);
            }
            IssueState::Sending | IssueState::Paused if created => {
                // The archive page must exist before the first reader clicks "View in browser".
                self.rebuild_site("issue created").await;
                events(Event::Created {
                    issue: &issue,
                    recipients: counts.total(),
                })
            }
            IssueState::Sending | IssueState::Paused => events(Event::Resuming {
                issue: &issue,
                counts,
            }),
        }
        let digest = RenderedDigest::from(ledger::stored_digest(&conn, issue.number)?);
        drop(conn);
        let report = self.deliver(&issue, &digest, progress_bar, stop).await?;
        if matches!(report.finish, Finish::Complete) {
            self.rebuild_site("issue complete").await;
        }
        events(Event::Finished {
            issue: &issue,
            report: &report,
        });
        Ok(Outcome::Delivered { issue, report })
    }

    /// Rebuilds the public site when `site.out_dir` is set, off the async workers.
    async fn rebuild_site(&self, why: &'static str) {
        if self.config.site_out_dir.is_none() {
            return;
        }
        let config = self.config.clone();
        let _ = tokio::task::spawn_blocking(move || crate::site::rebuild_configured(&config, why))
            .await;
    }

    /// Creates a new issue, unless it would have no recipient and that was not allowed.
    fn create_new(
        &self,
        conn: &Connection,
        slot: DateTime<Utc>,
        window: &Window,
        slugs: Vec<String>,
        digest: &RenderedDigest,
    ) -> anyhow::Result<Created> {
        if !self.allow_empty && ledger::issue_by_slot(conn, slot)?.is_none() {
            let active = store::subscribers::count_by_status(conn)?
                .get(store::subscribers::SubscriberStatus::Active);
            if active == 0 {
                return Err(UserError::new(format!(
                    "not creating the issue for {}: the state database {} has no active \
                     subscriber, so it would go to nobody and its {} comparison{} would count \
                     as sent. Check state_dir in the config, add subscribers, or pass \
                     --allow-empty to create it anyway",
                    slot.format("%Y-%m-%dT%H:%M:%SZ"),
                    self.config.database_path().display(),
                    slugs.len(),
                    if slugs.len() == 1 { "" } else { "s" },
                ))
                .into());
            }
        }
        create(conn, slot, window, slugs, digest, false)
    }

    async fn deliver(
        &self,
        issue: &Issue,
        digest: &RenderedDigest,
        progress_bar: bool,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Report> {
        let digest = &crate::tracking::links::track(digest, self.config, issue.number, &self.key);
        let messages = IssueMessages::new(
            &self.config.newsletter,
            issue.number,
            issue.slot,
            digest,
            self.key.clone(),
        )
        .with_dkim(self.dkim.clone())
        .with_inbound(self.config.inbound.address.as_deref());
        delivery::deliver(
            Delivery {
                db_path: self.config.database_path(),
                issue: issue.number,
                messages: Arc::new(messages),
                smtp: self.config.smtp.clone(),
                password: self.password.clone(),
                progress_bar,
                hygiene: self.config.inbound.hygiene,
                fallbacks: self.fallbacks.clone(),
                domains: self.config.domains.clone(),
            },
            stop,
        )
        .await
    }

    /// The messages of an issue for writing to files (dry run, test sends).
    pub fn messages(
        &self,
        number: IssueNumber,
        slot: DateTime<Utc>,
        digest: &RenderedDigest,
    ) -> IssueMessages {
        let digest = &crate::tracking::links::track(digest, self.config, number, &self.key);
        IssueMessages::new(
            &self.config.newsletter,
            number,
            slot,
            digest,
            self.key.clone(),
        )
        .with_dkim(self.dkim.clone())
        .with_inbound(self.config.inbound.address.as_deref())
    }
}

/// Re-queues the failed deliveries of an issue (under the sender lock, so a sender
/// finishing the issue cannot mark it complete just after). Returns how many; `None` if
/// stopped while waiting for the lock.
pub async fn requeue_failed(
    config: &Config,
    number: IssueNumber,
    stop: watch::Receiver<bool>,
    events: &mut (dyn FnMut(Event<'_>) + Send),
) -> anyhow::Result<Option<usize>> {
    let Some(_lock) = sender_lock(config, stop, events).await? else {
        return Ok(None);
    };
    let path = config.database_path();
    let conn = store::open(&path)?;
    store::health::check_for_send(&conn, &path, &[number])?;
    Ok(Some(ledger::requeue_failed(&conn, number)?))
}

/// Waits for the sender lock, polling so a stop request is noticed. `None` if stopped.
async fn sender_lock(
    config: &Config,
    mut stop: watch::Receiver<bool>,
    events: &mut (dyn FnMut(Event<'_>) + Send),
) -> anyhow::Result<Option<SenderLock>> {
    let mut told = false;
    loop {
        if let Some(lock) = SenderLock::try_acquire(&config.state_dir)? {
            return Ok(Some(lock));
        }
        if !told {
            events(Event::WaitingForLock);
            told = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return Ok(None);
        }
    }
}

fn load(conn: &Connection, number: IssueNumber) -> anyhow::Result<Issue> {
    ledger::issue(conn, number)?
        .ok_or_else(|| anyhow::anyhow!("issue {number} vanished from the ledger"))
}

fn create(
    conn: &Connection,
    slot: DateTime<Utc>,
    window: &Window,
    slugs: Vec<String>,
    digest: &RenderedDigest,
    skipped: bool,
) -> anyhow::Result<Created> {
    Ok(ledger::create_issue(
        conn,
        &NewIssue {
            slot,
            window_after: window.after,
            cutoff: window.cutoff,
            slugs,
            digest: &digest.to_stored(),
            skipped,
        },
    )?)
}

/// A one-line account of a run.
pub fn summary_line(number: IssueNumber, report: &Report) -> String {
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        report.sent as f64 / secs
    } else {
        0.0
    };
    // Every failure counts, including temporary ones whose retries ran out.
    let temporarily = match report.failed_temporarily {
        0 => String::new(),
        n => format!(" ({n} temporarily)"),
    };
    let gave_up = match report.gave_up {
        0 => String::new(),
        n => format!(
            " Gave up on {n} {} still failing temporarily at the deadline (smtp.give_up_after).",
            if n == 1 { "delivery" } else { "deliveries" }
        ),
    };
    let bounced = match report.bounced {
        0 => String::new(),
        1 => " 1 reader marked bounced (the mailbox does not exist).".to_owned(),
        n => format!(" {n} readers marked bounced (their mailboxes do not exist)."),
    };
    // Pending deliveries are either waiting for a retry or were never tried (a run stopped
    // by Ctrl-C or an outage before their turn): only the first are "retrying".
    let untried = match report.counts.untried {
        0 => String::new(),
        n => format!(", not yet tried {n}"),
    };
    format!(
        "Issue {number}: sent {}, failed {}{temporarily}, skipped {}, retrying {}{untried} in {:.1} s ({:.0} msgs/s). Totals: {} sent, {} failed, {} skipped, {} pending of {}.{bounced}{gave_up}",
        report.sent,
        report.failed,
        report.skipped,
        report.counts.pending - report.counts.untried,
        secs,
        rate,
        report.counts.sent,
        report.counts.failed,
        report.counts.skipped,
        report.counts.outstanding(),
        report.counts.total(),
    )
}

/// Whether a finished run leaves the issue resumable (paused or interrupted).
pub fn is_resumable(finish: &Finish) -> bool {
    !matches!(finish, Finish::Complete)
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
