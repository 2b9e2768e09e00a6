//! The scheduled daemon: sleeps until each slot, sends its issue through the same path as
//! `verdicts send`, resumes interrupted issues, catches up a recently missed slot, and
//! refuses stale ones. The ledger keys issues by slot, so restarts, a second process or a
//! hand-run `send` can never produce a second issue for a slot.

pub mod maintenance;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::config::schedule::SlotSchedule;
use crate::config::{Config, OnEmpty};
use crate::content;
use crate::delivery::Finish;
use crate::issue::{self, Dispatcher, EmptyWeek, Event, Outcome};
use crate::store::{self, ledger};

/// The longest single sleep, so wall-clock jumps (suspend, NTP) are noticed within a minute.
const MAX_NAP: Duration = Duration::from_secs(60);
/// How often content files are looked at when the daemon keeps the site current.
const CONTENT_POLL: Duration = Duration::from_secs(2);
/// The shortest sleep, so a stuck condition can never spin the loop.
const MIN_NAP: Duration = Duration::from_millis(200);
/// First wait before retrying a paused issue; doubles up to `smtp.pause_max`.
const FIRST_PAUSE_RETRY: Duration = Duration::from_secs(30);

/// What to do about the most recent slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotDecision {
    /// Send (or resume) the slot's issue now.
    Send(DateTime<Utc>),
    /// Missed by more than `catch_up`: skip it, with a warning.
    Stale(DateTime<Utc>),
    /// The slot already has an issue (or the schedule has no past slot).
    Nothing,
}

/// Decides about the latest slot at or before `now`. `awaited` is the slot the daemon was
/// running and waiting for (always sent, however late the wake-up); any other slot without
/// an issue is a missed one, sent only if younger than `catch_up`.
pub fn decide(
    schedule: &SlotSchedule,
    now: DateTime<Utc>,
    catch_up: Duration,
    awaited: Option<DateTime<Utc>>,
    has_issue: impl Fn(DateTime<Utc>) -> bool,
) -> SlotDecision {
    let Some(slot) = schedule.slot_at_or_before(now) else {
        return SlotDecision::Nothing;
    };
    if has_issue(slot) {
        return SlotDecision::Nothing;
    }
    let age = (now - slot).to_std().unwrap_or_default();
    if Some(slot) == awaited || age <= catch_up {
        SlotDecision::Send(slot)
    } else {
        SlotDecision::Stale(slot)
    }
}

