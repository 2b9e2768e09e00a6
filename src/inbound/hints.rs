//! Attribution: which delivery (issue, subscriber) a report is about. Only signed evidence
//! attributes, in this order: the signed VERP tag of the address the report was sent to; a
//! signed tag quoted in the report (the original's Return-Path or List-Unsubscribe); our
//! signed Message-ID quoted in the report. What else a report says (an unsigned or legacy
//! Message-ID, the failed address) is kept as a claim to show the operator, never acted on:
//! anyone can write it.

use std::sync::LazyLock;

use mailparse::{MailHeaderMap, ParsedMail};
use regex::Regex;

use super::Context;
use crate::mail::verp::{Tag, VerpKey};
use crate::store::{IssueNumber, SubscriberId};

/// One of our Message-IDs: `<verdicts.<slot>.<issue>.<subscriber>.<mac>@<domain>>`, or
/// the legacy form without the MAC that issues sent before IDs were signed carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurMessageId {
    pub issue: IssueNumber,
    pub subscriber: SubscriberId,
    pub domain: String,
    /// How far the ID can be trusted.
    pub trust: IdTrust,
}

/// Whether a Message-ID of our form proves anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTrust {
    /// Its MAC verifies: we made it for this delivery.
    Signed,
    /// The old form without a MAC: it names a delivery but anyone can write it.
    Legacy,
    /// It carries a MAC that does not verify (or there was no key to check it with).
    Forged,
}

impl IdTrust {
    pub fn as_str(self) -> &'static str {
        match self {
            IdTrust::Signed => "signed",
            IdTrust::Legacy => "legacy",
            IdTrust::Forged => "forged",
        }
    }
}

static OUR_MESSAGE_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)verdicts\.\d{8}T\d{4}Z\.([1-9]\d{0,17})\.([1-9]\d{0,17})(?:\.([a-z0-9]{1,32}))?@([a-z0-9.-]+)",
    )
    .expect("valid regex")
});

/// A local part that carries a tag: `…+<b|u>-<digits>-<digits>-<base32>`.
static TAG_SHAPED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\+[bu]-\d+-\d+-[a-z0-9]*@|\+[bu]-\d+-\d+-[a-z0-9]*$").expect("valid regex")
});

impl OurMessageId {
    /// Finds our Message-IDs in `text` (a header value or a report body): the first whose
    /// MAC verifies with `key`, else the first of any kind.
    pub fn find(text: &str, key: Option<&VerpKey>) -> Option<Self> {
        let mut first = None;
        for c in OUR_MESSAGE_ID.captures_iter(text).take(32) {
            let (Ok(issue), Ok(subscriber)) = (c[1].parse(), c[2].parse()) else {
                continue;
            };
            let (issue, subscriber) = (IssueNumber(issue), SubscriberId(subscriber));
            let trust = match (c.get(3), key) {
                (None, _) => IdTrust::Legacy,
                (Some(mac), Some(key))
                    if key.verify_message_id_tag(issue, subscriber, mac.as_str()) =>
                {
                    IdTrust::Signed
                }
                (Some(_), _) => IdTrust::Forged,
            };
            let id = OurMessageId {
                issue,
                subscriber,
                domain: c[4].to_ascii_lowercase(),
                trust,
            };
            if trust == IdTrust::Signed {
                return Some(id);
            }
            first.get_or_insert(id);
        }
        first
    }
}

/// Everything in a message that may say which delivery it concerns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// The verified tag of the address the message was sent to.
    pub verp: Option<Tag>,
    /// A verified tag quoted inside the report (the original's Return-Path,
    /// Original-Mail-From or List-Unsubscribe).
    pub quoted_verp: Option<Tag>,
    /// Our Message-ID quoted in the report (signed, or only a claim: see its `trust`).
    pub message_id: Option<OurMessageId>,
    /// Addresses the report says failed or complained (Final-Recipient, Original-Recipient,
    /// Original-Rcpt-To, X-Failed-Recipients, addresses named by a plain-text bounce).
    pub recipients: Vec<String>,
}

