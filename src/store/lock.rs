//! Advisory locks in the state folder: `sender.lock` is held while an issue is delivered
//! (one sender per database) and `daemon.lock` for a daemon's lifetime (one daemon per
//! database). The OS releases them when the process dies, even by kill -9.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;

use crate::error::UserError;

/// Held while this process may send; dropping it lets another sender in.
#[derive(Debug)]
pub struct SenderLock {
    _file: File,
}

/// Held for a daemon's lifetime.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    /// Refuses when another daemon runs on the same state folder.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<DaemonLock> {
        let file = lock_file(state_dir, "daemon.lock", "running the daemon")?;
        Ok(DaemonLock { _file: file })
    }
}

impl SenderLock {
    /// The lock if it is free now, `None` if another process holds it. Waiting for it is
    /// the dispatcher's job (`issue::sender_lock`), so a stop request is noticed.
    pub fn try_acquire(state_dir: &Path) -> anyhow::Result<Option<SenderLock>> {
        match lock_file(state_dir, "sender.lock", "sending").map(|file| SenderLock { _file: file })
        {
            Ok(lock) => Ok(Some(lock)),
            Err(e) if e.is::<UserError>() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// True while some process holds `sender.lock` in `state_dir`: an issue in the ledger as
/// `sending` is then under way; otherwise its sender stopped (Ctrl-C, a crash) and it waits
/// to be resumed. Looks without taking the lock for longer than the check.
pub fn sender_running(state_dir: &Path) -> bool {
    let Ok(file) = File::open(state_dir.join("sender.lock")) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

fn lock_file(state_dir: &Path, name: &str, doing: &str) -> anyhow::Result<File> {
    {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state folder {}", state_dir.display()))?;
        let path = state_dir.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another verdicts process".to_owned()
                } else {
                    format!("another verdicts process (pid {holder})")
                };
                return Err(UserError::new(format!(
                    "{who} is already {doing} with {}; only one may use a database at a time",
                    state_dir.display()
                ))
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(file)
    }
}
