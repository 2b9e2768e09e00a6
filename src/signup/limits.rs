//! The abuse limits of the signup endpoint, as GCRA rate limiters (the `governor` crate):
//! per client IP, per address (per hour and per day), and over all signups, so a botnet
//! cannot make the newsletter send confirmation mails at will.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::signup::SignupConfig;

/// Which limit a request ran into, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: Limit,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    ClientIp,
    Address,
    Global,
}

pub struct Limits {
    clock: DefaultClock,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_address_hour: DefaultKeyedRateLimiter<String>,
    per_address_day: DefaultKeyedRateLimiter<String>,
    global: DefaultDirectRateLimiter,
    /// Whether the relay offers SMTPUTF8, as the confirmation mail worker last found it
    /// (0 not known yet, 1 yes, 2 no): an address only such a relay can deliver to is
    /// refused at signup when it does not.
    relay_smtputf8: AtomicU8,
}

/// `n` per `period`, all of them usable at once.
fn quota(n: NonZeroU32, period: Duration) -> Quota {
    let each = period / n.get();
    Quota::with_period(each.max(Duration::from_nanos(1)))
        .expect("period is not zero")
        .allow_burst(n)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

impl Limits {
    pub fn new(config: &SignupConfig) -> Self {
        let clock = DefaultClock::default();
        Limits {
            per_ip: RateLimiter::dashmap_with_clock(
                quota(config.per_ip_per_hour, HOUR),
                clock.clone(),
            ),
            per_address_hour: RateLimiter::dashmap_with_clock(
                quota(config.per_address_per_hour, HOUR),
                clock.clone(),
            ),
            per_address_day: RateLimiter::dashmap_with_clock(
                quota(config.per_address_per_day, DAY),
                clock.clone(),
            ),
            global: RateLimiter::direct_with_clock(
                quota(config.mails_per_hour, HOUR),
                clock.clone(),
            ),
            clock,
            relay_smtputf8: AtomicU8::new(0),
        }
    }

    /// Records whether the relay offers SMTPUTF8 (from the worker's last session).
    pub fn learn_relay_smtputf8(&self, offered: bool) {
        self.relay_smtputf8
            .store(if offered { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// Whether the relay offers SMTPUTF8, if known.
    pub fn relay_smtputf8(&self) -> Option<bool> {
        match self.relay_smtputf8.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    fn limited<P: governor::clock::Reference>(
        &self,
        limit: Limit,
        not_until: governor::NotUntil<P>,
    ) -> Limited
    where
        DefaultClock: Clock<Instant = P>,
    {
        Limited {
            limit,
            retry_after: not_until.wait_time_from(self.clock.now()),
        }
    }

    /// Counts one signup request from the client keyed `ip` (every POST, valid or not;
    /// see [`super::limit_key`]).
    pub fn check_client(&self, ip: IpAddr) -> Result<(), Limited> {
        self.per_ip
            .check_key(&ip)
            .map_err(|e| self.limited(Limit::ClientIp, e))
    }

    /// Counts one signup for an address (its [`limit key`](crate::mail::address::SubscriberEmail::limit_key)), whatever its status, so the answer
    /// never depends on whether the address is on the list; then one against the global cap.
    pub fn check_address(&self, email_norm: &str) -> Result<(), Limited> {
        let key = email_norm.to_owned();
        self.per_address_hour
            .check_key(&key)
            .map_err(|e| self.limited(Limit::Address, e))?;
        self.per_address_day
            .check_key(&key)
            .map_err(|e| self.limited(Limit::Address, e))?;
        self.global
            .check()
            .map_err(|e| self.limited(Limit::Global, e))
    }

    /// Forgets clients and addresses whose limits have fully recovered, so memory stays
    /// bounded however many addresses a bot tries.
    pub fn forget_idle(&self) {
        self.per_ip.retain_recent();
        self.per_address_hour.retain_recent();
        self.per_address_day.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_ip: u32) -> SignupConfig {
        let n = |v| NonZeroU32::new(v).unwrap();
        SignupConfig {
            expire_after: DAY,
            thanks_url: None,
            record_ip: false,
            trusted_proxies: Vec::new(),
            proxy_header: Default::default(),
            ipv6_prefix: 64,
            plus_tag_domains: Vec::new(),
            per_ip_per_hour: n(per_ip),
            per_address_per_hour: n(1),
            per_address_per_day: n(3),
            mails_per_hour: n(100),
        }
    }

    #[test]
    fn an_address_gets_one_signup_an_hour_and_a_client_its_quota() {
        let limits = Limits::new(&config(3));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            limits.check_client(ip).unwrap();
        }
        let over = limits.check_client(ip).unwrap_err();
        assert_eq!(over.limit, Limit::ClientIp);
        assert!(over.retry_after > Duration::from_secs(60), "{over:?}");
        limits.check_client("192.0.2.8".parse().unwrap()).unwrap();

        limits.check_address("ada@example.com").unwrap();
        let again = limits.check_address("ada@example.com").unwrap_err();
        assert_eq!(again.limit, Limit::Address);
        limits.check_address("bob@example.com").unwrap();
    }
}
