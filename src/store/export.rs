//! Subscriber CSV export: every subscriber with the consent record, streamed, with cells a
//! spreadsheet would run as formulas neutralised (reversibly: the import restores them).

use std::io::{self, Write};

use rusqlite::Connection;

use super::csv::CSV_COLUMNS;
use super::subscribers::StoreError;

/// Whether a cell would be read as a formula by a spreadsheet (OWASP's CSV injection rule:
/// it starts with `=`, `+`, `-` or `@`), or is an already quoted one, so that the quoting
/// stays reversible.
fn looks_like_formula(cell: &str) -> bool {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@') => true,
        Some(b'\'') => looks_like_formula(&cell[1..]),
        _ => false,
    }
}

/// A cell made safe for spreadsheets: one that looks like a formula gets a leading `'`,
/// which spreadsheets show as text. [`restore_cell`] undoes it exactly.
pub fn neutralise_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    if looks_like_formula(cell) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// The cell [`neutralise_cell`] was given.
pub fn restore_cell(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if looks_like_formula(rest) => rest,
        _ => cell,
    }
}

/// Writes every subscriber as CSV with the header of [`CSV_COLUMNS`], in the order they
/// joined, streaming, with formula-like cells neutralised (see [`neutralise_cell`]) unless
/// `keep_formulas`. Returns how many were written.
pub fn export_csv(
    conn: &Connection,
    out: impl Write,
    keep_formulas: bool,
) -> Result<u64, ExportError> {
    let cell = |s: &'_ str| -> String {
        if keep_formulas {
            s.to_owned()
        } else {
            neutralise_cell(s).into_owned()
        }
    };
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(CSV_COLUMNS)?;
    let mut stmt = conn
        .prepare(
            "SELECT email, name, status, source, signed_up_at, confirmed_at, signup_ip
             FROM subscribers ORDER BY id",
        )
        .map_err(StoreError)?;
    let mut rows = stmt.query([]).map_err(StoreError)?;
    let mut written = 0;
    while let Some(row) = rows.next().map_err(StoreError)? {
        let mut record: [String; CSV_COLUMNS.len()] = Default::default();
        // Stored values were validated on the way in; copy them out as they are.
        for (i, field) in record.iter_mut().enumerate() {
            let value = row
                .get_ref(i)
                .and_then(|v| Ok(v.as_str_or_null()?))
                .map_err(StoreError)?
                .unwrap_or("");
            *field = cell(value);
        }
        writer.write_record(&record)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_quoted_and_restored_exactly() {
        for cell in [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-2",
            "@SUM(A1)",
            "'=already quoted",
            "''=twice",
            "'plain",
            "O'Brien",
            "plain",
            "",
        ] {
            let safe = neutralise_cell(cell);
            assert!(
                !matches!(safe.chars().next(), Some('=' | '+' | '-' | '@')),
                "{safe}"
            );
            assert_eq!(restore_cell(&safe), cell);
        }
        assert_eq!(neutralise_cell("=1+1"), "'=1+1");
        assert_eq!(neutralise_cell("O'Brien"), "O'Brien");
    }
}
