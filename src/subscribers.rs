//! The subscriber list: who receives the weekly issue and in what state, the store functions
//! the sender and web endpoint use, and the `subscribers` commands, including a streaming,
//! all-or-nothing CSV import and the export it round-trips with.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use clap::{Subcommand, ValueEnum};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql, TransactionBehavior};

use crate::address::{AddressError, SubscriberEmail, SubscriberName};
use crate::config::Config;
use crate::db;
use crate::error::UserError;

/// Whether a subscriber receives the next issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum SubscriberStatus {
    /// Receives every issue
    Active,
    /// Asked to stop; kept on the list so an import cannot silently add them back
    Unsubscribed,
    /// Their mail server refused the address permanently
    Bounced,
}

impl SubscriberStatus {
    pub const ALL: [SubscriberStatus; 3] = [
        SubscriberStatus::Active,
        SubscriberStatus::Unsubscribed,
        SubscriberStatus::Bounced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriberStatus::Active => "active",
            SubscriberStatus::Unsubscribed => "unsubscribed",
            SubscriberStatus::Bounced => "bounced",
        }
    }

    /// Reads a status name, ignoring letter case and surrounding spaces.
    pub fn parse(input: &str) -> Result<Self, UnknownStatus> {
        let s = input.trim();
        Self::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStatus(input.escape_debug().to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("status `{0}` is not one of active, unsubscribed, bounced")]
pub struct UnknownStatus(pub String);

impl fmt::Display for SubscriberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriberStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubscriberStatus::parse(s)
    }
}

/// How a subscriber joined the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriberSource {
    Cli,
    Import,
    Web,
}

impl SubscriberSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriberSource::Cli => "cli",
            SubscriberSource::Import => "import",
            SubscriberSource::Web => "web",
        }
    }

    pub fn parse(input: &str) -> Option<Self> {
        [
            SubscriberSource::Cli,
            SubscriberSource::Import,
            SubscriberSource::Web,
        ]
        .into_iter()
        .find(|source| source.as_str() == input)
    }
}

impl fmt::Display for SubscriberSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for SubscriberStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for SubscriberStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        SubscriberStatus::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl ToSql for SubscriberSource {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for SubscriberSource {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        SubscriberSource::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown source `{s}`").into()))
    }
}

/// One person on the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub id: i64,
    /// As the subscriber gave it; compare with `email.normalized()`.
    pub email: SubscriberEmail,
    pub name: Option<SubscriberName>,
    pub status: SubscriberStatus,
    pub source: SubscriberSource,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub unsubscribed_at: Option<DateTime<Utc>>,
}

const SUBSCRIBER_COLUMNS: &str =
    "id, email, name, status, source, created_at, updated_at, unsubscribed_at";

