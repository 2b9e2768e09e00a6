//! The ledger writer: the one thread that records delivery state changes, in group commits.
//! If it fails (a full disk, a database gone read-only), it says so through the run's
//! [`Fault`](super::halt::Fault) at once, so the send stops instead of waiting on it.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::halt::{Fault, Sentinel};
use crate::store::checkpoint::Checkpointer;
use crate::store::ledger::{self, Outcome};
use crate::store::relays::{self, RelayId};
use crate::store::{self, IssueNumber, SubscriberId};

pub(super) enum WriteOp {
    MarkSending {
        id: SubscriberId,
        ack: oneshot::Sender<bool>,
        /// The relay the message goes to, noted on the delivery and counted for its limits.
        relay: Option<RelayId>,
    },
    Record {
        id: SubscriberId,
        outcome: Outcome,
    },
    Flush {
        ack: oneshot::Sender<()>,
    },
}

/// The longest a batch of outcomes waits uncommitted for a `sending` mark to share its
/// transaction. It also bounds how long the writer holds the database's write lock.
const GROUP_COMMIT: Duration = Duration::from_millis(20);

/// The longest a `sending` mark waits for others to share its commit (see [`MarkBatch`]).
const MARK_WAIT: Duration = Duration::from_millis(2);

/// How often the checkpoint thread copies the WAL back into the database during a send
/// (at 3,700 msgs/s the ledger adds a few MB of WAL in that time).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Starts the writer thread on its own connection to `db_path`. Its failure (an error or
/// a panic) is raised on `fault` with a message naming the cause.
pub(super) fn spawn(
    db_path: PathBuf,
    issue: IssueNumber,
    max_attempts: u32,
    sessions: Sessions,
    fault: Fault,
) -> std::io::Result<(
    std::sync::mpsc::Sender<WriteOp>,
    JoinHandle<anyhow::Result<()>>,
)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            let sentinel = Sentinel::new(fault.clone(), "the ledger writer stopped unexpectedly");
            let result = store::open(&db_path)
                .map_err(anyhow::Error::from)
                .and_then(|conn| {
                    // Copies the WAL back ahead of the writer's own checkpoints (see there).
                    let _checkpointer = Checkpointer::spawn(&db_path, CHECKPOINT_EVERY)?;
                    writer_loop(conn, issue, max_attempts, sessions, rx)
                });
            let result = result.map_err(|e| explain(e, &db_path));
            if let Err(e) = &result {
                fault.raise(format!("{e:#}"));
            }
            sentinel.disarm();
            result
        })?;
    Ok((tx, handle))
}

/// Gives a database failure the sentence an operator needs: what happened and what to do.
pub(super) fn explain(err: anyhow::Error, db_path: &Path) -> anyhow::Error {
    let code = err
        .chain()
        .find_map(|e| match e.downcast_ref::<rusqlite::Error>() {
            Some(rusqlite::Error::SqliteFailure(f, _)) => Some(f.code),
            _ => None,
        });
    let folder = db_path.parent().unwrap_or(Path::new("."));
    match code {
        Some(rusqlite::ErrorCode::DiskFull) => err.context(format!(
            "the state database is full: free space on the file system holding {} and run the send again (nothing is lost: deliveries not recorded as sent are sent by the next run)",
            folder.display()
        )),
        Some(rusqlite::ErrorCode::ReadOnly) => err.context(format!(
            "the state database {} became read-only during the send; make it writable and run the send again",
            db_path.display()
        )),
        _ => err.context(format!(
            "the ledger writer could not record deliveries in {}",
            db_path.display()
        )),
    }
}

/// When the `sending` marks of an open group are committed. A commit costs the writer far
/// more than a row (the pages it writes to the WAL, the WAL's locks, waking the sessions),
/// so with many sessions the marks are gathered: the group is committed once half the
/// sessions of the marks' relay wait on it, or once its first mark has waited
/// [`MARK_WAIT`]. A relay with one or two sessions never waits. On a signed send at 16 sessions this cut the commits
/// from about one per message to one per seven (docs/performance-dkim.md).
#[derive(Debug)]
struct MarkBatch {
    sessions: Sessions,
    /// How many marks make the open group worth committing at once.
    enough: usize,
    /// Marks in the open group, and when the first of them arrived.
    waiting: usize,
    first: Option<Instant>,
}

impl MarkBatch {
    fn new(sessions: Sessions) -> Self {
        MarkBatch {
            sessions,
            enough: 1,
            waiting: 0,
            first: None,
        }
    }

