//! The one writer of votes and clicks. Handlers hand it what happened and answer at once
//! (a click) or when it is committed (a vote); it writes in batches, one transaction per
//! batch, so a burst of clicks costs a few commits, and no handler waits on SQLite.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::store::tracking::{self as store, NewClick, NewVote, VoteOutcome};
use crate::store::{IssueNumber, SubscriberId};

/// The most records written in one transaction.
const BATCH: usize = 4096;

enum Record {
    Click(NewClick),
    Vote(NewVote, oneshot::Sender<Result<VoteOutcome, String>>),
}

/// Counts of what the writer was given and what it stored, for the benchmark.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub stored: AtomicU64,
}

/// The handle of the writer thread; dropping it writes what is queued and stops the thread.
pub struct Recorder {
    tx: Option<mpsc::Sender<Record>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the writer on the database at `db`. `machine_delay` is `tracking.machine_delay`.
    pub fn start(db: PathBuf, machine_delay: Duration) -> anyhow::Result<Recorder> {
        let conn = crate::store::open(&db)?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("tracking-writer".into())
            .spawn(move || run(conn, rx, machine_delay, &c))?;
        Ok(Recorder {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Queues a click; never waits.
    pub fn click(&self, click: NewClick) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            if tx.send(Record::Click(click)).is_err() {
                warn!("the tracking writer has stopped; a click was not recorded");
            }
        }
    }

    /// Records a vote and waits for its commit.
    pub async fn vote(&self, vote: NewVote) -> Result<VoteOutcome, String> {
        let (done, wait) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or("the tracking writer has stopped")?;
        tx.send(Record::Vote(vote, done))
            .map_err(|_| "the tracking writer has stopped".to_string())?;
        wait.await
            .map_err(|_| "the tracking writer has stopped".to_string())?
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Record>, delay: Duration, counters: &Counters) {
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
    let mut delivered = DeliveredAt::default();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        write(&conn, batch, delay, counters, &mut delivered);
    }
}

/// When an issue's copies went out, as the "too soon after delivery" rule needs it. Read
/// before the write transaction, never inside it (the latest copy of a large issue is a
/// scan of its ledger rows), and kept for a few seconds, since it changes only while the
/// issue is being sent.
#[derive(Default)]
struct DeliveredAt {
    /// By issue and (in `per-reader` mode) reader: the time, and when it was read.
    known: HashMap<DeliveredKey, (Option<DateTime<Utc>>, Instant)>,
}

type DeliveredKey = (IssueNumber, Option<SubscriberId>);

impl DeliveredAt {
    const FRESH: Duration = Duration::from_secs(5);
    const MOST: usize = 100_000;

    fn get(
        &mut self,
        conn: &Connection,
        issue: IssueNumber,
        subscriber: Option<SubscriberId>,
    ) -> rusqlite::Result<Option<DateTime<Utc>>> {
        let key = (issue, subscriber);
        if let Some((at, read)) = self.known.get(&key) {
            if read.elapsed() < Self::FRESH {
                return Ok(*at);
            }
        }
        if self.known.len() >= Self::MOST {
            self.known.clear();
        }
        let at = store::delivered_at(conn, issue, subscriber)?;
        self.known.insert(key, (at, Instant::now()));
        Ok(at)
    }
}

fn write(
    conn: &Connection,
    batch: Vec<Record>,
    delay: chrono::Duration,
    counters: &Counters,
    delivered: &mut DeliveredAt,
) {
    let mut clicks = Vec::new();
    let mut votes = Vec::new();
    for r in batch {
        match r {
            Record::Click(c) => clicks.push(c),
            Record::Vote(v, done) => votes.push((v, done)),
        }
    }
    for c in clicks.iter_mut().filter(|c| c.machine.is_none()) {
        match delivered.get(conn, c.issue, c.subscriber) {
            Ok(at) => {
                if at.is_some_and(|sent| c.at >= sent && c.at - sent < delay) {
                    c.machine = Some("early");
                }
            }
            Err(e) => warn!(error = %e, "cannot read when the issue was delivered"),
        }
    }
    let result = crate::store::in_write_transaction(conn, |conn| {
        let stored = store::record_clicks(conn, &clicks)?;
        let mut outcomes = Vec::with_capacity(votes.len());
        for (v, _) in &votes {
            outcomes.push(store::record_vote(conn, v)?);
        }
        Ok::<_, rusqlite::Error>((stored, outcomes))
    });
    match result {
        Ok((stored, outcomes)) => {
            counters.stored.fetch_add(stored as u64, Ordering::Relaxed);
            for ((_, done), outcome) in votes.into_iter().zip(outcomes) {
                let _ = done.send(Ok(outcome));
            }
        }
        Err(e) => {
            error!(
                clicks = clicks.len(),
                votes = votes.len(),
                "recording failed: {e}"
            );
            for (_, done) in votes {
                let _ = done.send(Err(format!("the vote could not be recorded: {e}")));
            }
        }
    }
}
