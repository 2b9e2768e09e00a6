//! One delivery run in named steps: [`start`] (re-queue what earlier runs left), [`spawn`]
//! (the writer thread, the workers, the progress reporters), [`Run::dispatch`] (passes
//! over the due deliveries, each ending with [`Run::end_of_pass`]), [`Run::shutdown`] and
//! [`finish`] (complete, pause, give up, and count).

use std::collections::VecDeque;
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
use super::domains::{self, DomainGate};
use super::halt::{guarded, unless_failed, watchdog, Fault, Halt, Progress};
use super::limits::{self, Limits};
use super::transport::Transport;
use super::worker::{worker, Engine, Job};
use super::writer::{self, WriteOp};
use super::{now_ms, Delivery, Finish, Report};
use crate::config::SmtpConfig;
use crate::mail::message::Recipient;
use crate::store::ledger::{self, DeliveryCounts, IssueState, Outcome};
use crate::store::relays as relay_rows;
use crate::store::{self, IssueNumber, SubscriberId};

mod passes;

/// Deliveries read from the ledger per query.
const BATCH: usize = 512;
/// Most deliveries kept waiting for their capped domain's turn before the dispatcher stops
/// reading more from the ledger.
const HELD_MAX: usize = 4096;
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
    /// The configured relays (primary first) as the run uses them, and the active one.
    relays: Vec<RelayRun>,
    active: usize,
    /// Why earlier relays of this run were left, for the reason if the last one fails too.
    left: Vec<String>,
    /// Messages of the issue accepted before this run.
    sent_before: u64,
    /// Caps per recipient domain, and the deliveries waiting for their domain's turn (by
    /// domain group).
    gate: DomainGate,
    held: Vec<VecDeque<Held>>,
}

/// One relay during a run.
struct RelayRun {
    name: String,
    concurrency: usize,
    limits: Limits,
}

/// A delivery waiting for its domain's turn.
struct Held {
    recipient: Recipient,
    attempts: u32,
}

/// The relays of a job that the transport can reach, primary first.
fn relay_configs(job: &Delivery, reachable: usize) -> Vec<&SmtpConfig> {
    std::iter::once(&job.smtp)
        .chain(job.fallbacks.iter().map(|(smtp, _)| smtp))
        .take(reachable.max(1))
        .collect()
}

/// Starts the writer thread, the workers and the progress reporters.
pub(super) fn spawn<T: Transport>(
    job: &Delivery,
    transport: T,
    start: Start,
    stop: watch::Receiver<bool>,
    quiet: Duration,
) -> anyhow::Result<Run<T>> {
    let configs = relay_configs(job, transport.relays());
    let concurrency = job.smtp.concurrency;
    let workers_needed = configs.iter().map(|c| c.concurrency).max().unwrap_or(1);
    let now = super::now_ms();
    let mut relay_ids = Vec::new();
    let mut relays = Vec::new();
    for smtp in &configs {
        let id = relay_rows::ensure(&start.read, &smtp.name)?;
        let limits = if smtp.limits.is_empty() {
            Limits::none()
        } else {
            Limits::load(&start.read, id, &smtp.limits, now)?
        };
        relay_ids.push(id);
        relays.push(RelayRun {
            name: smtp.name.clone(),
            concurrency: smtp.concurrency,
            limits,
        });
    }
    limits::prune(&start.read, now)?;
    let fault = Fault::new();
    let (writer_tx, writer) = writer::spawn(
        job.db_path.clone(),
        job.issue,
        job.smtp.max_attempts,
        writer::Sessions {
            by_relay: relay_ids
                .iter()
                .copied()
                .zip(relays.iter().map(|r| r.concurrency))
                .collect(),
            otherwise: workers_needed,
        },
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
        limiters: configs
            .iter()
            .map(|c| {
                NonZeroU32::new(c.rate_per_second)
                    .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r)))
            })
            .collect(),
        active: AtomicUsize::new(0),
        relay_ids: relay_ids.clone(),
        // As many relay-wide failures in a row as there are connections (at least 3); a
        // pass with nothing but such failures also trips it, so a small list pauses too.
        breaker: Mutex::new(
            Breaker::new(concurrency.max(3), start.before.sent).for_relay(&job.smtp.name),
        ),
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
    let (jobs, job_rx) = mpsc::channel::<Job>(workers_needed);
    // Only the workers hold the receiver: if they all end, sending a job fails instead of
    // waiting forever.
    let job_rx = Arc::new(tokio::sync::Mutex::new(job_rx));
    let workers = (0..workers_needed)
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
        relays,
        active: 0,
        left: Vec::new(),
        sent_before: start.before.sent,
        gate: DomainGate::new(&job.domains),
        held: Vec::new(),
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
    /// The active relay reached an hourly, daily or warm-up limit (why).
    AtLimit(String),
}