/// The delivery a message is attributed to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// Signed evidence names the delivery: the message may act on it.
    Delivery {
        issue: IssueNumber,
        subscriber: SubscriberId,
        by: &'static str,
    },
    /// Our Message-ID without a MAC that verifies (the legacy form, or a forged one). It
    /// names a delivery but proves nothing: recorded as unattributed, never applied.
    UnsignedMessageId {
        issue: IssueNumber,
        subscriber: SubscriberId,
        trust: IdTrust,
    },
    /// Only addresses, which anyone can write: recorded as unattributed, never applied.
    Addresses(Vec<String>),
    Nothing,
}

impl Attribution {
    /// True when the message may change a subscriber.
    pub fn is_signed(&self) -> bool {
        matches!(self, Attribution::Delivery { .. })
    }
}

impl Hints {
    /// The best attribution available, in order of trust.
    pub fn attribution(&self) -> Attribution {
        if let Some(t) = self.verp {
            return Attribution::Delivery {
                issue: t.issue,
                subscriber: t.subscriber,
                by: "verp",
            };
        }
        if let Some(t) = self.quoted_verp {
            return Attribution::Delivery {
                issue: t.issue,
                subscriber: t.subscriber,
                by: "quoted-verp",
            };
        }
        if let Some(m) = &self.message_id {
            if m.trust == IdTrust::Signed {
                return Attribution::Delivery {
                    issue: m.issue,
                    subscriber: m.subscriber,
                    by: "message-id",
                };
            }
            return Attribution::UnsignedMessageId {
                issue: m.issue,
                subscriber: m.subscriber,
                trust: m.trust,
            };
        }
        if !self.recipients.is_empty() {
            return Attribution::Addresses(self.recipients.clone());
        }
        Attribution::Nothing
    }

    /// Keeps `found` unless a Message-ID as trusted is already known (a signed one wins
    /// over an unsigned one found earlier).
    pub(super) fn note_message_id(&mut self, found: Option<OurMessageId>) {
        let Some(found) = found else { return };
        match &self.message_id {
            Some(known) if known.trust == IdTrust::Signed || found.trust != IdTrust::Signed => {}
            _ => self.message_id = Some(found),
        }
    }

    pub(super) fn add_recipient(&mut self, addr: &str) {
        let addr = bare_address(addr);
        if addr.contains('@')
            && !self
                .recipients
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&addr))
        {
            self.recipients.push(addr);
        }
    }

    /// Reads the headers of the original message quoted in a report.
    pub(super) fn read_quoted_headers(
        &mut self,
        headers: &[mailparse::MailHeader<'_>],
        cx: Context<'_>,
    ) {
        for name in ["Return-Path", "List-Unsubscribe"] {
            for value in headers.get_all_values(name) {
                self.read_quoted_address(&value, cx);
            }
        }
        if let Some(v) = headers.get_first_value("Message-ID") {
            self.note_message_id(OurMessageId::find(&v, cx.key));
        }
    }

    /// Looks for a signed tag in a quoted address field (several addresses allowed).
    pub(super) fn read_quoted_address(&mut self, value: &str, cx: Context<'_>) {
        let Some(key) = cx.key else { return };
        if self.quoted_verp.is_some() {
            return;
        }
        for part in value.split([',', ' ', '\t', '\r', '\n']) {
            let addr = part
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim_start_matches("mailto:");
            let addr = addr.split('?').next().unwrap_or(addr);
            if let Some(tag) = key.verify_address(addr) {
                self.quoted_verp = Some(tag);
                return;
            }
        }
    }
}

/// `rfc822; Ada@Example.com` or `<ada@example.com>` → `Ada@Example.com`.
pub(super) fn bare_address(field: &str) -> String {
    let value = field.split_once(';').map_or(field, |(_, v)| v);
    value
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string()
}

/// What the address a message was delivered to says.
pub(super) enum EnvelopeTag {
    Verified(Tag),
    /// Carries something shaped like our tag that does not verify.
    Forged(String),
    None,
}

