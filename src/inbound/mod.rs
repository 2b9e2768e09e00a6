//! Inbound mail: what comes back to `inbound.address`. One raw RFC 5322 message is
//! classified as bounces (hard or soft, per failed recipient), a complaint, a mailto
//! unsubscribe, or ignored with a reason; alongside come the hints that attribute it to a
//! delivery (signed VERP tag, our Message-ID quoted in the report, the failed address).
//!
//! Classification never fails and never panics: malformed, oversized or non-UTF-8 input is
//! `Ignored` with its reason, because a mail pipe must never bounce a bounce.

pub mod config;
mod hints;
pub mod imap;
pub mod mailbox;
mod plain;
pub mod process;
mod report;

pub use hints::{Attribution, Hints, IdTrust, OurMessageId};
pub use report::enhanced_status;

use crate::mail::verp::{Purpose, VerpKey};

/// Messages larger than this are ignored unread.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// More nested multiparts than any report carries; deeper input is treated as hostile.
const MAX_MULTIPARTS: usize = 64;

/// How a failed delivery counts against the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Permanent (5.x.x): the address is dead.
    Hard,
    /// Transient (4.x.x, or a full mailbox): counts only when it repeats.
    Soft,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Hard => "hard",
            Severity::Soft => "soft",
        }
    }
}

/// One recipient a bounce reports as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub severity: Severity,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1`, when the report gives one.
    pub status: Option<String>,
    /// What the remote server said, one line.
    pub diagnostic: Option<String>,
    /// The failed address (Final-Recipient, or the address a plain-text bounce names).
    pub final_recipient: Option<String>,
    /// The address as we sent it, when the report gives it (Original-Recipient).
    pub original_recipient: Option<String>,
}

/// A spam complaint relayed by a feedback loop (RFC 5965).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// Feedback-Type: `abuse`, `fraud`, `virus` or `other`.
    pub feedback_type: String,
    /// The reporting software (User-Agent), e.g. `Yahoo!-Mail-Feedback/2.0`.
    pub reporter: Option<String>,
    /// Original-Rcpt-To, when the feedback loop does not redact it.
    pub recipient: Option<String>,
}

/// Why a message changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    TooLarge {
        bytes: usize,
    },
    NotUtf8,
    Malformed(String),
    /// The `+` tag it was sent to is not one we signed.
    ForgedTag(String),
    AutoReply(String),
    /// A delay notice: the server is still trying.
    Delayed,
    /// A feedback report that is not a complaint (not-spam, auth-failure, …).
    NotComplaint(String),
    /// A bounce whose status could not be read.
    BounceWithoutStatus,
    Unrecognised,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ignored::TooLarge { bytes } => write!(
                f,
                "message is {bytes} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"
            ),
            Ignored::NotUtf8 => f.write_str("header section is not valid UTF-8"),
            Ignored::Malformed(why) => write!(f, "malformed message: {why}"),
            Ignored::ForgedTag(addr) => write!(f, "tag in {addr} does not verify"),
            Ignored::AutoReply(why) => write!(f, "auto-reply ({why})"),
            Ignored::Delayed => f.write_str("delay notice, delivery still being retried"),
            Ignored::NotComplaint(kind) => write!(f, "feedback report of type `{kind}`"),
            Ignored::BounceWithoutStatus => {
                f.write_str("looks like a bounce but gives no status code or known reason")
            }
            Ignored::Unrecognised => f.write_str("not a bounce, complaint or unsubscribe"),
        }
    }
}

/// What a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// One entry per failed recipient (never empty).
    Bounce(Vec<Failure>),
    Complaint(Complaint),
    /// Sent to a signed unsubscribe address: the subscriber leaves, whatever it says.
    Unsubscribe,
    Ignored(Ignored),
}

impl Kind {
    /// A short name for logs and the fixture manifest: `hard`, `soft`, `complaint`,
    /// `unsubscribe` or `ignored`. A bounce with any hard failure is `hard`.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Bounce(f) if f.iter().any(|f| f.severity == Severity::Hard) => "hard",
            Kind::Bounce(_) => "soft",
            Kind::Complaint(_) => "complaint",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Ignored(_) => "ignored",
        }
    }
}

/// A classified message.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub kind: Kind,
    pub hints: Hints,
    /// The Message-ID of the inbound message itself (for dedupe).
    pub message_id: Option<String>,
}

impl Inbound {
    fn ignored(why: Ignored) -> Self {
        Inbound {
            kind: Kind::Ignored(why),
            hints: Hints::default(),
            message_id: None,
        }
    }
}