/// How a pass's end went.
enum PassEnd {
    /// Another pass follows (retries came due).
    Again,
    /// The run is over.
    Finished(Finish),
    /// The breaker tripped on what the pass saw (why).
    Tripped(String),
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

    /// Passes over the due deliveries until none is left, the breaker trips or a limit is
    /// reached on the last relay that could take over, or a stop or a fault ends the run.
    pub(super) async fn dispatch(&mut self) -> Result<Finish, Halt> {
        loop {
            let why = match self.pass().await? {
                Pass::Done => match self.end_of_pass().await? {
                    PassEnd::Again => continue,
                    PassEnd::Finished(finish) => return Ok(finish),
                    PassEnd::Tripped(why) => why,
                },
                // In-flight attempts finish at the shutdown (or the move to a fallback),
                // before the refunds.
                Pass::Tripped => self.engine.tripped().unwrap_or_default(),
                Pass::AtLimit(why) => why,
            };
            if !self.fail_over(&why).await? {
                warn!(reason = %why, "pausing the issue");
                let reason = if self.left.is_empty() {
                    why
                } else {
                    format!("{}; then {why}", self.left.join("; then "))
                };
                return Ok(Finish::Paused { reason });
            }
        }
    }

    /// Moves the run to the next fallback relay that can take messages, if there is one and
    /// the reason to leave is not the sender's own fault (which no other relay would cure).
    /// What the left relay's trouble cost is given back first.
    async fn fail_over(&mut self, why: &str) -> Result<bool, Halt> {
        let blamed = self
            .engine
            .breaker
            .lock()
            .expect("breaker lock")
            .blamed_sender();
        if blamed {
            return Ok(false);
        }
        let now = now_ms();
        let next = (self.active + 1..self.relays.len()).find(|&i| {
            match self.relays[i].limits.check(now) {
                Ok(()) => true,
                Err(at) => at.limit.is_short(),
            }
        });
        let Some(next) = next else {
            return Ok(false);
        };
        self.drain().await?;
        let fault = |e: rusqlite::Error| Halt::Fault(format!("giving back attempts failed: {e}"));
        let refunds = self
            .engine
            .breaker
            .lock()
            .expect("breaker lock")
            .take_refunds();
        ledger::refund_attempts(&self.read, self.issue, &refunds).map_err(fault)?;
        ledger::release_held_bounces(&self.read, self.issue).map_err(fault)?;
        let (from, to) = (
            self.relays[self.active].name.clone(),
            self.relays[next].name.clone(),
        );
        warn!(reason = %why, from = %from, to = %to, "continuing the issue on a fallback relay");
        self.left.push(why.to_owned());
        // Every worker is idle (drained): the permits match the new relay's concurrency.
        let (old, new) = (self.concurrency, self.relays[next].concurrency);
        if new > old {
            self.permits.add_permits(new - old);
        } else if new < old {
            self.permits.forget_permits(old - new);
        }
        self.concurrency = new;
        self.active = next;
        self.engine.active.store(next, Ordering::SeqCst);
        self.engine.transport.use_relay(next);
        let accepted = self.sent_before + self.engine.sent.load(Ordering::Relaxed);
        *self.engine.breaker.lock().expect("breaker lock") =
            Breaker::new(new.max(3), accepted).for_relay(&to);
        self.cursor = SubscriberId(0);
        Ok(true)
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