    /// A mark for a message to `relay` joined the open group.
    fn marked(&mut self, relay: Option<RelayId>) {
        if self.first.is_none() {
            self.enough = self.sessions.of(relay).div_ceil(2).max(1);
            self.first = Some(Instant::now());
        }
        self.waiting += 1;
    }

    fn committed(&mut self) {
        self.waiting = 0;
        self.first = None;
    }

    fn due(&self) -> bool {
        self.first
            .is_some_and(|first| self.waiting >= self.enough || first.elapsed() >= MARK_WAIT)
    }

    /// How long the writer may wait for more operations before the marks are due.
    fn patience(&self) -> Option<Duration> {
        self.first
            .map(|first| MARK_WAIT.saturating_sub(first.elapsed()))
    }
}

/// How many sessions send to each relay of the run (a run moves to a relay with fewer
/// sessions when it fails over), and how many to count for a mark without a relay.
#[derive(Debug, Clone, Default)]
pub(super) struct Sessions {
    pub(super) by_relay: Vec<(RelayId, usize)>,
    pub(super) otherwise: usize,
}

impl Sessions {
    fn of(&self, relay: Option<RelayId>) -> usize {
        relay
            .and_then(|r| self.by_relay.iter().find(|(id, _)| *id == r))
            .map_or(self.otherwise, |&(_, n)| n)
    }
}

