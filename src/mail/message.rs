//! Per-recipient messages. The digest's two parts are quoted-printable encoded once per
//! issue, around the unsubscribe placeholder; each recipient's copy splices in their own
//! link and headers, so building a message is a few copies rather than a re-encode.

use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use crate::config::Newsletter;
use crate::digest::render::RenderedDigest;
use crate::mail::address::{ascii_form, SubscriberEmail};
use crate::mail::dkim::DkimSigner;
use crate::mail::token::{TokenKey, SAMPLE_EMAIL, SAMPLE_SUBSCRIBER_ID};
use crate::mail::verp::{Purpose, Tag, VerpKey};
use crate::store::{IssueNumber, SubscriberId};

/// The soft line break of quoted-printable: lets encoded pieces be joined anywhere.
const SOFT_BREAK: &str = "=\r\n";
/// Longest run of an encoded URL on one line (QP allows 76 with the soft break's `=`).
const URL_CHUNK: usize = 72;

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("building the message for {recipient} failed: {source}")]
    Build {
        recipient: String,
        source: lettre::error::Error,
    },
    #[error("`{0}` is not a deliverable address")]
    Address(String),
    #[error(transparent)]
    NeedsSmtpUtf8(#[from] crate::mail::address::AsciiFormError),
}

/// One text part, pre-encoded around the places the unsubscribe URL goes.
#[derive(Debug, Clone)]
struct EncodedPart {
    pieces: Vec<String>,
    len: usize,
}

impl EncodedPart {
    fn new(parts: &[String]) -> Self {
        let pieces: Vec<String> = parts
            .iter()
            .map(|p| quoted_printable::encode_to_str(p.replace("\r\n", "\n").replace('\n', "\r\n")))
            .collect();
        let len = pieces.iter().map(String::len).sum();
        EncodedPart { pieces, len }
    }

    /// The encoded part with `url` in every placeholder.
    fn with_url(&self, url: &str) -> Vec<u8> {
        let encoded_url = encode_url(url);
        let mut out = Vec::with_capacity(
            self.len + self.pieces.len() * (encoded_url.len() + 2 * SOFT_BREAK.len()),
        );
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(SOFT_BREAK.as_bytes());
                out.extend_from_slice(encoded_url.as_bytes());
                out.extend_from_slice(SOFT_BREAK.as_bytes());
            }
            out.extend_from_slice(piece.as_bytes());
        }
        out
    }
}

/// Quoted-printable for a URL: only `=` needs escaping; long URLs get soft breaks.
fn encode_url(url: &str) -> String {
    let escaped = url.replace('=', "=3D");
    let mut out = String::with_capacity(escaped.len() + 8);
    let mut line = 0;
    let mut chars = escaped.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        // Never split an "=3D" escape across a soft break.
        let width = if c == '=' { 3 } else { 1 };
        if line + width > URL_CHUNK {
            out.push_str(SOFT_BREAK);
            line = 0;
        }
        if c == '=' {
            out.push_str(&escaped[i..i + 3]);
            chars.next();
            chars.next();
        } else {
            out.push(c);
        }
        line += width;
    }
    out
}

/// Who a copy goes to.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub subscriber_id: SubscriberId,
    pub email: SubscriberEmail,
    pub name: Option<String>,
}

impl Recipient {
    /// The stand-in reader of previews, lint checks and test copies' links.
    pub fn sample() -> Recipient {
        Recipient {
            subscriber_id: SAMPLE_SUBSCRIBER_ID,
            email: SubscriberEmail::parse(SAMPLE_EMAIL).expect("valid sample address"),
            name: Some("Sample Reader".into()),
        }
    }

    pub fn email_norm(&self) -> String {
        self.email.normalized()
    }
}

