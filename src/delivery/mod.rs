//! The delivery engine: a dispatcher reads due deliveries from the ledger, a fixed set of
//! workers (one connection each) sends them through a [`Transport`], and a single writer
//! thread records every state change in batched transactions. A delivery is durably
//! `sending` before its message body is transferred and `sent` after the 250, so a crash
//! can only ever re-send the few messages that were in flight, with the same Message-ID.
//!
//! Where to read: `run.rs` (the run's steps), `worker.rs`, `writer.rs`, `breaker.rs` (an
//! outage or throttling relay pauses the issue; a mailbox's 4xx is retried alone),
//! `halt.rs` (a failed part stops the run; a quiet run says what it waits for),
//! `transport.rs` (the seam) and `smtp.rs` (the conversation); `relays.rs` (several relays,
//! the move to a fallback), `limits.rs` (a relay's limits, counted in the database) and
//! `domains.rs` (caps per recipient domain).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

mod breaker;
pub mod data;
mod domains;
mod halt;
pub mod limits;
pub mod relays;
mod run;
pub(crate) mod smtp;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod transport;
mod worker;
mod writer;

use halt::Halt;
pub use relays::RelaySet;
pub use smtp::{is_user_unknown, Attempt};
pub use transport::{SmtpTransport, Transport};

use crate::config::relays::DomainCap;
use crate::config::SmtpConfig;
use crate::mail::message::{IssueMessages, Recipient};
use crate::store::ledger::DeliveryCounts;
use crate::store::IssueNumber;

/// Longest wait before a retry, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Sends each recipient's copy over one SMTP session, outside any ledger (test copies):
/// the same transport, connection setup, address spelling and SMTP exchange as a
/// delivery, with nothing recorded and nothing retried. One attempt per recipient, in order.
pub async fn send_unrecorded(
    smtp: &SmtpConfig,
    password: Option<&str>,
    messages: &IssueMessages,
    recipients: &[Recipient],
) -> Vec<Attempt> {
    let transport = SmtpTransport::new(smtp.clone(), password.map(str::to_owned));
    let mut session = transport.session();
    let mut attempts = Vec::with_capacity(recipients.len());
    for r in recipients {
        let attempt = match transport.prepare(&mut session).await {
            Err(attempt) => attempt,
            Ok(smtputf8) => match messages.build_for(r, smtputf8) {
                Err(e) => Attempt::Permanent {
                    reply: e.to_string(),
                    user_unknown: false,
                },
                Ok(message) => {
                    // No ledger mark to wait for: the body may go at once.
                    let (ack, durable) = tokio::sync::oneshot::channel();
                    let _ = ack.send(true);
                    transport.attempt(&mut session, &message, durable).await
                }
            },
        };
        attempts.push(attempt);
    }
    transport.close(session).await;
    attempts
}

/// Exponential backoff with ±50% jitter: `base * 2^(attempts-1)`, capped.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    let capped = exp.min(MAX_BACKOFF);
    capped.mul_f64(0.5 + fastrand::f64())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Everything the engine needs to deliver one issue.
pub struct Delivery {
    pub db_path: PathBuf,
    pub issue: IssueNumber,
    pub messages: Arc<IssueMessages>,
    pub smtp: SmtpConfig,
    pub password: Option<String>,
    /// How refusals (5xx user unknown) count against the subscriber.
    pub hygiene: crate::store::events::Hygiene,
    /// Show a progress bar (on a terminal); otherwise log progress periodically.
    pub progress_bar: bool,
    /// The relays that take over, in order, while the primary (`smtp`) cannot, each with
    /// its password.
    pub fallbacks: Vec<(SmtpConfig, Option<String>)>,
    /// Caps per recipient domain.
    pub domains: Vec<DomainCap>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Every delivery is sent, skipped or failed for good.
    Complete,
    /// The server could not be reached or was throttling us, or deliveries failed only
    /// temporarily: the issue waits for the next run.
    Paused { reason: String },
    /// Stopped by a signal; in-flight messages were finished.
    Interrupted,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub finish: Finish,
    /// Accepted by the server in this run.
    pub sent: u64,
    /// Deliveries that failed in this run, however: permanently, or temporarily with no
    /// retry left in this run, or given up at the deadline.
    pub failed: u64,
    /// Of `failed`, those that failed only temporarily (retried by a later run until the
    /// deadline, unless `gave_up` counts them).
    pub failed_temporarily: u64,
    /// Deliveries failed for good because `smtp.give_up_after` passed.
    pub gave_up: u64,
    /// Skipped because the subscriber left.
    pub skipped: u64,
    /// Readers marked bounced by this run (refusals saying the mailbox does not exist).
    pub bounced: u64,
    /// Temporary failures retried within the run.
    pub retried: u64,
    pub elapsed: Duration,
    /// The issue's counts after the run.
    pub counts: DeliveryCounts,
}

/// Delivers every pending delivery of the issue over SMTP, retrying temporary failures as
/// they come due, until none is left, the server is unreachable or throttling, or `stop`
/// turns true.
pub async fn deliver(job: Delivery, stop: watch::Receiver<bool>) -> anyhow::Result<Report> {
    let mut relays = vec![(job.smtp.clone(), job.password.clone())];
    relays.extend(job.fallbacks.iter().cloned());
    deliver_with(job, RelaySet::new(relays), stop).await
}

/// [`deliver`] through any transport.
#[tracing::instrument(skip_all, fields(issue = %job.issue))]
pub async fn deliver_with<T: Transport>(
    job: Delivery,
    transport: T,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Report> {
    deliver_watched(job, transport, stop, run::QUIET).await
}

/// The run's steps; `quiet` is how long it may go without progress before saying why.
async fn deliver_watched<T: Transport>(
    job: Delivery,
    transport: T,
    stop: watch::Receiver<bool>,
    quiet: Duration,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let start = run::start(&job)?;
    let (before, deadline) = (start.before, start.deadline);
    let mut running = run::spawn(&job, transport, start, stop, quiet)?;
    // The dispatcher runs as a task on the runtime's workers, beside the delivery workers it
    // hands jobs to, rather than on the thread that started the runtime: a finished message
    // then wakes it, and it the next worker, without a hand-off between threads each time.
    let dispatcher = tokio::spawn(async move {
        let dispatched = running.dispatch().await;
        (running, dispatched)
    });
    let (running, dispatched) = match dispatcher.await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => anyhow::bail!("the delivery dispatcher stopped: {e}"),
    };
    let mut stopped = running.shutdown().await;
    // A failed part is the run's result, whatever the dispatcher saw: the writer's own
    // error carries the cause.
    let writer = std::mem::replace(&mut stopped.writer, Ok(()));
    let fault = match (&dispatched, stopped.fault.take()) {
        (Err(Halt::Fault(why)), _) => Some(why.clone()),
        (_, raised) => raised,
    };
    writer?;
    if let Some(why) = fault {
        anyhow::bail!("{why}");
    }
    let finish = match dispatched {
        Ok(finish) => finish,
        Err(_) => Finish::Interrupted,
    };
    run::finish(&job, before, deadline, stopped, finish, started.elapsed())
}
