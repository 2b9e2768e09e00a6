//! `verdicts subscribers`: add, remove, list, count, import and export the list.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use rusqlite::Connection;

use crate::config::Config;
use crate::error::UserError;
use crate::mail::address::{SubscriberEmail, SubscriberName};
use crate::store;
use crate::store::csv::{export_csv, import_csv, neutralise_cell, ImportOptions};
use crate::store::subscribers::*;

mod list;
use list::*;

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
        /// Add the address even though it was erased at the reader's request
        #[arg(long)]
        allow_erased: bool,
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
    /// Start sending again to an unsubscribed or bounced subscriber, or to every reader
    /// bounced since a time (the undo for a relay that refused everyone)
    Resubscribe {
        /// Email address (any letter case)
        #[arg(
            required_unless_present = "bounced_since",
            conflicts_with = "bounced_since"
        )]
        email: Option<String>,
        /// Reactivate every bounced subscriber whose latest bounce was recorded at or after
        /// this time (RFC 3339, e.g. 2026-11-30T09:00:00Z)
        #[arg(long, value_name = "TIME", value_parser = super::args::parse_instant)]
        bounced_since: Option<chrono::DateTime<chrono::Utc>>,
        /// With --bounced-since: list who would be reactivated, and change nothing
        #[arg(long, requires = "bounced_since")]
        dry_run: bool,
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
        /// Admit addresses that were erased at the readers' request (otherwise each is a
        /// rejected row naming the address)
        #[arg(long)]
        allow_erased: bool,
    },
    /// Print everything held about one reader as JSON: the subscriber row, the consent
    /// record, confirmations, events, votes, per-reader clicks and the deliveries still kept
    /// (an access request)
    Show {
        /// Email address (any spelling of the mailbox)
        email: String,
    },
    /// Erase a reader for good (an erasure request): their row and every per-recipient row
    /// naming them go, issue totals stay, and a salted hash of the address is kept so a
    /// later import, signup or add of it is refused
    Erase {
        /// Email address (any spelling of the mailbox); recorded even if it is not listed
        email: String,
    },
    /// Write every subscriber as CSV (email,name,status and the consent record), which
    /// `import` reads back
    ///
    /// A cell starting with =, +, - or @ is written with a leading ' so that a spreadsheet
    /// shows it as text instead of running it as a formula; `import` removes the '.
    Export {
        /// Write to this file instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write formula-like cells as they are (for tools other than spreadsheets)
        #[arg(long)]
        keep_formulas: bool,
    },
}

