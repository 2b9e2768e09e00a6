//! Attribution: which delivery (issue, subscriber) a report is about. In order of trust:
//! the signed VERP tag of the address the report was sent to; a signed tag quoted in the
//! report (the original's Return-Path or List-Unsubscribe); our Message-ID quoted in the
//! report; the failed address itself.

use std::sync::LazyLock;

use mailparse::{MailHeaderMap, ParsedMail};
use regex::Regex;

use super::Context;
use crate::mail::verp::Tag;
use crate::store::{IssueNumber, SubscriberId};

/// One of our Message-IDs: `<verdicts.<slot>.<issue>.<subscriber>@<domain>>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurMessageId {
    pub issue: IssueNumber,
    pub subscriber: SubscriberId,
    pub domain: String,
}

static OUR_MESSAGE_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)verdicts\.\d{8}T\d{4}Z\.([1-9]\d{0,17})\.([1-9]\d{0,17})@([a-z0-9.-]+)")
        .expect("valid regex")
});

/// A local part that carries a tag: `…+<b|u>-<digits>-<digits>-<base32>`.
static TAG_SHAPED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\+[bu]-\d+-\d+-[a-z0-9]*@|\+[bu]-\d+-\d+-[a-z0-9]*$").expect("valid regex")
});

impl OurMessageId {
    /// Finds the first of our Message-IDs in `text` (a header value or a report body).
    pub fn find(text: &str) -> Option<Self> {
        let c = OUR_MESSAGE_ID.captures(text)?;
        Some(OurMessageId {
            issue: IssueNumber(c[1].parse().ok()?),
            subscriber: SubscriberId(c[2].parse().ok()?),
            domain: c[3].to_ascii_lowercase(),
        })
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
    /// Our Message-ID quoted in the report.
    pub message_id: Option<OurMessageId>,
    /// Addresses the report says failed or complained (Final-Recipient, Original-Recipient,
    /// Original-Rcpt-To, X-Failed-Recipients, addresses named by a plain-text bounce).
    pub recipients: Vec<String>,
}

/// The delivery a message is attributed to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    Delivery {
        issue: IssueNumber,
        subscriber: SubscriberId,
        by: &'static str,
    },
    /// Only addresses: the store matches them to subscribers (the issue is unknown).
    Addresses(Vec<String>),
    Nothing,
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
            return Attribution::Delivery {
                issue: m.issue,
                subscriber: m.subscriber,
                by: "message-id",
            };
        }
        if !self.recipients.is_empty() {
            return Attribution::Addresses(self.recipients.clone());
        }
        Attribution::Nothing
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
        if self.message_id.is_none() {
            if let Some(v) = headers.get_first_value("Message-ID") {
                self.message_id = OurMessageId::find(&v);
            }
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
        let m =
            OurMessageId::find("Message-ID: <VERDICTS.20260105T0700Z.12.3456@News.Example.com>")
                .unwrap();
        assert_eq!((m.issue.get(), m.subscriber.get()), (12, 3456));
        assert_eq!(m.domain, "news.example.com");
        assert_eq!(OurMessageId::find("<CAF=abc@mail.gmail.com>"), None);
        assert_eq!(OurMessageId::find("<verdicts.20260105T0700Z.0.1@x>"), None);
    }

    #[test]
    fn bare_address_strips_type_and_brackets() {
        assert_eq!(bare_address("rfc822; <Ada@Example.com>"), "Ada@Example.com");
        assert_eq!(bare_address(" bob@example.org "), "bob@example.org");
    }
}
