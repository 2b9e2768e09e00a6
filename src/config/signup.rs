//! The `signup:` section: the public signup form's confirmation expiry, where to send a
//! visitor afterwards, whether to keep their IP, and the abuse limits.

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
    #[serde(default)]
    proxy_header: ProxyHeader,
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: u8,
    #[serde(default = "default_plus_tag_domains")]
    plus_tag_domains: Vec<String>,
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
fn default_ipv6_prefix() -> u8 {
    64
}
/// Mail providers known to deliver `name+tag@` to `name@`.
fn default_plus_tag_domains() -> Vec<String> {
    [
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "icloud.com",
        "me.com",
        "fastmail.com",
        "proton.me",
        "protonmail.com",
        "posteo.de",
        "mailbox.org",
    ]
    .map(String::from)
    .to_vec()
}

/// Which header a trusted proxy appends the client's address to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyHeader {
    /// `X-Forwarded-For` (nginx, HAProxy's `option forwardfor`, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
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
    /// Peers (addresses or networks) whose forwarding header is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header those proxies append the client to.
    pub proxy_header: ProxyHeader,
    /// IPv6 clients are counted per network of this prefix length (a /64 is one site).
    pub ipv6_prefix: u8,
    /// Domains where `name+tag@` reaches `name@`, so the per-address limit counts them as
    /// one (`*` for every domain).
    pub plus_tag_domains: Vec<String>,
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
            let local = url.starts_with('/') && !url.starts_with("//") && !url.starts_with("/\\");
            if !(url.starts_with("https://") || url.starts_with("http://") || local) {
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
                let p = p.trim();
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "signup.trusted_proxies",
                            format!(
                                "`{p}` is not an IP address or network (list each proxy's \
                                 address, or its network as 10.0.0.0/8)"
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let positive = |field: &'static str, n: u32| {
            NonZeroU32::new(n).ok_or_else(|| invalid(field, "must be at least 1".into()))
        };
        if !(1..=128).contains(&raw.ipv6_prefix) {
            return Err(invalid(
                "signup.ipv6_prefix",
                format!("{} is out of range 1..=128", raw.ipv6_prefix),
            ));
        }
        Ok(SignupConfig {
            expire_after,
            thanks_url: raw.thanks_url,
            record_ip: raw.record_ip,
            trusted_proxies,
            proxy_header: raw.proxy_header,
            ipv6_prefix: raw.ipv6_prefix,
            plus_tag_domains: raw
                .plus_tag_domains
                .iter()
                .map(|d| d.trim().to_lowercase())
                .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<SignupConfig, String> {
        let raw: RawSignup = serde_yaml::from_str(yaml).unwrap();
        SignupConfig::from_raw(raw, |field, reason| super::super::ConfigError::Invalid {
            path: "newsletter.yaml".into(),
            field,
            reason,
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn proxies_take_networks_and_thanks_urls_stay_on_the_site() {
        let c = parse("trusted_proxies: [127.0.0.1, 10.0.0.0/8, '::1']").unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!(c.ipv6_prefix, 64);
        assert!(parse("trusted_proxies: [nginx]").is_err());
        assert!(parse("ipv6_prefix: 0").is_err());
        assert!(parse("thanks_url: /thanks").is_ok());
        for off_site in ["//evil.example/", "/\\\\evil.example"] {
            let yaml = format!("thanks_url: '{off_site}'");
            assert!(parse(&yaml).is_err(), "{off_site}");
        }
    }
}
