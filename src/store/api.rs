//! The API's keys (hashes only) and its read queries that the other store modules do not
//! already answer: the feed of subscriber events.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{self, SubscriberId};

/// A key as stored: never the key itself, only its public prefix and the SHA-256 of it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const KEY_COLUMNS: &str = "id, name, prefix, hash, scopes, created_at, last_used_at, revoked_at";

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let time = |s: Option<String>| s.as_deref().and_then(store::parse_timestamp);
    let scopes: String = row.get(4)?;
    Ok(StoredKey {
        id: row.get(0)?,
        name: row.get(1)?,
        prefix: row.get(2)?,
        hash: row.get(3)?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: time(row.get(5)?).unwrap_or_default(),
        last_used_at: time(row.get(6)?),
        revoked_at: time(row.get(7)?),
    })
}

/// Stores a new key; false (and nothing stored) when a key of that name exists, revoked or not.
pub fn insert_key(
    conn: &Connection,
    name: &str,
    prefix: &str,
    hash: &[u8],
    scopes: &[String],
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT INTO api_keys (name, prefix, hash, scopes, created_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (name) DO NOTHING",
        params![
            name,
            prefix,
            hash,
            scopes.join(","),
            store::timestamp(Utc::now())
        ],
    )?;
    Ok(n == 1)
}

/// The key with this public prefix, revoked or not.
pub fn key_by_prefix(conn: &Connection, prefix: &str) -> rusqlite::Result<Option<StoredKey>> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = ?"
    ))?
    .query_row([prefix], key_from_row)
    .optional()
}

/// Every key, oldest first.
pub fn keys(conn: &Connection) -> rusqlite::Result<Vec<StoredKey>> {
    let mut stmt = conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))?;
    let rows = stmt.query_map([], key_from_row)?;
    rows.collect()
}

/// Revokes the named key; false when there is no such key or it was already revoked.
pub fn revoke_key(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
        params![store::timestamp(Utc::now()), name],
    )?;
    Ok(n == 1)
}

/// Notes that a key was used (at most once a minute per key, so reads stay reads).
pub fn touch_key(conn: &Connection, id: i64, now: DateTime<Utc>) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE api_keys SET last_used_at = ? WHERE id = ?")?
        .execute(params![store::timestamp(now), id])?;
    Ok(())
}

/// One subscriber event in the API's feed.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub id: i64,
    pub subscriber_id: SubscriberId,
    pub email: String,
    pub issue: Option<i64>,
    pub kind: String,
    pub channel: Option<String>,
    pub source: String,
    pub at: String,
}

/// Up to `limit` subscriber events with an id above `after`, oldest first.
pub fn events_after(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<FeedEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.id, e.subscriber_id, s.email, e.issue, e.kind, e.channel, e.source, e.at
         FROM events e JOIN subscribers s ON s.id = e.subscriber_id
         WHERE e.id > ? ORDER BY e.id LIMIT ?",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok(FeedEvent {
            id: r.get(0)?,
            subscriber_id: r.get(1)?,
            email: r.get(2)?,
            issue: r.get(3)?,
            kind: r.get(4)?,
            channel: r.get(5)?,
            source: r.get(6)?,
            at: r.get(7)?,
        })
    })?;
    rows.collect()
}
