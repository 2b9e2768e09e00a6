//! A relay's own limits: at most so many messages handed to it per second, per hour and per
//! day, and the warm-up ramp's daily cap. The windows slide, and they are measured against
//! the counts in the database (`store::relays`), so a restart or a resumed issue finds them
//! as the last run left them. A per-second limit is waited out within the run; an hourly,
//! daily or warm-up limit moves the issue to a fallback relay or pauses it, never failing
//! a delivery.

use std::collections::VecDeque;
use std::time::Duration;

use rusqlite::Connection;

use crate::config::relays::RelayLimits;
use crate::store::relays::{self, RelayId};

/// Stands in for an hour's length (a duration such as `10s`): lets the tests watch an
/// hourly limit run out and its window pass without waiting an hour.
pub const HOUR_ENV: &str = "VERDICTS_LIMIT_HOUR";
/// Stands in for a day's length, as [`HOUR_ENV`] for the hour.
pub const DAY_ENV: &str = "VERDICTS_LIMIT_DAY";

/// Which limit a window keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    Second,
    Hour,
    Day,
    Warmup,
}

impl Limit {
    pub(super) fn label(self) -> &'static str {
        match self {
            Limit::Second => "per-second limit",
            Limit::Hour => "hourly limit",
            Limit::Day => "daily limit",
            Limit::Warmup => "warm-up limit",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Limit::Second => "per_second",
            Limit::Hour => "per_hour",
            Limit::Day => "per_day",
            Limit::Warmup => "warmup",
        }
    }

    /// Waits this long are waited out in the run; the others move on or pause.
    pub(super) fn is_short(self) -> bool {
        self == Limit::Second
    }
}

/// The length of an hour and a day for the limits (see [`HOUR_ENV`]).
fn span(env: &str, default: i64) -> i64 {
    std::env::var(env)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .map(|d| d.as_secs().max(1) as i64)
        .unwrap_or(default)
}

/// One sliding window: the counts per second inside it, and their sum.
struct Window {
    limit: Limit,
    seconds: i64,
    max: u64,
    counts: VecDeque<(i64, u64)>,
    sum: u64,
}

impl Window {
    fn evict(&mut self, now_s: i64) {
        while let Some(&(second, n)) = self.counts.front() {
            if second > now_s - self.seconds {
                break;
            }
            self.sum -= n;
            self.counts.pop_front();
        }
    }

    fn add(&mut self, second: i64, n: u64) {
        match self.counts.back_mut() {
            Some((last, count)) if *last == second => *count += n,
            _ => self.counts.push_back((second, n)),
        }
        self.sum += n;
    }

    /// When (ms) the window next has room, if it has none now.
    fn full_until(&self) -> Option<i64> {
        if self.sum < self.max {
            return None;
        }
        let mut left = self.sum;
        for &(second, n) in &self.counts {
            left -= n;
            if left < self.max {
                return Some((second + self.seconds) * 1000);
            }
        }
        Some(0)
    }
}

/// Why a relay cannot take a message now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AtLimit {
    pub(super) limit: Limit,
    /// How many messages the window allows.
    pub(super) max: u64,
    /// When the window has room again (ms since the epoch).
    pub(super) until_ms: i64,
}

impl AtLimit {
    /// The sentence for the operator, naming the relay.
    pub(super) fn describe(&self, relay: &str) -> String {
        let until = chrono::DateTime::from_timestamp_millis(self.until_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        format!(
            "relay {relay} reached its {} ({} {} messages); nothing failed, and the window has room again at {until}",
            self.limit.label(),
            self.limit.key(),
            self.max
        )
    }
}

/// The limits of one relay during a run.
pub(super) struct Limits {
    windows: Vec<Window>,
}

impl Limits {
    /// The relay's windows as the database has them at `now_ms`.
    pub(super) fn load(
        conn: &Connection,
        relay: RelayId,
        limits: &RelayLimits,
        now_ms: i64,
    ) -> rusqlite::Result<Self> {
        let hour = span(HOUR_ENV, 3600);
        let day = span(DAY_ENV, 86_400);
        let mut windows = Vec::new();
        let mut add = |limit, seconds, max: Option<u64>| {
            if let Some(max) = max {
                windows.push(Window {
                    limit,
                    seconds,
                    max,
                    counts: VecDeque::new(),
                    sum: 0,
                });
            }
        };
        add(Limit::Second, 1, limits.per_second);
        add(Limit::Hour, hour, limits.per_hour);
        add(Limit::Day, day, limits.per_day);
        if let Some(ramp) = limits.warmup {
            let first = relays::first_used_ms(conn, relay)?.unwrap_or(now_ms);
            let days = ((now_ms - first).max(0) / (day * 1000)) as u32;
            add(Limit::Warmup, day, Some(ramp.cap(days).max(1)));
        }
        let now_s = now_ms.div_euclid(1000);
        let reach = windows.iter().map(|w| w.seconds).max().unwrap_or(0);
        if reach > 0 {
            for (second, n) in relays::usage_since(conn, relay, now_s - reach + 1)? {
                for w in &mut windows {
                    if second > now_s - w.seconds {
                        w.add(second, n);
                    }
                }
            }
        }
        Ok(Limits { windows })
    }

