//! A delivery worker: takes one due delivery at a time, marks it `sending`, builds the
//! recipient's message, hands it to the transport and queues the outcome for the writer.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tracing::{debug, Instrument};

use super::breaker::Breaker;
use super::halt::{Fault, Progress, Sentinel};
use super::smtp::Attempt;
use super::transport::Transport;
use super::writer::WriteOp;
use super::{backoff, now_ms};
use crate::config::SmtpConfig;
use crate::mail::message::{IssueMessages, Recipient};
use crate::mail::outgoing::OutgoingMessage;
use crate::store::ledger::Outcome;
use crate::store::relays::RelayId;
use crate::store::SubscriberId;

pub(super) struct Job {
    pub(super) recipient: Recipient,
    pub(super) attempts_before: u32,
    pub(super) _permit: OwnedSemaphorePermit,
    /// The slot of a capped recipient domain, held until the attempt ends.
    pub(super) _domain: Option<OwnedSemaphorePermit>,
}

/// What the workers and the dispatcher of one run share.
pub(super) struct Engine<T> {
    pub(super) transport: T,
    pub(super) messages: Arc<IssueMessages>,
    pub(super) smtp: SmtpConfig,
    /// After this time (ms since the epoch) a temporary failure is final
    /// (`smtp.give_up_after` from the issue's creation).
    pub(super) give_up_at_ms: i64,
    pub(super) writer: std::sync::mpsc::Sender<WriteOp>,
    /// Each relay's `rate_per_second`, by relay (0 is the primary).
    pub(super) limiters: Vec<Option<governor::DefaultDirectRateLimiter>>,
    /// The relay the run sends through now, and each relay's row in the ledger.
    pub(super) active: AtomicUsize,
    pub(super) relay_ids: Vec<RelayId>,
    pub(super) breaker: Mutex<Breaker>,
    pub(super) fault: Fault,
    pub(super) progress: Arc<Progress>,
    pub(super) stop: AtomicBool,
    pub(super) in_flight: AtomicUsize,
    pub(super) sent: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) bar: indicatif::ProgressBar,
}

impl<T: Transport> Engine<T> {
    pub(super) fn tripped(&self) -> Option<String> {
        let breaker = self.breaker.lock().expect("breaker lock");
        breaker.tripped().map(str::to_owned)
    }

    /// The recipient's message in the form `smtputf8` allows, or why there is none. Signing
    /// happens here, on the async worker: a signed send runs one worker per core, so the
    /// signatures use every core without a hand-off to other threads and back for each copy
    /// (that hand-off cost more CPU per message than the rest of the SMTP work; see
    /// docs/performance-dkim.md).
    fn build(&self, r: &Recipient, smtputf8: bool) -> Result<OutgoingMessage, String> {
        self.messages
            .build_for(r, smtputf8)
            .map_err(|e| e.to_string())
    }

    /// One attempt: readies the session, builds the recipient's message for what the
    /// server offers (an international address is spelled in UTF-8 only where SMTPUTF8
    /// is offered, else its domain in punycode) and hands it to the transport, which sends
    /// the body only once `durable` (the `sending` mark) resolves.
    async fn attempt(
        &self,
        session: &mut T::Session,
        r: &Recipient,
        durable: oneshot::Receiver<bool>,
    ) -> Attempt {
        let smtputf8 = match self.transport.prepare(session).await {
            Ok(smtputf8) => smtputf8,
            Err(attempt) => return attempt,
        };
        match self.build(r, smtputf8) {
            Ok(message) => self.transport.attempt(session, &message, durable).await,
            Err(reply) => Attempt::Permanent {
                reply,
                user_unknown: false,
            },
        }
    }

    /// What an attempt comes to in the ledger, counted for the run and the breaker.
    pub(super) fn outcome(&self, id: SubscriberId, attempts: u32, attempt: Attempt) -> Outcome {
        self.breaker
            .lock()
            .expect("breaker lock")
            .record(id, &attempt);
        self.progress.beat();
        match attempt {
            Attempt::Sent(reply) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                self.bar.inc(1);
                Outcome::Sent { reply }
            }
            Attempt::Permanent {
                reply,
                user_unknown,
            } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.bar.inc(1);
                Outcome::Permanent {
                    reply,
                    bounce: user_unknown,
                }
            }
            Attempt::Temporary(reply) | Attempt::Connection(reply) => {
                let now = now_ms();
                if attempts >= self.smtp.max_attempts || now >= self.give_up_at_ms {
                    // No retry left in this run: failed for now, retried by a later run
                    // until the deadline (unless the breaker gives the attempt back).
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    Outcome::Deferred { reply }
                } else {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    let retry_at_ms =
                        now + backoff(self.smtp.retry_base, attempts).as_millis() as i64;
                    Outcome::Retry { reply, retry_at_ms }
                }
            }
            Attempt::NotDue => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                Outcome::Skipped
            }
            Attempt::LedgerGone => unreachable!("the worker stops before recording"),
        }
    }
}

/// A worker: one session, one delivery at a time, until the jobs run out. Jobs arriving
/// after a stop request or a trip are dropped (left pending for the next run).
pub(super) async fn worker<T: Transport>(
    engine: Arc<Engine<T>>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
) {
    let sentinel = Sentinel::new(
        engine.fault.clone(),
        "a delivery worker stopped unexpectedly",
    );
    let mut session = engine.transport.session();
    loop {
        let job = jobs.lock().await.recv().await;
        let Some(job) = job else { break };
        if engine.stop.load(Ordering::SeqCst) || engine.tripped().is_some() {
            continue;
        }
        // Wait for the rate limit first, so the subscriber is checked (and marked) as close
        // to their message as possible.
        let relay = engine.active.load(Ordering::SeqCst);
        if let Some(limiter) = engine.limiters.get(relay).and_then(Option::as_ref) {
            limiter.until_ready().await;
        }
        let id = job.recipient.subscriber_id;
        let (ack, acked) = oneshot::channel();
        if engine
            .writer
            .send(WriteOp::MarkSending {
                id,
                ack,
                relay: engine.relay_ids.get(relay).copied(),
            })
            .is_err()
        {
            break; // the ledger is gone: never send unrecorded
        }
        let span = tracing::debug_span!("delivery", subscriber = %id);
        engine.in_flight.fetch_add(1, Ordering::Relaxed);
        let attempt = engine
            .attempt(&mut session, &job.recipient, acked)
            .instrument(span)
            .await;
        engine.in_flight.fetch_sub(1, Ordering::Relaxed);
        if attempt == Attempt::LedgerGone {
            break;
        }
        debug!(subscriber = %id, ?attempt, "attempt finished");
        let outcome = engine.outcome(id, job.attempts_before + 1, attempt);
        if engine.writer.send(WriteOp::Record { id, outcome }).is_err() {
            break;
        }
    }
    engine.transport.close(session).await;
    sentinel.disarm();
}
