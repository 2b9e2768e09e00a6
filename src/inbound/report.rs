//! Machine-readable reports: delivery status notifications (RFC 3464) and feedback-loop
//! complaints (ARF, RFC 5965).

use mailparse::{MailHeader, MailHeaderMap, ParsedMail};

use super::hints::{bare_address, Hints, OurMessageId};
use super::{plain, Complaint, Context, Failure, Ignored, Kind, Severity};

const DSN_TYPES: [&str; 3] = [
    "message/delivery-status",
    "message/global-delivery-status",
    "text/delivery-status",
];
const QUOTED_TYPES: [&str; 4] = [
    "message/rfc822",
    "message/global",
    "text/rfc822-headers",
    "message/rfc822-headers",
];

/// The report type of a `multipart/report` message (lowercase), or what its parts show it is.
pub(super) fn report_type(mail: &ParsedMail<'_>) -> Option<String> {
    if let Some(t) = mail
        .parts()
        .find(|p| p.ctype.mimetype == "multipart/report")
        .and_then(|p| p.ctype.params.get("report-type"))
    {
        return Some(t.trim().to_ascii_lowercase());
    }
    if mail
        .parts()
        .any(|p| DSN_TYPES.contains(&p.ctype.mimetype.as_str()))
    {
        return Some("delivery-status".into());
    }
    if mail
        .parts()
        .any(|p| p.ctype.mimetype == "message/feedback-report")
    {
        return Some("feedback-report".into());
    }
    None
}

/// A DSN: one failure per recipient block whose action is `failed`.
pub(super) fn delivery_status(mail: &ParsedMail<'_>, hints: &mut Hints, cx: Context<'_>) -> Kind {
    let mut failures = Vec::new();
    let mut delayed = false;
    let mut recipient_blocks = 0;
    for part in mail.parts() {
        let mimetype = part.ctype.mimetype.as_str();
        if DSN_TYPES.contains(&mimetype) {
            for block in field_blocks(&body_text(part)) {
                let Ok((fields, _)) = mailparse::parse_headers(block.as_bytes()) else {
                    continue;
                };
                if fields.get_first_value("Final-Recipient").is_none()
                    && fields.get_first_value("Action").is_none()
                {
                    continue;
                }
                recipient_blocks += 1;
                match recipient_outcome(&fields) {
                    Outcome::Failed(f) => {
                        if let Some(r) = &f.final_recipient {
                            hints.add_recipient(r);
                        }
                        failures.push(f);
                    }
                    Outcome::Delayed => delayed = true,
                    Outcome::Other => {}
                }
            }
        } else if QUOTED_TYPES.contains(&mimetype) {
            read_quoted(part, hints, cx);
        }
    }
    find_message_id_in_text(mail, hints, cx);
    if !failures.is_empty() {
        return Kind::Bounce(failures);
    }
    if delayed {
        return Kind::Ignored(Ignored::Delayed);
    }
    if recipient_blocks == 0 {
        // A report without machine-readable recipients: read it like a plain bounce.
        return plain::classify(mail, hints, cx);
    }
    Kind::Ignored(Ignored::Unrecognised)
}

/// An ARF report: a complaint unless its feedback type says otherwise.
pub(super) fn feedback(mail: &ParsedMail<'_>, hints: &mut Hints, cx: Context<'_>) -> Kind {
    let mut feedback_type = None;
    let mut reporter = None;
    let mut recipient = None;
    for part in mail.parts() {
        let mimetype = part.ctype.mimetype.as_str();
        if mimetype == "message/feedback-report" {
            let text = body_text(part);
            let Ok((fields, _)) = mailparse::parse_headers(text.as_bytes()) else {
                continue;
            };
            feedback_type = fields
                .get_first_value("Feedback-Type")
                .map(|v| v.trim().to_ascii_lowercase());
            reporter = fields
                .get_first_value("User-Agent")
                .map(|v| v.trim().to_string());
            if let Some(r) = fields.get_first_value("Original-Rcpt-To") {
                hints.add_recipient(&r);
                recipient = Some(bare_address(&r));
            }
            for v in fields.get_all_values("Original-Mail-From") {
                hints.read_quoted_address(&v, cx);
            }
        } else if QUOTED_TYPES.contains(&mimetype) {
            read_quoted(part, hints, cx);
        }
    }
    find_message_id_in_text(mail, hints, cx);
    let feedback_type = feedback_type.unwrap_or_else(|| "abuse".into());
    match feedback_type.as_str() {
        "abuse" | "fraud" | "virus" | "other" => Kind::Complaint(Complaint {
            feedback_type,
            reporter,
            recipient,
        }),
        _ => Kind::Ignored(Ignored::NotComplaint(feedback_type)),
    }
}

enum Outcome {
    Failed(Failure),
    Delayed,
    Other,
}

