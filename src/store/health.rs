//! Whether the database file can be trusted, and copies of it: the header checks that run
//! before every open (so an empty, truncated or foreign file is never taken for an empty
//! list), `PRAGMA quick_check` before anything is written in bulk, and online backups.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

use super::DbError;

/// The smallest SQLite database file: one page of the smallest page size.
const MIN_DATABASE_BYTES: u64 = 512;

/// Checks what is on disk at `path` before SQLite opens it: the state folder and the file
/// exist, and the file is not empty or shorter than one page. SQLite itself would treat a
/// 0-byte file as a new, empty database, which is how a truncated file used to become an
/// empty subscriber list. (A file that is not SQLite, or is cut short after its first page,
/// SQLite reports itself on the first read; see [`classify`].)
///
/// This only looks at the file's metadata and never opens it: closing any descriptor of a
/// database file drops the POSIX locks SQLite holds on it in this process.
pub fn check_file(path: &Path) -> Result<(), DbError> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(folder) = folder {
        if !folder.is_dir() {
            return Err(DbError::NoStateDir {
                path: folder.to_owned(),
            });
        }
    }
    let not_db = |problem: String| DbError::NotADatabase {
        path: path.to_owned(),
        problem,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Err(not_db("not a file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DbError::Missing {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(not_db(format!("unreadable ({e})"))),
    };
    match len {
        0 => Err(not_db("empty (0 bytes)".into())),
        n if n < MIN_DATABASE_BYTES => Err(not_db(format!("only {n} bytes long (cut short)"))),
        _ => Ok(()),
    }
}

/// Turns an error from opening `path` into the operator's words when SQLite says the file
/// is damaged or not a database.
pub fn classify(path: &Path, e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => DbError::NotADatabase {
            path: path.to_owned(),
            problem: "not a SQLite database".into(),
        },
        // Damage, or a file cut short after its first page: SQLite finds fewer pages than
        // its header records ("malformed"), or a read runs past the end ("truncated?").
        Some(ErrorCode::SystemIoFailure) if e.to_string().contains("truncated") => {
            DbError::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            }
        }
        Some(ErrorCode::DatabaseCorrupt) => DbError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => DbError::Open {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// True when SQLite reported a damaged database somewhere in `err` without one of our
/// messages that already say what to do (a query that ran into a bad page).
pub fn is_unexplained_corruption(err: &anyhow::Error) -> bool {
    let explained = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<DbError>(),
            Some(DbError::Corrupt { .. } | DbError::NotADatabase { .. })
        )
    });
    !explained
        && err.chain().any(|e| {
            e.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
                matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
                )
            })
        })
}

/// `PRAGMA quick_check` (every page and index entry readable, without the slower
/// cross-checks of `integrity_check`) of the whole file. Runs on `init`, `check --db` and
/// in the daemon's daily maintenance pass; sends check what they touch
/// ([`check_for_send`]).
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), DbError> {
    run_check(conn, path, "PRAGMA quick_check(5)")
}

/// The tables a change to the subscriber list writes. A removal also deletes the
/// subscriber's ledger rows; SQLite checks those pages as it reads them, and a damaged
/// one fails the whole change with the same error, so nothing is written.
pub const LIST_TABLES: &[&str] = &["subscribers", "events", "confirmations"];