/// Everything needed to build each recipient's copy of one issue.
#[derive(Debug, Clone)]
pub struct IssueMessages {
    newsletter: Newsletter,
    issue_number: IssueNumber,
    slot: DateTime<Utc>,
    subject: String,
    text: EncodedPart,
    html: EncodedPart,
    key: TokenKey,
    list_id: String,
    mailto: String,
    /// `inbound.address` and the key that tags it, when bounces are read back.
    verp: Option<(String, VerpKey)>,
    dkim: Option<DkimSigner>,
    test: Option<TestCopy>,
}

/// How a test copy differs from a subscriber's: its links are the sample subscriber's
/// (they work and change nothing), its Message-IDs are new on every run (a mailbox would
/// hide a second copy with an ID it has seen), and unless `exact` its Subject says TEST.
#[derive(Debug, Clone)]
pub struct TestCopy {
    /// Unique per test run, e.g. the time it started.
    pub run: String,
    /// Keep the Subject exactly as subscribers get it.
    pub exact: bool,
}

impl IssueMessages {
    pub fn new(
        newsletter: &Newsletter,
        issue_number: IssueNumber,
        slot: DateTime<Utc>,
        digest: &RenderedDigest,
        key: TokenKey,
    ) -> Self {
        let list_id = format!("{} <{}>", newsletter.name, newsletter.list_id);
        let mailto = format!("mailto:{}?subject=unsubscribe", newsletter.from.email);
        IssueMessages {
            newsletter: newsletter.clone(),
            issue_number,
            slot,
            subject: digest.subject.clone(),
            text: EncodedPart::new(digest.text_parts()),
            html: EncodedPart::new(digest.html_parts()),
            key,
            list_id,
            mailto,
            verp: None,
            dkim: None,
            test: None,
        }
    }

    /// With an inbound address, each copy's envelope sender and mailto unsubscribe become
    /// signed `+` tags on it (VERP), so what comes back names the issue and the subscriber.
    pub fn with_inbound(mut self, address: Option<&str>) -> Self {
        self.verp = address.map(|a| (a.to_string(), self.key.verp_key()));
        self
    }

    /// The envelope sender (MAIL FROM) of the recipient's copy, when it is tagged.
    pub fn envelope_sender(&self, subscriber_id: SubscriberId) -> Option<String> {
        self.tagged(subscriber_id, Purpose::Bounce)
    }

    fn tagged(&self, subscriber: SubscriberId, purpose: Purpose) -> Option<String> {
        let (base, key) = self.verp.as_ref()?;
        Some(key.address(
            base,
            Tag {
                issue: self.issue_number,
                subscriber,
                purpose,
            },
        ))
    }

    /// Builds test copies instead (see [`TestCopy`]); a recipient's `subscriber_id` is then
    /// only its place in the run, used in the Message-ID.
    pub fn as_test_copy(mut self, copy: TestCopy) -> Self {
        if !copy.exact {
            self.subject = format!("[TEST] {}", self.subject);
        }
        self.test = Some(copy);
        self
    }

    /// Signs every built message with `signer` (DKIM off when `None`).
    pub fn with_dkim(mut self, signer: Option<DkimSigner>) -> Self {
        self.dkim = signer;
        self
    }