/// The single writer: applies queued state changes in group commits. A commit happens when
/// `sending` marks are waiting (see [`MarkBatch`]; each must be durable before its message
/// goes out) or a flush is asked for, so outcomes ride along with the marks instead of
/// costing a commit each; outcomes alone are committed within `GROUP_COMMIT`. Each worker
/// therefore has at most one delivered-but-unrecorded message at any time. On an error the
/// pending acknowledgements are dropped, so no message waits for a mark that will never be
/// durable.
pub(super) fn writer_loop(
    conn: Connection,
    issue: IssueNumber,
    max_attempts: u32,
    sessions: Sessions,
    rx: std::sync::mpsc::Receiver<WriteOp>,
) -> anyhow::Result<()> {
    use std::sync::mpsc::RecvTimeoutError;
    enum Ack {
        Mark(oneshot::Sender<bool>, bool),
        Flush(oneshot::Sender<()>),
    }
    let mut open_since: Option<Instant> = None;
    let mut acks: Vec<Ack> = Vec::new();
    // Relays whose first use is on record (checked once per relay and run).
    let mut first_use_noted: Vec<RelayId> = Vec::new();
    // Messages handed to each relay per second in the open group, written with its commit.
    let mut handed: Vec<(RelayId, i64, u64)> = Vec::new();
    let mut marks = MarkBatch::new(sessions);
    loop {
        let next = match open_since {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => {
                let wait = GROUP_COMMIT.saturating_sub(since.elapsed());
                rx.recv_timeout(marks.patience().map_or(wait, |p| p.min(wait)))
            }
        };
        let disconnected = matches!(next, Err(RecvTimeoutError::Disconnected));
        if let Ok(first) = next {
            if open_since.is_none() {
                ledger::begin_group(&conn)?;
                open_since = Some(Instant::now());
            }
            let mut op = Some(first);
            let mut applied = 0;
            while let Some(current) = op.take() {
                match current {
                    WriteOp::MarkSending { id, ack, relay } => {
                        let go = ledger::mark_sending(&conn, issue, id, relay)?;
                        if let (true, Some(relay)) = (go, relay) {
                            let now = super::now_ms();
                            let second = now.div_euclid(1000);
                            match handed
                                .iter_mut()
                                .find(|(r, s, _)| *r == relay && *s == second)
                            {
                                Some((_, _, n)) => *n += 1,
                                None => handed.push((relay, second, 1)),
                            }
                            if !first_use_noted.contains(&relay) {
                                relays::note_first_use(&conn, relay, now)?;
                                first_use_noted.push(relay);
                            }
                        }
                        acks.push(Ack::Mark(ack, go));
                        marks.marked(relay);
                    }
                    WriteOp::Record { id, outcome } => {
                        ledger::record_outcome(&conn, issue, id, &outcome, max_attempts)?;
                    }
                    WriteOp::Flush { ack } => acks.push(Ack::Flush(ack)),
                }
                applied += 1;
                if applied < 4096 {
                    op = rx.try_recv().ok();
                }
            }
        }
        let due = open_since.is_some_and(|since| since.elapsed() >= GROUP_COMMIT);
        let flush_asked = acks.iter().any(|a| matches!(a, Ack::Flush(_)));
        if open_since.is_some() && (marks.due() || flush_asked || due || disconnected) {
            for (relay, second, n) in handed.drain(..) {
                relays::count_handed(&conn, relay, second, n)?;
            }
            ledger::commit_group(&conn)?;
            open_since = None;
            marks.committed();
            for ack in acks.drain(..) {
                match ack {
                    Ack::Mark(tx, go) => {
                        let _ = tx.send(go);
                    }
                    Ack::Flush(tx) => {
                        let _ = tx.send(());
                    }
                }
            }
        }
        if disconnected {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Fixture;
    use super::*;

    #[test]
    fn marks_are_acknowledged_only_once_committed_and_outcomes_land() {
        let f = Fixture::new(3);
        let (tx, rx) = std::sync::mpsc::channel();
        let conn = store::open(&f.db_path).unwrap();
        let writer =
            std::thread::spawn(move || writer_loop(conn, f.issue, 3, Sessions::default(), rx));
        let (ack, acked) = oneshot::channel();
        tx.send(WriteOp::MarkSending {
            id: f.ids[0],
            ack,
            relay: None,
        })
        .unwrap();
        assert!(acked.blocking_recv().unwrap(), "a pending delivery may go");
        let (ack, acked) = oneshot::channel();
        tx.send(WriteOp::Record {
            id: f.ids[0],
            outcome: Outcome::Sent {
                reply: "250 ok".into(),
            },
        })
        .unwrap();
        // Sent is no longer pending: its second mark says no.
        tx.send(WriteOp::MarkSending {
            id: f.ids[0],
            ack,
            relay: None,
        })
        .unwrap();
        assert!(!acked.blocking_recv().unwrap());
        drop(tx);
        writer.join().unwrap().unwrap();
        let counts = ledger::delivery_counts(&f.read(), f.issue).unwrap();
        assert_eq!((counts.sent, counts.pending), (1, 2));
    }

    #[test]
    fn marks_wait_for_half_the_sessions_of_their_relay_or_two_milliseconds() {
        let (primary, backup) = (RelayId(1), RelayId(2));
        let sessions = Sessions {
            by_relay: vec![(primary, 16), (backup, 2)],
            otherwise: 1,
        };
        let mut marks = MarkBatch::new(sessions);
        assert!(!marks.due(), "nothing to commit");
        for _ in 0..7 {
            marks.marked(Some(primary));
        }
        assert!(!marks.due(), "7 of 16 wait for more");
        marks.marked(Some(primary));
        assert!(marks.due(), "8 of 16 are enough");
        marks.committed();
        assert!(!marks.due());

        // After a failover to a relay with two sessions, nothing waits.
        marks.marked(Some(backup));
        assert!(marks.due(), "one of two never waits");
        marks.committed();
        marks.marked(None);
        assert!(marks.due(), "a lone session never waits");
        marks.committed();

        marks.marked(Some(primary));
        std::thread::sleep(MARK_WAIT + Duration::from_millis(1));
        assert!(marks.due(), "a lone mark waits no longer than MARK_WAIT");
        assert_eq!(marks.patience(), Some(Duration::ZERO));
    }

    #[test]
    fn a_failing_database_drops_the_mark_and_raises_the_fault_with_its_cause() {
        let f = Fixture::new(2);
        // The writer's database refuses every write from now on.
        f.read()
            .execute_batch(
                "CREATE TRIGGER no_writes BEFORE UPDATE ON deliveries
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
            )
            .unwrap();
        let fault = Fault::new();
        let (tx, handle) = spawn(
            f.db_path.clone(),
            f.issue,
            3,
            Sessions::default(),
            fault.clone(),
        )
        .unwrap();
        let (ack, acked) = oneshot::channel();
        tx.send(WriteOp::MarkSending {
            id: f.ids[0],
            ack,
            relay: None,
        })
        .unwrap();
        assert!(acked.blocking_recv().is_err(), "never acknowledged");
        let err = handle.join().unwrap().unwrap_err();
        assert!(
            format!("{err:#}").contains("database or disk is full"),
            "{err:#}"
        );
        assert!(fault.get().unwrap().contains("could not record deliveries"));
        assert!(tx
            .send(WriteOp::Flush {
                ack: oneshot::channel().0
            })
            .is_err());
    }

    #[test]
    fn disk_full_is_told_as_such() {
        let err = anyhow::Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(13), // SQLITE_FULL
            Some("database or disk is full".into()),
        ));
        let told = format!(
            "{:#}",
            explain(err, Path::new("/srv/news/state/verdicts.db"))
        );
        assert!(
            told.starts_with(
                "the state database is full: free space on the file system holding /srv/news/state"
            ),
            "{told}"
        );
    }
}
