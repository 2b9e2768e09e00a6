//! Caps per recipient domain: how many messages to one domain (or a group of domains that
//! share mailboxes) may be in flight at once, and how many may start per second. A capped
//! domain's deliveries wait their turn while the other domains' go on, so one slow
//! provider never holds every connection.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::relays::DomainCap;

struct Group {
    in_flight: Option<Arc<Semaphore>>,
    rate: Option<DefaultDirectRateLimiter>,
}

/// The caps of one run.
pub(super) struct DomainGate {
    by_domain: HashMap<String, usize>,
    groups: Vec<Group>,
}

/// Whether a delivery may go now.
pub(super) enum Pass {
    /// Yes, holding its domain's slot (if its domain is capped) until the attempt ends.
    Go(Option<OwnedSemaphorePermit>),
    /// Not yet: its domain is at its cap.
    Wait,
}

impl DomainGate {
    pub(super) fn new(caps: &[DomainCap]) -> Self {
        let mut by_domain = HashMap::new();
        let mut groups = Vec::new();
        for cap in caps {
            if cap.concurrency.is_none() && cap.per_second.is_none() {
                continue;
            }
            for d in &cap.domains {
                by_domain.insert(d.to_ascii_lowercase(), groups.len());
            }
            groups.push(Group {
                in_flight: cap.concurrency.map(|n| Arc::new(Semaphore::new(n))),
                // One message at a time, evenly spaced: no burst at the start of a second.
                rate: cap.per_second.and_then(NonZeroU32::new).map(|r| {
                    RateLimiter::direct(Quota::per_second(r).allow_burst(NonZeroU32::MIN))
                }),
            });
        }
        DomainGate { by_domain, groups }
    }

    /// The group of a recipient's domain, if it is capped.
    pub(super) fn group(&self, domain: &str) -> Option<usize> {
        if self.groups.is_empty() {
            return None;
        }
        self.by_domain.get(&domain.to_ascii_lowercase()).copied()
    }

    /// Takes a slot for one message to the group, if there is one now.
    pub(super) fn try_pass(&self, group: Option<usize>) -> Pass {
        let Some(g) = group.map(|g| &self.groups[g]) else {
            return Pass::Go(None);
        };
        let permit = match &g.in_flight {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Pass::Wait,
            },
        };
        if let Some(rate) = &g.rate {
            if rate.check().is_err() {
                return Pass::Wait;
            }
        }
        Pass::Go(permit)
    }

    /// How long the dispatcher sleeps when only capped deliveries are left to hand out.
    pub(super) const NAP: Duration = Duration::from_millis(5);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_at_its_cap_waits_while_others_go() {
        let gate = DomainGate::new(&[DomainCap {
            domains: vec!["gmail.com".into(), "googlemail.com".into()],
            concurrency: Some(1),
            per_second: None,
        }]);
        let gmail = gate.group("GMail.com");
        assert!(gmail.is_some());
        assert_eq!(gate.group("googlemail.com"), gmail);
        let Pass::Go(held) = gate.try_pass(gmail) else {
            panic!("the first goes")
        };
        assert!(matches!(
            gate.try_pass(gate.group("googlemail.com")),
            Pass::Wait
        ));
        assert!(matches!(
            gate.try_pass(gate.group("example.org")),
            Pass::Go(None)
        ));
        drop(held);
        assert!(matches!(gate.try_pass(gmail), Pass::Go(Some(_))));
    }
}
