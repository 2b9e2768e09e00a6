//! The circuit breaker: tells a relay that is down or throttling everyone from a problem
//! with one recipient's mailbox. It trips (and the issue pauses, with the attempts spent
//! meanwhile given back) when
//! - `trip_after` attempts in a row found no server or were refused as a whole (421,
//!   "throttling", "rate limit"), with no other reply in between;
//! - most of the recent recipients got a temporary failure that names no mailbox problem
//!   (at least [`MIN_SPREAD`] of them, more than half); or
//! - a whole pass found no server, or only refusals as a whole.
//!
//! A 4xx about one mailbox (full, greylisted, unavailable) never trips it: that recipient
//! is retried alone.

use std::collections::{HashSet, VecDeque};

use super::smtp::Attempt;
use crate::store::SubscriberId;

/// Recent attempts the spread rule looks at.
const WINDOW: usize = 32;
/// Fewest distinct recipients failing temporarily before their spread counts as an outage.
pub(super) const MIN_SPREAD: usize = 5;

/// Who a temporary failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// The relay refuses us as a whole: 421 (closing the channel), throttling, rate limits.
    Relay,
    /// One mailbox: full, over quota, greylisted, unavailable (RFC 3463 4.1.x / 4.2.x).
    Mailbox,
    /// Not said: counts towards the spread rule.
    Unclear,
}

/// The three-digit code of a reply, as lettre prints it ("transient error (421): …") or
/// as a server sends it ("421 4.7.0 …").
pub(super) fn reply_code(reply: &str) -> Option<u16> {
    let digits = |s: &str| {
        let code = s.get(..3)?;
        code.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| code.parse().ok())?
    };
    digits(reply).or_else(|| reply.find('(').and_then(|i| digits(&reply[i + 1..])))
}

/// Sorts a temporary failure by who it is about, from its code and wording.
pub(super) fn scope(reply: &str) -> Scope {
    let text = reply.to_ascii_lowercase();
    let says = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if reply_code(reply) == Some(421)
        || says(&[
            "throttl",
            "rate limit",
            "rate-limit",
            "ratelimit",
            "too many",
            "unusual rate",
            "sending rate",
            "4.7.28",
            "slow down",
            "4.3.1",
            "4.3.2",
            "4.4.5",
        ])
    {
        Scope::Relay
    } else if says(&[
        "4.2.", "4.1.", "greylist", "graylist", "mailbox", "quota", "full",
    ]) {
        Scope::Mailbox
    } else {
        Scope::Unclear
    }
}

/// What one attempt says about the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    /// A judgement on the message or the mailbox (250, 5xx, a 4xx about one mailbox).
    Answered,
    /// A temporary failure that names nobody.
    Unclear,
    /// No server, or the relay refusing us as a whole.
    Relay,
}

/// The breaker's state for one run.
pub(super) struct Breaker {
    trip_after: usize,
    /// Relay-wide failures in a row (their recipients), with no other answer in between.
    streak: Vec<SubscriberId>,
    recent: VecDeque<(SubscriberId, Sign)>,
    tripped: Option<String>,
    /// Attempts to give back when the run pauses: those spent while the relay was down.
    refund: Vec<SubscriberId>,
    /// Relay-wide failures and other answers in the current pass.
    pass_relay: u64,
    pass_answers: u64,
    /// What the last relay-wide failure said, to tell the operator why the issue paused.
    last_relay: Option<String>,
}

impl Breaker {
    pub(super) fn new(trip_after: usize) -> Self {
        Breaker {
            trip_after: trip_after.max(1),
            streak: Vec::new(),
            recent: VecDeque::with_capacity(WINDOW),
            tripped: None,
            refund: Vec::new(),
            pass_relay: 0,
            pass_answers: 0,
            last_relay: None,
        }
    }

    /// Why the breaker tripped, once it has.
    pub(super) fn tripped(&self) -> Option<&str> {
        self.tripped.as_deref()
    }

    /// Takes note of one attempt's result.
    pub(super) fn record(&mut self, id: SubscriberId, attempt: &Attempt) {
        let (sign, reply) = match attempt {
            Attempt::Sent(_) | Attempt::Permanent { .. } => (Sign::Answered, None),
            Attempt::Temporary(reply) => match scope(reply) {
                Scope::Relay => (Sign::Relay, Some(reply)),
                Scope::Mailbox => (Sign::Answered, None),
                Scope::Unclear => (Sign::Unclear, Some(reply)),
            },
            Attempt::Connection(reply) => (Sign::Relay, Some(reply)),
            Attempt::NotDue | Attempt::LedgerGone => return,
        };
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((id, sign));
        if self.tripped.is_some() {
            if sign != Sign::Answered {
                self.refund.push(id);
            }
            return;
        }
        match sign {
            Sign::Relay => {
                self.pass_relay += 1;
                self.last_relay = reply.cloned();
                self.streak.push(id);
                if self.streak.len() >= self.trip_after {
                    let why = self.describe_relay();
                    self.trip(why);
                    return;
                }
            }
            Sign::Answered | Sign::Unclear => {
                self.pass_answers += 1;
                self.streak.clear();
            }
        }
        if sign != Sign::Answered {
            if let Some((failing, of)) = self.spread() {
                let last = reply.cloned().unwrap_or_default();
                self.trip(format!(
                    "the relay is failing most recipients temporarily ({failing} of the last {of}; last reply: {last})"
                ));
            }
        }
    }

    /// How many of the recent distinct recipients last failed without a mailbox reason,
    /// when that is at least `MIN_SPREAD` and more than half of them.
    fn spread(&self) -> Option<(usize, usize)> {
        let mut seen = HashSet::new();
        let mut failing = 0;
        for (id, sign) in self.recent.iter().rev() {
            if seen.insert(*id) && *sign != Sign::Answered {
                failing += 1;
            }
        }
        (failing >= MIN_SPREAD && failing * 2 > seen.len()).then_some((failing, seen.len()))
    }