    /// True when built messages are DKIM-signed (which costs real CPU per message).
    pub fn signs(&self) -> bool {
        self.dkim.is_some()
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The recipient's one-click unsubscribe URL.
    pub fn unsubscribe_url(&self, r: &Recipient) -> String {
        let token = match self.test {
            Some(_) => self.key.issue(SAMPLE_SUBSCRIBER_ID, SAMPLE_EMAIL),
            None => self.key.issue(r.subscriber_id, &r.email_norm()),
        };
        format!("{}/unsubscribe?token={token}", self.newsletter.base_url)
    }

    /// The same for every send of this issue to this subscriber, so a copy re-sent after a
    /// crash is recognisably the same message.
    pub fn message_id(&self, subscriber_id: SubscriberId) -> String {
        if let Some(test) = &self.test {
            return format!(
                "<verdicts.test.{}.{}.{subscriber_id}@{}>",
                test.run,
                self.issue_number,
                self.newsletter.sender_domain()
            );
        }
        format!(
            "<verdicts.{}.{}.{}@{}>",
            self.slot.format("%Y%m%dT%H%MZ"),
            self.issue_number,
            subscriber_id,
            self.newsletter.sender_domain()
        )
    }

    /// The complete message for one recipient, for a server that offers SMTPUTF8.
    pub fn build(&self, r: &Recipient) -> Result<Message, MessageError> {
        self.build_for(r, true)
    }

    /// The complete message for one recipient. Without `smtputf8` the envelope and the
    /// address headers carry international domains as punycode, and an address whose local
    /// part is not ASCII is an error (no spelling of it reaches that mailbox).
    pub fn build_for(&self, r: &Recipient, smtputf8: bool) -> Result<Message, MessageError> {
        let (to_addr, from) = if smtputf8 {
            (r.email.address().clone(), self.newsletter.from.clone())
        } else {
            let mut from = self.newsletter.from.clone();
            from.email = ascii_form(&from.email)?;
            (ascii_form(r.email.address())?, from)
        };
        // The envelope is given, not derived: lettre re-parses the To header for it, which
        // fails on a quoted local part ("first last"@example.com). Its sender is the VERP
        // address when bounces are read back, else the From address.
        let sender = match self.envelope_sender(r.subscriber_id) {
            Some(verp) => verp
                .parse()
                .map_err(|_| MessageError::Address(verp.clone()))?,
            None => from.email.clone(),
        };
        let envelope = Envelope::new(Some(sender), vec![to_addr.clone()]).map_err(|source| {
            MessageError::Build {
                recipient: r.email.to_string(),
                source,
            }
        })?;
        let url = self.unsubscribe_url(r);
        let text = SinglePart::builder().header(ContentType::TEXT_PLAIN).body(
            Body::dangerous_pre_encoded(
                self.text.with_url(&url),
                ContentTransferEncoding::QuotedPrintable,
            ),
        );
        let html =
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(Body::dangerous_pre_encoded(
                    self.html.with_url(&url),
                    ContentTransferEncoding::QuotedPrintable,
                ));
        let to = Mailbox::new(r.name.clone(), to_addr);
        let mailto = match self.tagged(r.subscriber_id, Purpose::Unsubscribe) {
            Some(address) => format!("mailto:{address}?subject=unsubscribe"),
            None => self.mailto.clone(),
        };
        let mut message = Message::builder()
            .from(from)
            .to(to)
            .envelope(envelope)
            .subject(self.subject.clone())
            .date_now()
            .message_id(Some(self.message_id(r.subscriber_id)))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Id"),
                self.list_id.clone(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>, <{mailto}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ))
            .multipart(MultiPart::alternative().singlepart(text).singlepart(html))
            .map_err(|source| MessageError::Build {
                recipient: r.email.to_string(),
                source,
            })?;
        if let Some(signer) = &self.dkim {
            signer.sign(&mut message);
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_escapes_equals_and_keeps_lines_short() {
        let url = format!("https://x.example/unsubscribe?token=12.{}", "A".repeat(100));
        let enc = encode_url(&url);
        assert!(enc.contains("=3D"));
        for line in enc.split("\r\n") {
            assert!(line.len() <= 76, "{line}");
        }
        let decoded =
            quoted_printable::decode(enc.as_bytes(), quoted_printable::ParseMode::Strict).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), url);
    }

    #[test]
    fn spliced_part_decodes_to_the_personal_text() {
        let parts = vec!["Hello — “reader”\nClick: ".to_string(), "\nBye ".repeat(40)];
        let enc = EncodedPart::new(&parts);
        let url = "https://x.example/unsubscribe?token=3.abc=def";
        let body = enc.with_url(url);
        let decoded = quoted_printable::decode(&body, quoted_printable::ParseMode::Strict).unwrap();
        let expected = parts.join(url).replace('\n', "\r\n");
        assert_eq!(String::from_utf8(decoded).unwrap(), expected);
        for line in body.split(|b| *b == b'\n') {
            assert!(line.len() <= 77);
        }
    }
}
