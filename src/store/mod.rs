//! The store: the only module that speaks SQL. One SQLite file in WAL mode, shared by the
//! daemon and the CLI, whose schema is brought up to date by numbered migrations (the `.sql`
//! files in `migrations/`) every time it is opened. The other stages call typed functions:
//! [`subscribers`] (the list), [`csv`] (import and export), [`ledger`] (issues and
//! deliveries) and [`lock`] (one daemon, one sender). Opening never creates a database:
//! [`open`] needs an existing, intact one; [`create`] is the explicit act, and [`health`]
//! checks a file before trusting it and copies it for backups.

pub mod csv;
pub mod events;
pub mod health;
pub mod ids;
pub mod ledger;
pub mod lock;
pub mod subscribers;

pub use health::{backup, quick_check};
pub use ids::{IssueNumber, SubscriberId};

/// Shared by the store's unit tests: a fresh database in a temporary folder.
#[cfg(test)]
pub(crate) mod testing {
    use rusqlite::Connection;

    use crate::mail::address::SubscriberEmail;

    pub fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = super::create(&dir.path().join("verdicts.db")).unwrap();
        (dir, conn)
    }

    pub fn email(s: &str) -> SubscriberEmail {
        SubscriberEmail::parse(s).unwrap()
    }
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

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
    #[error(
        "the state folder {path} does not exist (state_dir in the config); if it is on a \
         separate disk, mount it. A new installation starts with `verdicts init` or the first \
         `verdicts subscribers add`/`import`"
    )]
    NoStateDir { path: PathBuf },
    #[error(
        "there is no state database at {path}; nothing was created. A new installation \
         starts with `verdicts init` or the first `verdicts subscribers add`/`import`; an \
         existing one restores its backup (see docs/operations.md)"
    )]
    Missing { path: PathBuf },
    #[error(
        "the state database {path} is {problem}, so it is not a verdicts database; nothing \
         was written. Restore the latest backup (see docs/operations.md), or delete the file \
         and run `verdicts init` for a new, empty list"
    )]
    NotADatabase { path: PathBuf, problem: String },
    #[error(
        "the state database {path} is damaged ({detail}); nothing was written. Stop the \
         daemon and restore the latest backup (see docs/operations.md)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot create {path}")]
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

impl DbError {
    /// Nothing is where the config points (exit 1: the operator's to fix); the other
    /// variants are a file that is there but broken, or a failure.
    pub fn is_missing(&self) -> bool {
        matches!(self, DbError::NoStateDir { .. } | DbError::Missing { .. })
    }
}

/// Opens the existing database at `path`: configures the connection for concurrent use and
/// applies pending migrations. A missing state folder or file, or a file that is empty,
/// truncated or not a verdicts database, is an error naming the path; nothing is created.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    health::check_file(path)?;
    let conn = open_file(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    if user_version(&conn).map_err(|e| health::classify(path, e))? == 0 {
        return Err(DbError::NotADatabase {
            path: path.to_owned(),
            problem: "a SQLite file without the verdicts schema".into(),
        });
    }
    migrate(&conn, path)?;
    Ok(conn)
}

/// Whether [`create`] made a new database or opened the one that was there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Existing,
    Created,
}

/// Opens the database at `path`, creating it (and its folder) when there is none: the one
/// way a database comes into being. An existing file must pass the same checks as [`open`].
/// The caller announces a creation.
///
/// A new database is built and migrated under a temporary name, then linked into place
/// only if nothing is there yet: another process never sees a half-made file at `path`,
/// and of two processes creating at once, one wins and the other opens its database.
pub fn create(path: &Path) -> Result<(Connection, Opened), DbError> {
    if path.exists() {
        return open(path).map(|c| (c, Opened::Existing));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".new-{}", std::process::id()));
    let fresh = path.with_file_name(name);
    let remove_fresh = || {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = fresh.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    };
    remove_fresh();
    let built = open_file(
        &fresh,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )
    .and_then(|conn| migrate(&conn, path));
    if let Err(e) = built {
        remove_fresh();
        return Err(e);
    }
    // The connection is closed: its WAL is checkpointed into the file and removed.
    let linked = std::fs::hard_link(&fresh, path);
    remove_fresh();
    match linked {
        Ok(()) => open(path).map(|c| (c, Opened::Created)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            open(path).map(|c| (c, Opened::Existing))
        }
        Err(source) => Err(DbError::CreateDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// An empty database in memory with the current schema: what the read-only commands show
/// before any database exists.
pub fn empty_in_memory() -> Result<Connection, DbError> {
    let path = Path::new(":memory:");
    let conn = Connection::open_in_memory().map_err(|source| DbError::Open {
        path: path.to_owned(),
        source,
    })?;
    migrate(&conn, path)?;
    Ok(conn)
}

fn open_file(path: &Path, flags: OpenFlags) -> Result<Connection, DbError> {
    let flags = flags | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| health::classify(path, e))?;
    configure(&conn).map_err(|e| health::classify(path, e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| health::classify(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::NoWal {
            path: path.to_owned(),
            mode,
        });
    }
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
        let (conn, opened) = create(&path).unwrap();
        assert_eq!(opened, Opened::Created);
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
        create(&path)
            .unwrap()
            .0
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
        let (conn, _) = create(&dir.path().join("verdicts.db")).unwrap();
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