    fn describe_relay(&self) -> String {
        let last = self.last_relay.clone().unwrap_or_default();
        if last.contains("(4") || last.starts_with('4') {
            format!("the relay is throttling or refusing us: {last}")
        } else {
            last
        }
    }

    fn trip(&mut self, reason: String) {
        self.refund.extend(self.streak.iter().copied());
        self.refund.extend(
            self.recent
                .iter()
                .filter(|(_, s)| *s != Sign::Answered)
                .map(|(id, _)| *id),
        );
        self.tripped = Some(reason);
    }

    /// The end of a pass over the due deliveries: a pass that reached no server, or only
    /// relay-wide refusals, trips the breaker too, so a list shorter than `trip_after`
    /// pauses as well. `fallback` names the relay when no failure said anything.
    pub(super) fn end_pass(&mut self, fallback: impl FnOnce() -> String) -> Option<&str> {
        if self.tripped.is_none() && self.pass_relay > 0 && self.pass_answers == 0 {
            let why = if self.last_relay.is_some() {
                self.describe_relay()
            } else {
                fallback()
            };
            self.trip(why);
        }
        self.pass_relay = 0;
        self.pass_answers = 0;
        self.tripped()
    }

    /// The recipients whose attempts the outage used up, each once.
    pub(super) fn take_refunds(&mut self) -> Vec<SubscriberId> {
        let mut ids = std::mem::take(&mut self.refund);
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(reply: &str) -> Attempt {
        Attempt::Temporary(reply.into())
    }

    fn sent() -> Attempt {
        Attempt::Sent("250 2.0.0 Ok".into())
    }

    #[test]
    fn replies_are_sorted_by_who_they_are_about() {
        for relay in [
            "transient error (421): 4.7.28 Gmail has detected an unusual rate of unsolicited mail",
            "454 Throttling failure: Maximum sending rate exceeded.",
            "451 4.7.1 Rate limit exceeded, try again later",
            "421 4.3.2 System not accepting network messages",
            "450 Too many connections from your IP",
        ] {
            assert_eq!(scope(relay), Scope::Relay, "{relay}");
        }
        for mailbox in [
            "transient error (452): 4.2.2 The email account that you tried to reach is over quota",
            "450 4.2.0 <a@b.c>: Recipient address rejected: Greylisted, see https://postgrey",
            "452 Mailbox full",
        ] {
            assert_eq!(scope(mailbox), Scope::Mailbox, "{mailbox}");
        }
        assert_eq!(
            scope("transient error (451): 4.3.0 Temporary failure"),
            Scope::Unclear
        );
        assert_eq!(reply_code("transient error (452): x"), Some(452));
        assert_eq!(reply_code("421 closing"), Some(421));
        assert_eq!(reply_code("no code here"), None);
    }

    #[test]
    fn a_throttling_streak_trips_and_refunds_every_attempt_it_cost() {
        let mut b = Breaker::new(3);
        b.record(SubscriberId(1), &sent());
        for id in 2..=4 {
            b.record(SubscriberId(id), &temp("421 4.7.28 unusual rate"));
        }
        assert!(b.tripped().unwrap().contains("4.7.28"));
        // Attempts finishing after the trip are given back too.
        b.record(SubscriberId(5), &temp("421 4.7.28 unusual rate"));
        assert_eq!(
            b.take_refunds(),
            [2, 3, 4, 5].map(SubscriberId).to_vec(),
            "the accepted one keeps its attempt"
        );
    }

    #[test]
    fn full_mailboxes_never_trip_it_however_many() {
        let mut b = Breaker::new(3);
        for id in 1..=40 {
            b.record(SubscriberId(id), &temp("452 4.2.2 Mailbox full"));
        }
        assert_eq!(b.end_pass(|| "down".into()), None);
        assert!(b.take_refunds().is_empty());
    }

    #[test]
    fn unclear_failures_trip_it_only_when_most_recipients_get_them() {
        let mut b = Breaker::new(8);
        // A few recipients failing among many accepted: their own problem.
        for id in 1..=30 {
            let a = if id % 10 == 0 {
                temp("451 4.3.0 try later")
            } else {
                sent()
            };
            b.record(SubscriberId(id), &a);
        }
        assert_eq!(b.tripped(), None);
        // One recipient retried over and over is still one recipient.
        for _ in 0..30 {
            b.record(SubscriberId(99), &temp("451 4.3.0 try later"));
        }
        assert_eq!(b.tripped(), None);
        // Most of the next recipients failing: the relay's problem.
        let mut b = Breaker::new(8);
        for id in 1..=12 {
            let a = if id % 4 == 0 {
                sent()
            } else {
                temp("451 4.3.0 try later")
            };
            b.record(SubscriberId(id), &a);
        }
        assert!(b.tripped().unwrap().contains("failing most recipients"));
        assert_eq!(b.take_refunds().len(), 9);
    }

    #[test]
    fn a_pass_of_nothing_but_faults_trips_it_even_when_short() {
        let mut b = Breaker::new(8);
        b.record(
            SubscriberId(1),
            &Attempt::Connection("cannot connect".into()),
        );
        assert_eq!(b.end_pass(|| "down".into()), Some("cannot connect"));
        assert_eq!(b.take_refunds(), [SubscriberId(1)]);

        let mut b = Breaker::new(8);
        b.record(
            SubscriberId(1),
            &Attempt::Connection("cannot connect".into()),
        );
        b.record(SubscriberId(2), &sent());
        assert_eq!(b.end_pass(|| "down".into()), None);
    }
}