/// What the classifier knows beyond the message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// Verifies VERP tags; without it no tag attributes anything.
    pub key: Option<&'a VerpKey>,
    /// The envelope recipient when the MTA passes it (e.g. Postfix pipe `${original_recipient}`);
    /// otherwise it is read from Delivered-To, X-Original-To and To.
    pub envelope_recipient: Option<&'a str>,
}

/// Classifies one raw message.
pub fn classify(raw: &[u8], cx: Context<'_>) -> Inbound {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Inbound::ignored(Ignored::TooLarge { bytes: raw.len() });
    }
    let header_end = header_section_len(raw);
    if std::str::from_utf8(&raw[..header_end]).is_err() {
        return Inbound::ignored(Ignored::NotUtf8);
    }
    if count_multiparts(raw) > MAX_MULTIPARTS {
        return Inbound::ignored(Ignored::Malformed(format!(
            "more than {MAX_MULTIPARTS} multipart sections"
        )));
    }
    let mail = match mailparse::parse_mail(raw) {
        Ok(mail) => mail,
        Err(e) => return Inbound::ignored(Ignored::Malformed(e.to_string())),
    };
    if mail.headers.is_empty() {
        return Inbound::ignored(Ignored::Malformed("no header section".into()));
    }
    let message_id = header(&mail, "Message-ID").filter(|v| !v.is_empty());

    let envelope = hints::envelope_tag(&mail, cx);
    let mut hints = Hints {
        verp: None,
        ..Hints::default()
    };
    match envelope {
        hints::EnvelopeTag::Verified(tag) => hints.verp = Some(tag),
        hints::EnvelopeTag::Forged(addr) => {
            return Inbound {
                kind: Kind::Ignored(Ignored::ForgedTag(addr)),
                hints,
                message_id,
            }
        }
        hints::EnvelopeTag::None => {}
    }

    if hints
        .verp
        .is_some_and(|t| t.purpose == Purpose::Unsubscribe)
    {
        // A vacation notice or ticket receipt that reached the unsubscribe address (some
        // responders answer every address a message names) is not the reader asking.
        let subject = header(&mail, "Subject").unwrap_or_default();
        if let Some(why) = plain::auto_reply(&mail, &subject, plain::AutoSubmitted::Replies) {
            return Inbound {
                kind: Kind::Ignored(Ignored::AutoReply(why)),
                hints,
                message_id,
            };
        }
        return Inbound {
            kind: Kind::Unsubscribe,
            hints,
            message_id,
        };
    }

    let kind = match report::report_type(&mail).as_deref() {
        Some("delivery-status") => report::delivery_status(&mail, &mut hints, cx),
        Some("feedback-report") => report::feedback(&mail, &mut hints, cx),
        _ => plain::classify(&mail, &mut hints, cx),
    };
    Inbound {
        kind,
        hints,
        message_id,
    }
}

/// The first value of a header, decoded, trimmed.
fn header(mail: &mailparse::ParsedMail<'_>, name: &str) -> Option<String> {
    use mailparse::MailHeaderMap;
    mail.headers
        .get_first_value(name)
        .map(|v| v.trim().to_string())
}

/// Length of the header section including the blank line that ends it.
fn header_section_len(raw: &[u8]) -> usize {
    let lf = memchr::memmem::find(raw, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(raw, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(raw.len()),
    }
}

fn count_multiparts(raw: &[u8]) -> usize {
    // Case-insensitive count of "multipart/" without allocating a lowered copy.
    let finder = memchr::memmem::Finder::new(b"ultipart/");
    finder
        .find_iter(raw)
        .filter(|&i| i > 0 && raw[i - 1].eq_ignore_ascii_case(&b'm'))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_input_is_ignored_with_a_reason() {
        let cx = Context::default();
        let big = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            classify(&big, cx).kind,
            Kind::Ignored(Ignored::TooLarge { .. })
        ));
        assert_eq!(
            classify(b"Subject: \xff\xfe\n\nbody", cx).kind,
            Kind::Ignored(Ignored::NotUtf8)
        );
        assert!(matches!(classify(b"", cx).kind, Kind::Ignored(_)));
        let mut nested = String::from("Subject: x\n");
        for i in 0..200 {
            nested.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
            ));
        }
        assert!(matches!(
            classify(nested.as_bytes(), cx).kind,
            Kind::Ignored(Ignored::Malformed(_))
        ));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in [1usize, 17, 512, 70_000] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(matches!(classify(&bytes, cx).kind, Kind::Ignored(_)));
        }
    }
}
