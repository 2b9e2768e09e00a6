//! Whether the database file can be trusted, and copies of it: the header checks that run
//! before every open (so an empty, truncated or foreign file is never taken for an empty
//! list), `PRAGMA quick_check` before anything is written in bulk, and online backups.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

use super::DbError;

/// The first bytes of every SQLite 3 database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const HEADER_LEN: usize = 100;

/// Checks what is on disk at `path` before SQLite opens it: the state folder and the file
/// exist, and the file has a SQLite header and is as long as the header says. SQLite itself
/// would treat a 0-byte file as a new, empty database, which is how a truncated file used to
/// become an empty subscriber list.
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
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DbError::Missing {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(not_db(format!("unreadable ({e})"))),
    };
    let len = file
        .metadata()
        .map_err(|e| not_db(format!("unreadable ({e})")))?
        .len();
    if len == 0 {
        return Err(not_db("empty (0 bytes)".into()));
    }
    let mut header = [0u8; HEADER_LEN];
    if len < HEADER_LEN as u64 || file.read_exact(&mut header).is_err() {
        return Err(not_db(format!("only {len} bytes long (cut short)")));
    }
    if &header[..16] != MAGIC {
        return Err(not_db("not a SQLite database (its header is wrong)".into()));
    }
    if let Some(expected) = header_size(&header) {
        if len < expected {
            return Err(not_db(format!(
                "truncated: {len} bytes where its header says {expected}"
            )));
        }
    }
    Ok(())
}

/// The file size the header records, when the header's page count is valid (SQLite marks
/// it valid by matching the change counter at offset 24 with offset 92).
fn header_size(header: &[u8; HEADER_LEN]) -> Option<u64> {
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let pages = u64::from(be32(28));
    (pages > 0 && be32(24) == be32(92)).then_some(page_size * pages)
}

/// Turns an error from opening `path` into the operator's words when SQLite says the file
/// is damaged or not a database.
pub fn classify(path: &Path, e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => DbError::NotADatabase {
            path: path.to_owned(),
            problem: "not a SQLite database".into(),
        },
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

/// True when `err` says the database file is damaged, wherever it came from.
pub fn is_corruption(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(e.downcast_ref::<DbError>(), Some(DbError::Corrupt { .. }))
            || e.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
                matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
                )
            })
    })
}

/// `PRAGMA quick_check` (every page and index entry readable, without the slower
/// cross-checks of `integrity_check`). Runs before a send and at daemon start, so nothing is
/// written into a damaged file.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let corrupt = |detail: String| DbError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| corrupt(e.to_string()))?;
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
                b"hello, this is a text file, not a database at all; ".repeat(4),
                "not a SQLite",
            ),
            (good[..good.len() / 2].to_vec(), "truncated"),
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
