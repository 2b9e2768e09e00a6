//! One delivery run in named steps: [`start`] (re-queue what earlier runs left), [`spawn`]
//! (the writer thread, the workers, the progress reporters), [`Run::dispatch`] (passes
//! over the due deliveries, each ending with [`Run::end_of_pass`]), [`Run::shutdown`] and
//! [`finish`] (complete, pause, give up, and count).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

use super::breaker::Breaker;
use super::halt::{guarded, unless_failed, watchdog, Fault, Halt, Progress};
use super::transport::Transport;
use super::worker::{worker, Engine, Job};
use super::writer::{self, WriteOp};
use super::{now_ms, Delivery, Finish, Report};
use crate::mail::message::Recipient;
use crate::store::ledger::{self, DeliveryCounts, IssueState, Outcome};
use crate::store::{self, IssueNumber, SubscriberId};

/// Deliveries read from the ledger per query.
const BATCH: usize = 512;
/// How long a run may go without progress before it says what it is waiting for.
pub(super) const QUIET: Duration = Duration::from_secs(60);

/// The ledger as a run starts.
pub(super) struct Start {
    pub(super) read: Connection,
    pub(super) before: DeliveryCounts,
    /// `smtp.give_up_after` past the issue's creation.
    pub(super) deadline: DateTime<Utc>,
}

/// Re-queues deliveries an earlier run left `sending` (crash) or failed temporarily (while
/// the deadline allows), and marks the issue as sending.
pub(super) fn start(job: &Delivery) -> anyhow::Result<Start> {
    let read = store::open(&job.db_path)?;
    let issue = ledger::issue(&read, job.issue)?
        .ok_or_else(|| anyhow::anyhow!("issue {} is not in the ledger", job.issue))?;
    let deadline =
        issue.created_at + chrono::Duration::from_std(job.smtp.give_up_after).unwrap_or_default();
    let requeued = ledger::requeue_interrupted(&read, job.issue)?;
    if requeued > 0 {
        warn!(
            count = requeued,
            "re-sending deliveries interrupted mid-transaction by an earlier run (same Message-IDs)"
        );
    }
    let released = ledger::release_held_bounces(&read, job.issue)?;
    if released > 0 {
        info!(
            count = released,
            "asking again about refusals an unfinished earlier run held (nobody was marked bounced)"
        );
    }
    if Utc::now() < deadline {
        let deferred = ledger::requeue_deferred(&read, job.issue)?;
        if deferred > 0 {
            info!(
                count = deferred,
                "retrying deliveries that failed temporarily in an earlier run"
            );
        }
    }
    ledger::set_issue_state(&read, job.issue, IssueState::Sending)?;
    let before = ledger::delivery_counts(&read, job.issue)?;
    Ok(Start {
        read,
        before,
        deadline,
    })
}

/// A run under way.
pub(super) struct Run<T: Transport> {
    issue: IssueNumber,
    read: Connection,
    engine: Arc<Engine<T>>,
    writer: JoinHandle<anyhow::Result<()>>,
    concurrency: usize,
    permits: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    reporters: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Receiver<bool>,
    cursor: SubscriberId,
}

