//! The `signup:` section: the public signup form's confirmation expiry, where to send a
//! visitor afterwards, whether to keep their IP, and the abuse limits.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignup {
    #[serde(default = "default_expire_after")]
    expire_after: String,
    #[serde(default)]
    thanks_url: Option<String>,
    #[serde(default)]
    record_ip: bool,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default = "default_per_ip_per_hour")]
    per_ip_per_hour: u32,
    #[serde(default = "default_per_address_per_hour")]
    per_address_per_hour: u32,
    #[serde(default = "default_per_address_per_day")]
    per_address_per_day: u32,
    #[serde(default = "default_mails_per_hour")]
    mails_per_hour: u32,
}

impl Default for RawSignup {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every signup field has a default")
    }
}

fn default_expire_after() -> String {
    "7d".into()
}
fn default_per_ip_per_hour() -> u32 {
    10
}
fn default_per_address_per_hour() -> u32 {
    1
}
fn default_per_address_per_day() -> u32 {
    3
}
fn default_mails_per_hour() -> u32 {
    200
}

/// The validated `signup:` section (all defaults when it is absent).
#[derive(Debug, Clone)]
pub struct SignupConfig {
    /// How long a confirmation link works; unconfirmed signups are removed after it.
    pub expire_after: Duration,
    /// Where a form signup is redirected, instead of the built-in "check your inbox" page.
    pub thanks_url: Option<String>,
    /// Keep the signup request's IP in the consent record.
    pub record_ip: bool,
    /// Peers whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: Vec<IpAddr>,
    pub per_ip_per_hour: NonZeroU32,
    pub per_address_per_hour: NonZeroU32,
    pub per_address_per_day: NonZeroU32,
    /// Signups accepted per hour over all addresses: each may cost one confirmation mail.
    pub mails_per_hour: NonZeroU32,
}

impl SignupConfig {
    pub(super) fn from_raw(
        raw: RawSignup,
        invalid: impl Fn(&'static str, String) -> super::ConfigError,
    ) -> Result<Self, super::ConfigError> {
        let expire_after = super::parse_duration(&raw.expire_after)
            .map_err(|e| invalid("signup.expire_after", e))?;
        if expire_after < Duration::from_secs(1) {
            return Err(invalid(
                "signup.expire_after",
                "must be at least one second".into(),
            ));
        }
        if let Some(url) = &raw.thanks_url {
            if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
            {
                return Err(invalid(
                    "signup.thanks_url",
                    format!("`{url}` must be an http(s) URL or a path starting with /"),
                ));
            }
        }
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .map(|p| {
                p.trim().parse::<IpAddr>().map_err(|_| {
                    invalid(
                        "signup.trusted_proxies",
                        format!("`{p}` is not an IP address (list each proxy's address)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let positive = |field: &'static str, n: u32| {
            NonZeroU32::new(n).ok_or_else(|| invalid(field, "must be at least 1".into()))
        };
        Ok(SignupConfig {
            expire_after,
            thanks_url: raw.thanks_url,
            record_ip: raw.record_ip,
            trusted_proxies,
            per_ip_per_hour: positive("signup.per_ip_per_hour", raw.per_ip_per_hour)?,
            per_address_per_hour: positive(
                "signup.per_address_per_hour",
                raw.per_address_per_hour,
            )?,
            per_address_per_day: positive("signup.per_address_per_day", raw.per_address_per_day)?,
            mails_per_hour: positive("signup.mails_per_hour", raw.mails_per_hour)?,
        })
    }
}