fn describe(schedule: &SlotSchedule, slot: DateTime<Utc>) -> String {
    format!(
        "{} ({})",
        slot.with_timezone(&schedule.timezone())
            .format("%a %Y-%m-%d %H:%M %Z"),
        slot.format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// How one delivery run ended, for the loop.
enum RunEnd {
    Done,
    Paused,
    Stopped,
}

struct Daemon<'a> {
    dispatcher: Dispatcher<'a>,
    stop: watch::Receiver<bool>,
    pause_retry: Duration,
    pause_max: Duration,
    retry_after: Option<DateTime<Utc>>,
}

/// Logs a send's progress (the CLI prints the same events).
fn log_event(schedule: &SlotSchedule, event: Event<'_>) {
    match event {
        Event::Findings { findings, .. } => {
            for f in findings {
                if f.is_error() {
                    error!("{f}");
                } else {
                    warn!("{f}");
                }
            }
        }
        Event::WaitingForLock => {
            info!("another process is sending from this database; waiting for it to finish")
        }
        Event::AlreadySent { issue, .. } => {
            info!(issue = %issue.number, "the slot's issue was already sent")
        }
        Event::SkippedWeek { issue } => {
            info!(issue = %issue.number, "the slot was recorded as an empty week")
        }
        Event::Empty { slot, recorded, .. } => info!(
            slot = %describe(schedule, slot),
            recorded, "no new comparisons this week; skipping the slot"
        ),
        Event::Created { issue, recipients } => info!(
            issue = %issue.number, slot = %describe(schedule, issue.slot),
            subject = %issue.subject, recipients, "created the slot's issue"
        ),
        Event::Resuming { issue, counts } => info!(
            issue = %issue.number, sent = counts.sent, outstanding = counts.outstanding(),
            "resuming an unfinished issue"
        ),
        Event::Finished { issue, report } => {
            info!(issue = %issue.number, "{}", issue::summary_line(issue.number, report))
        }
    }
}

impl Daemon<'_> {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn schedule(&self) -> &SlotSchedule {
        &self.dispatcher.config.schedule.slots
    }

    /// An unexpected failure (say the database was unavailable): log it and try again
    /// later rather than let the daemon die.
    fn failed(&mut self, doing: &str, e: anyhow::Error) {
        let wait = self.pause_retry;
        error!(error = %format!("{e:#}"), retry_in = ?wait, "{doing} failed");
        self.retry_after = Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default());
        self.pause_retry = (self.pause_retry * 2).min(self.pause_max);
    }

    /// How a delivery run ended, for the loop; a pause schedules the next try.
    fn after(&mut self, outcome: Outcome) -> anyhow::Result<RunEnd> {
        Ok(match outcome {
            Outcome::NothingToSend | Outcome::Refused(_) => RunEnd::Done,
            Outcome::Stopped => RunEnd::Stopped,
            Outcome::Delivered { report, .. } => match report.finish {
                Finish::Complete => {
                    self.pause_retry = FIRST_PAUSE_RETRY.min(self.pause_max);
                    self.retry_after = None;
                    RunEnd::Done
                }
                Finish::Paused { reason } => {
                    let wait = self.pause_retry;
                    self.retry_after = Some(Utc::now() + chrono::Duration::from_std(wait)?);
                    self.pause_retry = (self.pause_retry * 2).min(self.pause_max);
                    warn!(%reason, retry_in = ?wait, "issue paused; resuming it later");
                    RunEnd::Paused
                }
                Finish::Interrupted => RunEnd::Stopped,
            },
        })
    }

    /// Resumes every issue left sending or paused, whatever its age.
    async fn resume_unfinished(&mut self) -> anyhow::Result<RunEnd> {
        if self.retry_after.is_some_and(|t| Utc::now() < t) {
            return Ok(RunEnd::Paused);
        }
        // The wait is over; a run that pauses again sets a new one.
        self.retry_after = None;
        let conn = store::open(&self.dispatcher.config.database_path())?;
        let unfinished = ledger::unfinished_issues(&conn)?;
        drop(conn);
        for issue in unfinished {
            let span = tracing::info_span!("issue", number = %issue.number, slot = %issue.slot.format("%Y-%m-%dT%H:%M:%SZ"));
            let schedule = self.schedule().clone();
            let outcome = self
                .dispatcher
                .resume(issue, self.stop.clone(), &mut |e| log_event(&schedule, e))
                .instrument(span)
                .await?;
            match self.after(outcome)? {
                RunEnd::Done => {}
                other => return Ok(other),
            }
        }
        Ok(RunEnd::Done)
    }

    /// Creates and sends the slot's issue, through the same dispatcher as `verdicts send`
    /// (with warnings allowed, as `send --force`: nobody is there to confirm).
    async fn send_slot(&mut self, slot: DateTime<Utc>) -> anyhow::Result<RunEnd> {
        let config = self.dispatcher.config;
        let schedule = self.schedule().clone();
        let comparisons = match content::load_dir(&config.content_dir) {
            Ok(c) => c,
            Err(errors) => {
                error!(slot = %describe(&schedule, slot), "not sending: content is invalid\n{errors}");
                return Ok(RunEnd::Done);
            }
        };
        let on_empty = match config.schedule.on_empty {
            OnEmpty::Skip => EmptyWeek::Record,
            OnEmpty::Send => EmptyWeek::Send,
        };
        let prepared =
            match self
                .dispatcher
                .prepare(&comparisons, slot, on_empty, true, None, &mut |e| {
                    log_event(&schedule, e)
                })? {
                Ok(p) => p,
                Err(_) => {
                    error!(
                        slot = %describe(&schedule, slot),
                        "not sending: fix the lint errors above (see `verdicts lint`)"
                    );
                    return Ok(RunEnd::Done);
                }
            };
        let span = tracing::info_span!("slot", slot = %slot.format("%Y-%m-%dT%H:%M:%SZ"));
        let outcome = self
            .dispatcher
            .execute(
                prepared,
                on_empty == EmptyWeek::Record,
                false,
                self.stop.clone(),
                &mut |e| log_event(&schedule, e),
            )
            .instrument(span)
            .await?;
        self.after(outcome)
    }
}