/// Runs one `subscribers` command against the configured state database.
pub fn run(cmd: SubscribersCommand, config: &Config) -> anyhow::Result<()> {
    if let SubscribersCommand::Add { email, name, .. } = &cmd {
        // Bad input is refused before a database is created for it.
        let email = parse_email(email)?;
        if let Some(n) = name {
            SubscriberName::parse(n)
                .map_err(|e| UserError::new(format!("invalid name for {email}: {e}")))?;
        }
    }
    if let SubscribersCommand::Import {
        file,
        dry_run: false,
        skip_invalid,
        resubscribe,
        allow_erased,
    } = &cmd
    {
        if !config.database_path().exists() {
            let options = ImportOptions {
                dry_run: false,
                skip_invalid: *skip_invalid,
                resubscribe: *resubscribe,
                allow_erased: *allow_erased,
            };
            return first_import(config, file, options);
        }
    }
    let mut conn = open_for(&cmd, config)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = match cmd {
        SubscribersCommand::Add {
            email,
            name,
            allow_erased,
        } => {
            if let Err(e) = refuse_erased(&conn, &email, allow_erased) {
                Err(e)
            } else {
                run_add(&conn, &mut out, &email, name.as_deref())
            }
        }
        SubscribersCommand::Show { email } => run_show(&conn, &mut out, &email),
        SubscribersCommand::Erase { email } => run_erase(&conn, &mut out, &email),
        SubscribersCommand::Remove { email } => run_remove(&conn, &mut out, &email),
        SubscribersCommand::Unsubscribe { email } => {
            run_set_status(&conn, &mut out, &email, SubscriberStatus::Unsubscribed)
        }
        SubscribersCommand::Resubscribe {
            email: Some(email), ..
        } => run_set_status(&conn, &mut out, &email, SubscriberStatus::Active),
        SubscribersCommand::Resubscribe {
            email: None,
            bounced_since,
            dry_run,
        } => {
            let since = bounced_since.expect("clap requires an address or --bounced-since");
            run_unbounce(&conn, &mut out, since, dry_run)
        }
        SubscribersCommand::List { status, format } => run_list(&conn, &mut out, status, format),
        SubscribersCommand::Count => run_count(&conn, &mut out),
        SubscribersCommand::Import {
            file,
            dry_run,
            skip_invalid,
            resubscribe,
            allow_erased,
        } => {
            let options = ImportOptions {
                dry_run,
                skip_invalid,
                resubscribe,
                allow_erased,
            };
            run_import(&mut conn, &mut out, &file, options)
        }
        SubscribersCommand::Export {
            out: Some(path),
            keep_formulas,
        } => run_export_to_file(&conn, &mut out, &path, keep_formulas),
        SubscribersCommand::Export {
            out: None,
            keep_formulas,
        } => export_csv(&conn, &mut out, keep_formulas)
            .map(drop)
            .map_err(anyhow::Error::from),
    };
    match result.and_then(|()| out.flush().map_err(anyhow::Error::from)) {
        // `verdicts subscribers list | head` is not a failure.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// The database a command works on. Adding and importing create it when there is none
/// (saying so on stderr): the explicit act that starts a list. Other changes need the
/// existing one, intact. Reading from a database that does not exist yet shows an empty
/// list, with a note naming the path.
fn open_for(cmd: &SubscribersCommand, config: &Config) -> anyhow::Result<Connection> {
    let path = config.database_path();
    let writes = match cmd {
        SubscribersCommand::Add { .. } | SubscribersCommand::Import { dry_run: false, .. } => {
            let (conn, opened) = store::create(&path)?;
            if opened == store::Opened::Created {
                eprintln!("Created a new state database at {}.", path.display());
                return Ok(conn);
            }
            conn
        }
        SubscribersCommand::Remove { .. }
        | SubscribersCommand::Erase { .. }
        | SubscribersCommand::Show { .. }
        | SubscribersCommand::Unsubscribe { .. }
        | SubscribersCommand::Resubscribe { .. } => store::open(&path)?,
        SubscribersCommand::List { .. }
        | SubscribersCommand::Count
        | SubscribersCommand::Export { .. }
        | SubscribersCommand::Import { dry_run: true, .. } => {
            return match store::open(&path) {
                Ok(conn) => Ok(conn),
                Err(e) if e.is_missing() => {
                    eprintln!(
                        "No state database at {} yet: no subscribers.",
                        path.display()
                    );
                    Ok(store::empty_in_memory()?)
                }
                Err(e) => Err(e.into()),
            };
        }
    };
    // Writing into a damaged list would bury the damage under new pages. The check reads
    // the list's tables, not the ledger's history (the daemon and every send check that).
    store::health::quick_check_tables(&writes, &path, store::health::LIST_TABLES)?;
    Ok(writes)
}

/// An import that starts a list: it fills a new database that is put in place only when
/// the import succeeds, so a refused file leaves no database behind.
fn first_import(config: &Config, file: &Path, options: ImportOptions) -> anyhow::Result<()> {
    let path = config.database_path();
    let mut fresh = store::Fresh::build(&path)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    run_import(fresh.conn(), &mut out, file, options)?;
    match fresh.publish()? {
        store::Opened::Created => {
            out.flush()?;
            eprintln!("Created a new state database at {}.", path.display());
            Ok(())
        }
        store::Opened::Existing => Err(UserError::new(format!(
            "another process created {} while this import ran; nothing was imported. Run the import again",
            path.display()
        ))
        .into()),
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
                SubscriberStatus::Pending => {
                    "; they signed up and have not confirmed yet; `subscribers resubscribe` \
                     activates them without confirmation"
                }
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

/// `subscribers add` of an erased address: refused, naming it and the reason, unless the
/// operator passed `--allow-erased` (then the erasure record goes: the reader is back).
fn refuse_erased(conn: &Connection, email: &str, allow: bool) -> anyhow::Result<()> {
    let parsed = parse_email(email)?;
    match store::privacy::is_erased(conn, &parsed)? {
        Some(erased) if !allow => {
            Err(UserError::new(store::privacy::refusal(parsed.as_str(), &erased)).into())
        }
        Some(_) => Ok(store::privacy::forget_erasure(conn, &parsed)?),
        None => Ok(()),
    }
}

fn run_show(conn: &Connection, out: &mut impl Write, email: &str) -> anyhow::Result<()> {
    let parsed = parse_email(email)?;
    let Some(record) = store::privacy::show(conn, &parsed)? else {
        if let Some(erased) = store::privacy::is_erased(conn, &parsed)? {
            return Err(UserError::new(format!(
                "no subscriber has the address {parsed}; it was erased on {} and only a salted hash of it is kept",
                erased.at.format("%Y-%m-%d")
            ))
            .into());
        }
        return Err(not_listed(&parsed));
    };
    serde_json::to_writer_pretty(&mut *out, &record)?;
    writeln!(out)?;
    Ok(())
}

fn run_erase(conn: &Connection, out: &mut impl Write, email: &str) -> anyhow::Result<()> {
    let erased = store::privacy::erase(conn, email, store::privacy::Reason::Request).map_err(
        |e| match e {
            store::privacy::EraseError::BadAddress { .. } => {
                anyhow::Error::from(UserError::new(e.to_string()))
            }
            other => other.into(),
        },
    )?;
    match erased.subscriber {
        Some(_) => writeln!(
            out,
            "erased {email}: the subscriber, {} deliver{} and {} event{}; issue totals are unchanged, and the address will be refused by import, signup and add",
            erased.deliveries,
            if erased.deliveries == 1 { "y" } else { "ies" },
            erased.events,
            if erased.events == 1 { "" } else { "s" },
        )?,
        None if erased.already_erased => {
            writeln!(out, "{email} was already erased; nothing changed")?
        }
        None => writeln!(
            out,
            "{email} is not on the list; recorded as erased so import, signup and add refuse it"
        )?,
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
    if status == SubscriberStatus::Unsubscribed {
        if let Some(s) = find(conn, &email)?.filter(|s| s.status == SubscriberStatus::Active) {
            // Through the event path, like every other door out: the unsubscribe is in the
            // reader's record and the operator's webhooks hear of it.
            use store::events::{record, Channel, EventKind, Hygiene, NewEvent, Source};
            let event = NewEvent {
                subscriber_id: s.id,
                issue: None,
                kind: EventKind::Unsubscribe(Channel::Cli),
                source: Source::Cli,
                status: None,
                diagnostic: None,
            };
            record(conn, &event, Hygiene::default())?;
            writeln!(out, "unsubscribed {} (was active)", s.email)?;
            return Ok(());
        }
    }
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
                SubscriberStatus::Pending => "marked as pending",
            };
            writeln!(out, "{verb} {} (was {from})", subscriber.email)?;
        }
    }
    Ok(())
}

fn run_unbounce(
    conn: &Connection,
    out: &mut impl Write,
    since: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let found = resubscribe_bounced_since(conn, since, dry_run)?;
    let since = since.format("%Y-%m-%d %H:%M UTC");
    if found.is_empty() {
        writeln!(
            out,
            "No subscriber has bounced since {since}; nothing changed."
        )?;
        return Ok(());
    }
    for u in &found {
        let why = u.diagnostic.as_deref().unwrap_or("no reason recorded");
        writeln!(out, "{}\tbounced {}\t{}", u.email, u.bounced_at, why)?;
    }
    let n = found.len();
    let readers = if n == 1 { "subscriber" } else { "subscribers" };
    if dry_run {
        writeln!(
            out,
            "Would resubscribe {n} {readers} bounced since {since} (dry run: nothing changed)."
        )?;
    } else {
        writeln!(out, "Resubscribed {n} {readers} bounced since {since}.")?;
    }
    Ok(())
}

fn run_count(conn: &Connection, out: &mut impl Write) -> anyhow::Result<()> {
    let counts = count_by_status(conn)?;
    for status in SubscriberStatus::ALL {
        // A list that takes no signups never has pending subscribers; keep its count short.
        if status == SubscriberStatus::Pending && counts.pending == 0 {
            continue;
        }
        writeln!(out, "{:<12}  {:>9}", status.as_str(), counts.get(status))?;
    }
    writeln!(out, "{:<12}  {:>9}", "total", counts.total())?;
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

fn run_export_to_file(
    conn: &Connection,
    out: &mut impl Write,
    path: &Path,
    keep_formulas: bool,
) -> anyhow::Result<()> {
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
    let written = export_csv(conn, BufWriter::new(&file), keep_formulas).and_then(|n| {
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
