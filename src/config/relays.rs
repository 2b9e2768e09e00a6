//! The relays section: `smtp:` is one relay (a map, as always) or a list of them, each with
//! a `role` (one `primary`, any number of `fallback`s), its own connection settings, TLS
//! trust (`ca_file`), login, concurrency and limits (`per_second`, `per_hour`, `per_day`,
//! `warmup`); and `domains:`, the caps per recipient domain.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Deserializer};

use super::RawSmtp;

/// `smtp:` as written: one relay, or a list.
#[derive(Debug, Clone)]
pub(super) enum RawRelays {
    One(Box<RawSmtp>),
    Many(Vec<RawSmtp>),
}

impl<'de> Deserialize<'de> for RawRelays {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(d)?;
        match value {
            serde_yaml::Value::Sequence(items) => {
                let mut relays = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let relay: RawSmtp = serde_yaml::from_value(item)
                        .map_err(|e| D::Error::custom(format!("smtp relay #{}: {e}", i + 1)))?;
                    relays.push(relay);
                }
                Ok(RawRelays::Many(relays))
            }
            other => serde_yaml::from_value(other)
                .map(|r| RawRelays::One(Box::new(r)))
                .map_err(|e| D::Error::custom(format!("smtp: {e}"))),
        }
    }
}

/// A relay's part in an issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayRole {
    /// Takes every message while it works.
    #[default]
    Primary,
    /// Takes over while the relays before it are down, throttling, refusing everyone or
    /// at a limit.
    Fallback,
}

/// The warm-up ramp of a new IP or domain: at most `first_day` messages on the relay's
/// first day of use, growing by `factor` each day after.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    pub first_day: u64,
    pub factor: f64,
}

impl Warmup {
    /// The day's cap on day `day` of the relay's use (0 = its first day).
    pub fn cap(&self, day: u32) -> u64 {
        let cap = self.first_day as f64 * self.factor.powi(day.min(1000) as i32);
        if cap >= u64::MAX as f64 {
            u64::MAX
        } else {
            cap as u64
        }
    }
}

/// A relay's own limits, counted in the database (see `store::relays`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RelayLimits {
    pub per_second: Option<u64>,
    pub per_hour: Option<u64>,
    pub per_day: Option<u64>,
    pub warmup: Option<Warmup>,
}

impl RelayLimits {
    pub fn is_empty(&self) -> bool {
        self.per_second.is_none()
            && self.per_hour.is_none()
            && self.per_day.is_none()
            && self.warmup.is_none()
    }
}

/// The caps on one recipient domain (or a group of domains that share mailboxes, such as
/// gmail.com and googlemail.com): messages in flight at once and messages per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCap {
    pub domains: Vec<String>,
    pub concurrency: Option<usize>,
    pub per_second: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomainCap {
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    per_second: Option<u32>,
}

/// The built-in caps for the largest mailbox providers; an entry under `domains:` for any
/// of a group's domains replaces the group's caps.
pub fn default_domain_caps() -> Vec<DomainCap> {
    let cap = |domains: &[&str], concurrency, per_second| DomainCap {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        concurrency: Some(concurrency),
        per_second: Some(per_second),
    };
    vec![
        cap(&["gmail.com", "googlemail.com"], 10, 20),
        cap(&["outlook.com", "hotmail.com", "live.com"], 5, 10),
        cap(&["yahoo.com"], 5, 10),
    ]
}

