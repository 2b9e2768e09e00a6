//! Applying one valid import row inside the import's transaction: insert a new address,
//! merge a listed one (name, status, `--resubscribe`), or name the line that already had it.

use rusqlite::params;

use super::ImportRow;
use crate::mail::address::SubscriberName;
use crate::store;
use crate::store::subscribers::{now, SubscriberSource, SubscriberStatus, UPDATE_SUBSCRIBER};

/// What one valid row did.
pub(super) enum Applied {
    Added,
    /// The address was listed: its row was `changed` or left alone; `kept_inactive` when the
    /// row asked for `active` but the subscriber stays unsubscribed or bounced.
    Existing {
        changed: bool,
        kept_inactive: bool,
    },
    /// The address already appeared on line `first` of this file.
    Duplicate {
        first: u64,
    },
}

/// The line on which this import first named each subscriber row. Row ids are dense (a new
/// row takes the highest id plus one), so a vector indexed by id holds them in 4 bytes a
/// row; an id beyond its reach, or a line beyond `u32`, goes to the map instead.
#[derive(Default)]
pub(super) struct SeenLines {
    dense: Vec<u32>,
    sparse: std::collections::HashMap<i64, u64>,
}

impl SeenLines {
    /// Ids below this live in `dense`: 32 MB at most, and only as far as the ids reach.
    pub(super) const DENSE_IDS: i64 = 1 << 23;

    pub(super) fn get(&self, id: i64) -> Option<u64> {
        let dense = usize::try_from(id)
            .ok()
            .and_then(|i| self.dense.get(i))
            .filter(|&&line| line != 0);
        match dense {
            Some(&line) => Some(u64::from(line)),
            None => self.sparse.get(&id).copied(),
        }
    }

    pub(super) fn insert(&mut self, id: i64, line: u64) {
        match (u32::try_from(line), usize::try_from(id)) {
            (Ok(short), Ok(i)) if short != 0 && id < Self::DENSE_IDS => {
                if i >= self.dense.len() {
                    self.dense.resize((i + 1).next_power_of_two(), 0);
                }
                self.dense[i] = short;
            }
            _ => {
                self.sparse.insert(id, line);
            }
        }
    }
}

/// The statements an import runs for each row, prepared once inside its transaction.
pub(super) struct RowWriter<'tx> {
    find: rusqlite::CachedStatement<'tx>,
    insert: rusqlite::CachedStatement<'tx>,
    update: rusqlite::CachedStatement<'tx>,
    /// Which subscriber rows this import has touched already, and from which line.
    seen: SeenLines,
    last_id: Box<dyn Fn() -> i64 + 'tx>,
    /// One timestamp for the whole import: it is one transaction, it happens at once.
    stamp: String,
    resubscribe: bool,
}

impl<'tx> RowWriter<'tx> {
    pub(super) fn prepare(
        tx: &'tx rusqlite::Transaction<'_>,
        resubscribe: bool,
    ) -> rusqlite::Result<Self> {
        Ok(RowWriter {
            find: tx
                .prepare_cached("SELECT id, name, status FROM subscribers WHERE email_norm = ?1")?,
            insert: tx.prepare_cached(
                "INSERT INTO subscribers (email, email_norm, name, status, source, created_at,
                                          updated_at, unsubscribed_at, signed_up_at, confirmed_at,
                                          signup_ip)
                 VALUES (?1, ?2, ?3, ?4, ?7, ?5, ?5, ?6, coalesce(?8, ?5), ?9, ?10)
                 ON CONFLICT (email_norm) DO NOTHING",
            )?,
            update: tx.prepare_cached(UPDATE_SUBSCRIBER)?,
            seen: SeenLines::default(),
            last_id: Box::new(move || tx.last_insert_rowid()),
            stamp: store::timestamp(now()),
            resubscribe,
        })
    }

    pub(super) fn apply(&mut self, row: &ImportRow, line: u64) -> rusqlite::Result<Applied> {
        let norm = row.email.normalized();
        let name = row.name.as_ref().map(SubscriberName::as_str);
        // Inserting first costs one index lookup for a new address (the bulk of a first
        // import); only a conflict needs the existing row read.
        let status = row.status.unwrap_or(SubscriberStatus::Active);
        let unsubscribed_at =
            (status == SubscriberStatus::Unsubscribed).then_some(self.stamp.as_str());
        let inserted = self.insert.execute(params![
            row.email.as_str(),
            norm,
            name,
            status,
            self.stamp,
            unsubscribed_at,
            row.source.unwrap_or(SubscriberSource::Import),
            row.signed_up_at,
            row.confirmed_at,
            row.signup_ip,
        ])?;
        if inserted == 1 {
            self.seen.insert((self.last_id)(), line);
            return Ok(Applied::Added);
        }
        let (id, old_name, old_status) = self.find.query_row([&norm], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, SubscriberStatus>(2)?,
            ))
        })?;
        if let Some(first) = self.seen.get(id) {
            return Ok(Applied::Duplicate { first });
        }
        self.seen.insert(id, line);
        self.merge(id, name, old_name.as_deref(), row.status, old_status)
    }

    /// A listed address: the row's name (when given) and status, except that only
    /// `--resubscribe` lets a row reactivate an unsubscribed or bounced subscriber.
    fn merge(
        &mut self,
        id: i64,
        name: Option<&str>,
        old_name: Option<&str>,
        status: Option<SubscriberStatus>,
        old_status: SubscriberStatus,
    ) -> rusqlite::Result<Applied> {
        let new_name = name.or(old_name);
        let mut kept_inactive = false;
        let new_status = match status {
            None => old_status,
            Some(SubscriberStatus::Active)
                if old_status != SubscriberStatus::Active && !self.resubscribe =>
            {
                kept_inactive = true;
                old_status
            }
            Some(status) => status,
        };
        let changed = new_name != old_name || new_status != old_status;
        if changed {
            self.update
                .execute(params![id, new_name, new_status, self.stamp])?;
        }
        Ok(Applied::Existing {
            changed,
            kept_inactive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_lines_remember_the_first_line_of_every_id_dense_or_not() {
        let mut seen = SeenLines::default();
        let far = SeenLines::DENSE_IDS + 5;
        for (id, line) in [
            (1, 2),
            (1_000, 7),
            (far, 9),
            (-3, 4),
            (12, u64::from(u32::MAX) + 1),
        ] {
            assert_eq!(seen.get(id), None);
            seen.insert(id, line);
            assert_eq!(seen.get(id), Some(line));
        }
        assert_eq!(
            (seen.get(2), seen.get(999), seen.get(far - 1)),
            (None, None, None)
        );
        assert!(
            seen.dense.len() < 2048,
            "dense only as far as the ids reach"
        );
    }
}
