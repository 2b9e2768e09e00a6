//! `verdicts issues`: the history of issues, one issue's deliveries, and re-queueing
//! failed deliveries.

use super::describe_slot;
use super::runtime;
use crate::cli::IssuesCommand;
use crate::config::Config;
use crate::error::user_error;
use crate::error::Resumable;
use crate::issue;
use crate::store::events::{self, IssueEvents};
use crate::store::ledger::{self, IssueState};
use crate::store::unattributed;

/// Above this complaint rate Gmail starts filtering bulk mail (it asks senders to stay
/// below 0.1% and never reach 0.3%).
const COMPLAINT_WARNING: f64 = 0.001;
/// Above this bounce rate the list is stale enough to hurt the sender's reputation.
const BOUNCE_WARNING: f64 = 0.02;

fn percent(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

/// `bounces 1.00% (2 hard, 0 soft), complaints 0.00%, unsubscribes 0.50%`
fn rates_line(e: &IssueEvents) -> String {
    format!(
        "bounces {:.2}% ({} hard, {} soft), complaints {:.2}%, unsubscribes {:.2}%",
        100.0 * percent(e.bounces(), e.attempted),
        e.hard_bounces,
        e.soft_bounces,
        100.0 * percent(e.complaints, e.delivered),
        100.0 * percent(e.unsubscribes(), e.delivered),
    )
}

/// What the issue did to the list: bounce rate over the deliveries attempted, complaint
/// and unsubscribe rates over those accepted.
fn print_readers(e: &IssueEvents) {
    let bounce_rate = percent(e.bounces(), e.attempted);
    let complaint_rate = percent(e.complaints, e.delivered);
    println!("Delivered:   {} of {} attempted", e.delivered, e.attempted);
    println!(
        "Bounces:     {} ({:.2}%): {} hard, {} soft",
        e.bounces(),
        100.0 * bounce_rate,
        e.hard_bounces,
        e.soft_bounces
    );
    println!(
        "Complaints:  {} ({:.2}%)",
        e.complaints,
        100.0 * complaint_rate
    );
    println!(
        "Unsubscribes: {} ({:.2}%): {} one-click, {} page, {} mailto{}",
        e.unsubscribes(),
        100.0 * percent(e.unsubscribes(), e.delivered),
        e.one_click,
        e.page,
        e.mailto,
        if e.other_unsubscribes > 0 {
            format!(", {} other", e.other_unsubscribes)
        } else {
            String::new()
        }
    );
    if complaint_rate > COMPLAINT_WARNING {
        println!(
            "warning: the complaint rate {:.2}% is over 0.1%; Gmail filters bulk senders above it and asks them never to reach 0.3%",
            100.0 * complaint_rate
        );
    }
    if bounce_rate > BOUNCE_WARNING {
        println!(
            "warning: the bounce rate {:.2}% is over 2%; the list holds dead addresses (were they imported from an old export?)",
            100.0 * bounce_rate
        );
    }
}

/// What readers did with the issue's links and votes (shown once anything was recorded):
/// people only, with what machines did counted apart.
fn print_tracking(f: &crate::store::tracking::IssueFigures, e: &IssueEvents) {
    if f.human_clicks + f.machine_clicks + f.votes + f.opens == 0 {
        return;
    }
    println!(
        "Human clickers: {} ({:.1}% of {} delivered)",
        f.human_clickers,
        100.0 * percent(f.human_clickers, e.delivered),
        e.delivered
    );
    if !f.per_comparison.is_empty() {
        println!("Clicks per comparison (human clickers):");
        for (slug, n) in &f.per_comparison {
            println!("  {slug}  {n}");
        }
    }
    println!("Votes:       {}", f.votes);
    println!("Machine clicks filtered: {}", f.machine_clicks);
    if f.opens > 0 {
        println!("Opens:       {} (machine opens likely)", f.opens);
    }
}

/// The state shown for an issue: the ledger's, except that an issue still marked `sending`
/// while no sender runs was stopped (Ctrl-C, a crash) and is shown as `interrupted`.
/// Which relay took how many of the issue's messages: shown when several relays are
/// configured or took part.
fn print_relays(
    config: &Config,
    conn: &rusqlite::Connection,
    number: crate::store::IssueNumber,
) -> anyhow::Result<()> {
    let tallies = crate::store::relays::per_issue(conn, number)?;
    if tallies.len() < 2 && config.fallbacks.is_empty() {
        return Ok(());
    }
    if tallies.is_empty() && ledger::compacted_at(conn, number)?.is_some() {
        // Compacted before the shares were kept (schema 17): nothing is known any more.
        return Ok(());
    }
    let parts: Vec<String> = tallies
        .iter()
        .map(|t| {
            let mut part = format!("{}: {} sent", t.relay, t.sent);
            if t.not_sent > 0 {
                part.push_str(&format!(", {} not sent", t.not_sent));
            }
            part
        })
        .collect();
    println!(
        "Relays:      {}",
        if parts.is_empty() {
            "none used yet".to_owned()
        } else {
            parts.join("; ")
        }
    );
    Ok(())
}

fn state_label(config: &Config, state: IssueState) -> &'static str {
    if state == IssueState::Sending && !crate::store::lock::sender_running(&config.state_dir) {
        "interrupted"
    } else {
        state.as_str()
    }
}

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
                "{:>4}  {:<22}  {:<11}  {:>7}  {:>6}  {:>7}  {:>7}  {:>5}  subject",
                "#", "slot (UTC)", "state", "sent", "failed", "pending", "skipped", "items"
            );
            let clickers = crate::store::tracking::clickers_by_issue(&conn)?;
            for issue in issues {
                let c = ledger::delivery_counts(&conn, issue.number)?;
                println!(
                    "{:>4}  {:<22}  {:<11}  {:>7}  {:>6}  {:>7}  {:>7}  {:>5}  {}",
                    issue.number,
                    issue.slot.format("%a %Y-%m-%d %H:%M"),
                    state_label(config, issue.state),
                    c.sent,
                    c.failed,
                    c.outstanding(),
                    c.skipped,
                    issue.slugs.len(),
                    issue.subject
                );
                let e = events::issue_events(&conn, issue.number)?;
                if e.bounces() + e.complaints + e.unsubscribes() > 0 {
                    println!("{:>6}{}", "", rates_line(&e));
                }
                if let Some(&n) = clickers.get(&issue.number) {
                    println!(
                        "{:>6}human clickers {n}, CTR {:.1}%",
                        "",
                        100.0 * percent(n, e.delivered)
                    );
                }
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
            let state = state_label(config, issue.state);
            match state {
                "interrupted" => println!(
                    "State:       interrupted (no sender is running; `verdicts send --at {}` or the daemon resumes it)",
                    issue.slot.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                "paused" => println!(
                    "State:       paused (the relay could not be reached or refused the sender; `verdicts send --at {}` or the daemon resumes it)",
                    issue.slot.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                other => println!("State:       {other}"),
            }
            println!("Comparisons: {}", issue.slugs.join(", "));
            println!(
                "Deliveries:  {} total: {} sent, {} failed, {} pending ({} not yet tried), {} sending, {} skipped",
                c.total(),
                c.sent,
                c.failed,
                c.pending,
                c.untried,
                c.sending,
                c.skipped
            );
            print_relays(config, &conn, number)?;
            let e = events::issue_events(&conn, number)?;
            if e.attempted > 0 {
                print_readers(&e);
            }
            print_tracking(&crate::store::tracking::issue_figures(&conn, number)?, &e);
            let unattributed = unattributed::count_for_issue(&conn, number)?;
            if unattributed > 0 {
                println!(
                    "Unattributed: {unattributed} report{} not applied (no signed tag or Message-ID): see `verdicts inbound --unattributed`",
                    if unattributed == 1 { "" } else { "s" }
                );
            }
            if let Some(at) = ledger::compacted_at(&conn, number)? {
                if c.failed > 0 {
                    println!(
                        "Failed recipients: {} (their detail was compacted on {}, after the retention window; the counts above are exact)",
                        c.failed,
                        at.format("%Y-%m-%d")
                    );
                } else {
                    println!(
                        "Per-recipient detail was compacted on {}, after the retention window; the counts above are exact.",
                        at.format("%Y-%m-%d")
                    );
                }
                return Ok(());
            }
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
            if let Some(at) = ledger::compacted_at(&conn, number)? {
                return user_error(format!(
                    "issue {number}'s per-recipient detail was compacted on {} (it is older than `retention.deliveries`), so there is no failed delivery left to retry; its totals are kept (`verdicts issues show {number}`)",
                    at.format("%Y-%m-%d")
                ));
            }
            runtime::lower_priority(config);
            let requeued =
                runtime::block_on_until_signal(runtime::send_workers(config), |stop| async {
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
