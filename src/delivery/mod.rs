//! The delivery engine: a dispatcher reads due deliveries from the ledger, a fixed set of
//! workers (one SMTP connection each) sends them, and a single writer thread records every
//! state change in batched transactions. A delivery is durably `sending` before its message
//! body is transferred and `sent` after the 250, so a crash can only ever re-send the few
//! messages that were in flight, with the same Message-ID.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::{ClientId, Extension};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn, Instrument};

mod breaker;
pub mod build_pool;
pub mod data;
pub(crate) mod smtp;
mod writer;

use breaker::Breaker;
use build_pool::BuildPool;
use smtp::{classify, connect, response_text, transaction, TxError};
pub use smtp::{is_user_unknown, Attempt};
use writer::{writer_loop, WriteOp};

use crate::config::SmtpConfig;
use crate::mail::message::{IssueMessages, Recipient};
use crate::mail::outgoing::OutgoingMessage;
use crate::store::ledger::{self, DeliveryCounts, IssueState, Outcome};
use crate::store::{self, IssueNumber, SubscriberId};

/// Longest wait before a retry, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Deliveries read from the ledger per query.
const BATCH: usize = 512;

/// Sends each recipient's copy over one SMTP session, outside any ledger (test copies):
/// the same connection setup, address spelling and SMTP exchange as a delivery, with
/// nothing recorded and nothing retried. One attempt per recipient, in order.
pub async fn send_unrecorded(
    smtp: &SmtpConfig,
    password: Option<&str>,
    messages: &IssueMessages,
    recipients: &[Recipient],
) -> Vec<Attempt> {
    let hello = ClientId::default();
    let mut conn: Option<AsyncSmtpConnection> = None;
    let mut attempts = Vec::with_capacity(recipients.len());
    for r in recipients {
        if conn.as_ref().is_some_and(|c| c.has_broken()) {
            conn = None;
        }
        if conn.is_none() {
            match tokio::time::timeout(smtp.timeout, connect(smtp, &hello, password)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(reason)) => {
                    attempts.push(Attempt::Connection(reason));
                    continue;
                }
                Err(_) => {
                    attempts.push(Attempt::Connection(format!(
                        "no answer from {}:{} within {:?} while connecting",
                        smtp.host, smtp.port, smtp.timeout
                    )));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let smtputf8 = c.server_info().supports_feature(Extension::SmtpUtfEight);
        let message = match messages.build_for(r, smtputf8) {
            Ok(m) => m,
            Err(e) => {
                attempts.push(Attempt::Permanent {
                    reply: e.to_string(),
                    user_unknown: false,
                });
                continue;
            }
        };
        let attempt = match transaction(c, &message, &mut None, smtp.timeout).await {
            Ok(resp) => Attempt::Sent(response_text(&resp)),
            Err(TxError::Unsupported(reason)) => Attempt::Permanent {
                reply: reason,
                user_unknown: false,
            },
            Err(TxError::Smtp(stage, e)) => {
                conn = None;
                classify(stage, &e)
            }
            Err(TxError::Timeout) => {
                conn = None;
                Attempt::Connection(format!(
                    "{}:{} stopped answering mid-transaction (no reply within {:?})",
                    smtp.host, smtp.port, smtp.timeout
                ))
            }
            Err(TxError::Ledger | TxError::NotDue) => {
                unreachable!("an unrecorded send waits for no ledger mark")
            }
        };
        attempts.push(attempt);
    }
    if let Some(mut c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
    }
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
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// No delivery is pending any more.
    Complete,
    /// The server could not be reached; the issue waits for the next run.
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
    /// Failed permanently in this run (including retries used up).
    pub failed: u64,
    /// Skipped because the subscriber left.
    pub skipped: u64,
    /// Temporary failures that will be retried.
    pub retried: u64,
    pub elapsed: Duration,
    /// The issue's counts after the run.
    pub counts: DeliveryCounts,
}

struct Job {
    recipient: Recipient,
    attempts_before: u32,
    _permit: OwnedSemaphorePermit,
}

struct Shared {
    messages: Arc<IssueMessages>,
    /// Where signed messages are built (signing is CPU work; building alone is not).
    builders: Option<BuildPool>,
    smtp: SmtpConfig,
    password: Option<String>,
    hello: ClientId,
    writer: std::sync::mpsc::Sender<WriteOp>,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    breaker: Mutex<Breaker>,
    trip_after: usize,
    stop: AtomicBool,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    skipped: AtomicU64,
    bar: indicatif::ProgressBar,
}

impl Shared {
    fn tripped(&self) -> bool {
        self.breaker.lock().expect("breaker lock").tripped.is_some()
    }

    /// The recipient's message in the form `smtputf8` allows, or why there is none.
    async fn build(&self, r: &Recipient, smtputf8: bool) -> Result<OutgoingMessage, String> {
        if let Some(pool) = &self.builders {
            // A signature costs up to a millisecond: keep it off the async workers.
            let (messages, r) = (self.messages.clone(), r.clone());
            match pool.run(move || messages.build_for(&r, smtputf8)).await {
                Some(built) => built.map_err(|e| e.to_string()),
                None => Err("building the message failed (the signer panicked)".into()),
            }
        } else {
            self.messages
                .build_for(r, smtputf8)
                .map_err(|e| e.to_string())
        }
    }

    /// One SMTP attempt, reusing the worker's connection when it is healthy. `durable`
    /// resolves once the delivery's `sending` mark is committed.
    async fn attempt(
        &self,
        conn: &mut Option<AsyncSmtpConnection>,
        r: &Recipient,
        durable: oneshot::Receiver<bool>,
    ) -> Attempt {
        let mut durable = Some(durable);
        // Built once the server is known: whether it offers SMTPUTF8 decides how an
        // international address is spelled (UTF-8, or its domain in punycode).
        let mut built: Option<(bool, OutgoingMessage)> = None;
        // A reused connection may have been closed by the server while idle; that is not
        // the recipient's fault, so it gets one fresh connection before anything counts.
        for fresh_try in [false, true] {
            let reused = conn.is_some();
            if conn.as_ref().is_some_and(|c| c.has_broken()) {
                *conn = None;
            }
            if conn.is_none() {
                match tokio::time::timeout(
                    self.smtp.timeout,
                    connect(&self.smtp, &self.hello, self.password.as_deref()),
                )
                .await
                {
                    Ok(Ok(c)) => *conn = Some(c),
                    Ok(Err(reason)) => return Attempt::Connection(reason),
                    Err(_) => {
                        return Attempt::Connection(format!(
                            "no answer from {}:{} within {:?} while connecting",
                            self.smtp.host, self.smtp.port, self.smtp.timeout
                        ))
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let smtputf8 = c.server_info().supports_feature(Extension::SmtpUtfEight);
            if built.as_ref().is_none_or(|(utf8, _)| *utf8 != smtputf8) {
                match self.build(r, smtputf8).await {
                    Ok(message) => built = Some((smtputf8, message)),
                    Err(reason) => {
                        return Attempt::Permanent {
                            reply: reason,
                            user_unknown: false,
                        }
                    }
                }
            }
            let (_, message) = built.as_ref().expect("built above");
            let result = transaction(c, message, &mut durable, self.smtp.timeout).await;
            match result {
                Ok(resp) => return Attempt::Sent(response_text(&resp)),
                Err(TxError::Ledger) => return Attempt::LedgerGone,
                Err(TxError::NotDue) => {
                    // DATA is open: drop the session rather than send anything.
                    *conn = None;
                    return Attempt::NotDue;
                }
                Err(TxError::Unsupported(reason)) => {
                    return Attempt::Permanent {
                        reply: reason,
                        user_unknown: false,
                    }
                }
                Err(TxError::Smtp(stage, e)) => {
                    *conn = None;
                    let attempt = classify(stage, &e);
                    if matches!(attempt, Attempt::Connection(_)) && reused && !fresh_try {
                        debug!(error = %e, "reused connection failed; retrying on a new one");
                        continue;
                    }
                    return attempt;
                }
                Err(TxError::Timeout) => {
                    *conn = None;
                    return Attempt::Connection(format!(
                        "{}:{} stopped answering mid-transaction (no reply within {:?})",
                        self.smtp.host, self.smtp.port, self.smtp.timeout
                    ));
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    fn outcome(&self, id: SubscriberId, attempts: u32, attempt: Attempt) -> Outcome {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        match attempt {
            Attempt::Sent(reply) => {
                breaker.reply();
                self.sent.fetch_add(1, Ordering::Relaxed);
                self.bar.inc(1);
                Outcome::Sent { reply }
            }
            Attempt::Permanent {
                reply,
                user_unknown,
            } => {
                breaker.reply();
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.bar.inc(1);
                Outcome::Permanent {
                    reply,
                    bounce: user_unknown,
                }
            }
            Attempt::Temporary(reply) => {
                breaker.reply();
                self.retried.fetch_add(1, Ordering::Relaxed);
                let retry_at_ms =
                    now_ms() + backoff(self.smtp.retry_base, attempts).as_millis() as i64;
                Outcome::Retry { reply, retry_at_ms }
            }
            Attempt::Connection(reply) => {
                breaker.pass_faults += 1;
                breaker.last_fault = Some(reply.clone());
                breaker.streak.push(id);
                if breaker.streak.len() >= self.trip_after && breaker.tripped.is_none() {
                    warn!(reason = %reply, "SMTP server unreachable; pausing the issue");
                    breaker.tripped = Some(reply.clone());
                }
                let retry_at_ms =
                    now_ms() + backoff(self.smtp.retry_base, attempts).as_millis() as i64;
                Outcome::Retry { reply, retry_at_ms }
            }
            Attempt::NotDue => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                Outcome::Skipped
            }
            Attempt::LedgerGone => unreachable!("the worker stops before recording"),
        }
    }
}

async fn worker(shared: Arc<Shared>, jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    let mut conn: Option<AsyncSmtpConnection> = None;
    loop {
        let job = jobs.lock().await.recv().await;
        let Some(job) = job else { break };
        if shared.stop.load(Ordering::SeqCst) || shared.tripped() {
            continue; // left pending for the next run
        }
        // Wait for the rate limit first, so the subscriber is checked (and marked) as close
        // to their message as possible.
        if let Some(limiter) = &shared.limiter {
            limiter.until_ready().await;
        }
        let id = job.recipient.subscriber_id;
        let (ack, acked) = oneshot::channel();
        if shared
            .writer
            .send(WriteOp::MarkSending { id, ack })
            .is_err()
        {
            break; // the ledger is gone: never send unrecorded
        }
        let span = tracing::debug_span!("delivery", subscriber = %id);
        let attempt = shared
            .attempt(&mut conn, &job.recipient, acked)
            .instrument(span)
            .await;
        if attempt == Attempt::LedgerGone {
            break;
        }
        debug!(subscriber = %id, ?attempt, "attempt finished");
        let outcome = shared.outcome(id, job.attempts_before + 1, attempt);
        if shared.writer.send(WriteOp::Record { id, outcome }).is_err() {
            break;
        }
    }
    if let Some(mut c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
    }
}

/// Resolves when `rx` says stop; never, if its sender is gone.
async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Delivers every pending delivery of the issue, retrying temporary failures as they come
/// due, until none is left, the server is unreachable, or `stop` turns true.
#[tracing::instrument(skip_all, fields(issue = %job.issue))]
pub async fn deliver(job: Delivery, mut stop: watch::Receiver<bool>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let read = store::open(&job.db_path)?;
    let requeued = ledger::requeue_interrupted(&read, job.issue)?;
    if requeued > 0 {
        warn!(
            count = requeued,
            "re-sending deliveries interrupted mid-transaction by an earlier run (same Message-IDs)"
        );
    }
    ledger::set_issue_state(&read, job.issue, IssueState::Sending)?;
    let before = ledger::delivery_counts(&read, job.issue)?;

    let concurrency = job.smtp.concurrency;
    let (writer_tx, writer_rx) = std::sync::mpsc::channel();
    let writer = {
        let path = job.db_path.clone();
        let issue = job.issue;
        let max = job.smtp.max_attempts;
        let hygiene = job.hygiene;
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(path, issue, max, hygiene, writer_rx))?
    };

    let bar = if job.progress_bar {
        let bar = indicatif::ProgressBar::new(before.outstanding());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} sent  {per_sec}  ETA {eta}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let limiter = NonZeroU32::new(job.smtp.rate_per_second)
        .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r)));
    let builders = if job.messages.signs() {
        Some(BuildPool::per_core()?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        messages: job.messages.clone(),
        builders,
        hello: ClientId::default(),
        // As many faults in a row as there are connections (at least 3); a pass with
        // nothing but faults also trips it (see the end of a pass below), so a small list
        // pauses too.
        trip_after: concurrency.max(3),
        smtp: job.smtp.clone(),
        password: job.password.clone(),
        writer: writer_tx.clone(),
        limiter,
        breaker: Mutex::new(Breaker::default()),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        bar: bar.clone(),
    });

    let permits = Arc::new(Semaphore::new(concurrency));
    let (job_tx, job_rx) = mpsc::channel::<Job>(concurrency);
    let job_rx = Arc::new(tokio::sync::Mutex::new(job_rx));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(shared.clone(), job_rx.clone())))
        .collect();

    let ticker = if job.progress_bar {
        None
    } else {
        let shared = shared.clone();
        let total = before.outstanding();
        Some(tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let sent = shared.sent.load(Ordering::Relaxed);
                info!(
                    sent,
                    failed = shared.failed.load(Ordering::Relaxed),
                    outstanding = total,
                    rate = format!("{:.0}/s", sent as f64 / start.elapsed().as_secs_f64()),
                    "sending"
                );
            }
        }))
    };

    let mut skipped = 0u64;
    let mut cursor = SubscriberId(0);
    let finish = 'run: loop {
        if *stop.borrow() {
            break Finish::Interrupted;
        }
        if let Some(reason) = shared.breaker.lock().expect("breaker lock").tripped.clone() {
            break Finish::Paused { reason };
        }
        let batch = ledger::due_deliveries(&read, job.issue, cursor, now_ms(), BATCH)?;
        if batch.is_empty() {
            // End of a pass: let in-flight messages finish and their outcomes land.
            drop(permits.acquire_many(concurrency as u32).await?);
            let (ack, acked) = oneshot::channel();
            writer_tx
                .send(WriteOp::Flush { ack })
                .map_err(|_| anyhow::anyhow!("the ledger writer stopped"))?;
            acked.await?;
            {
                let mut breaker = shared.breaker.lock().expect("breaker lock");
                if breaker.pass_faults > 0 && breaker.pass_replies == 0 && breaker.tripped.is_none()
                {
                    // Every attempt of the pass failed to reach the server.
                    let reason = breaker.last_fault.clone().unwrap_or_else(|| {
                        format!("{}:{} could not be reached", job.smtp.host, job.smtp.port)
                    });
                    warn!(%reason, "pausing the issue");
                    breaker.tripped = Some(reason);
                }
                breaker.pass_faults = 0;
                breaker.pass_replies = 0;
                if let Some(reason) = breaker.tripped.clone() {
                    break Finish::Paused { reason };
                }
            }
            match ledger::next_due_ms(&read, job.issue)? {
                None => break Finish::Complete,
                Some(due) => {
                    cursor = SubscriberId(0);
                    let wait = Duration::from_millis((due - now_ms()).max(0) as u64);
                    if !wait.is_zero() {
                        debug!(?wait, "waiting for retries to come due");
                        tokio::select! {
                            _ = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
                            _ = stop_requested(&mut stop) => break Finish::Interrupted,
                        }
                    }
                }
            }
            continue;
        }
        for d in batch {
            cursor = d.subscriber_id;
            if !d.active {
                skipped += 1;
                writer_tx
                    .send(WriteOp::Record {
                        id: d.subscriber_id,
                        outcome: Outcome::Skipped,
                    })
                    .map_err(|_| anyhow::anyhow!("the ledger writer stopped"))?;
                continue;
            }
            let email = match d.email {
                Ok(a) => a,
                Err(reason) => {
                    writer_tx
                        .send(WriteOp::Record {
                            id: d.subscriber_id,
                            outcome: Outcome::Permanent {
                                reply: reason,
                                bounce: false,
                            },
                        })
                        .map_err(|_| anyhow::anyhow!("the ledger writer stopped"))?;
                    continue;
                }
            };
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p?,
                _ = stop_requested(&mut stop) => break 'run Finish::Interrupted,
            };
            if shared.tripped() {
                continue 'run;
            }
            job_tx
                .send(Job {
                    recipient: Recipient {
                        subscriber_id: d.subscriber_id,
                        email,
                        name: d.name,
                    },
                    attempts_before: d.attempts,
                    _permit: permit,
                })
                .await?;
        }
    };

    // Stop handing out work; let what is in flight finish (each exchange is time-limited).
    shared.stop.store(true, Ordering::SeqCst);
    drop(job_tx);
    for w in workers {
        let _ = w.await;
    }
    if let Some(t) = ticker {
        t.abort();
        let _ = t.await;
    }
    let streak = std::mem::take(&mut shared.breaker.lock().expect("breaker lock").streak);
    drop(writer_tx);
    let shared = match Arc::try_unwrap(shared) {
        Ok(s) => s,
        Err(_) => anyhow::bail!("delivery workers still running after shutdown"),
    };
    drop(shared.writer);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the ledger writer panicked"))??;
    bar.finish_and_clear();

    let finish = match finish {
        Finish::Complete if !ledger::complete_issue(&read, job.issue)? => {
            // Something was re-queued meanwhile (e.g. `issues retry`): leave it resumable.
            warn!("deliveries were re-queued during the run; the issue stays open");
            Finish::Interrupted
        }
        other => other,
    };
    match &finish {
        Finish::Complete => {}
        Finish::Paused { .. } => {
            ledger::refund_attempts(&read, job.issue, &streak)?;
            ledger::set_issue_state(&read, job.issue, IssueState::Paused)?;
        }
        Finish::Interrupted => {}
    }
    let counts = ledger::delivery_counts(&read, job.issue)?;
    Ok(Report {
        finish,
        sent: shared.sent.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        skipped: skipped + shared.skipped.load(Ordering::Relaxed),
        retried: shared.retried.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(2);
        for attempts in 1..=20 {
            let d = backoff(base, attempts);
            let nominal = base
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(
                d >= nominal.mul_f64(0.5) && d <= nominal.mul_f64(1.5),
                "{attempts}: {d:?}"
            );
        }
    }
}
