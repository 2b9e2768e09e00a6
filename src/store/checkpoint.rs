//! WAL checkpoints ahead of a busy writer. A connection that commits checkpoints itself
//! once the WAL holds 1,000 pages: it copies them back into the database between two
//! fsyncs, 4–15 ms here, about every fifth of a second during a send, and every SMTP session
//! waiting for a `sending` mark waits with it. [`Checkpointer`] runs passive checkpoints
//! from its own thread and connection, which never block the writer, so by the time the
//! writer's own checkpoint comes it finds almost everything copied and synced already. The
//! writer keeps that checkpoint: it is what restarts the WAL from its beginning, and a
//! checkpoint from another connection cannot while the writer keeps appending.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// A thread running `PRAGMA wal_checkpoint(PASSIVE)` every `every` until dropped.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn spawn(db_path: &Path, every: Duration) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let path: PathBuf = db_path.to_owned();
        let thread = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || {
                // Without it the writer checkpoints alone, as it always could: slower, not wrong.
                let conn = match super::open(&path) {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "no WAL checkpoint thread for this send");
                        return;
                    }
                };
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(e) = passive(&conn) {
                        tracing::debug!(error = %e, "WAL checkpoint skipped");
                    }
                }
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn passive(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of `t` in the database file alone, as if its WAL were gone.
    fn rows_in_main_file(db: &Path) -> i64 {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(db, copy.path().join("copy.db")).unwrap();
        Connection::open(copy.path().join("copy.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    fn writes_reach_the_database_file(checkpointer: bool) -> i64 {
        let (dir, conn) = crate::store::testing::store();
        let db = dir.path().join("verdicts.db");
        conn.execute_batch("CREATE TABLE t (x TEXT); PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let running = checkpointer.then(|| Checkpointer::spawn(&db, Duration::from_millis(5)));
        // Small commits, far below the writer's own checkpoint at 1,000 pages.
        for _ in 0..50 {
            conn.execute("INSERT INTO t VALUES (?1)", ["x".repeat(100)])
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        drop(running);
        rows_in_main_file(&db)
    }

    #[test]
    fn the_checkpointer_copies_a_writers_commits_into_the_database_file() {
        assert_eq!(
            writes_reach_the_database_file(false),
            0,
            "still only in the WAL"
        );
        assert_eq!(writes_reach_the_database_file(true), 50);
    }
}
