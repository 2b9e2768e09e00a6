//! Subscriber CSV: a streaming, all-or-nothing import of what `store::export` writes.

pub use super::export::{export_csv, neutralise_cell, restore_cell, ExportError};

use std::io::Read;

use rusqlite::{Connection, TransactionBehavior};

use super::subscribers::{StoreError, SubscriberSource, SubscriberStatus};
use crate::mail::address::{AddressError, SubscriberEmail, SubscriberName};
use crate::store;

mod apply;
use apply::{Applied, RowWriter};

/// The columns of the import and export CSV, in export order: the list itself, then the
/// consent record (how and when each subscriber signed up and confirmed).
pub const CSV_COLUMNS: [&str; 7] = [
    "email",
    "name",
    "status",
    "source",
    "signed_up_at",
    "confirmed_at",
    "signup_ip",
];

/// How [`import_csv`] treats the rows it reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Run the whole import, report it, and change nothing.
    pub dry_run: bool,
    /// Import the valid rows even if some are rejected (otherwise one bad row stops all).
    pub skip_invalid: bool,
    /// Let a row that says `active` reactivate an unsubscribed or bounced subscriber.
    pub resubscribe: bool,
    /// Admit addresses erased at the reader's request (`store::privacy`); otherwise each
    /// is a rejected row naming the address.
    pub allow_erased: bool,
}

/// What an import did (or, for a dry run or a refused import, would have done).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// Rows that said `active` for an unsubscribed or bounced subscriber, left inactive
    /// because `resubscribe` was off (counted in `updated` or `unchanged` too).
    pub kept_inactive: u64,
    /// Whether the changes were saved: false for a dry run, and for an import refused
    /// because of rejected rows.
    pub committed: bool,
}

impl ImportSummary {
    /// Rows that were (or would have been) imported.
    pub fn accepted(&self) -> u64 {
        self.added + self.updated + self.unchanged
    }
}

/// A problem with the import file as a whole; row problems are reported as rejections.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file is empty; the first line must be a header such as `email,name,status`")]
    Empty,
    #[error(
        "line 1 must be a header naming the columns email, name and status; {}",
        describe_unknown(.0)
    )]
    UnknownColumns(Vec<String>),
    #[error("the header has no `email` column (it has {0})")]
    NoEmailColumn(String),
    #[error("the header names column `{0}` twice")]
    DuplicateColumn(String),
    // No `#[source]`: the message carries the reason, because it becomes a user error.
    #[error("cannot read the file: {0}")]
    Read(csv::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe_unknown(columns: &[String]) -> String {
    let list: Vec<String> = columns.iter().map(|c| format!("`{c}`")).collect();
    match list.as_slice() {
        [one] => format!("{one} is not one of them"),
        _ => format!("{} are not among them", list.join(", ")),
    }
}

impl From<csv::Error> for ImportError {
    fn from(e: csv::Error) -> Self {
        ImportError::Read(e)
    }
}

impl From<rusqlite::Error> for ImportError {
    fn from(e: rusqlite::Error) -> Self {
        ImportError::Store(StoreError(e))
    }
}

impl ImportError {
    /// True when the file is at fault (rather than the database).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ImportError::Store(_))
    }
}

/// Where each column sits in the file's rows.
struct Columns {
    len: usize,
    email: usize,
    name: Option<usize>,
    status: Option<usize>,
    source: Option<usize>,
    signed_up_at: Option<usize>,
    confirmed_at: Option<usize>,
    signup_ip: Option<usize>,
}

impl Columns {
    fn from_header(header: &csv::ByteRecord) -> Result<Columns, ImportError> {
        let names: Vec<String> = header
            .iter()
            .map(|field| String::from_utf8_lossy(field).trim().to_lowercase())
            .collect();
        if names.iter().all(String::is_empty) {
            return Err(ImportError::Empty);
        }
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| !CSV_COLUMNS.contains(&n.as_str()))
            .map(|n| n.escape_debug().to_string())
            .collect();
        if !unknown.is_empty() {
            return Err(ImportError::UnknownColumns(unknown));
        }
        let position = |column: &str| -> Result<Option<usize>, ImportError> {
            let mut found = names.iter().enumerate().filter(|(_, n)| *n == column);
            let first = found.next().map(|(i, _)| i);
            if found.next().is_some() {
                return Err(ImportError::DuplicateColumn(column.to_owned()));
            }
            Ok(first)
        };
        let email =
            position("email")?.ok_or_else(|| ImportError::NoEmailColumn(names.join(", ")))?;
        Ok(Columns {
            len: names.len(),
            email,
            name: position("name")?,
            status: position("status")?,
            source: position("source")?,
            signed_up_at: position("signed_up_at")?,
            confirmed_at: position("confirmed_at")?,
            signup_ip: position("signup_ip")?,
        })
    }
}

