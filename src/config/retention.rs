//! The `retention:` section: how long per-recipient delivery rows and subscriber events are
//! kept before they are folded into each issue's totals, whether readers who left are
//! erased after a while, and the local time of day of the daemon's maintenance pass (the
//! compaction and the whole-file integrity check).

use std::time::Duration;

use chrono::NaiveTime;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    #[serde(default = "default_deliveries")]
    deliveries: String,
    #[serde(default = "default_events")]
    events: String,
    #[serde(default = "default_unsubscribed")]
    unsubscribed: String,
    #[serde(default = "default_daily_at")]
    daily_at: String,
}

impl Default for RawRetention {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every retention field has a default")
    }
}

fn default_deliveries() -> String {
    "90d".into()
}
fn default_events() -> String {
    "2years".into()
}
fn default_unsubscribed() -> String {
    "off".into()
}
fn default_daily_at() -> String {
    "04:30".into()
}

/// How long history is kept, resolved from `retention:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// After this (counted from the slot), a finished issue's delivery rows are
    /// folded into its totals and deleted.
    pub deliveries: Duration,
    /// After this, subscriber events are deleted (their counts stay in the issue totals).
    pub events: Duration,
    /// When set, unsubscribed and bounced readers are erased this long after they left.
    pub unsubscribed: Option<Duration>,
    /// The daemon's daily maintenance pass, in `schedule.timezone`.
    pub daily_at: NaiveTime,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig::from_raw(RawRetention::default(), |_, r| r)
            .expect("the defaults are valid")
    }
}

/// The shortest window accepted: a week, so an issue's retries and late bounces always
/// find its rows.
const MIN_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

impl RetentionConfig {
    pub(super) fn from_raw<E>(
        raw: RawRetention,
        invalid: impl Fn(&'static str, String) -> E,
    ) -> Result<Self, E> {
        let window = |field: &'static str, text: &str| -> Result<Duration, E> {
            let d = humantime::parse_duration(text.trim()).map_err(|e| {
                invalid(
                    field,
                    format!("`{text}` is not a duration ({e}); write e.g. `90d` or `2years`"),
                )
            })?;
            if d < MIN_WINDOW {
                return Err(invalid(
                    field,
                    format!(
                        "`{text}` is shorter than 7 days; a shorter window would fold an issue \
                         away while its retries and bounces are still coming in"
                    ),
                ));
            }
            Ok(d)
        };
        let unsubscribed = match raw.unsubscribed.trim() {
            "off" | "never" => None,
            text => Some(window("retention.unsubscribed", text)?),
        };
        let daily_at = NaiveTime::parse_from_str(raw.daily_at.trim(), "%H:%M").map_err(|_| {
            invalid(
                "retention.daily_at",
                format!(
                    "`{}` is not a time of day; write it as HH:MM in schedule.timezone, e.g. `04:30`",
                    raw.daily_at
                ),
            )
        })?;
        Ok(RetentionConfig {
            deliveries: window("retention.deliveries", &raw.deliveries)?,
            events: window("retention.events", &raw.events)?,
            unsubscribed,
            daily_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RetentionConfig, String> {
        let raw: RawRetention = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        RetentionConfig::from_raw(raw, |field, reason| format!("{field}: {reason}"))
    }

    #[test]
    fn defaults_keep_deliveries_90_days_and_events_two_years() {
        let r = RetentionConfig::default();
        assert_eq!(r.deliveries, Duration::from_secs(90 * 86400));
        assert!(r.events > Duration::from_secs(2 * 365 * 86400));
        assert_eq!(r.unsubscribed, None);
        assert_eq!(r.daily_at, NaiveTime::from_hms_opt(4, 30, 0).unwrap());
    }

    #[test]
    fn bad_values_name_the_field_and_the_reason() {
        let e = parse("deliveries: soon").unwrap_err();
        assert!(
            e.starts_with("retention.deliveries: `soon` is not a duration"),
            "{e}"
        );
        let e = parse("events: 2d").unwrap_err();
        assert!(
            e.contains("retention.events: `2d` is shorter than 7 days"),
            "{e}"
        );
        let e = parse("daily_at: '25:00'").unwrap_err();
        assert!(
            e.starts_with("retention.daily_at: `25:00` is not a time of day"),
            "{e}"
        );
        assert_eq!(
            parse("unsubscribed: 30d").unwrap().unsubscribed,
            Some(Duration::from_secs(30 * 86400))
        );
    }
}
