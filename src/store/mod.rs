//! The store: the only module that speaks SQL. One SQLite file in WAL mode, shared by the
//! daemon and the CLI, whose schema is brought up to date by numbered migrations (the `.sql`
//! files in `migrations/`) every time it is opened. The other stages call typed functions:
//! [`subscribers`] (the list), [`csv`] (import and export), [`ledger`] (issues and
//! deliveries, with [`checkpoint`] copying the WAL back ahead of their writer) and [`lock`] (one
//! daemon, one sender). Opening never creates a database:
//! [`open`] needs an existing, intact one; [`create`] is the explicit act, and [`health`]
//! checks a file before trusting it and copies it for backups.

pub mod api;
pub mod checkpoint;
pub mod csv;
pub mod events;
pub mod export;
pub mod health;
pub mod ids;
pub mod ledger;
pub mod lock;
pub mod privacy;
pub mod provider_webhooks;
pub mod rekey;
pub mod relays;
pub mod retention;
pub mod secret;
pub mod signup;
pub mod subscribers;
pub mod tracking;
pub mod unattributed;
pub mod webhooks;

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
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

/// How long a connection waits for another process's write to finish before giving up.
/// Generous, because a million-row import holds the write lock for several seconds and a
/// waiting CLI command is better than a failed one.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, one SQL file per version: entry `i` takes the database from version `i` to
/// `i + 1` (`PRAGMA user_version`). Append new files; never edit a released one.
/// Migration 8, which [`rekey::run`] completes in Rust.
const MAILBOX_KEYS: &str = include_str!("migrations/008_mailbox_keys.sql");

pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_subscribers.sql"),
    include_str!("migrations/002_ledger.sql"),
    include_str!("migrations/003_events.sql"),
    include_str!("migrations/004_signup.sql"),
    include_str!("migrations/005_held_bounces.sql"),
    include_str!("migrations/006_signed_evidence.sql"),
    include_str!("migrations/007_settings.sql"),
    MAILBOX_KEYS,
    include_str!("migrations/009_event_sources.sql"),
    include_str!("migrations/010_history.sql"),
    include_str!("migrations/011_provider_webhooks.sql"),
    include_str!("migrations/012_relays.sql"),
    include_str!("migrations/013_api.sql"),
    include_str!("migrations/014_tracking.sql"),
    include_str!("migrations/015_lean_ledger.sql"),
    include_str!("migrations/016_failed_deliveries.sql"),
    include_str!("migrations/017_relay_totals.sql"),
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
    #[error(
        "cannot write {what} {path}: it belongs to {owner} (mode {mode:o}) and this command runs \
         as {me}: {why}. Run verdicts as the user the service runs as (e.g. `sudo -u verdicts \
         verdicts …` in the newsletter's folder), or give the state folder back to that user \
         (`sudo chown -R verdicts: {folder}`)",
        folder = state_folder(.path, .what)
    )]
    NotWritable {
        path: PathBuf,
        what: &'static str,
        owner: String,
        mode: u32,
        me: String,
        why: String,
    },
    #[error(
        "refusing to create {path} as root: its folder belongs to {owner}, and a database \
         made by root could not be written by that user's service. Run the command as that \
         user, e.g. `sudo -u verdicts verdicts …` in the newsletter's folder"
    )]
    AsRoot { path: PathBuf, owner: String },
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

