//! subscribers list and count: the table, CSV and JSON forms.

use super::*;

pub(super) fn run_list(
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

pub(super) fn list_table(
    conn: &Connection,
    out: &mut impl Write,
    status: Option<SubscriberStatus>,
) -> anyhow::Result<()> {
    // Column widths come from SQLite so the rows can stream instead of being buffered.
    let (rows, email_width, name_width) = column_widths(conn, status)?;
    if rows == 0 {
        match status {
            Some(s) => writeln!(out, "no {s} subscribers")?,
            None => writeln!(out, "no subscribers")?,
        }
        return Ok(());
    }
    let email_width = email_width.max(5);
    let name_width = name_width.max(4);
    // Bounced subscribers also show when and why: what an operator checks before
    // re-activating an address.
    let bounced = status == Some(SubscriberStatus::Bounced);
    writeln!(
        out,
        "{:<email_width$}  {:<name_width$}  {:<12}  {:<6}  JOINED{}",
        "EMAIL",
        "NAME",
        "STATUS",
        "SOURCE",
        if bounced {
            "      BOUNCED     REASON"
        } else {
            ""
        }
    )?;
    for_each_subscriber(conn, status, |s| -> anyhow::Result<()> {
        let why = if bounced {
            match crate::store::events::last_bounce(conn, s.id)? {
                Some(b) => format!("  {}  {}", b.at.format("%Y-%m-%d"), bounce_reason(&b)),
                None => format!("  {:<10}  not recorded", "-"),
            }
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:<email_width$}  {:<name_width$}  {:<12}  {:<6}  {}{why}",
            s.email.as_str(),
            s.name.as_ref().map_or("", SubscriberName::as_str),
            s.status.as_str(),
            s.source.as_str(),
            s.created_at.format("%Y-%m-%d"),
        )?;
        Ok(())
    })
}

/// `hard 5.1.1: 550 5.1.1 <ada@example.com>: Recipient address rejected…`, one line.
pub(super) fn bounce_reason(b: &crate::store::events::BounceReason) -> String {
    let kind = b.kind.trim_end_matches("_bounce");
    let mut reason = match &b.status {
        Some(status) => format!("{kind} {status}"),
        None => kind.to_string(),
    };
    if let Some(d) = &b.diagnostic {
        reason.push_str(": ");
        reason.extend(d.chars().take(100));
        if d.chars().count() > 100 {
            reason.push('…');
        }
    }
    reason
}

pub(super) fn list_csv(
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
        // For spreadsheets, so formula-like cells are neutralised as in `export`.
        writer.write_record([
            &*neutralise_cell(s.email.as_str()),
            &neutralise_cell(s.name.as_ref().map_or("", SubscriberName::as_str)),
            s.status.as_str(),
            s.source.as_str(),
            &store::timestamp(s.created_at),
            &store::timestamp(s.updated_at),
            &s.unsubscribed_at.map(store::timestamp).unwrap_or_default(),
        ])?;
        Ok(())
    })?;
    writer.flush()?;
    Ok(())
}

#[derive(serde::Serialize)]
pub(super) struct SubscriberJson<'a> {
    email: &'a str,
    name: Option<&'a str>,
    status: &'static str,
    source: &'static str,
    created_at: String,
    updated_at: String,
    unsubscribed_at: Option<String>,
}

pub(super) fn list_json(
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
                created_at: store::timestamp(s.created_at),
                updated_at: store::timestamp(s.updated_at),
                unsubscribed_at: s.unsubscribed_at.map(store::timestamp),
            },
        )?;
        Ok(())
    })?;
    writeln!(out, "{}]", if first { "" } else { "\n" })?;
    Ok(())
}
