//! `verdicts send`: create or resume the slot's issue and deliver it, or with `--dry-run`
//! write every recipient's exact message to files.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{deliverability, describe_slot};
use crate::address::SubscriberEmail;
use crate::config::Config;
use crate::content;
use crate::error::{user_error, UserError};
use crate::issue::{self, test_send, EmptyWeek, Prepared};
use crate::ledger;
use crate::lock::{IfBusy, SenderLock};
use crate::message::{IssueMessages, Recipient};
use crate::render;
use crate::sender::Finish;

pub fn send(config: &Config, at: DateTime<Utc>, yes: bool, force: bool) -> anyhow::Result<()> {
    let comparisons = content::load_dir(&config.content_dir)?;
    let key = issue::token_key(config)?;
    let password = issue::smtp_password(config)?;
    let dkim = crate::dkim::load(config)?;
    let Some(slot) = config.schedule.slots.slot_at_or_before(at) else {
        return user_error(format!("the schedule has no slot at or before {at}"));
    };
    let conn = crate::db::open(&config.database_path())?;

    if let Some(digest) = issue::pending_digest(config, &conn, &comparisons, slot)? {
        deliverability::check_before_sending(config, &digest, dkim.as_ref(), force)?;
    }
    if ledger::issue_by_slot(&conn, slot)?.is_none() {
        let (_, selected) = issue::plan(&conn, &comparisons, slot)?;
        if !selected.is_empty() && !yes {
            let active: u64 = conn.query_row(
                "SELECT count(*) FROM subscribers WHERE status = 'active'",
                [],
                |r| r.get(0),
            )?;
            confirm(&format!(
                "Send the issue for {} ({} comparison{}: \"{}\") to {active} active subscriber{}?",
                describe_slot(config, slot),
                selected.len(),
                if selected.len() == 1 { "" } else { "s" },
                render::subject(&selected),
                if active == 1 { "" } else { "s" },
            ))?;
        }
    }
    // Taken after the question, so an unanswered prompt never holds up the daemon; from
    // here on, finding or creating the slot's issue and delivering it is one sender's job.
    let _lock = SenderLock::acquire(&config.state_dir, IfBusy::Wait)?;

    let issue = match issue::prepare(config, &conn, &comparisons, slot, EmptyWeek::Leave)? {
        Prepared::Complete { issue } => {
            let c = ledger::delivery_counts(&conn, issue.number)?;
            println!(
                "Issue {} for {} was already sent ({} sent, {} failed, {} skipped). Nothing to send.",
                issue.number,
                describe_slot(config, issue.slot),
                c.sent,
                c.failed,
                c.skipped
            );
            return Ok(());
        }
        Prepared::Skipped { issue } => {
            println!(
                "The slot {} was recorded as an empty week (issue {}). Nothing to send.",
                describe_slot(config, issue.slot),
                issue.number
            );
            return Ok(());
        }
        Prepared::Empty { window, .. } => {
            println!(
                "No new comparisons for {} (published after {} and at or before {}). Nothing to send.",
                describe_slot(config, slot),
                window.after.format("%Y-%m-%d %H:%M UTC"),
                window.cutoff.format("%Y-%m-%d %H:%M UTC"),
            );
            return Ok(());
        }
        Prepared::Ready { issue, created } => {
            let c = ledger::delivery_counts(&conn, issue.number)?;
            if created {
                println!(
                    "Created issue {} for {}: \"{}\", {} recipients.",
                    issue.number,
                    describe_slot(config, issue.slot),
                    issue.subject,
                    c.total()
                );
            } else {
                println!(
                    "Resuming issue {} for {}: {} of {} already sent, {} to go.",
                    issue.number,
                    describe_slot(config, issue.slot),
                    c.sent,
                    c.total(),
                    c.outstanding()
                );
            }
            issue
        }
    };
    drop(conn);

    // One async worker thread is enough to keep the SMTP sessions busy and measurably
    // faster than two on a small machine (fewer cross-thread wake-ups, more CPU left to the
    // mail server); CPU-heavy DKIM signing goes to blocking threads anyway.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            super::shutdown_signal().await;
            tracing::warn!("stopping: finishing the messages in flight");
            let _ = stop_tx.send(true);
        });
        let bar = std::io::stderr().is_terminal();
        issue::deliver(config, &issue, key, password, bar, stop_rx).await
    })?;
    println!("{}", issue::summary_line(issue.number, &report));
    match report.finish {
        Finish::Complete => Ok(()),
        Finish::Paused { reason } => anyhow::bail!(
            "issue {} paused: {reason}. Nothing is lost: run `verdicts send --at {}` again when the server is back",
            issue.number,
            issue.slot.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        Finish::Interrupted => anyhow::bail!(
            "interrupted; issue {} is resumable with `verdicts send --at {}`",
            issue.number,
            issue.slot.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    }
}

fn confirm(question: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return user_error(format!(
            "{question}\nRefusing to send without confirmation: pass --yes to send non-interactively"
        ));
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(UserError::new("not sent").into())
    }
}