/// `quick_check` of `tables` and their indexes only: before a change to the subscriber list,
/// whose cost then follows the list's size instead of the whole file's, which grows with
/// every issue's ledger (1,000,000 readers and four sent issues: 2.4 s instead of 7.1 s).
pub fn quick_check_tables(
    conn: &Connection,
    path: &Path,
    tables: &[&'static str],
) -> Result<(), DbError> {
    tables
        .iter()
        .try_for_each(|table| run_check(conn, path, &format!("PRAGMA quick_check({table})")))
}

/// The tables a send reads and writes besides its own issue's deliveries: the list, the
/// issue records and their totals, settings. Their size follows the list, not the history.
pub const SEND_TABLES: &[&str] = &[
    "subscribers",
    "events",
    "confirmations",
    "issues",
    "issue_comparisons",
    "issue_totals",
    "settings",
];

/// What a send, a resume or the daemon's start checks instead of the whole file: the
/// [`SEND_TABLES`] with `quick_check`, and every delivery row of `issues` (the ones about
/// to be sent or resumed) read back, so damage in them is found before anything is
/// written. Old issues' rows are left to the scheduled whole-file check.
pub fn check_for_send(
    conn: &Connection,
    path: &Path,
    issues: &[crate::store::IssueNumber],
) -> Result<(), DbError> {
    quick_check_tables(conn, path, SEND_TABLES)?;
    for issue in issues {
        // Reads each row's every column: a damaged page of the issue's range fails here.
        conn.query_row(
            "SELECT count(*), sum(length(last_reply)), sum(attempts), max(sent_at)
             FROM deliveries WHERE issue = ?",
            [issue],
            |_| Ok(()),
        )
        .map_err(|e| DbError::Corrupt {
            path: path.to_owned(),
            detail: format!("the deliveries of issue {issue}: {e}"),
        })?;
    }
    Ok(())
}

fn run_check(conn: &Connection, path: &Path, sql: &str) -> Result<(), DbError> {
    let corrupt = |detail: String| DbError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let mut stmt = conn.prepare(sql).map_err(|e| corrupt(e.to_string()))?;
    let problems: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| corrupt(e.to_string()))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(corrupt(format!("quick_check: {}", problems.join("; "))))
}

/// How many pages a backup copies between pauses, and the pause: small steps so the daemon
/// and a running send keep writing while the copy is made.
const BACKUP_PAGES_PER_STEP: std::os::raw::c_int = 256;
const BACKUP_PAUSE: Duration = Duration::from_millis(5);