    /// No limit at all.
    pub(super) fn none() -> Self {
        Limits {
            windows: Vec::new(),
        }
    }

    /// Whether the relay may take one more message at `now_ms`; the limit that is reached
    /// first otherwise (a long one before a short one).
    pub(super) fn check(&mut self, now_ms: i64) -> Result<(), AtLimit> {
        let now_s = now_ms.div_euclid(1000);
        let mut blocked: Option<AtLimit> = None;
        for w in &mut self.windows {
            w.evict(now_s);
            if let Some(until_ms) = w.full_until() {
                let at = AtLimit {
                    limit: w.limit,
                    max: w.max,
                    until_ms,
                };
                let replace = match &blocked {
                    None => true,
                    Some(b) => b.limit.is_short() && !at.limit.is_short(),
                };
                if replace {
                    blocked = Some(at);
                }
            }
        }
        blocked.map_or(Ok(()), Err)
    }

    /// Counts one message handed to the relay at `now_ms` (the database counts it when its
    /// `sending` mark is written).
    pub(super) fn take(&mut self, now_ms: i64) {
        let now_s = now_ms.div_euclid(1000);
        for w in &mut self.windows {
            w.add(now_s, 1);
        }
    }
}

/// Drops counts no window can reach any more (two days back, or two of the configured days).
pub(super) fn prune(conn: &Connection, now_ms: i64) -> rusqlite::Result<usize> {
    let keep = 2 * span(DAY_ENV, 86_400).max(86_400);
    relays::prune_usage(conn, now_ms.div_euclid(1000) - keep)
}

/// How long to sleep for a short limit: until the window has room, at least a millisecond.
pub(super) fn wait_for(at: &AtLimit, now_ms: i64) -> Duration {
    Duration::from_millis((at.until_ms - now_ms).clamp(1, 60_000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(limit: Limit, seconds: i64, max: u64) -> Limits {
        Limits {
            windows: vec![Window {
                limit,
                seconds,
                max,
                counts: VecDeque::new(),
                sum: 0,
            }],
        }
    }

    #[test]
    fn a_full_window_has_room_again_when_its_oldest_counts_slide_out() {
        let mut l = window(Limit::Hour, 3600, 3);
        l.take(1_000_000);
        l.take(1_500_000);
        l.take(1_500_500);
        let at = l.check(1_600_000).unwrap_err();
        assert_eq!(at.limit, Limit::Hour);
        // The first message (second 1000) leaves the window at second 4600.
        assert_eq!(at.until_ms, 4_600_000);
        assert!(l.check(4_600_000).is_ok());
        assert!(at
            .describe("ses")
            .contains("relay ses reached its hourly limit (per_hour 3 messages)"));
    }

    #[test]
    fn a_long_limit_is_reported_before_a_short_one() {
        let mut l = window(Limit::Second, 1, 1);
        l.windows.push(Window {
            limit: Limit::Day,
            seconds: 86_400,
            max: 1,
            counts: VecDeque::new(),
            sum: 0,
        });
        l.take(5_000);
        assert_eq!(l.check(5_100).unwrap_err().limit, Limit::Day);
    }

    #[test]
    fn the_windows_start_from_what_the_database_counted() {
        use crate::config::relays::Warmup;
        let f = super::super::test_support::Fixture::new(1);
        let conn = f.read();
        let ses = relays::ensure(&conn, "ses").unwrap();
        let now = 1_800_000_000_000;
        let hour_ago = now - 3_600_000;
        // Five messages 10 minutes ago (an earlier run), and thirty two hours ago.
        relays::count_handed(&conn, ses, (now - 600_000) / 1000, 5).unwrap();
        relays::count_handed(&conn, ses, (hour_ago - 3_600_000) / 1000, 30).unwrap();
        let hourly = RelayLimits {
            per_hour: Some(5),
            ..Default::default()
        };
        let at = Limits::load(&conn, ses, &hourly, now)
            .unwrap()
            .check(now)
            .unwrap_err();
        assert_eq!((at.limit, at.max), (Limit::Hour, 5));
        assert_eq!(at.until_ms, now - 600_000 + 3_600_000);
        let roomy = RelayLimits {
            per_hour: Some(6),
            ..Default::default()
        };
        assert!(Limits::load(&conn, ses, &roomy, now)
            .unwrap()
            .check(now)
            .is_ok());
        // The ramp's day counts from the relay's first use: its second day allows 2 × 10.
        relays::note_first_use(&conn, ses, now - 86_400_000 - 60_000).unwrap();
        let ramp = RelayLimits {
            warmup: Some(Warmup {
                first_day: 10,
                factor: 2.0,
            }),
            ..Default::default()
        };
        let mut limits = Limits::load(&conn, ses, &ramp, now).unwrap();
        // 35 in the last 24 hours already: over the second day's 20.
        assert_eq!(limits.check(now).unwrap_err().limit, Limit::Warmup);
        assert!(limits
            .check(now)
            .unwrap_err()
            .describe("ses")
            .contains("warm-up limit (warmup 20 messages)"));
    }
}