/// Starts the writer thread, the workers and the progress reporters.
pub(super) fn spawn<T: Transport>(
    job: &Delivery,
    transport: T,
    start: Start,
    stop: watch::Receiver<bool>,
    quiet: Duration,
) -> anyhow::Result<Run<T>> {
    let concurrency = job.smtp.concurrency;
    let fault = Fault::new();
    let (writer_tx, writer) = writer::spawn(
        job.db_path.clone(),
        job.issue,
        job.smtp.max_attempts,
        fault.clone(),
    )?;
    let total = start.before.outstanding();
    let bar = if job.progress_bar {
        let bar = indicatif::ProgressBar::new(total);
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
    let engine = Arc::new(Engine {
        messages: job.messages.clone(),
        smtp: job.smtp.clone(),
        give_up_at_ms: start.deadline.timestamp_millis(),
        writer: writer_tx,
        limiter: NonZeroU32::new(job.smtp.rate_per_second)
            .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
        // As many relay-wide failures in a row as there are connections (at least 3); a
        // pass with nothing but such failures also trips it, so a small list pauses too.
        breaker: Mutex::new(Breaker::new(concurrency.max(3), start.before.sent)),
        fault,
        progress: Arc::new(Progress::new(
            "the first deliveries to be read from the ledger",
        )),
        stop: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        bar,
        transport,
    });
    let (jobs, job_rx) = mpsc::channel::<Job>(concurrency);
    // Only the workers hold the receiver: if they all end, sending a job fails instead of
    // waiting forever.
    let job_rx = Arc::new(tokio::sync::Mutex::new(job_rx));
    let workers = (0..concurrency)
        .map(|_| tokio::spawn(worker(engine.clone(), job_rx.clone())))
        .collect();
    let mut reporters = vec![tokio::spawn({
        let engine = engine.clone();
        watchdog(engine.progress.clone(), quiet, move || {
            engine.in_flight.load(Ordering::Relaxed)
        })
    })];
    if !job.progress_bar {
        reporters.push(tokio::spawn(log_progress(engine.clone(), total)));
    }
    Ok(Run {
        issue: job.issue,
        read: start.read,
        engine,
        writer,
        concurrency,
        permits: Arc::new(Semaphore::new(concurrency)),
        jobs,
        workers,
        reporters,
        stop,
        cursor: SubscriberId(0),
    })
}

/// Logs the run's progress every few seconds (when there is no progress bar).
async fn log_progress<T: Transport>(engine: Arc<Engine<T>>, outstanding: u64) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let sent = engine.sent.load(Ordering::Relaxed);
        info!(
            sent,
            failed = engine.failed.load(Ordering::Relaxed),
            outstanding,
            rate = format!("{:.0}/s", sent as f64 / start.elapsed().as_secs_f64()),
            "sending"
        );
    }
}

/// What happened to the rest of a pass.
enum Pass {
    /// Every due delivery was handed out.
    Done,
    /// The breaker tripped mid-pass.
    Tripped,
}

impl<T: Transport> Run<T> {
    /// Waits for `f`, unless a stop is requested or a part of the run fails first.
    async fn wait<F: std::future::Future>(&mut self, f: F) -> Result<F::Output, Halt> {
        guarded(&mut self.stop, &self.engine.fault, f).await
    }

    fn record(&self, id: SubscriberId, outcome: Outcome) -> Result<(), Halt> {
        self.engine
            .writer
            .send(WriteOp::Record { id, outcome })
            .map_err(|_| self.writer_gone())
    }

    fn writer_gone(&self) -> Halt {
        Halt::Fault(
            self.engine
                .fault
                .get()
                .unwrap_or_else(|| "the ledger writer stopped".into()),
        )
    }

    /// Passes over the due deliveries until none is left, the breaker trips, or a stop or
    /// a fault ends the run.
    pub(super) async fn dispatch(&mut self) -> Result<Finish, Halt> {
        loop {
            if let Pass::Tripped = self.pass().await? {
                // In-flight attempts finish at the shutdown, before the refunds.
                let reason = self.engine.tripped().unwrap_or_default();
                return Ok(Finish::Paused { reason });
            }
            if let Some(finish) = self.end_of_pass().await? {
                return Ok(finish);
            }
        }
    }