/// The tag on the envelope recipient: the one the MTA passed, else Delivered-To,
/// X-Original-To, To and Cc (the first address shaped like a tag decides).
pub(super) fn envelope_tag(mail: &ParsedMail<'_>, cx: Context<'_>) -> EnvelopeTag {
    let mut candidates: Vec<String> = cx
        .envelope_recipient
        .map(str::to_string)
        .into_iter()
        .collect();
    for name in ["Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc"] {
        for value in mail.headers.get_all_values(name) {
            match mailparse::addrparse(&value) {
                Ok(list) => {
                    for addr in list.iter() {
                        match addr {
                            mailparse::MailAddr::Single(s) => candidates.push(s.addr.clone()),
                            mailparse::MailAddr::Group(g) => {
                                candidates.extend(g.addrs.iter().map(|s| s.addr.clone()))
                            }
                        }
                    }
                }
                Err(_) => candidates.push(bare_address(&value)),
            }
        }
    }
    for addr in candidates {
        if !TAG_SHAPED.is_match(addr.trim()) {
            continue;
        }
        return match cx.key.and_then(|k| k.verify_address(&addr)) {
            Some(tag) => EnvelopeTag::Verified(tag),
            None => EnvelopeTag::Forged(addr),
        };
    }
    EnvelopeTag::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_message_id_in_any_case() {
        let m = OurMessageId::find(
            "Message-ID: <VERDICTS.20260105T0700Z.12.3456@News.Example.com>",
            None,
        )
        .unwrap();
        assert_eq!((m.issue.get(), m.subscriber.get()), (12, 3456));
        assert_eq!(m.domain, "news.example.com");
        assert_eq!(m.trust, IdTrust::Legacy);
        assert_eq!(OurMessageId::find("<CAF=abc@mail.gmail.com>", None), None);
        assert_eq!(
            OurMessageId::find("<verdicts.20260105T0700Z.0.1@x>", None),
            None
        );
    }

    #[test]
    fn only_a_message_id_whose_mac_verifies_is_signed() {
        let key = VerpKey::derive(b"0123456789abcdef0123456789abcdef");
        let mac = key.message_id_tag(IssueNumber(12), SubscriberId(3456));
        let signed = format!("<verdicts.20260105T0700Z.12.3456.{mac}@news.example.com>");
        let m = OurMessageId::find(&signed.to_ascii_uppercase(), Some(&key)).unwrap();
        assert_eq!(m.trust, IdTrust::Signed);
        assert_eq!((m.issue.get(), m.subscriber.get()), (12, 3456));
        // The same MAC on another subscriber, a made-up MAC, no key to check with.
        let moved = signed.replace(".3456.", ".3457.");
        assert_eq!(
            OurMessageId::find(&moved, Some(&key)).unwrap().trust,
            IdTrust::Forged
        );
        let made_up = "<verdicts.20260105T0700Z.12.3456.aaaabbbbccccdddd@news.example.com>";
        assert_eq!(
            OurMessageId::find(made_up, Some(&key)).unwrap().trust,
            IdTrust::Forged
        );
        assert_eq!(
            OurMessageId::find(&signed, None).unwrap().trust,
            IdTrust::Forged
        );
        // A signed ID anywhere in the text wins over forged ones before it.
        let both = format!("{made_up} {moved} {signed}");
        assert_eq!(
            OurMessageId::find(&both, Some(&key)).unwrap().trust,
            IdTrust::Signed
        );
        let mut hints = Hints::default();
        hints.note_message_id(OurMessageId::find(made_up, Some(&key)));
        hints.note_message_id(OurMessageId::find(&signed, Some(&key)));
        hints.note_message_id(OurMessageId::find(&moved, Some(&key)));
        assert!(hints.attribution().is_signed());
    }

    #[test]
    fn bare_address_strips_type_and_brackets() {
        assert_eq!(bare_address("rfc822; <Ada@Example.com>"), "Ada@Example.com");
        assert_eq!(bare_address(" bob@example.org "), "bob@example.org");
    }
}
