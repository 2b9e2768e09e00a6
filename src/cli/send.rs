//! `verdicts send`: create or resume the slot's issue and deliver it, or with `--dry-run`
//! write every recipient's exact message to files. Both go through [`crate::issue`]; this
//! file only asks, prints and maps the outcome to an exit code.

use std::io::{IsTerminal, Write};
use std::path::Path;

use chrono::{DateTime, Utc};

use super::{deliverability, describe_slot, runtime};
use crate::config::Config;
use crate::content;
use crate::delivery::Finish;
use crate::error::{user_error, Resumable, UserError};
use crate::issue::{self, Confirm, Confirmation, Dispatcher, EmptyWeek, Event, Outcome};
use crate::mail::address::SubscriberEmail;

/// The slot at or before `at`, or a user error.
pub(super) fn slot_at_or_before(
    config: &Config,
    at: DateTime<Utc>,
) -> anyhow::Result<DateTime<Utc>> {
    match config.schedule.slots.slot_at_or_before(at) {
        Some(slot) => Ok(slot),
        None => user_error(format!("the schedule has no slot at or before {at}")),
    }
}

pub fn send(
    config: &Config,
    at: DateTime<Utc>,
    yes: bool,
    force: bool,
    allow_empty: bool,
) -> anyhow::Result<()> {
    let comparisons = content::load_dir(&config.content_dir)?;
    let dispatcher = Dispatcher::for_sending(config)?.allow_empty(allow_empty);
    let slot = slot_at_or_before(config, at)?;
    let ask = |c: &Confirmation<'_>| confirm(config, c);
    let prepared = match dispatcher.prepare(
        &comparisons,
        slot,
        EmptyWeek::Leave,
        force,
        (!yes).then_some(&ask as Confirm<'_>),
        &mut |e| print_event(config, e),
    )? {
        Ok(prepared) => prepared,
        Err(refused) => return Err(UserError::new(refused.to_string()).into()),
    };
    let bar = std::io::stderr().is_terminal();
    runtime::lower_priority(config);
    let outcome = runtime::block_on_until_signal(runtime::send_workers(config), |stop| async {
        dispatcher
            .execute(prepared, false, bar, stop, &mut |e| print_event(config, e))
            .await
    })?;
    finish(config, slot, outcome)
}

/// Maps how a send ended to the exit status: 0 done, 75 resumable.
pub(super) fn finish(config: &Config, slot: DateTime<Utc>, outcome: Outcome) -> anyhow::Result<()> {
    let again = format!("verdicts send --at {}", slot.format("%Y-%m-%dT%H:%M:%SZ"));
    match outcome {
        Outcome::NothingToSend => Ok(()),
        Outcome::Refused(refused) => Err(UserError::new(refused.to_string()).into()),
        Outcome::Stopped => Err(Resumable(format!(
            "stopped while waiting for another sender; nothing was sent. Run `{again}` again"
        ))
        .into()),
        Outcome::Delivered { issue, report } => match report.finish {
            Finish::Complete if report.sent == 0 && report.failed > 0 => anyhow::bail!(
                "issue {} sent nothing: {} {} failed for good (`verdicts issues show {}` lists them with the server's replies)",
                issue.number,
                report.failed,
                if report.failed == 1 { "delivery" } else { "deliveries" },
                issue.number
            ),
            Finish::Complete => Ok(()),
            Finish::Paused { reason } => Err(Resumable(format!(
                "issue {} paused: {reason}. Nothing is lost: run `{again}` again later (the daemon resumes paused issues by itself)",
                issue.number
            ))
            .into()),
            Finish::Interrupted => Err(Resumable(format!(
                "interrupted; issue {} for {} is resumable with `{again}`",
                issue.number,
                describe_slot(config, issue.slot)
            ))
            .into()),
        },
    }
}

/// Prints a send's progress for the operator.
pub(super) fn print_event(config: &Config, event: Event<'_>) {
    match event {
        Event::Findings { findings, dkim } => {
            deliverability::print_findings(config, dkim, findings)
        }
        Event::WaitingForLock => eprintln!(
            "Another verdicts process is sending with this database; waiting for it to finish…"
        ),
        Event::AlreadySent { issue, counts } => println!(
            "Issue {} for {} was already sent ({} sent, {} failed, {} skipped). Nothing to send.",
            issue.number,
            describe_slot(config, issue.slot),
            counts.sent,
            counts.failed,
            counts.skipped
        ),
        Event::SkippedWeek { issue } => println!(
            "The slot {} was recorded as an empty week (issue {}). Nothing to send.",
            describe_slot(config, issue.slot),
            issue.number
        ),
        Event::Empty { slot, window, .. } => println!(
            "No new comparisons for {} (published after {} and at or before {}). Nothing to send.",
            describe_slot(config, slot),
            window.after.format("%Y-%m-%d %H:%M UTC"),
            window.cutoff.format("%Y-%m-%d %H:%M UTC"),
        ),
        Event::Created { issue, recipients } => println!(
            "Created issue {} for {}: \"{}\", {} recipients.",
            issue.number,
            describe_slot(config, issue.slot),
            issue.subject,
            recipients
        ),
        Event::Resuming { issue, counts } => println!(
            "Resuming issue {} for {}: {} of {} already sent, {} to go.",
            issue.number,
            describe_slot(config, issue.slot),
            counts.sent,
            counts.total(),
            counts.outstanding()
        ),
        Event::Finished { issue, report } => {
            println!("{}", issue::summary_line(issue.number, report))
        }
    }
}

fn confirm(config: &Config, c: &Confirmation<'_>) -> anyhow::Result<()> {
    let question = format!(
        "Send the issue for {} ({} comparison{}: \"{}\") to {} active subscriber{}?",
        describe_slot(config, c.slot),
        c.comparisons,
        if c.comparisons == 1 { "" } else { "s" },
        c.subject,
        c.recipients,
        if c.recipients == 1 { "" } else { "s" },
    );
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
    let dispatcher = Dispatcher::for_files(config)?;
    let slot = slot_at_or_before(config, at)?;
    let Some(run) = dispatcher.dry_run(&comparisons, slot, out)? else {
        println!(
            "No new comparisons for {}. Nothing would be sent.",
            describe_slot(config, slot)
        );
        return Ok(());
    };
    if run.removed > 0 {
        println!(
            "Removed {} from the previous dry run in {}.",
            plural(run.removed, "message", "messages"),
            out.display()
        );
    }
    println!(
        "Dry run of issue {} for {}: \"{}\". Wrote {} ({:.1} KB) to {}. Nothing was sent and the ledger is unchanged.",
        run.number,
        describe_slot(config, slot),
        run.digest.subject,
        plural(run.written, "message", "messages"),
        run.bytes as f64 / 1024.0,
        out.display()
    );
    if run.needs_smtputf8 > 0 {
        let n = run.needs_smtputf8;
        println!(
            "{n} of them {} a non-ASCII local part: only a server offering SMTPUTF8 can deliver {}; another server fails {} permanently.",
            if n == 1 { "has" } else { "have" },
            if n == 1 { "it" } else { "them" },
            if n == 1 { "it" } else { "them" },
        );
    }
    for (email, reason) in &run.unbuildable {
        println!("Could not build the message to {email}: {reason}");
    }
    deliverability::check_preview(config, &run.digest, dispatcher.dkim(), force)?;
    if !run.unbuildable.is_empty() {
        return user_error(format!(
            "{} of {} messages could not be built (listed above); `send` would fail them permanently",
            run.unbuildable.len(),
            run.unbuildable.len() as u64 + run.written
        ));
    }
    Ok(())
}

/// `send --test ADDR…`: the issue of the slot at or before `at` (without `at`, the issue
/// `preview` shows) to the given addresses only, as subscribers get it; nothing recorded.
pub fn test(
    config: &Config,
    slot: DateTime<Utc>,
    addresses: &[String],
    exact: bool,
) -> anyhow::Result<()> {
    let mut to = Vec::new();
    let mut bad = Vec::new();
    for a in addresses {
        match SubscriberEmail::parse(a) {
            Ok(email) => to.push(email),
            Err(e) => bad.push(format!("--test: {e}")),
        }
    }
    if !bad.is_empty() {
        return user_error(bad.join("\n"));
    }
    let comparisons = content::load_dir(&config.content_dir)?;
    let dispatcher = Dispatcher::for_sending(config)?;
    // Read the ledger when there is one; never create it.
    let conn = if config.database_path().exists() {
        Some(crate::store::open(&config.database_path())?)
    } else {
        None
    };
    let Some(copy) = dispatcher.test_issue(conn.as_ref(), &comparisons, slot)? else {
        return user_error(format!(
            "the issue for {} has nothing to send; pass --at for a week with new comparisons",
            describe_slot(config, slot)
        ));
    };
    drop(conn);
    // Shown, not enforced: looking at a flawed issue in real clients is what a test is for.
    let (findings, _) = dispatcher.gate(&copy.digest, true);
    if !findings.is_empty() {
        print_event(
            config,
            Event::Findings {
                findings: &findings,
                dkim: dispatcher.dkim(),
            },
        );
    }
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
    let results = runtime::block_on_until_signal(Some(1), |_stop| async {
        Ok(dispatcher.send_test(&copy, &to, exact).await)
    })?;
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

/// "1 message", "2 messages".
pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
