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
    /// syntax (which gets `0` seconds prepended). Weekday numbers mean what they mean in
    /// standard cron (0 and 7 Sunday, 1 Monday … 6 Saturday) in the 5-field form; the cron
    /// crate counts from 1 = Sunday, so they are written out as names before it reads them.
    /// In the 6/7-field form a weekday number is ambiguous and refused: write `Mon`.
    pub fn new(expr: &str, tz: Tz) -> Result<Self, ScheduleError> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let full = match fields.len() {
            5 => {
                let weekday = standard_weekdays(fields[4]).map_err(|reason| ScheduleError {
                    expr: expr.into(),
                    reason,
                })?;
                format!("0 {} {weekday}", fields[..4].join(" "))
            }
            6 | 7 => {
                if fields[5].chars().any(|c| c.is_ascii_digit()) {
                    return Err(ScheduleError {
                        expr: expr.into(),
                        reason: format!(
                            "the day-of-week field `{}` uses numbers, which the 6-field form counts from 1 = Sunday and standard cron from 1 = Monday; write day names (Mon, Tue-Fri, Sat,Sun) instead",
                            fields[5]
                        ),
                    });
                }
                fields.join(" ")
            }
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

/// Standard cron's weekday numbers, written as the names the cron crate reads the same way
/// whatever its numbering: `1-5` → `Mon,Tue,Wed,Thu,Fri`, `0,6` → `Sun,Sat`, `*/2` →
/// `Sun,Tue,Thu,Sat`. Names and `*` pass through; anything else is refused with the reason.
fn standard_weekdays(field: &str) -> Result<String, String> {
    const NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    if !field.chars().any(|c| c.is_ascii_digit()) {
        return Ok(field.to_owned());
    }
    let bad = |why: &str| {
        format!(
            "the day-of-week field `{field}` {why}; use 0-7 (0 and 7 are Sunday, 1 is Monday) or names such as Mon-Fri"
        )
    };
    let number = |s: &str| -> Result<u32, String> {
        match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(n),
            _ => Err(bad(&format!("has `{s}`, which is not a weekday number"))),
        }
    };
    let mut days: Vec<u32> = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => match step.parse::<u32>() {
                Ok(step) if step > 0 => (range, step),
                _ => return Err(bad(&format!("has the step `/{step}`"))),
            },
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" | "?" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                // `5/2` is standard cron's "from 5 to the end, every 2nd day".
                None if step > 1 => (number(r)?, 6),
                None => {
                    let n = number(r)?;
                    (n, n)
                }
            },
        };
        if from > to {
            return Err(bad(&format!(
                "has the range `{range}`, which runs backwards"
            )));
        }
        days.extend((from..=to).step_by(step as usize).map(|d| d % 7));
    }
    let mut names: Vec<&str> = Vec::new();
    for d in 0..7 {
        if days.contains(&d) {
            names.push(NAMES[d as usize]);
        }
    }
    Ok(names.join(","))
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
    fn five_field_weekday_numbers_are_standard_cron() {
        // Saturday 5 December 2026: the next "0 9 * * 1" is Monday the 7th, not Sunday.
        let now = utc("2026-12-05T12:00:00Z");
        let monday = utc("2026-12-07T09:00:00Z");
        let sunday = utc("2026-12-06T09:00:00Z");
        assert_eq!(sched("0 9 * * 1", "UTC").next_after(now), Some(monday));
        assert_eq!(sched("0 9 * * 0", "UTC").next_after(now), Some(sunday));
        assert_eq!(sched("0 9 * * 7", "UTC").next_after(now), Some(sunday));
        assert_eq!(sched("0 9 * * 1-5", "UTC").next_after(now), Some(monday));
        assert_eq!(sched("0 9 * * 6,0", "UTC").next_after(now), Some(sunday));
        assert_eq!(sched("0 9 * * Mon", "UTC").next_after(now), Some(monday));
        assert_eq!(standard_weekdays("5-7").unwrap(), "Sun,Fri,Sat");
        assert_eq!(standard_weekdays("*/2").unwrap(), "Sun,Tue,Thu,Sat");
        assert_eq!(standard_weekdays("1-5").unwrap(), "Mon,Tue,Wed,Thu,Fri");
        for bad in ["0 9 * * 8", "0 9 * * 5-1", "0 9 * * 1/0"] {
            let err = SlotSchedule::new(bad, chrono_tz::UTC).unwrap_err();
            assert!(err.to_string().contains("day-of-week"), "{bad}: {err}");
        }
        // The 6-field form counts differently; a number there is refused, not guessed.
        let err = SlotSchedule::new("0 0 9 * * 1", chrono_tz::UTC).unwrap_err();
        assert!(err.to_string().contains("Mon"), "{err}");
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
