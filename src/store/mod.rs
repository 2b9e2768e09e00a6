//! The store: the only module that speaks SQL. One SQLite file in WAL mode, shared by the
//! daemon and the CLI, whose schema is brought up to date by numbered migrations (the `.sql`
//! files in `migrations/`) every time it is opened. The other stages call typed functions:
//! [`subscribers`] (the list), [`csv`] (import and export), [`ledger`] (issues and
//! deliveries) and [`lock`] (one daemon, one sender).

pub mod csv;
pub mod events;
pub mod ids;
pub mod ledger;
pub mod lock;
pub mod subscribers;

pub use ids::{IssueNumber, SubscriberId};

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, Transaction, TransactionBehavior};

/// How long a connection waits for another process's write to finish before giving up.
/// Generous, because a million-row import holds the write lock for several seconds and a
/// waiting CLI command is better than a failed one.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, one SQL file per version: entry `i` takes the database from version `i` to
/// `i + 1` (`PRAGMA user_version`). Append new files; never edit a released one.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_subscribers.sql"),
    include_str!("migrations/002_ledger.sql"),
    include_str!("migrations/003_events.sql"),
];

/// The schema version this binary creates and understands.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the state folder {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the state database {path}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the state database {path} has schema version {found}, but this verdicts binary only \
         knows versions up to {known}; it was written by a newer verdicts, so upgrade the \
         binary (or restore a backup) instead of using this one"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "the state database {path} has schema version {found}, which no verdicts release \
         writes; it was altered by hand or belongs to another program"
    )]
    UnknownVersion { path: PathBuf, found: i64 },
    #[error(
        "the state database {path} cannot use write-ahead logging (it stayed in `{mode}` \
         mode); put the state folder on a local file system"
    )]
    NoWal { path: PathBuf, mode: String },
    #[error("cannot migrate the state database {path} to schema version {version}")]
    Migrate {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
}

/// Opens (creating if needed) the database at `path`, configures the connection for
/// concurrent use and applies any pending migrations.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    let open_err = |source| DbError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    configure(&conn).map_err(open_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::NoWal {
            path: path.to_owned(),
            mode,
        });
    }
    migrate(&conn, path)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // The busy timeout comes first so that switching to WAL also waits for other processes.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL makes NORMAL durable against application crashes; only a power cut can lose the
    // last transactions, never corrupt the file.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A big import leaves a big WAL behind; trim it after each checkpoint.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let known = schema_version();
    let check = |found: i64| -> Result<usize, DbError> {
        if found > known {
            return Err(DbError::TooNew {
                path: path.to_owned(),
                found,
                known,
            });
        }
        usize::try_from(found).map_err(|_| DbError::UnknownVersion {
            path: path.to_owned(),
            found,
        })
    };
    let open_err = |source| DbError::Open {
        path: path.to_owned(),
        source,
    };
    if check(user_version(conn).map_err(open_err)?)? == MIGRATIONS.len() {
        return Ok(());
    }
    // Another process may be migrating at the same moment: take the write lock, then look
    // again, so each migration runs exactly once.
    let tx = write_transaction(conn).map_err(open_err)?;
    let current = check(user_version(&tx).map_err(open_err)?)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index as i64 + 1;
        let migrate_err = |source| DbError::Migrate {
            path: path.to_owned(),
            version,
            source,
        };
        tx.execute_batch(sql).map_err(migrate_err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(migrate_err)?;
        tracing::debug!(version, path = %path.display(), "applied migration");
    }
    tx.commit().map_err(|source| DbError::Migrate {
        path: path.to_owned(),
        version: known,
        source,
    })
}

/// Begins a transaction that takes the write lock at once (`BEGIN IMMEDIATE`). A deferred
/// transaction that reads first and writes later can fail with "database is locked" without
/// waiting when another process committed in between; an immediate one waits its turn.
pub fn write_transaction(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

/// Runs `f` inside a write transaction, committing if it succeeds and rolling back if it
/// fails. On a connection already inside a transaction, `f` simply joins that transaction.
pub fn in_write_transaction<T, E>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<rusqlite::Error>,
{
    if !conn.is_autocommit() {
        return f(conn);
    }
    let tx = write_transaction(conn)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// How timestamps are stored: RFC 3339 in UTC, to the second (`2026-11-23T09:00:00Z`).
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Reads a timestamp written by [`timestamp`].
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_is_migrated_in_wal_mode_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state/verdicts.db");
        let conn = open(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), schema_version());
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        drop(conn);
        // Opening again applies nothing and keeps the version.
        let conn = open(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), schema_version());
    }

    #[test]
    fn newer_schema_is_refused_naming_file_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verdicts.db");
        open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = open(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("version 99"), "{err}");
        assert!(
            err.contains(&format!("up to {}", schema_version())),
            "{err}"
        );
    }

    #[test]
    fn failed_write_transaction_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("verdicts.db")).unwrap();
        let result: Result<(), rusqlite::Error> = in_write_transaction(&conn, |c| {
            c.execute(
                "INSERT INTO subscribers (email, email_norm, status, source, created_at, updated_at)
                 VALUES ('a@example.com', 'a@example.com', 'active', 'cli', 'x', 'x')",
                [],
            )?;
            c.execute(
                "INSERT INTO subscribers (email) VALUES ('b@example.com')",
                [],
            )?;
            Ok(())
        });
        assert!(result.is_err());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM subscribers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
