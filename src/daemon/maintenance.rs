//! The daemon's daily maintenance pass, at `retention.daily_at` in the schedule's time zone:
//! retention (fold old issues into their totals, delete old events, erase readers who left
//! long ago, hand freed pages back), then `PRAGMA quick_check` of the whole file. Sends and
//! daemon start check only what they touch, so this is where damage in old history is
//! found; it is reported as loudly as a refused send, and sending goes on. A pass missed
//! while the daemon was down runs once after the next slot check.

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use tracing::{error, info};

use crate::config::Config;
use crate::store::{self, retention};

/// The first `at` (local time in `tz`) strictly after `after`.
pub fn next_after(after: DateTime<Utc>, at: NaiveTime, tz: Tz) -> DateTime<Utc> {
    let local = after.with_timezone(&tz).date_naive();
    for day in 0..3 {
        let date = local + chrono::Days::new(day);
        let wall = date.and_time(at);
        // A time inside a DST gap runs an hour later; a repeated one, the first time.
        let instant = tz
            .from_local_datetime(&wall)
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(wall + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc));
        if let Some(t) = instant.filter(|t| *t > after) {
            return t;
        }
    }
    after + chrono::Duration::days(1)
}

/// When the next pass is due: after the last recorded one, or now if none was recorded.
pub fn due_at(config: &Config) -> anyhow::Result<DateTime<Utc>> {
    let conn = store::open(&config.database_path())?;
    Ok(match retention::last_pass(&conn)? {
        Some(last) => next_after(
            last,
            config.retention.daily_at,
            config.schedule.slots.timezone(),
        ),
        None => Utc::now(),
    })
}

/// One pass. Damage is logged with the same message a refused send prints; the pass is
/// recorded either way, so a damaged file is reported once a day, not in a loop.
pub fn run_pass(config: &Config) -> anyhow::Result<()> {
    let path = config.database_path();
    let conn = store::open(&path)?;
    let policy = retention::Policy::at(Utc::now(), &config.retention);
    match retention::compact(&conn, &policy, false) {
        Ok(report) => info!(
            issues_folded = report.issues.len(),
            events_deleted = report.events,
            readers_erased = report.erased,
            bytes_returned = report.bytes_returned,
            file_bytes = report.file_bytes,
            longest_lock_ms = report.longest_lock.as_millis() as u64,
            longest_lock_in = report.longest_lock_in,
            "retention pass done"
        ),
        Err(e) => error!(error = %e, "the retention pass failed; it runs again tomorrow"),
    }
    let started = std::time::Instant::now();
    match store::quick_check(&conn, &path) {
        Ok(()) => info!(
            seconds = started.elapsed().as_secs_f64(),
            "scheduled integrity check: the state database is intact"
        ),
        Err(e) => error!("scheduled integrity check: {e}"),
    }
    retention::record_pass(&conn, Utc::now())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_pass_runs_at_the_local_time_of_day_next() {
        let at = NaiveTime::from_hms_opt(4, 30, 0).unwrap();
        let london = chrono_tz::Europe::London;
        // Summer time: 04:30 in London is 03:30 UTC.
        assert_eq!(
            next_after(utc("2026-07-01T01:00:00Z"), at, london),
            utc("2026-07-01T03:30:00Z")
        );
        assert_eq!(
            next_after(utc("2026-07-01T03:30:00Z"), at, london),
            utc("2026-07-02T03:30:00Z")
        );
        assert_eq!(
            next_after(utc("2026-12-01T05:00:00Z"), at, london),
            utc("2026-12-02T04:30:00Z")
        );
    }
}