/// The domain caps: the defaults, with each configured entry replacing the default group it
/// names (or added on its own).
pub(super) fn domain_caps(
    raw: Option<BTreeMap<String, RawDomainCap>>,
) -> Result<Vec<DomainCap>, (&'static str, String)> {
    let mut caps = default_domain_caps();
    for (domain, entry) in raw.unwrap_or_default() {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || !domain.contains('.') || domain.contains('@') {
            return Err((
                "domains",
                format!("`{domain}` is not a domain name like gmail.com"),
            ));
        }
        if entry.concurrency == Some(0) {
            return Err((
                "domains",
                format!("{domain}: concurrency must be at least 1 (leave it out for no cap)"),
            ));
        }
        if entry.per_second == Some(0) {
            return Err((
                "domains",
                format!("{domain}: per_second must be at least 1 (leave it out for no cap)"),
            ));
        }
        let cap = match caps.iter_mut().find(|c| c.domains.contains(&domain)) {
            Some(cap) => cap,
            None => {
                caps.push(DomainCap {
                    domains: vec![domain.clone()],
                    concurrency: None,
                    per_second: None,
                });
                caps.last_mut().expect("just pushed")
            }
        };
        cap.concurrency = entry.concurrency;
        cap.per_second = entry.per_second;
    }
    Ok(caps)
}

