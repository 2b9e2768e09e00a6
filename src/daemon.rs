//! The scheduled daemon: sleeps until each slot, sends its issue through the same path as
//! `verdicts send`, resumes interrupted issues, catches up a recently missed slot, and
//! refuses stale ones. The ledger keys issues by slot, so restarts, a second process or a
//! hand-run `send` can never produce a second issue for a slot.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::config::{Config, OnEmpty};
use crate::content;
use crate::issue::{self, EmptyWeek, Prepared};
use crate::ledger::{self, Issue};
use crate::lock::SenderLock;
use crate::schedule::SlotSchedule;
use crate::sender::Finish;
use crate::token::TokenKey;

/// The longest single sleep, so wall-clock jumps (suspend, NTP) are noticed within a minute.
const MAX_NAP: Duration = Duration::from_secs(60);
/// The shortest sleep, so a stuck condition can never spin the loop.
const MIN_NAP: Duration = Duration::from_millis(200);
/// First wait before retrying a paused issue; doubles up to `MAX_PAUSE_RETRY`.
const FIRST_PAUSE_RETRY: Duration = Duration::from_secs(30);
const MAX_PAUSE_RETRY: Duration = Duration::from_secs(15 * 60);

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
    config: &'a Config,
    key: TokenKey,
    password: Option<String>,
    stop: watch::Receiver<bool>,
    pause_retry: Duration,
    retry_after: Option<DateTime<Utc>>,
}