impl Subscriber {
    /// Reads a row selected with `SUBSCRIBER_COLUMNS`. Values are re-parsed with the domain
    /// types, so a row edited by hand into something invalid is an error, not a bad send.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Subscriber> {
        fn invalid(
            idx: usize,
            e: impl std::error::Error + Send + Sync + 'static,
        ) -> rusqlite::Error {
            rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
        }
        let time = |idx: usize| -> rusqlite::Result<DateTime<Utc>> {
            let s: String = row.get(idx)?;
            db::parse_timestamp(&s).ok_or_else(|| invalid(idx, UnknownTimestamp(s)))
        };
        let email: String = row.get(1)?;
        let name: Option<String> = row.get(2)?;
        Ok(Subscriber {
            id: row.get(0)?,
            email: SubscriberEmail::parse(&email).map_err(|e| invalid(1, e))?,
            name: match name {
                Some(n) => SubscriberName::parse(&n).map_err(|e| invalid(2, e))?,
                None => None,
            },
            status: row.get(3)?,
            source: row.get(4)?,
            created_at: time(5)?,
            updated_at: time(6)?,
            unsubscribed_at: match row.get_ref(7)? {
                ValueRef::Null => None,
                _ => Some(time(7)?),
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an RFC 3339 timestamp")]
struct UnknownTimestamp(String);

/// A failure of the subscriber store itself (not of the operator's input).
#[derive(Debug, thiserror::Error)]
#[error("subscriber database error")]
pub struct StoreError(#[from] pub rusqlite::Error);

/// The result of [`add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddOutcome {
    Added(Subscriber),
    /// The address (in any letter case) is already on the list; nothing was changed.
    AlreadyListed(Subscriber),
}

/// The result of [`set_status`] and [`set_status_by_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    NotFound,
    /// The subscriber already had that status; nothing was changed.
    Unchanged(Subscriber),
    Changed {
        from: SubscriberStatus,
        subscriber: Subscriber,
    },
}

/// How many subscribers have each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub active: u64,
    pub unsubscribed: u64,
    pub bounced: u64,
}

impl StatusCounts {
    pub fn get(&self, status: SubscriberStatus) -> u64 {
        match status {
            SubscriberStatus::Active => self.active,
            SubscriberStatus::Unsubscribed => self.unsubscribed,
            SubscriberStatus::Bounced => self.bounced,
        }
    }

    pub fn total(&self) -> u64 {
        self.active + self.unsubscribed + self.bounced
    }
}

fn now() -> DateTime<Utc> {
    // Stored to the second, so the returned structs match what a later read gives.
    Utc::now().trunc_subsecs(0)
}

/// Finds a subscriber by address, ignoring letter case.
pub fn find(conn: &Connection, email: &SubscriberEmail) -> Result<Option<Subscriber>, StoreError> {
    let sql = format!("SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE email_norm = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([email.normalized()], Subscriber::from_row)
        .optional()?)
}

/// Finds a subscriber by id (as recorded in deliveries and unsubscribe tokens).
pub fn get(conn: &Connection, id: i64) -> Result<Option<Subscriber>, StoreError> {
    let sql = format!("SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], Subscriber::from_row)
        .optional()?)
}

/// Adds an active subscriber, unless the address is already listed in any letter case.
pub fn add(
    conn: &Connection,
    email: &SubscriberEmail,
    name: Option<&SubscriberName>,
    source: SubscriberSource,
) -> Result<AddOutcome, StoreError> {
    db::in_write_transaction(conn, |conn| {
        if let Some(existing) = find(conn, email)? {
            return Ok(AddOutcome::AlreadyListed(existing));
        }
        let now = now();
        let stamp = db::timestamp(now);
        conn.prepare_cached(
            "INSERT INTO subscribers
                 (email, email_norm, name, status, source, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )?
        .execute(params![
            email.as_str(),
            email.normalized(),
            name.map(SubscriberName::as_str),
            SubscriberStatus::Active,
            source,
            stamp,
        ])?;
        Ok(AddOutcome::Added(Subscriber {
            id: conn.last_insert_rowid(),
            email: email.clone(),
            name: name.cloned(),
            status: SubscriberStatus::Active,
            source,
            created_at: now,
            updated_at: now,
            unsubscribed_at: None,
        }))
    })
}

/// Erases a subscriber and, through the schema's cascades, everything recorded about them.
/// Returns who was erased, or `None` if the address is not listed.
pub fn remove(
    conn: &Connection,
    email: &SubscriberEmail,
) -> Result<Option<Subscriber>, StoreError> {
    db::in_write_transaction(conn, |conn| {
        let Some(existing) = find(conn, email)? else {
            return Ok(None);
        };
        conn.prepare_cached("DELETE FROM subscribers WHERE id = ?1")?
            .execute([existing.id])?;
        Ok(Some(existing))
    })
}

/// Sets a subscriber's status (unsubscribe, resubscribe, bounce), by address.
pub fn set_status(
    conn: &Connection,
    email: &SubscriberEmail,
    status: SubscriberStatus,
) -> Result<StatusChange, StoreError> {
    db::in_write_transaction(conn, |conn| match find(conn, email)? {
        Some(existing) => change_status(conn, existing, status),
        None => Ok(StatusChange::NotFound),
    })
}

/// Sets a subscriber's status by id: what the unsubscribe endpoint and bounce handling use.
pub fn set_status_by_id(
    conn: &Connection,
    id: i64,
    status: SubscriberStatus,
) -> Result<StatusChange, StoreError> {
    db::in_write_transaction(conn, |conn| match get(conn, id)? {
        Some(existing) => change_status(conn, existing, status),
        None => Ok(StatusChange::NotFound),
    })
}

/// `unsubscribed_at` records when the subscriber last became unsubscribed; reactivating
/// clears it. (Column names on the right-hand side read the row's old values.)
const UPDATE_SUBSCRIBER: &str = "UPDATE subscribers
    SET name = ?2, status = ?3, updated_at = ?4,
        unsubscribed_at = CASE WHEN ?3 = status THEN unsubscribed_at
                               WHEN ?3 = 'unsubscribed' THEN ?4
                               WHEN ?3 = 'active' THEN NULL
                               ELSE unsubscribed_at END
    WHERE id = ?1";

fn change_status(
    conn: &Connection,
    mut subscriber: Subscriber,
    status: SubscriberStatus,
) -> Result<StatusChange, StoreError> {
    if subscriber.status == status {
        return Ok(StatusChange::Unchanged(subscriber));
    }
    let now = now();
    conn.prepare_cached(UPDATE_SUBSCRIBER)?.execute(params![
        subscriber.id,
        subscriber.name.as_ref().map(SubscriberName::as_str),
        status,
        db::timestamp(now),
    ])?;
    let from = subscriber.status;
    subscriber.status = status;
    subscriber.updated_at = now;
    match status {
        SubscriberStatus::Unsubscribed => subscriber.unsubscribed_at = Some(now),
        SubscriberStatus::Active => subscriber.unsubscribed_at = None,
        SubscriberStatus::Bounced => {}
    }
    Ok(StatusChange::Changed { from, subscriber })
}

/// Counts subscribers per status.
pub fn count_by_status(conn: &Connection) -> Result<StatusCounts, StoreError> {
    let mut counts = StatusCounts::default();
    let mut stmt =
        conn.prepare_cached("SELECT status, count(*) FROM subscribers GROUP BY status")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let n: i64 = row.get(1)?;
        let n = u64::try_from(n).unwrap_or_default();
        match row.get(0)? {
            SubscriberStatus::Active => counts.active = n,
            SubscriberStatus::Unsubscribed => counts.unsubscribed = n,
            SubscriberStatus::Bounced => counts.bounced = n,
        }
    }
    Ok(counts)
}

/// Calls `f` for every subscriber (with `status`, if given) in the order they joined,
/// one row at a time, so a million-row list needs no more memory than a short one.
pub fn for_each_subscriber<E>(
    conn: &Connection,
    status: Option<SubscriberStatus>,
    mut f: impl FnMut(&Subscriber) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<StoreError>,
{
    let sql = format!(
        "SELECT {SUBSCRIBER_COLUMNS} FROM subscribers
         WHERE ?1 IS NULL OR status = ?1 ORDER BY id"
    );
    let mut stmt = conn.prepare(&sql).map_err(StoreError)?;
    let mut rows = stmt.query([status]).map_err(StoreError)?;
    while let Some(row) = rows.next().map_err(StoreError)? {
        f(&Subscriber::from_row(row).map_err(StoreError)?)?;
    }
    Ok(())
}

/// The columns of the import and export CSV, in export order.
pub const CSV_COLUMNS: [&str; 3] = ["email", "name", "status"];

/// Writes every subscriber as CSV with the header `email,name,status`, in the order they
/// joined, streaming. Returns how many were written.
pub fn export_csv(conn: &Connection, out: impl Write) -> Result<u64, ExportError> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(CSV_COLUMNS)?;
    let mut stmt = conn
        .prepare("SELECT email, name, status FROM subscribers ORDER BY id")
        .map_err(StoreError)?;
    let mut rows = stmt.query([]).map_err(StoreError)?;
    let mut written = 0;
    while let Some(row) = rows.next().map_err(StoreError)? {
        // Stored values were validated on the way in; copy them out as they are.
        let email = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(StoreError)?;
        let name = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_str_or_null()?))
            .map_err(StoreError)?;
        let status = row
            .get_ref(2)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(StoreError)?;
        writer.write_record([email, name.unwrap_or(""), status])?;
        written += 1;
    }
    writer.flush()?;
    Ok(written)
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export")]
    Write(#[from] io::Error),
}

impl From<csv::Error> for ExportError {
    fn from(e: csv::Error) -> Self {
        // Keep the I/O error itself, so callers can tell a closed pipe from a full disk.
        if !e.is_io_error() {
            return ExportError::Write(io::Error::other(e));
        }
        match e.into_kind() {
            csv::ErrorKind::Io(e) => ExportError::Write(e),
            kind => ExportError::Write(io::Error::other(format!("{kind:?}"))),
        }
    }
}

/// How [`import_csv`] treats the rows it reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Run the whole import, report it, and change nothing.
    pub dry_run: bool,
    /// Import the valid rows even if some are rejected (otherwise one bad row stops all).
    pub skip_invalid: bool,
    /// Let a row that says `active` reactivate an unsubscribed or bounced subscriber.
    pub resubscribe: bool,
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
        })
    }
}

