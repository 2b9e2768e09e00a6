//! `verdicts issues`: the history of issues, one issue's deliveries, and re-queueing
//! failed deliveries.

use super::describe_slot;
use super::runtime;
use crate::cli::IssuesCommand;
use crate::config::Config;
use crate::error::user_error;
use crate::error::Resumable;
use crate::issue;
use crate::store::ledger::{self, IssueState};

pub fn run(config: &Config, command: Option<IssuesCommand>) -> anyhow::Result<()> {
    let conn = crate::store::open(&config.database_path())?;
    match command.unwrap_or(IssuesCommand::List) {
        IssuesCommand::List => {
            let issues = ledger::issues(&conn)?;
            if issues.is_empty() {
                println!("No issues yet.");
                return Ok(());
            }
            println!(
                "{:>4}  {:<22}  {:<8}  {:>7}  {:>6}  {:>7}  {:>7}  {:>5}  subject",
                "#", "slot (UTC)", "state", "sent", "failed", "pending", "skipped", "items"
            );
            for issue in issues {
                let c = ledger::delivery_counts(&conn, issue.number)?;
                println!(
                    "{:>4}  {:<22}  {:<8}  {:>7}  {:>6}  {:>7}  {:>7}  {:>5}  {}",
                    issue.number,
                    issue.slot.format("%a %Y-%m-%d %H:%M"),
                    issue.state.as_str(),
                    c.sent,
                    c.failed,
                    c.outstanding(),
                    c.skipped,
                    issue.slugs.len(),
                    issue.subject
                );
            }
        }
        IssuesCommand::Show { number } => {
            let Some(issue) = ledger::issue(&conn, number)? else {
                return user_error(format!(
                    "there is no issue {number} (see `verdicts issues`)"
                ));
            };
            let c = ledger::delivery_counts(&conn, number)?;
            println!("Issue {}: {}", issue.number, issue.subject);
            println!("Slot:        {}", describe_slot(config, issue.slot));
            println!(
                "Window:      after {} up to {}",
                issue.window_after.format("%Y-%m-%d %H:%M UTC"),
                issue.cutoff.format("%Y-%m-%d %H:%M UTC")
            );
            println!("State:       {}", issue.state.as_str());
            println!("Comparisons: {}", issue.slugs.join(", "));
            println!(
                "Deliveries:  {} total: {} sent, {} failed, {} pending, {} sending, {} skipped",
                c.total(),
                c.sent,
                c.failed,
                c.pending,
                c.sending,
                c.skipped
            );
            let failed = ledger::failed_deliveries(&conn, number)?;
            if !failed.is_empty() {
                println!("Failed recipients:");
                for f in failed {
                    println!(
                        "  {}  {} after {} attempt{} (subscriber {}): {}",
                        f.email,
                        if f.permanent {
                            "permanent"
                        } else {
                            "temporary"
                        },
                        f.attempts,
                        if f.attempts == 1 { "" } else { "s" },
                        f.subscriber_status,
                        f.last_reply.as_deref().unwrap_or("no reply")
                    );
                }
            }
        }
        IssuesCommand::Retry { number } => {
            let Some(issue) = ledger::issue(&conn, number)? else {
                return user_error(format!(
                    "there is no issue {number} (see `verdicts issues`)"
                ));
            };
            if issue.state == IssueState::Skipped {
                return user_error(format!(
                    "issue {number} is an empty week; it has no deliveries"
                ));
            }
            let requeued = runtime::block_on_until_signal(Some(1), |stop| async {
                issue::requeue_failed(config, number, stop, &mut |e| {
                    super::send::print_event(config, e)
                })
                .await
            })?;
            let Some(n) = requeued else {
                return Err(Resumable(format!(
                    "stopped while waiting for another sender; nothing was re-queued in issue {number}"
                ))
                .into());
            };
            if n == 0 {
                println!(
                    "Issue {number} has no failed delivery to a subscriber who is still active. Nothing re-queued."
                );
            } else {
                println!(
                    "Re-queued {n} failed deliveries of issue {number}. Deliver them with `verdicts send --at {} --yes`.",
                    issue.slot.format("%Y-%m-%dT%H:%M:%SZ")
                );
            }
        }
    }
    Ok(())
}