impl Daemon<'_> {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// An unexpected failure (say the database was unavailable): log it and try again
    /// later rather than let the daemon die.
    fn failed(&mut self, doing: &str, e: anyhow::Error) {
        let wait = self.pause_retry;
        error!(error = %format!("{e:#}"), retry_in = ?wait, "{doing} failed");
        self.retry_after = Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default());
        self.pause_retry = (self.pause_retry * 2).min(MAX_PAUSE_RETRY);
    }

    /// Delivers an issue under the sender lock (waiting for a hand-run `send` to finish).
    async fn deliver(&mut self, issue: &Issue) -> anyhow::Result<RunEnd> {
        // A hand-run `send` may hold the sender lock: wait for it, but stay stoppable.
        let _lock = loop {
            if let Some(lock) = SenderLock::try_acquire(&self.config.state_dir)? {
                break lock;
            }
            info!("another process is sending from this database; waiting for it to finish");
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => {}
            }
            if self.stopped() {
                return Ok(RunEnd::Stopped);
            }
        };
        // The issue may have been finished by someone else while we waited.
        let conn = crate::db::open(&self.config.database_path())?;
        let Some(current) = ledger::issue(&conn, issue.number)? else {
            return Ok(RunEnd::Done);
        };
        drop(conn);
        if !matches!(
            current.state,
            ledger::IssueState::Sending | ledger::IssueState::Paused
        ) {
            return Ok(RunEnd::Done);
        }
        let span = tracing::info_span!("issue", number = issue.number, slot = %issue.slot.format("%Y-%m-%dT%H:%M:%SZ"));
        info!(parent: &span, subject = %issue.subject, "delivering");
        let report = issue::deliver(
            self.config,
            &current,
            self.key.clone(),
            self.password.clone(),
            false,
            self.stop.clone(),
        )
        .instrument(span.clone())
        .await?;
        info!(parent: &span, "{}", issue::summary_line(issue.number, &report));
        Ok(match report.finish {
            Finish::Complete => {
                self.pause_retry = FIRST_PAUSE_RETRY;
                self.retry_after = None;
                RunEnd::Done
            }
            Finish::Paused { reason } => {
                let wait = self.pause_retry;
                self.retry_after = Some(Utc::now() + chrono::Duration::from_std(wait)?);
                self.pause_retry = (self.pause_retry * 2).min(MAX_PAUSE_RETRY);
                warn!(%reason, retry_in = ?wait, "issue paused: SMTP server unreachable");
                RunEnd::Paused
            }
            Finish::Interrupted => RunEnd::Stopped,
        })
    }

    /// Resumes every issue left sending or paused, whatever its age.
    async fn resume_unfinished(&mut self) -> anyhow::Result<RunEnd> {
        if self.retry_after.is_some_and(|t| Utc::now() < t) {
            return Ok(RunEnd::Paused);
        }
        // The wait is over; a run that pauses again sets a new one.
        self.retry_after = None;
        let conn = crate::db::open(&self.config.database_path())?;
        let unfinished = ledger::unfinished_issues(&conn)?;
        drop(conn);
        for issue in unfinished {
            info!(issue = issue.number, "resuming an unfinished issue");
            match self.deliver(&issue).await? {
                RunEnd::Done => {}
                other => return Ok(other),
            }
        }
        Ok(RunEnd::Done)
    }

    /// Creates and sends the slot's issue.
    async fn send_slot(&mut self, slot: DateTime<Utc>) -> anyhow::Result<RunEnd> {
        let comparisons = match content::load_dir(&self.config.content_dir) {
            Ok(c) => c,
            Err(errors) => {
                error!(slot = %describe(&self.config.schedule.slots, slot), "not sending: content is invalid\n{errors}");
                return Ok(RunEnd::Done);
            }
        };
        let on_empty = match self.config.schedule.on_empty {
            OnEmpty::Skip => EmptyWeek::Record,
            OnEmpty::Send => EmptyWeek::Send,
        };
        let conn = crate::db::open(&self.config.database_path())?;
        // The same deliverability checks as `verdicts send`: an error means no send.
        if let Some(digest) = issue::pending_digest(self.config, &conn, &comparisons, slot)? {
            let dkim = crate::dkim::load(self.config)?;
            let findings = crate::lint::check_issue(self.config, &digest, dkim.as_ref());
            for f in &findings {
                if f.is_error() {
                    error!(slot = %describe(&self.config.schedule.slots, slot), "{f}");
                } else {
                    warn!(slot = %describe(&self.config.schedule.slots, slot), "{f}");
                }
            }
            if crate::lint::gate(&findings, true).is_err() {
                error!(
                    slot = %describe(&self.config.schedule.slots, slot),
                    "not sending: fix the lint errors above (see `verdicts lint`)"
                );
                return Ok(RunEnd::Done);
            }
        }
        let prepared = issue::prepare(self.config, &conn, &comparisons, slot, on_empty)?;
        drop(conn);
        match prepared {
            Prepared::Ready { issue, created } => {
                if created {
                    info!(issue = issue.number, slot = %describe(&self.config.schedule.slots, slot), subject = %issue.subject, "created the slot's issue");
                }
                self.deliver(&issue).await
            }
            Prepared::Complete { .. } | Prepared::Skipped { .. } => Ok(RunEnd::Done),
            Prepared::Empty { recorded, .. } => {
                info!(
                    slot = %describe(&self.config.schedule.slots, slot),
                    recorded, "no new comparisons this week; skipping the slot"
                );
                Ok(RunEnd::Done)
            }
        }
    }
}

/// Runs until `stop` turns true. The caller holds the daemon lock and serves the web endpoint.
pub async fn run(
    config: &Config,
    key: TokenKey,
    password: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let schedule = &config.schedule.slots;
    let mut daemon = Daemon {
        config,
        key,
        password,
        stop: stop.clone(),
        pause_retry: FIRST_PAUSE_RETRY,
        retry_after: None,
    };
    let mut awaited: Option<DateTime<Utc>> = None;
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
        let conn = crate::db::open(&config.database_path())?;
        let decision = decide(schedule, now, config.schedule.catch_up, awaited, |slot| {
            ledger::issue_by_slot(&conn, slot).ok().flatten().is_some()
        });
        drop(conn);
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
        let nap = (wake - now)
            .to_std()
            .unwrap_or_default()
            .clamp(MIN_NAP, MAX_NAP);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = stop.changed() => {}
        }
    }
    info!("daemon stopped");
    Ok(())
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
