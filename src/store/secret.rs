//! The fingerprint of the secret that signs readers' links, kept in the database: every
//! unsubscribe, confirmation and VERP link already mailed depends on that secret, so a
//! command started with a different one is refused instead of mailing links that cannot be
//! verified beside links that no longer can.

use rusqlite::{params, Connection, OptionalExtension};

const KEY: &str = "secret_fingerprint";

/// How the configured secret compares with the one the database knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretCheck {
    /// The database knew no secret yet; this one is recorded.
    Recorded,
    /// The same secret as before.
    Same,
    /// The database knew one of the configured previous secrets: a rotation. The new
    /// secret is recorded; links signed with the old one still verify while it stays listed.
    Rotated,
    /// Another secret, not listed as a previous one: refused, nothing changed.
    Different { stored: String },
}

/// Compares `current` (a fingerprint) with the stored one. With `record`, stores it when
/// the database had none or `previous` holds the stored one; without, writes nothing (the
/// outcome says what recording would do).
pub fn check(
    conn: &Connection,
    current: &str,
    previous: &[String],
    record: bool,
) -> rusqlite::Result<SecretCheck> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM settings WHERE name = ?", [KEY], |r| {
            r.get(0)
        })
        .optional()?;
    let would = match stored {
        Some(s) if s == current => return Ok(SecretCheck::Same),
        Some(s) if !previous.contains(&s) => return Ok(SecretCheck::Different { stored: s }),
        Some(_) => SecretCheck::Rotated,
        None => SecretCheck::Recorded,
    };
    if !record {
        return Ok(would);
    }
    let tx = super::write_transaction(conn)?;
    let stored: Option<String> = tx
        .query_row("SELECT value FROM settings WHERE name = ?", [KEY], |r| {
            r.get(0)
        })
        .optional()?;
    let outcome = match stored {
        Some(s) if s == current => return Ok(SecretCheck::Same),
        Some(s) if !previous.contains(&s) => return Ok(SecretCheck::Different { stored: s }),
        Some(_) => SecretCheck::Rotated,
        None => SecretCheck::Recorded,
    };
    tx.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![KEY, current],
    )?;
    tx.commit()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_without_recording_writes_nothing() {
        let (_dir, conn) = crate::store::testing::store();
        assert_eq!(
            check(&conn, "aaaa", &[], false).unwrap(),
            SecretCheck::Recorded
        );
        assert_eq!(
            check(&conn, "bbbb", &[], false).unwrap(),
            SecretCheck::Recorded
        );
        assert_eq!(
            check(&conn, "bbbb", &[], true).unwrap(),
            SecretCheck::Recorded
        );
        assert_eq!(check(&conn, "bbbb", &[], false).unwrap(), SecretCheck::Same);
    }

    #[test]
    fn records_then_refuses_another_and_accepts_a_rotation() {
        let (_dir, conn) = crate::store::testing::store();
        assert_eq!(
            check(&conn, "aaaa", &[], true).unwrap(),
            SecretCheck::Recorded
        );
        assert_eq!(check(&conn, "aaaa", &[], true).unwrap(), SecretCheck::Same);
        assert_eq!(
            check(&conn, "bbbb", &[], true).unwrap(),
            SecretCheck::Different {
                stored: "aaaa".into()
            }
        );
        // Still the old one: a refusal changes nothing.
        assert_eq!(check(&conn, "aaaa", &[], true).unwrap(), SecretCheck::Same);
        assert_eq!(
            check(&conn, "bbbb", &["aaaa".into()], true).unwrap(),
            SecretCheck::Rotated
        );
        assert_eq!(check(&conn, "bbbb", &[], true).unwrap(), SecretCheck::Same);
    }
}
