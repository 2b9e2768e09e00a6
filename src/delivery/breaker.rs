//! The circuit breaker: tells a relay that is down or throttling everyone from a problem
//! with one recipient's mailbox. It trips (and the issue pauses, with the attempts spent
//! meanwhile given back) when
//! - `trip_after` attempts in a row found no server or were refused as a whole (421,
//!   "throttling", "rate limit"), with no other reply in between;
//! - most of the recent recipients got a temporary failure that names no mailbox problem
//!   (at least [`MIN_SPREAD`] of them, more than half); or
//! - a whole pass found no server, or only refusals as a whole;
//! - a reply blames the sender rather than the reader: not authenticated (`5.7.515`,
//!   `5.7.26`), listed on a blocklist, refused by policy (see [`blames_sender`]);
//! - the relay refuses (5xx) nearly every recipient: [`REFUSAL_MIN`] or more of the recent
//!   distinct recipients and at least nine in ten of them, or every recipient of an issue
//!   that has not had a single message accepted yet (two or more). A misconfigured
//!   smarthost answers `550 5.1.1 User unknown` to everyone; believing it would empty the
//!   list.
//!
//! A 4xx about one mailbox (full, greylisted, unavailable) never trips it: that recipient
//! is retried alone. A 5xx that says a mailbox does not exist marks its reader bounced only
//! once the run has ended without such a verdict (the ledger holds it until then).

use std::collections::{HashSet, VecDeque};

use super::smtp::Attempt;
use crate::store::SubscriberId;

/// Recent attempts the spread rule looks at.
const WINDOW: usize = 32;
/// Fewest distinct recipients failing temporarily before their spread counts as an outage.
pub(super) const MIN_SPREAD: usize = 5;
/// Fewest distinct recipients refused permanently before their share counts as the relay
/// refusing everyone.
pub(super) const REFUSAL_MIN: usize = 10;

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

/// True when a reply (4xx or 5xx, at any stage) says the fault is the sender's: the
/// message is not authenticated, the sending IP or domain is on a blocklist, or a policy
/// refuses our mail. Such a reply would come for every reader, so it pauses the issue and
/// never counts against the reader.
pub fn blames_sender(reply: &str) -> bool {
    let text = reply.to_ascii_lowercase();
    let says = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if says(&["greylist", "graylist"]) {
        return false;
    }
    // Enhanced status codes about the sender's authentication (RFC 7372, and the
    // providers' own: Outlook.com 5.7.515, Gmail 5.7.26/5.7.27/5.7.25).
    if says(&[
        "5.7.515", "5.7.26", "5.7.27", "5.7.25", "5.7.23", "5.7.24", "5.7.20", "5.7.21", "5.7.22",
        "4.7.26", "4.7.27", "4.7.25", "4.7.23", "4.7.24",
    ]) {
        return true;
    }
    if says(&[
        "spamhaus",
        "blocklist",
        "blacklist",
        "block list",
        "black list",
        "dnsbl",
        "barracudacentral",
        "spamcop",
        "not authenticated",
        "unauthenticated",
        "authentication required",
        "dmarc",
        "spf check",
        "spf fail",
        "dkim",
        "sender policy",
        "relay access denied",
        "relaying denied",
        "relay not permitted",
        "relaying not permitted",
        "not permitted to relay",
        "sender address rejected",
        "sender rejected",
        "your ip",
        "sending ip",
        "client host",
        "poor reputation",
        "bad reputation",
    ]) {
        return true;
    }
    // "5.7.1 … blocked" / "5.7.1 … policy": a permanent refusal of our mail by policy, not
    // of one mailbox. A bare 5.7.1 ("Recipient address rejected: Access denied") stays the
    // reader's, and a temporary 4.7.1 is greylisting or a policy service asking us to wait.
    (text.contains("5.7.1") || text.contains("5.7.0"))
        && says(&["blocked", "policy", "reputation", "rejected due to"])
}

/// What one attempt says about the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    /// A judgement on the message or the mailbox (250, a 4xx about one mailbox).
    Answered,
    /// A temporary failure that names nobody.
    Unclear,
    /// No server, or the relay refusing us as a whole.
    Relay,
    /// A permanent refusal (5xx) by the server: the reader's mailbox, unless nearly every
    /// reader gets one.
    Refused,
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
    /// Permanent refusals in the current pass, and what the last one said.
    pass_refused: u64,
    last_refusal: Option<String>,
    /// Messages of this issue the relay has accepted, in earlier runs and this one.
    accepted: u64,
    /// How the reasons name the relay ("the relay", or "relay NAME").
    relay: String,
    /// The trip was a reply blaming the sender: another relay would not help.
    blamed_sender: bool,
}

/// The reason given when the relay refuses nearly everyone.
fn refusing_everyone(relay: &str, share: &str, last: &str) -> String {
    format!(
        "{relay} refused nearly every recipient permanently ({share}; last reply: {last}). \
         That is the relay or its configuration, not the readers: nobody was marked bounced. \
         Check smtp.host, the relay's relay permissions and login, then run the send again"
    )
}

