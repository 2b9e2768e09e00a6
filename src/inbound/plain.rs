//! Messages without a machine-readable report: plain-text bounces (Postfix's and Exim's
//! text, qmail's, old Exchange NDRs), auto-replies, and everything else.

use std::sync::LazyLock;

use mailparse::{MailHeaderMap, ParsedMail};
use regex::Regex;

use super::hints::{Hints, OurMessageId};
use super::report::{body_text, clean_diagnostic, enhanced_status, severity_of};
use super::{Context, Failure, Ignored, Kind, Severity};

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid regex")
}

static BOUNCE_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)undelivered mail returned to sender|mail delivery failed|delivery status notification|undeliverable|undelivered|failure notice|returned mail|delivery fail|could not be delivered|delivery has failed|non remis|unzustellbar|nondeliverable|warning: message .* delayed|delayed mail|delivery delayed",
    )
});

static DELAY_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)delayed mail|delivery status notification \(delay\)|warning: message .* delayed|delivery delayed|^delayed:",
    )
});

static AUTO_REPLY_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)^\s*(auto(matic)?[ -]?(reply|response|antwort)|automatic response|out of (the )?office|ooo\b|abwesenheit|vacation|away from|r[ée]ponse automatique|autoreply)",
    )
});

/// Where a bounce starts quoting the original message; text after it is not the bounce's.
static QUOTE_START: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?im)^[\s-]*(this is a copy of the message|below this line is a copy of the message|original message follows|original message headers|-+ original message -+|return-path:|received: )",
    )
});

static ADDR_COLON: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^\s*<([^<>\s@]+@[^<>\s]+)>:"));
static ADDR_LINE: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?m)^\s*<?([^<>\s@():;,]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?\s*(?:\([^)]*\))?\s*(?:on .*)?$")
});
static SMTP_REPLY: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?im)(?:^\s*|said:\s*|error:\s*|returned '|reply:\s*)([45][0-5]\d)[ -]\S")
});

const HARD_PHRASES: [&str; 16] = [
    "user unknown",
    "unknown user",
    "no such user",
    "no such mailbox",
    "mailbox unavailable",
    "mailbox not found",
    "does not exist",
    "doesn't exist",
    "recipient not found",
    "recipnotfound",
    "no mailbox here by that name",
    "address rejected",
    "invalid recipient",
    "account has been disabled",
    "account is disabled",
    "this is a permanent error",
];
const SOFT_PHRASES: [&str; 8] = [
    "mailbox full",
    "mailbox is full",
    "over quota",
    "quota exceeded",
    "exceeded storage",
    "insufficient system storage",
    "try again later",
    "temporary failure",
];
const DELAY_PHRASES: [&str; 6] = [
    "has not yet been delivered",
    "not been delivered yet",
    "delivery attempts will continue",
    "will continue to try",
    "will retry",
    "still trying",
];

pub(super) fn classify(mail: &ParsedMail<'_>, hints: &mut Hints, cx: Context<'_>) -> Kind {
    let header = |name: &str| mail.headers.get_first_value(name).unwrap_or_default();
    let subject = header("Subject");
    let from = header("From").to_ascii_lowercase();
    let from_daemon = is_bounce_sender(&from);
    if !from_daemon {
        if let Some(why) = auto_reply(mail, &subject, AutoSubmitted::Any) {
            return Kind::Ignored(Ignored::AutoReply(why));
        }
    }
    if !from_daemon && !BOUNCE_SUBJECT.is_match(&subject) {
        return Kind::Ignored(Ignored::Unrecognised);
    }
    if DELAY_SUBJECT.is_match(&subject) {
        return Kind::Ignored(Ignored::Delayed);
    }

    let full = text_of(mail);
    read_quoted_text(&full, hints, cx);
    let own = match QUOTE_START.find(&full) {
        Some(m) => &full[..m.start()],
        None => &full[..],
    };
    let lower = own.to_ascii_lowercase();

    for v in mail.headers.get_all_values("X-Failed-Recipients") {
        for a in v.split(',') {
            hints.add_recipient(a);
        }
    }
    for c in ADDR_COLON
        .captures_iter(own)
        .chain(ADDR_LINE.captures_iter(own))
    {
        hints.add_recipient(&c[1]);
    }

    let status = enhanced_status(own);
    let (severity, diagnostic) = if let Some(s) = &status {
        (severity_of(s), line_with(own, s))
    } else if let Some(c) = SMTP_REPLY.captures(own) {
        let code = c.get(1).expect("group 1");
        let severity = if code.as_str().starts_with('5') {
            Severity::Hard
        } else {
            Severity::Soft
        };
        (severity, line_with(own, code.as_str()))
    } else if let Some(p) = SOFT_PHRASES.iter().find(|p| lower.contains(*p)) {
        (Severity::Soft, line_with_lower(own, &lower, p))
    } else if let Some(p) = HARD_PHRASES.iter().find(|p| lower.contains(*p)) {
        (Severity::Hard, line_with_lower(own, &lower, p))
    } else if DELAY_PHRASES.iter().any(|p| lower.contains(p)) {
        return Kind::Ignored(Ignored::Delayed);
    } else {
        return Kind::Ignored(Ignored::BounceWithoutStatus);
    };
    if severity == Severity::Soft && DELAY_PHRASES.iter().any(|p| lower.contains(p)) {
        return Kind::Ignored(Ignored::Delayed);
    }

    let failure = |recipient: Option<String>| Failure {
        severity,
        status: status.clone(),
        diagnostic: diagnostic.clone(),
        final_recipient: recipient,
        original_recipient: None,
    };
    let failures = if hints.recipients.is_empty() {
        vec![failure(None)]
    } else {
        hints
            .recipients
            .iter()
            .cloned()
            .map(Some)
            .map(failure)
            .collect()
    };
    Kind::Bounce(failures)
}