/// One valid row of an import file.
struct ImportRow {
    email: SubscriberEmail,
    name: Option<SubscriberName>,
    status: Option<SubscriberStatus>,
    /// The consent record, as exported; used only when the row adds a subscriber.
    source: Option<SubscriberSource>,
    signed_up_at: Option<String>,
    confirmed_at: Option<String>,
    signup_ip: Option<String>,
}

impl ImportRow {
    /// Parses a row, or says why it is rejected.
    fn parse(record: &csv::ByteRecord, columns: &Columns) -> Result<ImportRow, String> {
        if record.len() != columns.len {
            return Err(format!(
                "has {} field{} but the header has {}",
                record.len(),
                if record.len() == 1 { "" } else { "s" },
                columns.len
            ));
        }
        // Cells an export neutralised for spreadsheets are read back as they were.
        let text = |idx: usize, column: &str| {
            std::str::from_utf8(&record[idx])
                .map(restore_cell)
                .map_err(|_| format!("the {column} is not valid UTF-8 text"))
        };
        let email = SubscriberEmail::parse(text(columns.email, "email")?).map_err(|e| match e {
            AddressError::Empty => "the email is empty".to_owned(),
            e => e.to_string(),
        })?;
        let name = match columns.name {
            Some(idx) => SubscriberName::parse(text(idx, "name")?).map_err(|e| e.to_string())?,
            None => None,
        };
        let status = match columns.status {
            Some(idx) => match text(idx, "status")?.trim() {
                "" => None,
                s => Some(SubscriberStatus::parse(s).map_err(|e| e.to_string())?),
            },
            None => None,
        };
        let optional = |idx: Option<usize>, column: &str| -> Result<Option<&str>, String> {
            match idx {
                Some(idx) => Ok(Some(text(idx, column)?.trim()).filter(|s| !s.is_empty())),
                None => Ok(None),
            }
        };
        let source = optional(columns.source, "source")?
            .map(|s| {
                SubscriberSource::parse(s).ok_or_else(|| {
                    format!(
                        "source `{}` is not one of cli, import, web, api",
                        s.escape_debug()
                    )
                })
            })
            .transpose()?;
        let time = |idx: Option<usize>, column: &str| -> Result<Option<String>, String> {
            optional(idx, column)?
                .map(|s| {
                    store::parse_timestamp(s)
                        .map(store::timestamp)
                        .ok_or_else(|| {
                            format!(
                            "{column} `{}` is not an RFC 3339 time such as 2026-11-23T09:00:00Z",
                            s.escape_debug()
                        )
                        })
                })
                .transpose()
        };
        let signed_up_at = time(columns.signed_up_at, "signed_up_at")?;
        let confirmed_at = time(columns.confirmed_at, "confirmed_at")?;
        let signup_ip = optional(columns.signup_ip, "signup_ip")?
            .map(|s| {
                s.parse::<std::net::IpAddr>()
                    .map(|ip| ip.to_string())
                    .map_err(|_| format!("signup_ip `{}` is not an IP address", s.escape_debug()))
            })
            .transpose()?;
        Ok(ImportRow {
            email,
            name,
            status,
            source,
            signed_up_at,
            confirmed_at,
            signup_ip,
        })
    }
}

fn is_blank(record: &csv::ByteRecord) -> bool {
    record
        .iter()
        .all(|field| field.iter().all(u8::is_ascii_whitespace))
}

/// SQLite page cache for an import, in KiB: large enough that the randomly ordered email
/// index stays mostly in memory, small enough for the memory budget.
const IMPORT_CACHE_KIB: i64 = 32 * 1024;

/// Imports subscribers from CSV (header `email,name,status`; name and status optional, in
/// any order), streaming the input inside one write transaction.
///
/// Each rejected row is passed to `on_reject` with its line number and the reason, as it
/// is found. Unless `skip_invalid` is set, one rejected row means nothing is saved. A row for
/// a listed address updates the name when one is given and applies the status, except that
/// `active` only reactivates an unsubscribed or bounced subscriber with `resubscribe`.
/// A second row for the same address is rejected as a duplicate.
#[tracing::instrument(skip_all, fields(dry_run = options.dry_run))]
pub fn import_csv(
    conn: &mut Connection,
    input: impl Read,
    options: ImportOptions,
    mut on_reject: impl FnMut(u64, &str),
) -> Result<ImportSummary, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(64 * 1024)
        .from_reader(input);
    let columns = Columns::from_header(reader.byte_headers()?)?;

    let previous_cache: i64 = conn.pragma_query_value(None, "cache_size", |r| r.get(0))?;
    conn.pragma_update(None, "cache_size", -IMPORT_CACHE_KIB)?;
    let result = import_rows(conn, &mut reader, &columns, options, &mut on_reject);
    conn.pragma_update(None, "cache_size", previous_cache)?;
    if let Ok(summary) = &result {
        tracing::debug!(?summary, "import finished");
    }
    result
}