/// Writes a consistent copy of the open database `conn` to `dest` with SQLite's online
/// backup API: the copy is a snapshot of one committed state, whatever other processes
/// write meanwhile (a write during the copy restarts it from that page on). The copy is
/// made under a temporary name and renamed into place, so `dest` is never half written.
pub fn backup(conn: &Connection, dest: &Path) -> Result<u64, BackupError> {
    let err = |source| BackupError::Sqlite {
        path: dest.to_owned(),
        source,
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| BackupError::NotAFile(dest.to_owned()))?;
    let mut partial_name = file_name.to_owned();
    partial_name.push(".partial");
    let partial = dest.with_file_name(partial_name);
    let _ = std::fs::remove_file(&partial);
    {
        let mut copy = Connection::open(&partial).map_err(err)?;
        let backup = rusqlite::backup::Backup::new(conn, &mut copy).map_err(err)?;
        backup
            .run_to_completion(BACKUP_PAGES_PER_STEP, BACKUP_PAUSE, None)
            .map_err(err)?;
        drop(backup);
        // A self-contained file: the copy's pages go into the file itself, not a WAL.
        copy.pragma_update(None, "journal_mode", "DELETE")
            .map_err(err)?;
        quick_check(&copy, &partial).map_err(BackupError::Check)?;
    }
    std::fs::rename(&partial, dest).map_err(|source| BackupError::Io {
        path: dest.to_owned(),
        source,
    })?;
    Ok(std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0))
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} is not a file name")]
    NotAFile(std::path::PathBuf),
    #[error("cannot write the backup {path}")]
    Sqlite {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot move the finished backup to {path}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the backup failed its own check")]
    Check(#[source] DbError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_short_foreign_and_truncated_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verdicts.db");
        let (conn, _) = crate::store::create(&path).unwrap();
        conn.execute_batch("CREATE TABLE pad (x); INSERT INTO pad VALUES (zeroblob(100000));")
            .unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        drop(conn);
        let good = std::fs::read(&path).unwrap();
        for (bytes, says) in [
            (vec![], "empty (0 bytes)"),
            (good[..50].to_vec(), "only 50 bytes"),
            (
                b"hello, this is a text file, not a database at all; ".repeat(40),
                "not a SQLite",
            ),
            (good[..good.len() / 2].to_vec(), "is damaged"),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let err = crate::store::open(&path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn nothing_is_created_where_nothing_is() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = dir.path().join("nope/verdicts.db");
        assert!(matches!(
            crate::store::open(&missing_dir),
            Err(DbError::NoStateDir { .. })
        ));
        assert!(!dir.path().join("nope").exists());
        let missing = dir.path().join("verdicts.db");
        assert!(matches!(
            crate::store::open(&missing),
            Err(DbError::Missing { .. })
        ));
        assert!(!missing.exists());
    }
}

/// Checks that this process can write the database at `path` and create files beside it
/// (SQLite's `-wal` and `-shm`), before SQLite finds out halfway through a command with
/// a bare `SQLITE_READONLY_DIRECTORY`. The usual cause is a command run with plain `sudo`,
/// which leaves a root-owned file or folder the service's user cannot write; the error
/// names the file, its owner and this process's user.
///
/// The file itself is judged from its metadata and never opened (see [`check_file`]); the
/// folder by creating and removing an empty probe file, which also catches a read-only
/// file system (systemd's `ProtectSystem=strict` outside `ReadWritePaths`).
pub fn check_writable(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::MetadataExt;
    let me = Identity::current();
    if let (Some(me), Ok(meta)) = (&me, std::fs::metadata(path)) {
        if !me.may_write(&meta) {
            return Err(DbError::NotWritable {
                path: path.to_owned(),
                what: "the state database",
                owner: user_name(meta.uid()),
                mode: meta.mode() & 0o777,
                me: user_name(me.uid),
                why: "permission denied".into(),
            });
        }
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let probe = folder.join(format!(".verdicts-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => {
            let meta = std::fs::metadata(folder).ok();
            Err(DbError::NotWritable {
                path: folder.to_owned(),
                what: "the state folder",
                owner: meta
                    .as_ref()
                    .map_or_else(|| "?".into(), |m| user_name(m.uid())),
                mode: meta.as_ref().map_or(0, |m| m.mode() & 0o777),
                me: me.map_or_else(|| "?".into(), |me| user_name(me.uid)),
                why: if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
                    "it is on a read-only file system (with systemd's ProtectSystem=strict, list it in ReadWritePaths)".into()
                } else {
                    e.to_string()
                },
            })
        }
    }
}

/// The user and groups this process acts as (Linux: /proc/self/status).
struct Identity {
    uid: u32,
    gids: Vec<u32>,
}

impl Identity {
    fn current() -> Option<Identity> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        // Effective ids: the second of Uid:/Gid:'s real, effective, saved, filesystem.
        let uid = *field("Uid:").get(1)?;
        let mut gids = field("Groups:");
        gids.extend(field("Gid:").get(1));
        Some(Identity { uid, gids })
    }

    fn may_write(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        self.uid == 0
            || (meta.uid() == self.uid && mode & 0o200 != 0)
            || (meta.uid() != self.uid && self.gids.contains(&meta.gid()) && mode & 0o020 != 0)
            || (meta.uid() != self.uid && !self.gids.contains(&meta.gid()) && mode & 0o002 != 0)
    }
}

/// True when this process runs as root.
pub fn running_as_root() -> bool {
    Identity::current().is_some_and(|me| me.uid == 0)
}

/// A user's name from /etc/passwd, with the number: `verdicts (uid 998)`.
pub fn user_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse::<u32>().ok()?;
            (id == uid).then(|| name.to_owned())
        })
    });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod writable_tests {
    use super::*;

    #[test]
    fn a_folder_that_cannot_be_written_is_named_with_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::create(&dir.path().join("verdicts.db")).unwrap();
        drop(conn);
        assert!(check_writable(&dir.path().join("verdicts.db")).is_ok());
        if running_as_root() {
            return; // root writes anything; the integration test covers the owner message
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let err = check_writable(&dir.path().join("verdicts.db")).unwrap_err();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = err.to_string();
        assert!(text.contains("the state folder"), "{text}");
        assert!(text.contains("belongs to"), "{text}");
    }
}
