//! The subscriber list: who receives the weekly issue and in what state, and the store
//! functions the sender, the web endpoint and the `subscribers` commands use.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use clap::ValueEnum;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql};

use crate::mail::address::{SubscriberEmail, SubscriberName};
use crate::store::{self, SubscriberId};

/// Whether a subscriber receives the next issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum SubscriberStatus {
    /// Receives every issue
    Active,
    /// Signed up through the form and not yet confirmed; never mailed an issue
    Pending,
    /// Asked to stop; kept on the list so an import cannot silently add them back
    Unsubscribed,
    /// Their mail server refused the address permanently
    Bounced,
}

impl SubscriberStatus {
    pub const ALL: [SubscriberStatus; 4] = [
        SubscriberStatus::Active,
        SubscriberStatus::Pending,
        SubscriberStatus::Unsubscribed,
        SubscriberStatus::Bounced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriberStatus::Active => "active",
            SubscriberStatus::Pending => "pending",
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
#[error("status `{0}` is not one of active, pending, unsubscribed, bounced")]
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
    /// The signup form
    Web,
    /// The signup endpoint called with JSON
    Api,
}

impl SubscriberSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriberSource::Cli => "cli",
            SubscriberSource::Import => "import",
            SubscriberSource::Web => "web",
            SubscriberSource::Api => "api",
        }
    }

    pub fn parse(input: &str) -> Option<Self> {
        [
            SubscriberSource::Cli,
            SubscriberSource::Import,
            SubscriberSource::Web,
            SubscriberSource::Api,
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
    pub id: SubscriberId,
    /// As the subscriber gave it; compare with `email.normalized()`.
    pub email: SubscriberEmail,
    pub name: Option<SubscriberName>,
    pub status: SubscriberStatus,
    pub source: SubscriberSource,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub unsubscribed_at: Option<DateTime<Utc>>,
    /// The consent record: when and how they (last) signed up, when they confirmed by
    /// mail (never for operator adds and imports), and the IP only if `signup.record_ip`.
    pub signed_up_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub signup_ip: Option<String>,
}

const SUBSCRIBER_COLUMNS: &str = "id, email, name, status, source, created_at, updated_at, \
     unsubscribed_at, signed_up_at, confirmed_at, signup_ip";

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
            store::parse_timestamp(&s).ok_or_else(|| invalid(idx, UnknownTimestamp(s)))
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
            signed_up_at: time(8)?,
            confirmed_at: match row.get_ref(9)? {
                ValueRef::Null => None,
                _ => Some(time(9)?),
            },
            signup_ip: row.get(10)?,
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
    pub pending: u64,
    pub unsubscribed: u64,
    pub bounced: u64,
}

impl StatusCounts {
    pub fn get(&self, status: SubscriberStatus) -> u64 {
        match status {
            SubscriberStatus::Active => self.active,
            SubscriberStatus::Pending => self.pending,
            SubscriberStatus::Unsubscribed => self.unsubscribed,
            SubscriberStatus::Bounced => self.bounced,
        }
    }

    pub fn total(&self) -> u64 {
        self.active + self.pending + self.unsubscribed + self.bounced
    }
}

pub(super) fn now() -> DateTime<Utc> {
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
pub fn get(conn: &Connection, id: SubscriberId) -> Result<Option<Subscriber>, StoreError> {
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
    store::in_write_transaction(conn, |conn| {
        if let Some(existing) = find(conn, email)? {
            return Ok(AddOutcome::AlreadyListed(existing));
        }
        let now = now();
        let stamp = store::timestamp(now);
        conn.prepare_cached(
            "INSERT INTO subscribers
                 (email, email_norm, name, status, source, created_at, updated_at,
                  signed_up_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6)",
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
            id: SubscriberId(conn.last_insert_rowid()),
            email: email.clone(),
            name: name.cloned(),
            status: SubscriberStatus::Active,
            source,
            created_at: now,
            updated_at: now,
            unsubscribed_at: None,
            signed_up_at: now,
            confirmed_at: None,
            signup_ip: None,
        }))
    })
}

