//! `send --dry-run`: every active subscriber's exact message written to files, through the
//! same planning as a real send; the ledger is never written.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::{Dispatcher, EmptyWeek, Plan};
use crate::content::Comparison;
use crate::digest::render::RenderedDigest;
use crate::mail::message::Recipient;
use crate::store::{self, ledger, IssueNumber};

/// What a dry run wrote.
#[derive(Debug)]
pub struct DryRun {
    pub number: IssueNumber,
    pub digest: RenderedDigest,
    pub written: u64,
    pub bytes: u64,
    /// Recipients whose message could not be built: address and reason. Every other
    /// message was still written.
    pub unbuildable: Vec<(String, String)>,
    /// Written messages whose address only a server offering SMTPUTF8 can deliver (a
    /// non-ASCII local part); the files are written as for such a server.
    pub needs_smtputf8: u64,
    /// Messages of an earlier dry run that were removed from the folder first.
    pub removed: u64,
}

impl Dispatcher<'_> {
    /// Writes each active subscriber's message for the slot's issue (the stored digest of an
    /// existing issue, or what a new one would hold) to `out`. `None` when nothing would be
    /// sent.
    pub fn dry_run(
        &self,
        comparisons: &[Comparison],
        slot: DateTime<Utc>,
        out: &Path,
    ) -> anyhow::Result<Option<DryRun>> {
        let conn = store::open(&self.config.database_path())?;
        let (number, digest) = match self.plan(&conn, comparisons, slot, EmptyWeek::Leave)? {
            Plan::Existing(issue) => (
                issue.number,
                RenderedDigest::from(ledger::stored_digest(&conn, issue.number)?),
            ),
            Plan::New { digest, .. } => (ledger::next_issue_number(&conn)?, digest),
            Plan::Empty { .. } => return Ok(None),
        };
        let messages = self.messages(number, slot, &digest);
        let removed = empty_folder(out)?;
        let mut run = DryRun {
            number,
            digest,
            written: 0,
            bytes: 0,
            unbuildable: Vec::new(),
            needs_smtputf8: 0,
            removed,
        };
        let mut n = 0u64;
        store::subscribers::for_each_active_addressee(&conn, |s| -> anyhow::Result<()> {
            n += 1;
            let email = match s.email {
                Ok(email) => email,
                Err((raw, reason)) => {
                    run.unbuildable
                        .push((raw, format!("the stored address is invalid: {reason}")));
                    return Ok(());
                }
            };
            if email.needs_smtputf8() {
                run.needs_smtputf8 += 1;
            }
            let recipient = Recipient {
                subscriber_id: s.id,
                email,
                name: s.name,
            };
            match messages.build(&recipient) {
                Ok(message) => {
                    let raw = message.formatted();
                    let path = file_name(out, n, recipient.email.as_str());
                    std::fs::write(&path, &raw)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    run.written += 1;
                    run.bytes += raw.len() as u64;
                }
                Err(e) => run
                    .unbuildable
                    .push((recipient.email.as_str().to_owned(), e.to_string())),
            }
            Ok(())
        })?;
        Ok(Some(run))
    }
}

/// Makes `out` an empty folder, so that it holds this run's messages only: the `.eml` files
/// of an earlier dry run are removed (their count returned). A folder holding anything else
/// is refused rather than emptied: `--out` may name the wrong folder.
fn empty_folder(out: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let entries = std::fs::read_dir(out)
        .with_context(|| format!("cannot read output folder {}", out.display()))?;
    let mut old = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("cannot read output folder {}", out.display()))?;
        let path = entry.path();
        let is_message = entry.file_type().is_ok_and(|t| t.is_file())
            && path.extension().is_some_and(|e| e == "eml");
        if !is_message {
            return crate::error::user_error(format!(
                "the dry run's output folder {} holds {}, which is not a message of an earlier dry run; name an empty folder with --out (the folder is emptied of .eml files first, and nothing else is removed)",
                out.display(),
                path.display()
            ));
        }
        old.push(path);
    }
    for path in &old {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(old.len() as u64)
}

fn file_name(out: &Path, n: u64, email: &str) -> PathBuf {
    let safe: String = email
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.+-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.join(format!("{n}-{safe}.eml"))
}