/// The relays' checked order: the primary first, then the fallbacks as listed. `check`
/// validates one relay (with its position, for messages).
pub(super) fn order<R>(
    raw: RawRelays,
    mut check: impl FnMut(RawSmtp, RelayRole) -> Result<R, (&'static str, String)>,
    name_of: impl Fn(&R) -> &str,
) -> Result<Vec<R>, (&'static str, String)> {
    let list = match raw {
        RawRelays::One(one) => {
            if one.role == Some(RelayRole::Fallback) {
                return Err((
                    "smtp.role",
                    "a single relay is the primary; `fallback` needs a primary listed before it"
                        .into(),
                ));
            }
            return Ok(vec![check(*one, RelayRole::Primary)?]);
        }
        RawRelays::Many(list) => list,
    };
    if list.is_empty() {
        return Err(("smtp", "the list of relays is empty".into()));
    }
    let explicit = list.iter().any(|r| r.role.is_some());
    let primaries = list
        .iter()
        .enumerate()
        .filter(|(i, r)| match r.role {
            Some(role) => role == RelayRole::Primary,
            None => !explicit && *i == 0,
        })
        .count();
    if primaries != 1 {
        return Err((
            "smtp.role",
            format!(
                "the list of relays has {primaries} with `role: primary`; exactly one must be (the others `role: fallback`)"
            ),
        ));
    }
    let mut primary = Vec::new();
    let mut fallbacks = Vec::new();
    for (i, r) in list.into_iter().enumerate() {
        let role = match r.role {
            Some(role) => role,
            None if !explicit && i == 0 => RelayRole::Primary,
            None => RelayRole::Fallback,
        };
        let checked = check(r, role)?;
        if role == RelayRole::Primary {
            primary.push(checked);
        } else {
            fallbacks.push(checked);
        }
    }
    primary.extend(fallbacks);
    let mut names = std::collections::HashSet::new();
    for r in &primary {
        if !names.insert(name_of(r).to_owned()) {
            return Err((
                "smtp.name",
                format!(
                    "two relays are named `{}`; give each its own `name`",
                    name_of(r)
                ),
            ));
        }
    }
    Ok(primary)
}

/// The certificates of `ca_file`, for a relay whose TLS certificate a private CA issued.
pub(super) fn read_ca(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    crate::inbound::config::read_roots(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warmup_ramp_grows_by_its_factor_each_day() {
        let w = Warmup {
            first_day: 200,
            factor: 1.5,
        };
        assert_eq!(
            (w.cap(0), w.cap(1), w.cap(2), w.cap(10)),
            (200, 300, 450, 11_533)
        );
    }

    #[test]
    fn a_configured_domain_replaces_its_default_group() {
        let raw: BTreeMap<String, RawDomainCap> = serde_yaml::from_str(
            "Gmail.com: {concurrency: 1, per_second: 10}\nexample.org: {concurrency: 2}\n",
        )
        .unwrap();
        let caps = domain_caps(Some(raw)).unwrap();
        let gmail = caps.iter().find(|c| c.domains[0] == "gmail.com").unwrap();
        assert_eq!(gmail.domains, ["gmail.com", "googlemail.com"]);
        assert_eq!((gmail.concurrency, gmail.per_second), (Some(1), Some(10)));
        assert!(caps
            .iter()
            .any(|c| c.domains == ["example.org"] && c.concurrency == Some(2)));
        let bad: BTreeMap<String, RawDomainCap> =
            serde_yaml::from_str("gmail.com: {concurrency: 0}\n").unwrap();
        let (field, reason) = domain_caps(Some(bad)).unwrap_err();
        assert_eq!(field, "domains");
        assert!(reason.contains("gmail.com: concurrency"), "{reason}");
    }

    /// The shipped config with its `smtp:` block replaced by `smtp`.
    fn parse_with(smtp: &str) -> Result<super::super::Config, super::super::ConfigError> {
        let shipped = include_str!("../../config/newsletter.yaml");
        let start = shipped.find("\nsmtp:\n").unwrap() + 1;
        let end = shipped.find("\nweb:\n").unwrap() + 1;
        let text = format!("{}{smtp}{}", &shipped[..start], &shipped[end..]);
        super::super::Config::parse(std::path::Path::new("config/newsletter.yaml"), &text)
    }

    #[test]
    fn a_single_block_is_the_primary_and_a_list_puts_the_primary_first() {
        let one = parse_with("smtp: {host: mx.example.com, port: 25, tls: none}\n").unwrap();
        assert_eq!(one.smtp.name, "mx.example.com:25");
        assert_eq!(one.smtp.role, RelayRole::Primary);
        assert!(one.fallbacks.is_empty());
        let list = parse_with(
            "smtp:
  - {name: backup, role: fallback, host: b.example.com, port: 587, tls: starttls, concurrency: 2}
  - {name: ses, role: primary, host: a.example.com, port: 587, tls: starttls, per_hour: 100,
     per_day: 50000, warmup: {first_day: 200, factor: 1.5}}
",
        )
        .unwrap();
        assert_eq!(list.smtp.name, "ses");
        assert_eq!(list.smtp.limits.per_hour, Some(100));
        assert_eq!(list.smtp.limits.warmup.unwrap().first_day, 200);
        assert_eq!(list.fallbacks.len(), 1);
        assert_eq!(list.fallbacks[0].name, "backup");
        assert_eq!(list.fallbacks[0].concurrency, 2);
        // Without roles, the first is the primary.
        let plain = parse_with(
            "smtp:\n  - {host: a.example.com, port: 25, tls: none}\n  - {host: b.example.com, port: 25, tls: none}\n",
        )
        .unwrap();
        assert_eq!(plain.smtp.host, "a.example.com");
        assert_eq!(plain.fallbacks[0].role, RelayRole::Fallback);
    }

    #[test]
    fn a_bad_list_of_relays_is_refused_with_the_field_and_reason() {
        let reason = |smtp: &str| parse_with(smtp).unwrap_err().to_string();
        let two = reason(
            "smtp:\n  - {host: a, port: 25, tls: none, role: primary}\n  - {host: b, port: 25, tls: none, role: primary}\n",
        );
        assert!(
            two.contains("field `smtp.role`: the list of relays has 2"),
            "{two}"
        );
        let same = reason(
            "smtp:\n  - {host: a, port: 25, tls: none}\n  - {host: a, port: 25, tls: none}\n",
        );
        assert!(same.contains("two relays are named `a:25`"), "{same}");
        let typo = reason(
            "smtp:\n  - {host: a, port: 25, tls: none}\n  - {hots: b, port: 25, tls: none}\n",
        );
        assert!(
            typo.contains("smtp relay #2: unknown field `hots`"),
            "{typo}"
        );
        let zero = reason("smtp: {host: a, port: 25, tls: none, per_hour: 0}\n");
        assert!(
            zero.contains("field `smtp.per_hour`: relay a:25: must be at least 1"),
            "{zero}"
        );
        let ca = reason("smtp: {host: a, port: 465, tls: tls, ca_file: missing-ca.pem}\n");
        assert!(
            ca.contains("field `smtp.ca_file`") && ca.contains("missing-ca.pem"),
            "{ca}"
        );
        let empty = reason("smtp: []\n");
        assert!(empty.contains("the list of relays is empty"), "{empty}");
    }
}
