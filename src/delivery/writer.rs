//! The ledger writer: the one thread that records delivery state changes, in group commits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::store::ledger::{self, Outcome};
use crate::store::{self, IssueNumber, SubscriberId};

pub(super) enum WriteOp {
    MarkSending {
        id: SubscriberId,
        ack: oneshot::Sender<bool>,
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

/// The single writer: applies queued state changes in group commits. A commit happens as
/// soon as an operation needs an acknowledgement (a `sending` mark, which must be durable
/// before its message goes out, or a flush), so outcomes ride along with the next mark
/// instead of costing a commit each; outcomes alone are committed within `GROUP_COMMIT`.
/// Each worker therefore has at most one delivered-but-unrecorded message at any time.
pub(super) fn writer_loop(
    db_path: PathBuf,
    issue: IssueNumber,
    max_attempts: u32,
    hygiene: crate::store::events::Hygiene,
    rx: std::sync::mpsc::Receiver<WriteOp>,
) -> anyhow::Result<()> {
    use std::sync::mpsc::RecvTimeoutError;
    let conn = store::open(&db_path)?;
    enum Ack {
        Mark(oneshot::Sender<bool>, bool),
        Flush(oneshot::Sender<()>),
    }
    let mut open_since: Option<Instant> = None;
    let mut acks: Vec<Ack> = Vec::new();
    loop {
        let next = match open_since {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => rx.recv_timeout(GROUP_COMMIT.saturating_sub(since.elapsed())),
        };
        let disconnected = matches!(next, Err(RecvTimeoutError::Disconnected));
        if let Ok(first) = next {
            if open_since.is_none() {
                conn.execute_batch("BEGIN IMMEDIATE")?;
                open_since = Some(Instant::now());
            }
            let mut op = Some(first);
            let mut applied = 0;
            while let Some(current) = op.take() {
                match current {
                    WriteOp::MarkSending { id, ack } => {
                        let go = ledger::mark_sending(&conn, issue, id)?;
                        acks.push(Ack::Mark(ack, go));
                    }
                    WriteOp::Record { id, outcome } => {
                        ledger::record_outcome(&conn, issue, id, &outcome, max_attempts, hygiene)?
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
        if open_since.is_some() && (!acks.is_empty() || due || disconnected) {
            conn.execute_batch("COMMIT")?;
            open_since = None;
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