    /// Hands every due delivery to the workers, in subscriber order from the cursor.
    async fn pass(&mut self) -> Result<Pass, Halt> {
        loop {
            if self.engine.tripped().is_some() {
                return Ok(Pass::Tripped);
            }
            let batch =
                ledger::due_deliveries(&self.read, self.issue, self.cursor, now_ms(), BATCH)
                    .map_err(|e| Halt::Fault(format!("reading the due deliveries failed: {e}")))?;
            if batch.is_empty() {
                return Ok(Pass::Done);
            }
            self.engine.progress.waiting_for(format!(
                "a free connection: all {} exchanges with {} are in flight",
                self.concurrency,
                self.engine.transport.describe()
            ));
            for d in batch {
                self.cursor = d.subscriber_id;
                if !d.active {
                    self.record(d.subscriber_id, Outcome::Skipped)?;
                    continue;
                }
                let email = match d.email {
                    Ok(a) => a,
                    Err(reason) => {
                        let outcome = Outcome::Permanent {
                            reply: reason,
                            bounce: false,
                        };
                        self.record(d.subscriber_id, outcome)?;
                        continue;
                    }
                };
                let permits = self.permits.clone();
                let permit = self
                    .wait(permits.acquire_owned())
                    .await?
                    .expect("the semaphore is never closed");
                if self.engine.tripped().is_some() {
                    return Ok(Pass::Tripped);
                }
                let job = Job {
                    recipient: Recipient {
                        subscriber_id: d.subscriber_id,
                        email,
                        name: d.name,
                    },
                    attempts_before: d.attempts,
                    _permit: permit,
                };
                let jobs = self.jobs.clone();
                if self.wait(jobs.send(job)).await?.is_err() {
                    return Err(Halt::Fault("every delivery worker stopped".into()));
                }
                self.engine.progress.beat();
            }
        }
    }

    /// Lets in-flight messages finish and their outcomes land in the ledger.
    async fn drain(&mut self) -> Result<(), Halt> {
        self.engine.progress.waiting_for(format!(
            "the last messages in flight with {} to finish",
            self.engine.transport.describe()
        ));
        let permits = self.permits.clone();
        let all = self.concurrency as u32;
        drop(
            unless_failed(&self.engine.fault, permits.acquire_many_owned(all))
                .await?
                .expect("the semaphore is never closed"),
        );
        self.engine
            .progress
            .waiting_for("the ledger writer to commit the last outcomes");
        let (ack, acked) = oneshot::channel();
        self.engine
            .writer
            .send(WriteOp::Flush { ack })
            .map_err(|_| self.writer_gone())?;
        if unless_failed(&self.engine.fault, acked).await?.is_err() {
            return Err(self.writer_gone());
        }
        Ok(())
    }

    /// The end of a pass: the breaker's check, then done, or a wait for the next retry.
    async fn end_of_pass(&mut self) -> Result<Option<Finish>, Halt> {
        self.drain().await?;
        let relay = self.engine.transport.describe();
        let tripped = {
            let mut breaker = self.engine.breaker.lock().expect("breaker lock");
            breaker
                .end_pass(|| format!("{relay} could not be reached"))
                .map(str::to_owned)
        };
        if let Some(reason) = tripped {
            warn!(%reason, "pausing the issue");
            return Ok(Some(Finish::Paused { reason }));
        }
        let next = ledger::next_due_ms(&self.read, self.issue)
            .map_err(|e| Halt::Fault(format!("reading the next retry time failed: {e}")))?;
        let Some(due) = next else {
            return Ok(Some(Finish::Complete));
        };
        self.cursor = SubscriberId(0);
        let wait = Duration::from_millis((due - now_ms()).max(0) as u64);
        if !wait.is_zero() {
            debug!(?wait, "waiting for retries to come due");
            self.engine.progress.waiting_for(format!(
                "temporary failures to come due for their retry (the next in {})",
                humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
            ));
            self.wait(tokio::time::sleep(wait.min(Duration::from_secs(60))))
                .await?;
        }
        Ok(None)
    }

    /// Stops handing out work, lets what is in flight finish (each exchange is
    /// time-limited), and joins the workers and the writer. Returns the engine's counters
    /// and refunds, and the writer's failure if it had one.
    pub(super) async fn shutdown(self) -> Stopped {
        let Run {
            engine,
            jobs,
            workers,
            reporters,
            writer,
            read,
            ..
        } = self;
        engine.stop.store(true, Ordering::SeqCst);
        drop(jobs);
        for w in workers {
            let _ = w.await;
        }
        for r in reporters {
            r.abort();
            let _ = r.await;
        }
        let refunds = engine.breaker.lock().expect("breaker lock").take_refunds();
        let engine = match Arc::try_unwrap(engine) {
            Ok(e) => e,
            Err(_) => unreachable!("every worker and reporter was joined"),
        };
        let Engine {
            writer: writer_tx,
            bar,
            sent,
            retried,
            fault,
            ..
        } = engine;
        drop(writer_tx);
        let writer = match writer.join() {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("the ledger writer panicked")),
        };
        bar.finish_and_clear();
        Stopped {
            read,
            refunds,
            writer,
            fault: fault.get(),
            sent: sent.into_inner(),
            retried: retried.into_inner(),
        }
    }
}