/// One valid row of an import file.
struct ImportRow {
    email: SubscriberEmail,
    name: Option<SubscriberName>,
    status: Option<SubscriberStatus>,
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
        let text = |idx: usize, column: &str| {
            std::str::from_utf8(&record[idx])
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
        Ok(ImportRow {
            email,
            name,
            status,
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
    // Which subscriber rows this import has already touched, and from which line: the
    // duplicate check lives in SQLite so a million-row file needs no in-memory set.
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS import_seen (
             subscriber_id INTEGER PRIMARY KEY,
             line INTEGER NOT NULL
         );
         DELETE FROM temp.import_seen;",
    )?;
    let mut summary = ImportSummary::default();
    {
        let mut find =
            tx.prepare_cached("SELECT id, name, status FROM subscribers WHERE email_norm = ?1")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO subscribers (email, email_norm, name, status, source, created_at,
                                      updated_at, unsubscribed_at)
             VALUES (?1, ?2, ?3, ?4, 'import', ?5, ?5, ?6)
             ON CONFLICT (email_norm) DO NOTHING",
        )?;
        let mut update = tx.prepare_cached(UPDATE_SUBSCRIBER)?;
        let mut seen_line =
            tx.prepare_cached("SELECT line FROM temp.import_seen WHERE subscriber_id = ?1")?;
        let mut mark_seen = tx
            .prepare_cached("INSERT INTO temp.import_seen (subscriber_id, line) VALUES (?1, ?2)")?;

        // One timestamp for the whole import: it is one transaction, it happens at once.
        let stamp = db::timestamp(now());
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
            let norm = row.email.normalized();
            let name = row.name.as_ref().map(SubscriberName::as_str);
            // Inserting first costs one index lookup for a new address (the bulk of a
            // first import); only a conflict needs the existing row read.
            let status = row.status.unwrap_or(SubscriberStatus::Active);
            let unsubscribed_at =
                (status == SubscriberStatus::Unsubscribed).then_some(stamp.as_str());
            let inserted = insert.execute(params![
                row.email.as_str(),
                norm,
                name,
                status,
                stamp,
                unsubscribed_at
            ])?;
            if inserted == 1 {
                mark_seen.execute(params![tx.last_insert_rowid(), line])?;
                summary.added += 1;
                continue;
            }
            let (id, old_name, old_status) = find.query_row([&norm], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, SubscriberStatus>(2)?,
                ))
            })?;
            if let Some(first) = seen_line
                .query_row([id], |r| r.get::<_, i64>(0))
                .optional()?
            {
                summary.rejected += 1;
                on_reject(
                    line,
                    &format!("`{}` is a duplicate of line {first}", row.email),
                );
                continue;
            }
            mark_seen.execute(params![id, line])?;

            let new_name = name.or(old_name.as_deref());
            let new_status = match row.status {
                None => old_status,
                Some(SubscriberStatus::Active)
                    if old_status != SubscriberStatus::Active && !options.resubscribe =>
                {
                    summary.kept_inactive += 1;
                    old_status
                }
                Some(status) => status,
            };
            if new_name == old_name.as_deref() && new_status == old_status {
                summary.unchanged += 1;
            } else {
                update.execute(params![id, new_name, new_status, stamp])?;
                summary.updated += 1;
            }
        }
        tx.execute_batch("DELETE FROM temp.import_seen")?;
    }
    summary.committed = !options.dry_run && (summary.rejected == 0 || options.skip_invalid);
    if summary.committed {
        tx.commit()?;
    } else {
        tx.rollback()?;
    }
    Ok(summary)
}