/// Writes each active subscriber's exact message for the slot's issue to `out`.
pub fn dry_run(config: &Config, at: DateTime<Utc>, out: &Path, force: bool) -> anyhow::Result<()> {
    let comparisons = content::load_dir(&config.content_dir)?;
    let key = issue::token_key(config)?;
    let dkim = crate::dkim::load(config)?;
    let Some(slot) = config.schedule.slots.slot_at_or_before(at) else {
        return user_error(format!("the schedule has no slot at or before {at}"));
    };
    let conn = crate::db::open(&config.database_path())?;
    let (number, digest) = match ledger::issue_by_slot(&conn, slot)? {
        Some(existing) => (
            existing.number,
            ledger::stored_digest(&conn, existing.number)?,
        ),
        None => {
            let (_, selected) = issue::plan(&conn, &comparisons, slot)?;
            if selected.is_empty() {
                println!(
                    "No new comparisons for {}. Nothing would be sent.",
                    describe_slot(config, slot)
                );
                return Ok(());
            }
            let next = ledger::next_issue_number(&conn)?;
            let digest = render::render_issue(config, &selected, slot)?;
            (next, digest)
        }
    };
    let messages =
        IssueMessages::new(&config.newsletter, number, slot, &digest, key).with_dkim(dkim.clone());
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let mut stmt = conn
        .prepare("SELECT id, email, name FROM subscribers WHERE status = 'active' ORDER BY id")?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    let mut bytes = 0u64;
    // One recipient whose message cannot be built must not cost the others theirs: each
    // failure is listed at the end instead.
    let mut unbuilt: Vec<(String, String)> = Vec::new();
    let mut needs_utf8 = 0u64;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let email: String = row.get(1)?;
        let built = email
            .parse::<lettre::Address>()
            .map_err(|e| format!("the stored address is invalid: {e}"))
            .and_then(|address| {
                let recipient = Recipient {
                    subscriber_id: id,
                    email: address,
                    name: row.get(2).ok().flatten(),
                };
                if !recipient.email.user().is_ascii() {
                    needs_utf8 += 1;
                }
                messages.build(&recipient).map_err(|e| e.to_string())
            });
        let raw = match built {
            Ok(message) => message.formatted(),
            Err(reason) => {
                unbuilt.push((email, reason));
                continue;
            }
        };
        n += 1;
        bytes += raw.len() as u64;
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
        let path = out.join(format!("{n}-{safe}.eml"));
        std::fs::write(&path, raw).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "Dry run of issue {number} for {}: \"{}\". Wrote {n} messages ({:.1} KB) to {}. Nothing was sent and the ledger is unchanged.",
        describe_slot(config, slot),
        digest.subject,
        bytes as f64 / 1024.0,
        out.display()
    );
    if needs_utf8 > 0 {
        println!(
            "{needs_utf8} of them {} a non-ASCII local part: only a server offering SMTPUTF8 can deliver {}; another server fails {} permanently.",
            if needs_utf8 == 1 { "has" } else { "have" },
            if needs_utf8 == 1 { "it" } else { "them" },
            if needs_utf8 == 1 { "it" } else { "them" },
        );
    }
    if !unbuilt.is_empty() {
        eprintln!(
            "Could not build {} message{}:",
            unbuilt.len(),
            if unbuilt.len() == 1 { "" } else { "s" }
        );
        for (email, reason) in &unbuilt {
            eprintln!("  {email}: {reason}");
        }
    }
    deliverability::check_preview(config, &digest, dkim.as_ref(), force)?;
    if !unbuilt.is_empty() {
        return user_error(format!(
            "{} of {} messages could not be built (listed above); the other {n} were written",
            unbuilt.len(),
            unbuilt.len() as u64 + n
        ));
    }
    Ok(())
}

/// `send --test ADDR…`: the issue of the slot at or before `at` (without `at`, the one
/// `preview` shows) to the given addresses only; nothing is recorded.
pub fn test(
    config: &Config,
    at: Option<DateTime<Utc>>,
    addresses: &[String],
    exact: bool,
) -> anyhow::Result<()> {
    let mut to = Vec::new();
    let mut bad = Vec::new();
    for a in addresses {
        match SubscriberEmail::parse(a) {
            Ok(email) => to.push(email),
            Err(e) => bad.push(format!("--test {e}")),
        }
    }
    if !bad.is_empty() {
        return user_error(bad.join("\n"));
    }
    let key = issue::token_key(config)?;
    let password = issue::smtp_password(config)?;
    let comparisons = content::load_dir(&config.content_dir)?;
    // Read the ledger when there is one, never create it.
    let conn = if config.database_path().exists() {
        Some(crate::db::open(&config.database_path())?)
    } else {
        None
    };
    let plan = match at {
        Some(at) => super::plan_issue(config, conn.as_ref(), &comparisons, at)?,
        None => {
            let next = config
                .schedule
                .slots
                .next_after(Utc::now())
                .unwrap_or_else(Utc::now);
            super::plan_preview(config, &comparisons, next)?
        }
    };
    let Some(copy) = test_send::issue_for(config, conn.as_ref(), plan.slot, &plan.comparisons)?
    else {
        return user_error(format!(
            "the issue for {} has nothing to send; pass --at for a week with new comparisons",
            describe_slot(config, plan.slot)
        ));
    };
    drop(conn);
    println!(
        "Test copy of issue {}{} for {}: \"{}{}\", to {} address{}.",
        copy.number,
        if copy.stored {
            ""
        } else {
            " (not created yet)"
        },
        describe_slot(config, copy.slot),
        if exact { "" } else { "[TEST] " },
        copy.digest.subject,
        to.len(),
        if to.len() == 1 { "" } else { "es" },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = runtime.block_on(test_send::send(config, &copy, &to, exact, key, password))?;
    let mut failed = 0;
    for r in &results {
        match &r.outcome {
            Ok(reply) => println!("  {}: accepted ({reply})", r.address),
            Err(reason) => {
                failed += 1;
                println!("  {}: NOT sent: {reason}", r.address);
            }
        }
    }
    println!("Nothing was recorded: the ledger and the subscriber list are unchanged.");
    if failed > 0 {
        return user_error(format!(
            "{failed} of {} test copies were not accepted (listed above)",
            results.len()
        ));
    }
    Ok(())
}