/// Runs until `stop` turns true. The caller holds the daemon lock and serves the web endpoint.
pub async fn run(
    dispatcher: Dispatcher<'_>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = dispatcher.config;
    let schedule = &config.schedule.slots;
    let mut daemon = Daemon {
        dispatcher,
        stop: stop.clone(),
        pause_retry: FIRST_PAUSE_RETRY.min(config.smtp.pause_max),
        pause_max: config.smtp.pause_max,
        retry_after: None,
    };
    // With a site to keep current: build it now, then again whenever content files change.
    let mut content_seen = config.site_out_dir.as_ref().map(|_| {
        let seen = crate::site::content_fingerprint(config);
        crate::site::rebuild_configured(config, "daemon started");
        seen
    });
    let mut awaited: Option<DateTime<Utc>> = None;
    // The daily retention pass and whole-file check; a failed look-up tries again in an hour.
    let mut maintenance_due =
        maintenance::due_at(config).unwrap_or_else(|_| Utc::now() + chrono::Duration::hours(1));
    let mut warned: HashSet<DateTime<Utc>> = HashSet::new();
    if let Some(next) = schedule.next_after(Utc::now()) {
        info!(next_slot = %describe(schedule, next), "daemon started");
    }
    loop {
        if daemon.stopped() {
            break;
        }
        match daemon.resume_unfinished().await {
            Ok(RunEnd::Stopped) => break,
            Ok(_) => {}
            Err(e) => daemon.failed("resuming an unfinished issue", e),
        }
        let now = Utc::now();
        // A database error here is retried like any other: "no issue for this slot" is
        // never inferred from a failed look-up.
        let decision = match slot_decision(config, now, awaited) {
            Ok(d) => d,
            Err(e) => {
                daemon.failed("reading the ledger", e);
                SlotDecision::Nothing
            }
        };
        match decision {
            SlotDecision::Send(slot) => match daemon.send_slot(slot).await {
                Ok(RunEnd::Stopped) => break,
                Ok(_) => {}
                Err(e) => daemon.failed("sending the slot's issue", e),
            },
            SlotDecision::Stale(slot) => {
                if warned.insert(slot) {
                    warn!(
                        slot = %describe(schedule, slot),
                        catch_up = %humantime::format_duration(config.schedule.catch_up),
                        "missed slot is older than schedule.catch_up; not sending it late (its comparisons go out with the next issue)"
                    );
                }
            }
            SlotDecision::Nothing => {}
        }

        if Utc::now() >= maintenance_due && !daemon.stopped() {
            let pass_config = config.clone();
            let pass =
                tokio::task::spawn_blocking(move || maintenance::run_pass(&pass_config)).await;
            let in_an_hour = Utc::now() + chrono::Duration::hours(1);
            maintenance_due = match pass {
                Ok(Ok(())) => maintenance::due_at(config).unwrap_or(in_an_hour),
                Ok(Err(e)) => {
                    error!(error = %format!("{e:#}"), "the maintenance pass failed; trying again in an hour");
                    in_an_hour
                }
                Err(_) => in_an_hour,
            };
        }

        if let Some(seen) = &mut content_seen {
            let now_seen = crate::site::content_fingerprint(config);
            if now_seen != *seen {
                *seen = now_seen;
                let config = config.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    crate::site::rebuild_configured(&config, "content changed")
                })
                .await;
            }
        }

        let now = Utc::now();
        let next = schedule.next_after(now);
        if next != awaited {
            if let Some(n) = next {
                info!(next_slot = %describe(schedule, n), "waiting for the next slot");
            }
            awaited = next;
        }
        let mut wake = next.unwrap_or(now + chrono::Duration::hours(1));
        if let Some(retry) = daemon.retry_after {
            wake = wake.min(retry);
        }
        wake = wake.min(maintenance_due);
        let longest = if content_seen.is_some() {
            CONTENT_POLL
        } else {
            MAX_NAP
        };
        let nap = (wake - now)
            .to_std()
            .unwrap_or_default()
            .clamp(MIN_NAP, longest);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = stop.changed() => {}
        }
    }
    info!("daemon stopped");
    Ok(())
}