impl Breaker {
    /// `accepted` is how many messages of the issue earlier runs got accepted.
    pub(super) fn new(trip_after: usize, accepted: u64) -> Self {
        Breaker {
            trip_after: trip_after.max(1),
            streak: Vec::new(),
            recent: VecDeque::with_capacity(WINDOW),
            tripped: None,
            refund: Vec::new(),
            pass_relay: 0,
            pass_answers: 0,
            last_relay: None,
            pass_refused: 0,
            last_refusal: None,
            accepted,
            relay: "the relay".into(),
            blamed_sender: false,
        }
    }

    /// Names the relay in the reasons it gives.
    pub(super) fn for_relay(mut self, name: &str) -> Self {
        self.relay = format!("relay {name}");
        self
    }

    /// Whether it tripped on a reply that blames the sender (authentication, policy, a
    /// blocklist), which no other relay would cure.
    pub(super) fn blamed_sender(&self) -> bool {
        self.blamed_sender
    }

    /// Why the breaker tripped, once it has.
    pub(super) fn tripped(&self) -> Option<&str> {
        self.tripped.as_deref()
    }

    /// Takes note of one attempt's result.
    pub(super) fn record(&mut self, id: SubscriberId, attempt: &Attempt) {
        let blamed = match attempt {
            Attempt::Temporary(reply) | Attempt::Permanent { reply, .. } => {
                blames_sender(reply).then_some(reply)
            }
            _ => None,
        };
        if let Some(reply) = blamed {
            self.refund.push(id);
            if self.tripped.is_none() {
                self.blamed_sender = true;
                self.trip(format!(
                    "{} refuses our mail as the sender's fault, not the reader's: {reply}. \
                     Check the sending domain's SPF, DKIM (`verdicts dkim-record`) and DMARC \
                     records and whether the relay's IP is on a blocklist; no reader was marked bounced",
                    self.relay
                ));
            }
            return;
        }
        let (sign, reply) = match attempt {
            Attempt::Sent(_) => {
                self.accepted += 1;
                (Sign::Answered, None)
            }
            Attempt::Permanent { reply, .. } => match reply_code(reply) {
                Some(500..=599) => (Sign::Refused, Some(reply)),
                // Not the server's word (e.g. an address it cannot take): this reader's.
                _ => (Sign::Answered, None),
            },
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
            Sign::Answered | Sign::Unclear | Sign::Refused => {
                self.pass_answers += 1;
                self.streak.clear();
            }
        }
        if sign == Sign::Refused {
            self.pass_refused += 1;
            self.last_refusal = reply.cloned();
            if let Some((refused, of)) = self.refusals() {
                let last = reply.cloned().unwrap_or_default();
                self.trip(refusing_everyone(
                    &self.relay,
                    &format!("{refused} of the last {of}"),
                    &last,
                ));
                return;
            }
        }
        if sign != Sign::Answered {
            if let Some((failing, of)) = self.spread() {
                let last = reply.cloned().unwrap_or_default();
                self.trip(format!(
                    "{} is failing most recipients temporarily ({failing} of the last {of}; last reply: {last})",
                    self.relay
                ));
            }
        }
    }

    /// How many of the recent distinct recipients last failed without a mailbox reason,
    /// when that is at least `MIN_SPREAD` and more than half of them.
    fn spread(&self) -> Option<(usize, usize)> {
        let (failing, seen) = self.last_signs(|s| s != Sign::Answered && s != Sign::Refused);
        (failing >= MIN_SPREAD && failing * 2 > seen).then_some((failing, seen))
    }

    /// How many of the recent distinct recipients were last refused permanently, when that
    /// is at least `REFUSAL_MIN` and nine in ten of them.
    fn refusals(&self) -> Option<(usize, usize)> {
        let (refused, seen) = self.last_signs(|s| s == Sign::Refused);
        (refused >= REFUSAL_MIN && refused * 10 >= seen * 9).then_some((refused, seen))
    }

    /// Of the recent distinct recipients (each by their last attempt), how many match, and
    /// how many there are.
    fn last_signs(&self, matches: impl Fn(Sign) -> bool) -> (usize, usize) {
        let mut seen = HashSet::new();
        let mut hits = 0;
        for (id, sign) in self.recent.iter().rev() {
            if seen.insert(*id) && matches(*sign) {
                hits += 1;
            }
        }
        (hits, seen.len())
    }

    fn describe_relay(&self) -> String {
        let last = self.last_relay.clone().unwrap_or_default();
        if last.contains("(4") || last.starts_with('4') {
            format!(
                "{} is throttling or refusing us: {last} (if it keeps doing so, lower its \
                 rate_per_second or set its per_hour/per_day limits to the provider's quota, \
                 or list a fallback relay)",
                self.relay
            )
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
        if self.tripped.is_none() && self.accepted == 0 && self.pass_refused >= 2 {
            // Not one message accepted for this issue, and every reader asked refused.
            let last = self.last_refusal.clone().unwrap_or_default();
            let all = format!("all {} recipients tried", self.pass_refused);
            self.trip(refusing_everyone(&self.relay, &all, &last));
        }
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
        self.pass_refused = 0;
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
mod tests;