/// Erases a subscriber and, through the schema's cascades, everything recorded about them.
/// Returns who was erased, or `None` if the address is not listed.
pub fn remove(
    conn: &Connection,
    email: &SubscriberEmail,
) -> Result<Option<Subscriber>, StoreError> {
    store::in_write_transaction(conn, |conn| {
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
    store::in_write_transaction(conn, |conn| match find(conn, email)? {
        Some(existing) => change_status(conn, existing, status),
        None => Ok(StatusChange::NotFound),
    })
}

/// Sets a subscriber's status by id: what the unsubscribe endpoint and bounce handling use.
pub fn set_status_by_id(
    conn: &Connection,
    id: SubscriberId,
    status: SubscriberStatus,
) -> Result<StatusChange, StoreError> {
    store::in_write_transaction(conn, |conn| match get(conn, id)? {
        Some(existing) => change_status(conn, existing, status),
        None => Ok(StatusChange::NotFound),
    })
}

/// A bounced subscriber [`resubscribe_bounced_since`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbounced {
    pub email: String,
    /// When their latest bounce was recorded, and what it said.
    pub bounced_at: String,
    pub diagnostic: Option<String>,
}

/// Makes active again every bounced subscriber with a bounce recorded at or after `since`:
/// the undo for a run whose refusals were the relay's fault, not the readers'. With
/// `dry_run` nothing changes. Returns them in address order.
pub fn resubscribe_bounced_since(
    conn: &Connection,
    since: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Unbounced>, StoreError> {
    store::in_write_transaction(conn, |tx| {
        let found: Vec<(SubscriberId, Unbounced)> = tx
            .prepare(
                "SELECT s.id, s.email, e.at, e.diagnostic FROM subscribers s
                 JOIN events e ON e.id = (SELECT max(id) FROM events
                                          WHERE subscriber_id = s.id
                                            AND kind IN ('hard_bounce', 'soft_bounce'))
                 WHERE s.status = 'bounced' AND e.at >= ?
                 ORDER BY s.email_norm",
            )?
            .query_map([store::timestamp(since)], |r| {
                Ok((
                    r.get(0)?,
                    Unbounced {
                        email: r.get(1)?,
                        bounced_at: r.get(2)?,
                        diagnostic: r.get(3)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        if !dry_run {
            let now = store::timestamp(now());
            let mut stmt = tx.prepare_cached(
                "UPDATE subscribers SET status = 'active', updated_at = ?
                 WHERE id = ? AND status = 'bounced'",
            )?;
            for (id, _) in &found {
                stmt.execute(params![now, id])?;
            }
        }
        Ok(found.into_iter().map(|(_, u)| u).collect())
    })
}

/// `unsubscribed_at` records when the subscriber last became unsubscribed; reactivating
/// clears it. (Column names on the right-hand side read the row's old values.)
pub(super) const UPDATE_SUBSCRIBER: &str = "UPDATE subscribers
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
        store::timestamp(now),
    ])?;
    let from = subscriber.status;
    subscriber.status = status;
    subscriber.updated_at = now;
    match status {
        SubscriberStatus::Unsubscribed => subscriber.unsubscribed_at = Some(now),
        SubscriberStatus::Active => subscriber.unsubscribed_at = None,
        SubscriberStatus::Bounced | SubscriberStatus::Pending => {}
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
            SubscriberStatus::Pending => counts.pending = n,
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

/// An active subscriber as a send reads them.
#[derive(Debug)]
pub struct Addressee {
    pub id: SubscriberId,
    /// The address, or the stored text and why it no longer parses (a row written by an
    /// older version or by hand): one such row must not stop the others' messages.
    pub email: Result<SubscriberEmail, (String, String)>,
    pub name: Option<String>,
}

/// Calls `f` with every active subscriber, in id order, tolerating unparsable addresses.
pub fn for_each_active_addressee<E>(
    conn: &Connection,
    mut f: impl FnMut(Addressee) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<StoreError>,
{
    let mut stmt = conn
        .prepare("SELECT id, email, name FROM subscribers WHERE status = 'active' ORDER BY id")
        .map_err(StoreError)?;
    let mut rows = stmt.query([]).map_err(StoreError)?;
    while let Some(row) = rows.next().map_err(StoreError)? {
        let raw: String = row.get(1).map_err(StoreError)?;
        f(Addressee {
            id: row.get(0).map_err(StoreError)?,
            email: SubscriberEmail::parse(&raw).map_err(|e| (raw, e.to_string())),
            name: row.get(2).map_err(StoreError)?,
        })?;
    }
    Ok(())
}

/// How many subscribers have `status` (all when `None`), and the longest address and name
/// among them in characters, so a table can be printed while the rows stream.
pub fn column_widths(
    conn: &Connection,
    status: Option<SubscriberStatus>,
) -> Result<(u64, usize, usize), StoreError> {
    let (rows, email, name): (i64, Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT count(*), max(length(email)), max(length(name))
             FROM subscribers WHERE ?1 IS NULL OR status = ?1",
            [status],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(StoreError)?;
    let width = |w: Option<i64>| usize::try_from(w.unwrap_or(0)).unwrap_or(0);
    Ok((rows as u64, width(email), width(name)))
}

/// Up to `limit` subscribers (with `status`, if given) whose id is after `after`, in id
/// order: one page of the API's list, found by the primary key however deep the page.
pub fn page_after(
    conn: &Connection,
    status: Option<SubscriberStatus>,
    after: Option<SubscriberId>,
    limit: usize,
) -> Result<Vec<Subscriber>, StoreError> {
    let sql = format!(
        "SELECT {SUBSCRIBER_COLUMNS} FROM subscribers
         WHERE (?1 IS NULL OR status = ?1) AND id > ?2 ORDER BY id LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![status, after.map_or(0, |a| a.0), limit as i64],
        Subscriber::from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Changes a subscriber's name (or clears it); `None` when the address is not listed.
pub fn rename(
    conn: &Connection,
    email: &SubscriberEmail,
    name: Option<&SubscriberName>,
) -> Result<Option<Subscriber>, StoreError> {
    store::in_write_transaction(conn, |conn| {
        let Some(existing) = find(conn, email)? else {
            return Ok(None);
        };
        conn.prepare_cached("UPDATE subscribers SET name = ?1, updated_at = ?2 WHERE id = ?3")?
            .execute(params![
                name.map(SubscriberName::as_str),
                store::timestamp(now()),
                existing.id
            ])?;
        get(conn, existing.id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{email, store};

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
            set_status_by_id(&conn, SubscriberId(999), SubscriberStatus::Bounced).unwrap(),
            StatusChange::NotFound
        );
    }
}