fn recipient_outcome(fields: &[MailHeader<'_>]) -> Outcome {
    let field = |name: &str| {
        fields
            .get_first_value(name)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|v| !v.is_empty())
    };
    let action = field("Action").map(|a| a.to_ascii_lowercase());
    let diagnostic = field("Diagnostic-Code").map(|d| clean_diagnostic(&d));
    let status = field("Status")
        .as_deref()
        .and_then(enhanced_status)
        .or_else(|| diagnostic.as_deref().and_then(enhanced_status));
    let class = status
        .as_deref()
        .and_then(|s| s.chars().next())
        .or_else(|| diagnostic.as_deref().and_then(smtp_reply_class));
    match (action.as_deref(), class) {
        (Some(a), _) if a.starts_with("delayed") => return Outcome::Delayed,
        (Some(a), _) if a.starts_with("failed") => {}
        (None, Some('5' | '4')) => {}
        _ => return Outcome::Other,
    }
    let severity = match (status.as_deref(), class) {
        (Some(s), _) => severity_of(s),
        (None, Some('4')) => Severity::Soft,
        // `failed` is final by definition (RFC 3464 §2.3.3) even without a status.
        _ => Severity::Hard,
    };
    Outcome::Failed(Failure {
        severity,
        status,
        diagnostic,
        final_recipient: field("Final-Recipient").map(|r| bare_address(&r)),
        original_recipient: field("Original-Recipient").map(|r| bare_address(&r)),
    })
}

/// Hard for 5.x.x, soft for 4.x.x. A full mailbox (X.2.2) is soft whatever its class:
/// RFC 3463 calls it "a persistent transient failure", and servers send it as either.
pub(super) fn severity_of(status: &str) -> Severity {
    if status.starts_with('5') && !status.ends_with(".2.2") {
        Severity::Hard
    } else {
        Severity::Soft
    }
}

/// The first enhanced status code (`4.x.x` or `5.x.x`) in `text`, not part of a longer
/// dotted number such as an IP address.
pub fn enhanced_status(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(m) = STATUS.find_at(text, from) {
        from = m.start() + 1;
        let before = m.start().checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(m.end()).copied();
        let after2 = bytes.get(m.end() + 1).copied();
        let glued_before = before.is_some_and(|b| b.is_ascii_digit() || b == b'.');
        let glued_after = after.is_some_and(|b| b.is_ascii_digit())
            || (after == Some(b'.') && after2.is_some_and(|b| b.is_ascii_digit()));
        if !glued_before && !glued_after {
            return Some(m.as_str().to_string());
        }
    }
    None
}

static STATUS: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"[45]\.\d{1,3}\.\d{1,3}").expect("valid regex"));

/// The class digit of a basic SMTP reply code at the start of a diagnostic (`550 …`).
fn smtp_reply_class(diagnostic: &str) -> Option<char> {
    let d = diagnostic.trim_start();
    let code: String = d.chars().take(3).collect();
    let next = d.chars().nth(3);
    (code.len() == 3
        && code.chars().all(|c| c.is_ascii_digit())
        && matches!(code.chars().next(), Some('4' | '5'))
        && next.is_none_or(|c| c == ' ' || c == '-'))
    .then(|| code.chars().next().expect("three digits"))
}

/// `smtp; 550-5.1.1 The email account …` → `550-5.1.1 The email account …`, one line, bounded.
pub(super) fn clean_diagnostic(d: &str) -> String {
    let d = d.split_whitespace().collect::<Vec<_>>().join(" ");
    let d = match d.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') && kind.len() <= 12 => rest.trim().to_string(),
        _ => d,
    };
    d.chars().take(500).collect()
}

/// Splits a delivery-status body into its field groups (separated by blank lines).
fn field_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks
}

/// The decoded body of a part, lossily as text (reports are ASCII; quoted originals may not be).
pub(super) fn body_text(part: &ParsedMail<'_>) -> String {
    match part.get_body_raw() {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// Reads the headers of the quoted original message.
fn read_quoted(part: &ParsedMail<'_>, hints: &mut Hints, cx: Context<'_>) {
    let raw = part.get_body_raw().unwrap_or_default();
    if let Ok((headers, _)) = mailparse::parse_headers(&raw) {
        hints.read_quoted_headers(&headers, cx);
    }
}

/// Last resort for the Message-ID: anywhere in the text parts of the report (a signed one
/// found here still wins over an unsigned one found in the quoted headers).
fn find_message_id_in_text(mail: &ParsedMail<'_>, hints: &mut Hints, cx: Context<'_>) {
    use super::hints::IdTrust;
    for part in mail.parts() {
        if hints
            .message_id
            .as_ref()
            .is_some_and(|m| m.trust == IdTrust::Signed)
        {
            return;
        }
        if part.ctype.mimetype.starts_with("text/") || part.ctype.mimetype.starts_with("message/") {
            hints.note_message_id(OurMessageId::find(&body_text(part), cx.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_skips_ip_addresses() {
        assert_eq!(
            enhanced_status("from 10.4.5.6 said 550 5.1.1 no"),
            Some("5.1.1".into())
        );
        assert_eq!(enhanced_status("Sorry (#5.1.1)"), Some("5.1.1".into()));
        assert_eq!(enhanced_status("Status: 4.2.2."), Some("4.2.2".into()));
        assert_eq!(enhanced_status("host 192.0.2.45.4.1.1"), None);
        assert_eq!(enhanced_status("2.0.0 ok"), None);
    }

    #[test]
    fn full_mailbox_is_soft_in_either_class() {
        assert_eq!(severity_of("5.1.1"), Severity::Hard);
        assert_eq!(severity_of("5.2.2"), Severity::Soft);
        assert_eq!(severity_of("4.2.2"), Severity::Soft);
        assert_eq!(severity_of("4.4.7"), Severity::Soft);
    }

    #[test]
    fn diagnostic_loses_its_type_and_line_breaks() {
        assert_eq!(
            clean_diagnostic("smtp; 550-5.1.1 The email account\n  that you tried"),
            "550-5.1.1 The email account that you tried"
        );
        assert_eq!(smtp_reply_class("550 no such user"), Some('5'));
        assert_eq!(smtp_reply_class("5500 x"), None);
    }
}