/// How `subscribers list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns for reading
    Table,
    /// CSV with every field, for spreadsheets
    Csv,
    /// A JSON array of objects, for scripts
    Json,
}

#[derive(Debug, Subcommand)]
pub enum SubscribersCommand {
    /// Add one subscriber (an address already listed, in any letter case, is left alone)
    Add {
        /// Email address, e.g. reader+ai@example.com
        email: String,
        /// Display name
        #[arg(long)]
        name: Option<String>,
    },
    /// Erase a subscriber and everything recorded about them (for "forget me" requests)
    Remove {
        /// Email address (any letter case)
        email: String,
    },
    /// Stop sending to a subscriber; they stay listed so no import re-adds them
    Unsubscribe {
        /// Email address (any letter case)
        email: String,
    },
    /// Start sending again to an unsubscribed or bounced subscriber
    Resubscribe {
        /// Email address (any letter case)
        email: String,
    },
    /// List subscribers in the order they joined
    List {
        /// Only subscribers with this status
        #[arg(long, value_enum)]
        status: Option<SubscriberStatus>,
        /// Output format
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Count subscribers per status, and in total
    Count,
    /// Import subscribers from CSV with a header row: email, and optionally name and status
    ///
    /// All or nothing: if any row is invalid, nothing is imported and every bad row is
    /// listed with its line number. Listed addresses get the row's name (when given) and
    /// status, but an unsubscribed or bounced subscriber is only reactivated by a row saying
    /// `active` together with --resubscribe.
    Import {
        /// CSV file to read (`-` for standard input)
        file: PathBuf,
        /// Check the file and report what would change, without changing anything
        #[arg(long)]
        dry_run: bool,
        /// Import the valid rows and report the invalid ones, instead of importing nothing
        #[arg(long)]
        skip_invalid: bool,
        /// Let rows saying `active` reactivate unsubscribed or bounced subscribers
        #[arg(long)]
        resubscribe: bool,
    },
    /// Write every subscriber as CSV (email,name,status), which `import` reads back
    Export {
        /// Write to this file instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Runs one `subscribers` command against the configured state database.
pub fn run(cmd: SubscribersCommand, config: &Config) -> anyhow::Result<()> {
    let mut conn = db::open(&config.database_path())?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = match cmd {
        SubscribersCommand::Add { email, name } => {
            run_add(&conn, &mut out, &email, name.as_deref())
        }
        SubscribersCommand::Remove { email } => run_remove(&conn, &mut out, &email),
        SubscribersCommand::Unsubscribe { email } => {
            run_set_status(&conn, &mut out, &email, SubscriberStatus::Unsubscribed)
        }
        SubscribersCommand::Resubscribe { email } => {
            run_set_status(&conn, &mut out, &email, SubscriberStatus::Active)
        }
        SubscribersCommand::List { status, format } => run_list(&conn, &mut out, status, format),
        SubscribersCommand::Count => run_count(&conn, &mut out),
        SubscribersCommand::Import {
            file,
            dry_run,
            skip_invalid,
            resubscribe,
        } => {
            let options = ImportOptions {
                dry_run,
                skip_invalid,
                resubscribe,
            };
            run_import(&mut conn, &mut out, &file, options)
        }
        SubscribersCommand::Export { out: Some(path) } => {
            run_export_to_file(&conn, &mut out, &path)
        }
        SubscribersCommand::Export { out: None } => export_csv(&conn, &mut out)
            .map(drop)
            .map_err(anyhow::Error::from),
    };
    match result.and_then(|()| out.flush().map_err(anyhow::Error::from)) {
        // `verdicts subscribers list | head` is not a failure.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = |e: &io::Error| e.kind() == io::ErrorKind::BrokenPipe;
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(broken)
            || e.downcast_ref::<csv::Error>()
                .is_some_and(|e| matches!(e.kind(), csv::ErrorKind::Io(io) if broken(io)))
            || e.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(io::ErrorKind::BrokenPipe))
    })
}

fn parse_email(input: &str) -> anyhow::Result<SubscriberEmail> {
    SubscriberEmail::parse(input)
        .map_err(|e| UserError::new(format!("invalid email address: {e}")).into())
}

fn run_add(
    conn: &Connection,
    out: &mut impl Write,
    email: &str,
    name: Option<&str>,
) -> anyhow::Result<()> {
    let email = parse_email(email)?;
    let name = match name {
        Some(n) => SubscriberName::parse(n)
            .map_err(|e| UserError::new(format!("invalid name for {email}: {e}")))?,
        None => None,
    };
    match add(conn, &email, name.as_ref(), SubscriberSource::Cli)? {
        AddOutcome::Added(s) => writeln!(out, "added {}", s.email)?,
        AddOutcome::AlreadyListed(s) => {
            let hint = match s.status {
                SubscriberStatus::Active => "",
                _ => "; use `subscribers resubscribe` to send to them again",
            };
            writeln!(
                out,
                "{email} is already listed as {} ({}); nothing changed{hint}",
                s.email, s.status
            )?;
        }
    }
    Ok(())
}

fn not_listed(email: &SubscriberEmail) -> anyhow::Error {
    UserError::new(format!("no subscriber has the address {email}")).into()
}

fn run_remove(conn: &Connection, out: &mut impl Write, email: &str) -> anyhow::Result<()> {
    let email = parse_email(email)?;
    match remove(conn, &email)? {
        Some(s) => writeln!(
            out,
            "removed {} and everything recorded about them",
            s.email
        )?,
        None => return Err(not_listed(&email)),
    }
    Ok(())
}

fn run_set_status(
    conn: &Connection,
    out: &mut impl Write,
    email: &str,
    status: SubscriberStatus,
) -> anyhow::Result<()> {
    let email = parse_email(email)?;
    match set_status(conn, &email, status)? {
        StatusChange::NotFound => return Err(not_listed(&email)),
        StatusChange::Unchanged(s) => {
            writeln!(out, "{} is already {status}; nothing changed", s.email)?
        }
        StatusChange::Changed { from, subscriber } => {
            let verb = match status {
                SubscriberStatus::Active => "resubscribed",
                SubscriberStatus::Unsubscribed => "unsubscribed",
                SubscriberStatus::Bounced => "marked as bounced",
            };
            writeln!(out, "{verb} {} (was {from})", subscriber.email)?;
        }
    }
    Ok(())
}

fn run_count(conn: &Connection, out: &mut impl Write) -> anyhow::Result<()> {
    let counts = count_by_status(conn)?;
    for status in SubscriberStatus::ALL {
        writeln!(out, "{:<12}  {:>9}", status.as_str(), counts.get(status))?;
    }
    writeln!(out, "{:<12}  {:>9}", "total", counts.total())?;
    Ok(())
}

fn run_list(
    conn: &Connection,
    out: &mut impl Write,
    status: Option<SubscriberStatus>,
    format: ListFormat,
) -> anyhow::Result<()> {
    match format {
        ListFormat::Table => list_table(conn, out, status),
        ListFormat::Csv => list_csv(conn, out, status),
        ListFormat::Json => list_json(conn, out, status),
    }
}

fn list_table(
    conn: &Connection,
    out: &mut impl Write,
    status: Option<SubscriberStatus>,
) -> anyhow::Result<()> {
    // Column widths come from SQLite so the rows can stream instead of being buffered.
    let (rows, email_width, name_width): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT count(*), max(length(email)), max(length(name))
         FROM subscribers WHERE ?1 IS NULL OR status = ?1",
        [status],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if rows == 0 {
        match status {
            Some(s) => writeln!(out, "no {s} subscribers")?,
            None => writeln!(out, "no subscribers")?,
        }
        return Ok(());
    }
    let email_width = usize::try_from(email_width.unwrap_or(0))
        .unwrap_or(0)
        .max(5);
    let name_width = usize::try_from(name_width.unwrap_or(0)).unwrap_or(0).max(4);
    writeln!(
        out,
        "{:<email_width$}  {:<name_width$}  {:<12}  {:<6}  JOINED",
        "EMAIL", "NAME", "STATUS", "SOURCE"
    )?;
    for_each_subscriber(conn, status, |s| -> anyhow::Result<()> {
        writeln!(
            out,
            "{:<email_width$}  {:<name_width$}  {:<12}  {:<6}  {}",
            s.email.as_str(),
            s.name.as_ref().map_or("", SubscriberName::as_str),
            s.status.as_str(),
            s.source.as_str(),
            s.created_at.format("%Y-%m-%d"),
        )?;
        Ok(())
    })
}

fn list_csv(
    conn: &Connection,
    out: &mut impl Write,
    status: Option<SubscriberStatus>,
) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record([
        "email",
        "name",
        "status",
        "source",
        "created_at",
        "updated_at",
        "unsubscribed_at",
    ])?;
    for_each_subscriber(conn, status, |s| -> anyhow::Result<()> {
        writer.write_record([
            s.email.as_str(),
            s.name.as_ref().map_or("", SubscriberName::as_str),
            s.status.as_str(),
            s.source.as_str(),
            &db::timestamp(s.created_at),
            &db::timestamp(s.updated_at),
            &s.unsubscribed_at.map(db::timestamp).unwrap_or_default(),
        ])?;
        Ok(())
    })?;
    writer.flush()?;
    Ok(())
}

