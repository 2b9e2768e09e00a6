//! The `inbound` section of the config file: the address bounces and mailto unsubscribes
//! come back to, and the list-hygiene thresholds.

use serde::Deserialize;

use crate::mail::address::SubscriberEmail;
use crate::store::events::Hygiene;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    hygiene: Option<RawHygiene>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHygiene {
    #[serde(default = "default_hard_bounces")]
    hard_bounces: u32,
    #[serde(default = "default_soft_bounce_issues")]
    soft_bounce_issues: u32,
}

fn default_hard_bounces() -> u32 {
    Hygiene::default().hard_bounces
}
fn default_soft_bounce_issues() -> u32 {
    Hygiene::default().soft_bounce_issues
}

/// The validated section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundConfig {
    /// `bounces@example.com`: envelope sender and mailto unsubscribe get signed `+` tags on it.
    /// Without it, the envelope sender is the From address and nothing reads replies.
    pub address: Option<String>,
    pub hygiene: Hygiene,
}

impl RawInbound {
    /// Validates the section; errors name the field (under `inbound.`) and the reason.
    pub fn validate(self) -> Result<InboundConfig, (&'static str, String)> {
        let address = match self.address {
            None => None,
            Some(a) => {
                let email =
                    SubscriberEmail::parse(&a).map_err(|e| ("inbound.address", e.to_string()))?;
                let a = email.as_str().to_string();
                if !a.contains('@') {
                    return Err(("inbound.address", format!("`{a}` has no domain")));
                }
                Some(a)
            }
        };
        let hygiene = match self.hygiene {
            None => Hygiene::default(),
            Some(h) => {
                if h.hard_bounces == 0 {
                    return Err(("inbound.hygiene.hard_bounces", "must be at least 1".into()));
                }
                if h.soft_bounce_issues == 0 {
                    return Err((
                        "inbound.hygiene.soft_bounce_issues",
                        "must be at least 1".into(),
                    ));
                }
                Hygiene {
                    hard_bounces: h.hard_bounces,
                    soft_bounce_issues: h.soft_bounce_issues,
                }
            }
        };
        Ok(InboundConfig { address, hygiene })
    }
}
