//! Per-recipient messages. The digest's two parts are quoted-printable encoded once per
//! issue, around the unsubscribe placeholder; each recipient's copy splices in their own
//! link and headers, so building a message is a few copies rather than a re-encode.

use chrono::{DateTime, Utc};
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use crate::config::Newsletter;
use crate::dkim::DkimSigner;
use crate::render::RenderedDigest;
use crate::token::TokenKey;

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
    pub subscriber_id: i64,
    pub email: lettre::Address,
    pub name: Option<String>,
}

impl Recipient {
    pub fn email_norm(&self) -> String {
        AsRef::<str>::as_ref(&self.email).to_lowercase()
    }
}

/// Everything needed to build each recipient's copy of one issue.
#[derive(Debug, Clone)]
pub struct IssueMessages {
    newsletter: Newsletter,
    issue_number: i64,
    slot: DateTime<Utc>,
    subject: String,
    text: EncodedPart,
    html: EncodedPart,
    key: TokenKey,
    list_id: String,
    mailto: String,
    dkim: Option<DkimSigner>,
}

impl IssueMessages {
    pub fn new(
        newsletter: &Newsletter,
        issue_number: i64,
        slot: DateTime<Utc>,
        digest: &RenderedDigest,
        key: TokenKey,
    ) -> Self {
        let list_id = format!("{} <{}>", newsletter.name, newsletter.list_id);
        let mailto = format!("mailto:{}?subject=unsubscribe", newsletter.from.email);
        let digest = digest.for_issue(&newsletter.base_url, issue_number);
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
            dkim: None,
        }
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
        format!(
            "{}/unsubscribe?token={}",
            self.newsletter.base_url,
            self.key.issue(r.subscriber_id, &r.email_norm())
        )
    }

    /// The same for every send of this issue to this subscriber, so a copy re-sent after a
    /// crash is recognisably the same message.
    pub fn message_id(&self, subscriber_id: i64) -> String {
        format!(
            "<verdicts.{}.{}.{}@{}>",
            self.slot.format("%Y%m%dT%H%MZ"),
            self.issue_number,
            subscriber_id,
            self.newsletter.sender_domain()
        )
    }

    /// The complete message for one recipient.
    pub fn build(&self, r: &Recipient) -> Result<Message, MessageError> {
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
        let to = Mailbox::new(r.name.clone(), r.email.clone());
        let mut message = Message::builder()
            .from(self.newsletter.from.clone())
            .to(to)
            .subject(self.subject.clone())
            .date_now()
            .message_id(Some(self.message_id(r.subscriber_id)))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Id"),
                self.list_id.clone(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>, <{}>", self.mailto),
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