#[derive(serde::Serialize)]
struct SubscriberJson<'a> {
    email: &'a str,
    name: Option<&'a str>,
    status: &'static str,
    source: &'static str,
    created_at: String,
    updated_at: String,
    unsubscribed_at: Option<String>,
}

fn list_json(
    conn: &Connection,
    out: &mut impl Write,
    status: Option<SubscriberStatus>,
) -> anyhow::Result<()> {
    // A JSON array written one element per line, so it streams.
    write!(out, "[")?;
    let mut first = true;
    for_each_subscriber(conn, status, |s| -> anyhow::Result<()> {
        out.write_all(if first { b"\n" } else { b",\n" })?;
        first = false;
        serde_json::to_writer(
            &mut *out,
            &SubscriberJson {
                email: s.email.as_str(),
                name: s.name.as_ref().map(SubscriberName::as_str),
                status: s.status.as_str(),
                source: s.source.as_str(),
                created_at: db::timestamp(s.created_at),
                updated_at: db::timestamp(s.updated_at),
                unsubscribed_at: s.unsubscribed_at.map(db::timestamp),
            },
        )?;
        Ok(())
    })?;
    writeln!(out, "{}]", if first { "" } else { "\n" })?;
    Ok(())
}

fn run_import(
    conn: &mut Connection,
    out: &mut impl Write,
    file: &Path,
    options: ImportOptions,
) -> anyhow::Result<()> {
    let shown = file.display();
    let input: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(file).map_err(|e| UserError::new(format!("cannot read {shown}: {e}")))?)
    };
    let stderr = io::stderr();
    let mut rejections = BufWriter::new(stderr.lock());
    let mut write_failure = None;
    let result = import_csv(conn, input, options, |line, reason| {
        if let Err(e) = writeln!(rejections, "{shown} line {line}: {reason}") {
            write_failure.get_or_insert(e);
        }
    });
    rejections.flush()?;
    if let Some(e) = write_failure {
        return Err(e).context("cannot report rejected rows");
    }
    let summary = match result {
        Ok(summary) => summary,
        Err(e) if e.is_bad_input() => {
            return Err(UserError::new(format!("cannot import {shown}: {e}")).into())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot import {shown}")),
    };

    let counts = format!(
        "{} added, {} updated, {} unchanged, {} rejected",
        summary.added, summary.updated, summary.unchanged, summary.rejected
    );
    let refused = summary.rejected > 0 && !options.skip_invalid;
    if options.dry_run {
        writeln!(out, "dry run of {shown}: {counts} (nothing was changed)")?;
    } else if !refused {
        writeln!(out, "imported {shown}: {counts}")?;
    }
    if summary.kept_inactive > 0 {
        writeln!(
            out,
            "{} row{} said active for unsubscribed or bounced subscribers, who stay as they \
             are; pass --resubscribe to reactivate them",
            summary.kept_inactive,
            if summary.kept_inactive == 1 { "" } else { "s" }
        )?;
    }
    if refused {
        let rows = summary.rejected + summary.accepted();
        let (verb, them) = if summary.rejected == 1 {
            ("is", "it")
        } else {
            ("are", "them")
        };
        let outcome = if options.dry_run {
            "the import would change nothing"
        } else {
            "nothing was imported"
        };
        out.flush()?;
        return Err(UserError::new(format!(
            "{outcome}: {} of {rows} rows in {shown} {verb} invalid (listed above); fix {them}, \
             or pass --skip-invalid to import the other {}",
            summary.rejected,
            summary.accepted()
        ))
        .into());
    }
    Ok(())
}

