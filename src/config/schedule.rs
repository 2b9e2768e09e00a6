//! Issue slots: the instants the weekly schedule fires, computed from a cron expression in
//! the newsletter's time zone. The expression is evaluated on local wall-clock time and then
//! mapped to an instant, so DST is explicit: a repeated local hour fires once (the earlier
//! instant) and a local time that does not exist fires at the first instant after the gap.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error)]
#[error("`{expr}` is not a cron expression: {reason} (use `sec min hour day-of-month month day-of-week`, e.g. \"0 0 9 * * Mon\", or the 5-field form \"0 9 * * Mon\")")]
pub struct ScheduleError {
    expr: String,
    reason: String,
}

/// The newsletter's schedule: a cron expression in a time zone.
#[derive(Clone)]
pub struct SlotSchedule {
    cron: cron::Schedule,
    tz: Tz,
    expr: String,
}

impl fmt::Debug for SlotSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotSchedule({:?} in {})", self.expr, self.tz)
    }
}

/// How far back `slot_at_or_before` looks. Schedules sparser than this are not supported.
const MAX_LOOKBACK_DAYS: i64 = 400;

impl SlotSchedule {
    /// Accepts the cron crate's 6/7-field syntax (seconds first) and the standard 5-field
    /// syntax (which gets `0` seconds prepended).
    pub fn new(expr: &str, tz: Tz) -> Result<Self, ScheduleError> {
        let fields = expr.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {}", expr.trim()),
            6 | 7 => expr.trim().to_owned(),
            n => {
                return Err(ScheduleError {
                    expr: expr.into(),
                    reason: format!("it has {n} fields, expected 5, 6 or 7"),
                })
            }
        };
        let cron = cron::Schedule::from_str(&full).map_err(|e| ScheduleError {
            expr: expr.into(),
            reason: e.to_string(),
        })?;
        if cron.upcoming(Utc).next().is_none() {
            return Err(ScheduleError {
                expr: expr.into(),
                reason: "it never fires".into(),
            });
        }
        Ok(SlotSchedule {
            cron,
            tz,
            expr: expr.trim().to_owned(),
        })
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Local times are scanned from a little before `t`'s wall-clock time, because near a
        // gap a local time earlier than `t`'s can map to an instant after `t`.
        let local = t.with_timezone(&self.tz).naive_local() - Duration::hours(3);
        self.local_fire_times_after(local)
            .map(|n| self.to_instant(n))
            .find(|slot| *slot > t)
    }

    /// The latest slot at or before `t`: the slot an issue sent at `t` belongs to.
    pub fn slot_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz).naive_local() + Duration::hours(3);
        let floor = local - Duration::days(MAX_LOOKBACK_DAYS);
        let as_utc = Utc.from_utc_datetime(&local);
        self.cron
            .after(&as_utc)
            .rev()
            .map(|d| d.naive_utc())
            .take_while(|n| *n > floor)
            .map(|n| self.to_instant(n))
            .find(|slot| *slot <= t)
    }

    /// The slot before `slot` (for the first issue's 7-day lookback, the previous cutoff).
    pub fn previous_slot(&self, slot: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.slot_at_or_before(slot - Duration::seconds(1))
    }

    fn local_fire_times_after(
        &self,
        local: NaiveDateTime,
    ) -> impl Iterator<Item = NaiveDateTime> + '_ {
        // The cron crate evaluates in a time zone; UTC has no DST, so using it on the naive
        // local time gives plain wall-clock arithmetic.
        self.cron
            .after_owned(Utc.from_utc_datetime(&local))
            .map(|d| d.naive_utc())
    }

    /// Maps a local wall-clock time to an instant: the earlier of a repeated hour, or the
    /// end of a spring-forward gap.
    fn to_instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let mut probe = local;
        for _ in 0..(24 * 60) {
            match self.tz.from_local_datetime(&probe) {
                LocalResult::Single(t) => return t.with_timezone(&Utc),
                LocalResult::Ambiguous(early, _) => return early.with_timezone(&Utc),
                LocalResult::None => probe += Duration::minutes(1),
            }
        }
        // No zone has a gap longer than a day; fall back to reading the time as UTC.
        Utc.from_utc_datetime(&local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(expr: &str, tz: &str) -> SlotSchedule {
        SlotSchedule::new(expr, tz.parse().unwrap()).unwrap()
    }

    #[test]
    fn monday_nine_london_across_both_dst_changes() {
        let s = sched("0 0 9 * * Mon", "Europe/London");
        // Winter (GMT): 09:00 local = 09:00 UTC.
        assert_eq!(
            s.next_after(utc("2026-11-21T00:00:00Z")),
            Some(utc("2026-11-23T09:00:00Z"))
        );
        // Clocks go forward on Sunday 2027-03-28: Monday 29th is BST.
        assert_eq!(
            s.next_after(utc("2027-03-27T00:00:00Z")),
            Some(utc("2027-03-29T08:00:00Z"))
        );
        assert_eq!(
            s.slot_at_or_before(utc("2027-03-29T07:59:59Z")),
            Some(utc("2027-03-22T09:00:00Z"))
        );
        // Clocks go back on Sunday 2026-10-25.
        assert_eq!(
            s.next_after(utc("2026-10-20T00:00:00Z")),
            Some(utc("2026-10-26T09:00:00Z"))
        );
        assert_eq!(
            s.previous_slot(utc("2026-10-26T09:00:00Z")),
            Some(utc("2026-10-19T08:00:00Z"))
        );
    }

    #[test]
    fn monday_nine_new_york_across_both_dst_changes() {
        let s = sched("0 9 * * Mon", "America/New_York");
        // DST ends Sunday 2026-11-01.
        assert_eq!(
            s.next_after(utc("2026-10-27T00:00:00Z")),
            Some(utc("2026-11-02T14:00:00Z"))
        );
        assert_eq!(
            s.previous_slot(utc("2026-11-02T14:00:00Z")),
            Some(utc("2026-10-26T13:00:00Z"))
        );
        // DST starts Sunday 2027-03-14.
        assert_eq!(
            s.next_after(utc("2027-03-09T00:00:00Z")),
            Some(utc("2027-03-15T13:00:00Z"))
        );
    }

    #[test]
    fn repeated_hour_fires_once_at_the_earlier_instant() {
        // 01:30 happens twice in London on 2026-10-25.
        let s = sched("0 30 1 * * Sun", "Europe/London");
        let first = s.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        let second = s.next_after(first).unwrap();
        assert_eq!(second, utc("2026-11-01T01:30:00Z"));
    }

    #[test]
    fn gap_fires_at_first_instant_after_it() {
        // 01:30 does not exist in London on 2027-03-28 (01:00 → 02:00).
        let s = sched("0 30 1 * * Sun", "Europe/London");
        let slot = s.next_after(utc("2027-03-27T12:00:00Z")).unwrap();
        assert_eq!(slot, utc("2027-03-28T01:00:00Z"));
        assert_eq!(s.slot_at_or_before(utc("2027-03-28T01:00:00Z")), Some(slot));
    }

    #[test]
    fn five_and_six_fields_agree_and_bad_input_is_explained() {
        let five = sched("0 9 * * Mon", "UTC");
        let six = sched("0 0 9 * * Mon", "UTC");
        let t = utc("2026-11-18T00:00:00Z");
        assert_eq!(five.next_after(t), six.next_after(t));
        let err = SlotSchedule::new("0 9 * *", chrono_tz::UTC).unwrap_err();
        assert!(err.to_string().contains("4 fields"), "{err}");
        let err = SlotSchedule::new("0 0 25 * * Mon", chrono_tz::UTC).unwrap_err();
        assert!(err.to_string().contains("not a cron expression"), "{err}");
    }
}