/// MAILER-DAEMON, postmaster, Exchange's system mailbox or a "Mail Delivery" sender.
fn is_bounce_sender(from_lower: &str) -> bool {
    let addr = from_lower
        .rsplit_once('<')
        .map_or(from_lower, |(_, a)| a)
        .trim_end_matches('>')
        .trim();
    let local = addr.split('@').next().unwrap_or("");
    matches!(
        local,
        "mailer-daemon" | "postmaster" | "mail-daemon" | "mailerdaemon"
    ) || local.starts_with("microsoftexchange")
        || from_lower.contains("mail delivery")
}

/// Which `Auto-Submitted` values (RFC 3834) mark a message as an automatic reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AutoSubmitted {
    /// Any value but `no`: nothing automatic is a bounce a person would send.
    Any,
    /// Only `auto-replied` (a response to a message: a vacation notice, a ticket
    /// receipt). `auto-generated` is left out: a mailbox provider may set it on the
    /// unsubscribe it sends on the reader's behalf (for instance when they report spam),
    /// and that request must still count.
    Replies,
}

/// Why a message is an automatic reply (RFC 3834 and the headers vacation programs set).
pub(super) fn auto_reply(
    mail: &ParsedMail<'_>,
    subject: &str,
    auto_submitted: AutoSubmitted,
) -> Option<String> {
    let h = |name: &str| {
        mail.headers
            .get_first_value(name)
            .map(|v| v.trim().to_string())
    };
    if let Some(v) = h("Auto-Submitted") {
        let value = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let counts = match auto_submitted {
            AutoSubmitted::Any => value != "no",
            AutoSubmitted::Replies => value == "auto-replied",
        };
        if counts {
            return Some(format!("Auto-Submitted: {v}"));
        }
    }
    for name in ["X-Autoreply", "X-Autorespond", "X-Autoresponse"] {
        if let Some(v) = h(name) {
            return Some(format!("{name}: {v}"));
        }
    }
    if let Some(v) = h("Precedence") {
        if v.eq_ignore_ascii_case("auto_reply") {
            return Some(format!("Precedence: {v}"));
        }
    }
    if AUTO_REPLY_SUBJECT.is_match(subject) {
        return Some(format!("subject `{}`", subject.trim()));
    }
    None
}

/// The decoded text of the message: every text/plain part, else the HTML with tags removed.
fn text_of(mail: &ParsedMail<'_>) -> String {
    let mut text = String::new();
    let mut html = String::new();
    for part in mail.parts() {
        if !part.subparts.is_empty() {
            continue;
        }
        match part.ctype.mimetype.as_str() {
            "text/plain" => {
                text.push_str(&part.get_body().unwrap_or_else(|_| body_text(part)));
                text.push('\n');
            }
            "text/html" => html.push_str(&part.get_body().unwrap_or_else(|_| body_text(part))),
            _ => {}
        }
    }
    if text.trim().is_empty() && !html.is_empty() {
        static TAG: LazyLock<Regex> = LazyLock::new(|| re(r"<[^>]*>"));
        return TAG.replace_all(&html, "\n").into_owned();
    }
    text
}

/// Hints in a quoted original that is pasted as text rather than attached.
fn read_quoted_text(text: &str, hints: &mut Hints, cx: Context<'_>) {
    for line in text.lines() {
        let lower = line.trim_start().to_ascii_lowercase();
        if lower.starts_with("return-path:") || lower.starts_with("list-unsubscribe:") {
            let value = line.split_once(':').map_or("", |(_, v)| v);
            hints.read_quoted_address(value, cx);
        }
    }
    hints.note_message_id(OurMessageId::find(text, cx.key));
}

fn line_with(text: &str, needle: &str) -> Option<String> {
    text.lines()
        .find(|l| l.contains(needle))
        .map(clean_diagnostic)
}

fn line_with_lower(text: &str, lower: &str, needle: &str) -> Option<String> {
    let at = lower.find(needle)?;
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    Some(clean_diagnostic(&text[start..end]))
}