fn run_export_to_file(conn: &Connection, out: &mut impl Write, path: &Path) -> anyhow::Result<()> {
    // Write beside the target and rename, so a failed export never leaves half a file
    // where a good one was.
    let shown = path.display();
    let file_name = path
        .file_name()
        .ok_or_else(|| UserError::new(format!("--out {shown} is not a file name")))?;
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(file_name);
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = path.with_file_name(partial_name);
    let file = File::create(&partial)
        .map_err(|e| UserError::new(format!("cannot create {shown}: {e}")))?;
    let written = export_csv(conn, BufWriter::new(&file)).and_then(|n| {
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(n)
    });
    match written {
        Ok(n) => {
            writeln!(out, "exported {n} subscribers to {shown}")?;
            Ok(())
        }
        Err(e) => {
            // The partial file is useless; the export error is what matters.
            let _ = std::fs::remove_file(&partial);
            Err(e).with_context(|| format!("cannot export to {shown}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(&dir.path().join("verdicts.db")).unwrap();
        (dir, conn)
    }

    fn email(s: &str) -> SubscriberEmail {
        SubscriberEmail::parse(s).unwrap()
    }

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
    fn status_names_round_trip() {
        for status in SubscriberStatus::ALL {
            assert_eq!(SubscriberStatus::parse(status.as_str()), Ok(status));
        }
        assert_eq!(
            SubscriberStatus::parse(" Active "),
            Ok(SubscriberStatus::Active)
        );
        assert!(SubscriberStatus::parse("paused").is_err());
    }

    #[test]
    fn add_is_case_insensitive_and_keeps_the_address_as_given() {
        let (_dir, conn) = store();
        let first = add(
            &conn,
            &email("Ada@Example.com"),
            None,
            SubscriberSource::Cli,
        )
        .unwrap();
        assert!(matches!(first, AddOutcome::Added(_)));
        match add(
            &conn,
            &email("ada@example.COM"),
            None,
            SubscriberSource::Web,
        )
        .unwrap()
        {
            AddOutcome::AlreadyListed(s) => assert_eq!(s.email.as_str(), "Ada@Example.com"),
            other => panic!("{other:?}"),
        }
        assert_eq!(count_by_status(&conn).unwrap().total(), 1);
    }

    #[test]
    fn status_changes_are_recorded_with_their_time() {
        let (_dir, conn) = store();
        let AddOutcome::Added(s) =
            add(&conn, &email("a@example.com"), None, SubscriberSource::Cli).unwrap()
        else {
            panic!("not added")
        };
        let change = set_status_by_id(&conn, s.id, SubscriberStatus::Unsubscribed).unwrap();
        let StatusChange::Changed { from, subscriber } = change else {
            panic!("{change:?}")
        };
        assert_eq!(from, SubscriberStatus::Active);
        assert!(subscriber.unsubscribed_at.is_some());
        assert_eq!(get(&conn, s.id).unwrap(), Some(subscriber.clone()));
        assert!(matches!(
            set_status(
                &conn,
                &email("A@example.com"),
                SubscriberStatus::Unsubscribed
            )
            .unwrap(),
            StatusChange::Unchanged(_)
        ));
        assert_eq!(
            set_status_by_id(&conn, 999, SubscriberStatus::Bounced).unwrap(),
            StatusChange::NotFound
        );
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
                "6: status `paused` is not one of active, unsubscribed, bounced"
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