/// A run after its shutdown.
pub(super) struct Stopped {
    pub(super) read: Connection,
    pub(super) refunds: Vec<SubscriberId>,
    pub(super) writer: anyhow::Result<()>,
    pub(super) fault: Option<String>,
    pub(super) sent: u64,
    pub(super) retried: u64,
}

/// Records how the run ended: refunds the attempts an outage cost, pauses the issue while
/// deliveries wait for a retry, gives up on them past the deadline, and counts.
pub(super) fn finish(
    job: &Delivery,
    start_counts: DeliveryCounts,
    deadline: DateTime<Utc>,
    stopped: Stopped,
    finish: Finish,
    elapsed: Duration,
) -> anyhow::Result<Report> {
    let read = &stopped.read;
    let issue = job.issue;
    let past_deadline = Utc::now() >= deadline;
    let deadline_text = humantime::format_duration(job.smtp.give_up_after).to_string();
    let mut gave_up = 0;
    let mut bounced = 0;
    let finish = match finish {
        Finish::Paused { reason } => {
            // The breaker tripped: what the relay said meanwhile is not the readers' fault,
            // and refusals it held are asked again by the next run.
            ledger::refund_attempts(read, issue, &stopped.refunds)?;
            ledger::release_held_bounces(read, issue)?;
            if past_deadline {
                let why = format!("given up: still undelivered {deadline_text} after the issue was created (smtp.give_up_after); {reason}");
                ledger::give_up_pending(read, issue, &why)?;
                ledger::complete_issue(read, issue)?;
                gave_up = ledger::delivery_counts(read, issue)?.failed_temporarily;
                warn!(%reason, gave_up, "the issue's deadline has passed; giving up on its undelivered deliveries");
                Finish::Complete
            } else {
                ledger::pause_issue(read, issue, &reason)?;
                Finish::Paused { reason }
            }
        }
        Finish::Complete => {
            // The run went through the whole queue without finding the relay at fault: its
            // "no such mailbox" refusals are the readers' own.
            bounced = ledger::apply_held_bounces(read, issue, job.hygiene)?;
            let deferred = ledger::delivery_counts(read, issue)?.failed_temporarily;
            if deferred > 0 && !past_deadline {
                let reason = format!(
                    "{deferred} {} failed temporarily (e.g. a full mailbox; `verdicts issues show {issue}` lists them) and {} retried by the next run, until {}",
                    if deferred == 1 { "delivery" } else { "deliveries" },
                    if deferred == 1 { "is" } else { "are" },
                    deadline.format("%Y-%m-%d %H:%M UTC")
                );
                ledger::pause_issue(read, issue, &reason)?;
                Finish::Paused { reason }
            } else if !ledger::complete_issue(read, issue)? {
                // Something was re-queued meanwhile (e.g. `issues retry`): leave it resumable.
                warn!("deliveries were re-queued during the run; the issue stays open");
                Finish::Interrupted
            } else {
                gave_up = deferred;
                Finish::Complete
            }
        }
        Finish::Interrupted => Finish::Interrupted,
    };
    let counts = ledger::delivery_counts(read, issue)?;
    Ok(Report {
        finish,
        sent: stopped.sent,
        failed: counts.failed.saturating_sub(start_counts.failed),
        failed_temporarily: counts
            .failed_temporarily
            .saturating_sub(start_counts.failed_temporarily),
        gave_up,
        skipped: counts.skipped.saturating_sub(start_counts.skipped),
        bounced,
        retried: stopped.retried,
        elapsed,
        counts,
    })
}