fn import_rows<R: Read>(
    conn: &mut Connection,
    reader: &mut csv::Reader<R>,
    columns: &Columns,
    options: ImportOptions,
    on_reject: &mut impl FnMut(u64, &str),
) -> Result<ImportSummary, ImportError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut summary = ImportSummary::default();
    {
        let mut rows = RowWriter::prepare(&tx, options.resubscribe)?;
        // Erased addresses are refused; with `--allow-erased` one that is admitted loses
        // its erasure record, as `subscribers add --allow-erased` does: the reader is back,
        // and a later signup of theirs is not refused.
        let erased = tx.query_row("SELECT EXISTS (SELECT 1 FROM erased_addresses)", [], |r| {
            r.get::<_, bool>(0)
        })?;
        let mut record = csv::ByteRecord::new();
        while reader.read_byte_record(&mut record)? {
            let line = record.position().map_or(0, |p| p.line());
            if is_blank(&record) {
                continue;
            }
            let row = match ImportRow::parse(&record, columns) {
                Ok(row) => row,
                Err(reason) => {
                    summary.rejected += 1;
                    on_reject(line, &reason);
                    continue;
                }
            };
            let was_erased = if erased {
                store::privacy::is_erased(&tx, &row.email)?
            } else {
                None
            };
            if let Some(e) = was_erased.as_ref().filter(|_| !options.allow_erased) {
                summary.rejected += 1;
                on_reject(line, &store::privacy::refusal(row.email.as_str(), e));
                continue;
            }
            match rows.apply(&row, line)? {
                Applied::Added => {
                    summary.added += 1;
                    if was_erased.is_some() {
                        store::privacy::forget_erasure(&tx, &row.email)?;
                    }
                }
                Applied::Existing {
                    changed,
                    kept_inactive,
                } => {
                    summary.kept_inactive += u64::from(kept_inactive);
                    if changed {
                        summary.updated += 1;
                    } else {
                        summary.unchanged += 1;
                    }
                }
                Applied::Duplicate { first } => {
                    summary.rejected += 1;
                    on_reject(
                        line,
                        &format!("`{}` is a duplicate of line {first}", row.email),
                    );
                }
            }
        }
    }
    summary.committed = !options.dry_run && (summary.rejected == 0 || options.skip_invalid);
    if summary.committed {
        tx.commit()?;
    } else {
        tx.rollback()?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::subscribers::{add, find, SubscriberSource};
    use crate::store::testing::{email, store};

    fn import(
        conn: &mut Connection,
        csv: &str,
        options: ImportOptions,
    ) -> (ImportSummary, Vec<String>) {
        let mut rejected = Vec::new();
        let summary = import_csv(conn, csv.as_bytes(), options, |line, reason| {
            rejected.push(format!("{line}: {reason}"))
        })
        .unwrap();
        (summary, rejected)
    }

    #[test]
    fn import_counts_each_kind_of_row() {
        let (_dir, mut conn) = store();
        add(
            &conn,
            &email("old@example.com"),
            None,
            SubscriberSource::Cli,
        )
        .unwrap();
        add(
            &conn,
            &email("same@example.com"),
            None,
            SubscriberSource::Cli,
        )
        .unwrap();
        let csv = "status,email,name\n\
                   ,new@example.com,New\n\
                   ,OLD@example.com,Renamed\n\
                   ,same@example.com,\n\
                   ,new@EXAMPLE.com,Again\n\
                   paused,x@example.com,\n";
        let options = ImportOptions {
            skip_invalid: true,
            ..ImportOptions::default()
        };
        let (summary, rejected) = import(&mut conn, csv, options);
        assert_eq!(
            (
                summary.added,
                summary.updated,
                summary.unchanged,
                summary.rejected
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(
            rejected,
            [
                "5: `new@EXAMPLE.com` is a duplicate of line 2",
                "6: status `paused` is not one of active, pending, unsubscribed, bounced"
            ]
        );
        let old = find(&conn, &email("old@example.com")).unwrap().unwrap();
        assert_eq!(old.name.unwrap().as_str(), "Renamed");
    }

    #[test]
    fn header_problems_are_reported_before_any_row() {
        let (_dir, mut conn) = store();
        let err = import_csv(
            &mut conn,
            "email,phone,fax\n".as_bytes(),
            ImportOptions::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.is_bad_input());
        assert!(
            err.to_string()
                .contains("`phone`, `fax` are not among them"),
            "{err}"
        );
        let err = import_csv(
            &mut conn,
            "".as_bytes(),
            ImportOptions::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, ImportError::Empty), "{err}");
        let err = import_csv(
            &mut conn,
            "name\nAda\n".as_bytes(),
            ImportOptions::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, ImportError::NoEmailColumn(_)), "{err}");
    }
}