fn slot_decision(
    config: &Config,
    now: DateTime<Utc>,
    awaited: Option<DateTime<Utc>>,
) -> anyhow::Result<SlotDecision> {
    let conn = store::open(&config.database_path())?;
    let schedule = &config.schedule.slots;
    let slot = schedule.slot_at_or_before(now);
    let has_issue = match slot {
        Some(slot) => ledger::issue_by_slot(&conn, slot)?.is_some(),
        None => false,
    };
    Ok(decide(
        schedule,
        now,
        config.schedule.catch_up,
        awaited,
        |s| Some(s) == slot && has_issue,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn weekly() -> SlotSchedule {
        SlotSchedule::new("0 0 9 * * Mon", chrono_tz::Europe::London).unwrap()
    }

    const SIX_HOURS: Duration = Duration::from_secs(6 * 3600);

    #[test]
    fn a_recently_missed_slot_is_caught_up() {
        let d = decide(
            &weekly(),
            utc("2026-11-23T14:00:00Z"),
            SIX_HOURS,
            None,
            |_| false,
        );
        assert_eq!(d, SlotDecision::Send(utc("2026-11-23T09:00:00Z")));
    }

    #[test]
    fn an_old_missed_slot_is_stale() {
        let d = decide(
            &weekly(),
            utc("2026-11-23T15:00:01Z"),
            SIX_HOURS,
            None,
            |_| false,
        );
        assert_eq!(d, SlotDecision::Stale(utc("2026-11-23T09:00:00Z")));
        let d = decide(
            &weekly(),
            utc("2026-11-26T09:00:00Z"),
            SIX_HOURS,
            None,
            |_| false,
        );
        assert_eq!(d, SlotDecision::Stale(utc("2026-11-23T09:00:00Z")));
    }

    #[test]
    fn the_awaited_slot_is_sent_even_after_a_late_wake_up() {
        let slot = utc("2026-11-23T09:00:00Z");
        let d = decide(
            &weekly(),
            utc("2026-11-23T20:00:00Z"),
            SIX_HOURS,
            Some(slot),
            |_| false,
        );
        assert_eq!(d, SlotDecision::Send(slot));
    }

    #[test]
    fn a_slot_with_an_issue_is_left_alone() {
        let d = decide(
            &weekly(),
            utc("2026-11-23T09:00:05Z"),
            SIX_HOURS,
            None,
            |_| true,
        );
        assert_eq!(d, SlotDecision::Nothing);
    }

    #[test]
    fn exactly_at_the_catch_up_limit_still_sends() {
        let d = decide(
            &weekly(),
            utc("2026-11-23T15:00:00Z"),
            SIX_HOURS,
            None,
            |_| false,
        );
        assert_eq!(d, SlotDecision::Send(utc("2026-11-23T09:00:00Z")));
    }
}