/// The state folder of a path named by [`DbError::NotWritable`].
fn state_folder(path: &Path, what: &str) -> String {
    let folder = match path.parent() {
        Some(p) if what == "the state database" && !p.as_os_str().is_empty() => p,
        _ => path,
    };
    folder.display().to_string()
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
    health::check_writable(path)?;
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
pub fn create(path: &Path) -> Result<(Connection, Opened), DbError> {
    if path.exists() {
        return open(path).map(|c| (c, Opened::Existing));
    }
    // `sudo verdicts init` in a folder that belongs to the service's user would leave a
    // root-owned database the service cannot write.
    if health::running_as_root() {
        use std::os::unix::fs::MetadataExt;
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(meta) = folder.and_then(|f| std::fs::metadata(f).ok()) {
            if meta.uid() != 0 {
                return Err(DbError::AsRoot {
                    path: path.to_owned(),
                    owner: health::user_name(meta.uid()),
                });
            }
        }
    }
    let opened = Fresh::build(path)?.publish()?;
    open(path).map(|c| (c, opened))
}

/// A new database built and migrated under a temporary name beside `path`, put in place
/// by [`Fresh::publish`] only if nothing is there yet: no other process ever sees a
/// half-made file at `path`, and of two processes creating at once, one wins and the other
/// uses its database. Dropped unpublished, it is deleted.
pub struct Fresh {
    conn: Option<Connection>,
    temp: PathBuf,
    path: PathBuf,
}

impl Fresh {
    pub fn build(path: &Path) -> Result<Fresh, DbError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let mut name = std::ffi::OsString::from(".");
        name.push(path.file_name().unwrap_or_default());
        name.push(format!(".new-{}", std::process::id()));
        let mut fresh = Fresh {
            conn: None,
            temp: path.with_file_name(name),
            path: path.to_owned(),
        };
        fresh.remove_temp();
        let conn = open_file(
            &fresh.temp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        migrate(&conn, path)?;
        fresh.conn = Some(conn);
        Ok(fresh)
    }

    /// The new database, to fill before it is published.
    pub fn conn(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("open until published")
    }

    /// Puts the database in place; `Existing` if another process created one first (this
    /// one is then discarded).
    pub fn publish(mut self) -> Result<Opened, DbError> {
        // Closing checkpoints the WAL into the file and removes it: the file is complete.
        drop(self.conn.take());
        match std::fs::hard_link(&self.temp, &self.path) {
            Ok(()) => Ok(Opened::Created),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Opened::Existing),
            Err(source) => Err(DbError::CreateDir {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn remove_temp(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.temp.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        drop(self.conn.take());
        self.remove_temp();
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
    let creating = flags.contains(OpenFlags::SQLITE_OPEN_CREATE);
    let flags = flags | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| health::classify(path, e))?;
    configure(&conn).map_err(|e| health::classify(path, e))?;
    if creating {
        // Only possible before the file has a header (so before WAL is switched on):
        // pages freed by compaction can then go back to the file system
        // (`PRAGMA incremental_vacuum`) instead of only being reused.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(|e| health::classify(path, e))?;
    }
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
    // A migration that rebuilds a table drops the old one, which with foreign keys on would
    // cascade into every row that references it. SQLite's documented way is to switch them
    // off outside the transaction, check them before committing, and switch them back on.
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(open_err)?;
    let result = migrate_locked(conn, path, check);
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    result
}

fn migrate_locked(
    conn: &Connection,
    path: &Path,
    check: impl Fn(i64) -> Result<usize, DbError>,
) -> Result<(), DbError> {
    let known = schema_version();
    let open_err = |source| DbError::Open {
        path: path.to_owned(),
        source,
    };
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
        if *sql == MAILBOX_KEYS {
            rekey::run(&tx).map_err(migrate_err)?;
        }
        tx.pragma_update(None, "user_version", version)
            .map_err(migrate_err)?;
        tracing::debug!(version, path = %path.display(), "applied migration");
    }
    let dangling: Option<String> = tx
        .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
        .optional()
        .map_err(open_err)?;
    if let Some(table) = dangling {
        return Err(DbError::Migrate {
            path: path.to_owned(),
            version: known,
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                Some(format!(
                    "table {table} has rows whose references no longer resolve"
                )),
            ),
        });
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
    fn signup_migration_keeps_subscribers_and_their_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verdicts.db");
        {
            // A database as the previous release left it.
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO subscribers (id, email, email_norm, status, source, created_at, updated_at)
                 VALUES (7, 'a@example.com', 'a@example.com', 'active', 'cli',
                         '2026-01-02T03:04:05Z', '2026-01-02T03:04:05Z');
                 INSERT INTO issues (number, slot, window_after, cutoff, subject, preheader,
                                     comparison_count, html_parts, text_parts, state, created_at)
                 VALUES (1, 's', 'w', 'c', 'subj', 'pre', 1, '[]', '[]', 'complete', 'x');
                 INSERT INTO deliveries (issue, subscriber_id, state) VALUES (1, 7, 'sent');",
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let deliveries: i64 = conn
            .query_row(
                "SELECT count(*) FROM deliveries WHERE subscriber_id = 7",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            deliveries, 1,
            "the rebuild must not cascade into deliveries"
        );
        let signed_up: String = conn
            .query_row(
                "SELECT signed_up_at FROM subscribers WHERE id = 7",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(signed_up, "2026-01-02T03:04:05Z");
        conn.execute(
            "UPDATE subscribers SET status = 'pending', source = 'api' WHERE id = 7",
            [],
        )
        .unwrap();
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1, "foreign keys are back on after migrating");
    }

    #[test]
    fn failed_write_transaction_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = create(&dir.path().join("verdicts.db")).unwrap();
        let result: Result<(), rusqlite::Error> = in_write_transaction(&conn, |c| {
            c.execute(
                "INSERT INTO subscribers
                     (email, email_norm, status, source, created_at, updated_at, signed_up_at)
                 VALUES ('a@example.com', 'a@example.com', 'active', 'cli', 'x', 'x', 'x')",
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
