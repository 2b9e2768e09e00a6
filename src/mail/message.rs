//! Per-recipient messages. The digest's two parts are quoted-printable encoded once per
//! issue, around the unsubscribe placeholder, into a body layout every copy shares; each
//! recipient's copy is their headers, their encoded link and (with DKIM) a signature whose
//! body hash continues from the shared part's.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use lettre::address::Address;
use lettre::message::header::{self, HeaderName, HeaderValue, Headers};
use lettre::message::{Mailbox, Mailboxes};

use crate::config::Newsletter;
use crate::digest::render::RenderedDigest;
use crate::mail::address::{ascii_form, AsciiFormError, SubscriberEmail};
use crate::mail::dkim::DkimSigner;
use crate::mail::envelope::envelope_for;
use crate::mail::outgoing::{encode_link, BodyHashPlan, BodyLayout, OutgoingMessage, Slot};
use crate::mail::token::{TokenKey, SAMPLE_EMAIL, SAMPLE_SUBSCRIBER_ID};
use crate::mail::verp::{Purpose, Tag, VerpKey};
use crate::store::{IssueNumber, SubscriberId};
use crate::tracking::links::READER_PLACEHOLDER;

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

/// A digest part quoted-printable encoded, split where the unsubscribe URL goes.
fn encode_part(parts: &[String]) -> Vec<String> {
    parts
        .iter()
        .map(|p| quoted_printable::encode_to_str(p.replace("\r\n", "\n").replace('\n', "\r\n")))
        .collect()
}

/// A digest part quoted-printable encoded, split at both the unsubscribe places (between
/// `parts`) and the reader-token places (inside them), with the kind of each place.
fn encode_slotted(parts: &[String]) -> (Vec<String>, Vec<Slot>) {
    let mut pieces = Vec::new();
    let mut slots = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            slots.push(Slot::Unsubscribe);
        }
        for (j, piece) in part.split(READER_PLACEHOLDER).enumerate() {
            if j > 0 {
                slots.push(Slot::Reader);
            }
            pieces.push(piece.to_owned());
        }
    }
    (encode_part(&pieces), slots)
}

/// One header field as it appears in the message, with its CRLF.
fn header_line(value: HeaderValue) -> String {
    let mut h = Headers::new();
    h.insert_raw(value);
    h.to_string()
}

fn typed_line<H: header::Header>(value: H) -> String {
    let mut h = Headers::new();
    h.set(value);
    h.to_string()
}

/// A MIME boundary that cannot occur in quoted-printable text (`=_` never does).
fn boundary() -> String {
    let mut b = String::from("=_verdicts_");
    b.extend((0..24).map(|_| fastrand::alphanumeric()));
    b
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
    key: TokenKey,
    mailto: String,
    body: Arc<BodyLayout>,
    /// The header fields every copy shares, each with its CRLF.
    from: String,
    /// The From field for a server without SMTPUTF8 (its domain in punycode), or why the
    /// address has no such form.
    from_ascii: Result<String, AsciiFormError>,
    subject_line: String,
    list_id: String,
    list_unsubscribe_post: String,
    /// `Feedback-ID` (RFC 9477, Gmail's feedback loop): complaints counted per issue.
    feedback_id: String,
    mime_version: String,
    content_type: String,
    /// `inbound.address` and the key that tags it, when bounces are read back.
    verp: Option<(String, VerpKey)>,
    /// Signs each copy's Message-ID (whether or not bounces are read back).
    ids: VerpKey,
    dkim: Option<(DkimSigner, Arc<BodyHashPlan>)>,
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
        let digest = digest.for_issue(&newsletter.base_url, issue_number.get());
        let boundary = boundary();
        let (text, text_slots) = encode_slotted(digest.text_parts());
        let (html, html_slots) = encode_slotted(digest.html_parts());
        let body = BodyLayout::with_slots(&boundary, (&text, &text_slots), (&html, &html_slots));
        IssueMessages {
            newsletter: newsletter.clone(),
            issue_number,
            slot,
            subject: digest.subject.clone(),
            mailto,
            body: Arc::new(body),
            from: typed_line(header::From::from(Mailboxes::from(newsletter.from.clone()))),
            from_ascii: ascii_form(&newsletter.from.email).map(|email| {
                let mailbox = Mailbox::new(newsletter.from.name.clone(), email);
                typed_line(header::From::from(Mailboxes::from(mailbox)))
            }),
            subject_line: typed_line(header::Subject::from(digest.subject.clone())),
            list_id: header_line(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Id"),
                list_id,
            )),
            list_unsubscribe_post: "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n".into(),
            feedback_id: format!(
                "Feedback-ID: {}\r\n",
                feedback_id(&issue_number.to_string(), newsletter)
            ),
            mime_version: "MIME-Version: 1.0\r\n".into(),
            content_type: format!(
                "Content-Type: multipart/alternative;\r\n boundary=\"{boundary}\"\r\n"
            ),
            verp: None,
            ids: key.verp_key(),
            key,
            dkim: None,
            test: None,
        }
    }

    /// With an inbound address, each copy's envelope sender and mailto unsubscribe become
    /// signed `+` tags on it (VERP), so what comes back names the issue and the subscriber.
    pub fn with_inbound(mut self, address: Option<&str>) -> Self {
        self.verp = address.map(|a| (a.to_string(), self.ids.clone()));
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
            self.subject_line = typed_line(header::Subject::from(self.subject.clone()));
        }
        self.test = Some(copy);
        self
    }

    /// Signs every built message with `signer` (DKIM off when `None`). The shared part of
    /// the body is canonicalised and hashed here, once.
    pub fn with_dkim(mut self, signer: Option<DkimSigner>) -> Self {
        self.dkim = signer.map(|s| (s, Arc::new(self.body.prepare_hash())));
        self
    }

    /// True when built messages are DKIM-signed (which costs real CPU per message).
    pub fn signs(&self) -> bool {
        self.dkim.is_some()
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Bytes of the body every copy shares before the first personal link (whose DKIM body
    /// hash is computed once per issue).
    pub fn shared_body_prefix(&self) -> usize {
        self.body.shared_prefix_len()
    }

    /// The recipient's one-click unsubscribe URL.
    pub fn unsubscribe_url(&self, r: &Recipient) -> String {
        let token = match self.test {
            Some(_) => self.key.issue(SAMPLE_SUBSCRIBER_ID, SAMPLE_EMAIL),
            None => self.key.issue(r.subscriber_id, &r.email_norm()),
        };
        format!("{}/unsubscribe?token={token}", self.newsletter.base_url)
    }

    /// The recipient's reader token (vote links, per-reader click links).
    pub fn reader_token(&self, r: &Recipient) -> String {
        let subscriber = match self.test {
            Some(_) => SAMPLE_SUBSCRIBER_ID,
            None => r.subscriber_id,
        };
        crate::tracking::token::reader_token(
            &self.key,
            crate::tracking::token::Reader {
                issue: self.issue_number,
                subscriber,
            },
        )
    }

    /// The same for every send of this issue to this subscriber, so a copy re-sent after a
    /// crash is recognisably the same message:
    /// `<verdicts.<slot>.<issue>.<subscriber>.<mac>@<domain>>`. The MAC (keyed from the
    /// secret, see [`VerpKey::message_id_tag`]) is what lets a bounce or complaint that
    /// quotes only the Message-ID act: the numbers alone are guessable.
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
            "<verdicts.{}.{}.{}.{}@{}>",
            self.slot.format("%Y%m%dT%H%MZ"),
            self.issue_number,
            subscriber_id,
            self.ids.message_id_tag(self.issue_number, subscriber_id),
            self.newsletter.sender_domain()
        )
    }

    /// The complete message for one recipient, for a server that offers SMTPUTF8 (signed
    /// when DKIM is on).
    pub fn build(&self, r: &Recipient) -> Result<OutgoingMessage, MessageError> {
        self.build_for(r, true)
    }

    /// The complete message for one recipient (signed when DKIM is on). Without
    /// `smtputf8` the envelope and the address headers carry international domains as
    /// punycode, and an address whose local part is not ASCII is an error (no spelling of
    /// it reaches that mailbox).
    pub fn build_for(
        &self,
        r: &Recipient,
        smtputf8: bool,
    ) -> Result<OutgoingMessage, MessageError> {
        let from = if smtputf8 {
            &self.from
        } else {
            self.from_ascii.as_ref().map_err(Clone::clone)?
        };
        // The envelope's sender is the VERP address when bounces are read back, else the
        // From address; the envelope itself is spelled by `mail::envelope`, as for every
        // mail the newsletter sends.
        let sender: Address = match self.envelope_sender(r.subscriber_id) {
            Some(verp) => verp
                .parse()
                .map_err(|_| MessageError::Address(verp.clone()))?,
            None => self.newsletter.from.email.clone(),
        };
        let (envelope, to_addr) = envelope_for(&sender, &r.email, smtputf8)?;
        let url = self.unsubscribe_url(r);
        let mailto = match self.tagged(r.subscriber_id, Purpose::Unsubscribe) {
            Some(address) => format!("mailto:{address}?subject=unsubscribe"),
            None => self.mailto.clone(),
        };
        let to = typed_line(header::To::from(Mailboxes::from(Mailbox::new(
            r.name.clone(),
            to_addr,
        ))));
        let date = typed_line(header::Date::now());
        let message_id = typed_line(header::MessageId::from(self.message_id(r.subscriber_id)));
        let list_unsubscribe = header_line(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe"),
            format!("<{url}>, <{mailto}>"),
        ));
        let fields: [&str; 11] = [
            from,
            &to,
            &self.subject_line,
            &date,
            &message_id,
            &self.list_id,
            &list_unsubscribe,
            &self.list_unsubscribe_post,
            &self.feedback_id,
            &self.mime_version,
            &self.content_type,
        ];
        let link = encode_link(&url, URL_CHUNK);
        let reader = encode_link(&self.reader_token(r), URL_CHUNK);
        let signature = self.dkim.as_ref().map(|(signer, plan)| {
            signer.signature_header(&fields, &plan.body_hash_with(&self.body, &link, &reader))
        });
        let mut head = String::with_capacity(
            fields.iter().map(|f| f.len()).sum::<usize>()
                + signature.as_ref().map_or(0, String::len)
                + 2,
        );
        head.push_str(signature.as_deref().unwrap_or(""));
        for f in fields {
            head.push_str(f);
        }
        head.push_str("\r\n");
        Ok(OutgoingMessage::new(envelope, head, link, self.body.clone()).with_reader(reader))
    }
}

/// The value of the `Feedback-ID` header (RFC 9477): `<campaign>:<list>:verdicts:<sender>`,
/// the campaign being the issue number (or `signup` for confirmation mails), the list its
/// List-Id and the sender the From domain. A colon inside a part would shift the fields, so
/// none is kept.
pub fn feedback_id(campaign: &str, newsletter: &Newsletter) -> String {
    let part = |s: &str| s.replace(':', "-");
    format!(
        "{}:{}:verdicts:{}",
        part(campaign),
        part(&newsletter.list_id),
        part(newsletter.sender_domain())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::outgoing::OutgoingMessage;

    #[test]
    fn url_encoding_escapes_equals_and_keeps_lines_short() {
        let url = format!("https://x.example/unsubscribe?token=12.{}", "A".repeat(100));
        let enc = encode_link(&url, URL_CHUNK);
        assert!(enc.contains("=3D"));
        for line in enc.split("\r\n") {
            assert!(line.len() <= 76, "{line}");
        }
        let decoded =
            quoted_printable::decode(enc.as_bytes(), quoted_printable::ParseMode::Strict).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), url);
    }

    #[test]
    fn spliced_parts_decode_to_the_personal_text() {
        let text = vec!["Hello — “reader”\nClick: ".to_string(), "\nBye ".repeat(40)];
        let html = vec!["<p>a</p>\n<a href=\"".to_string(), "\">x</a>\n".to_string()];
        let body = Arc::new(BodyLayout::new(
            "=_b",
            &encode_part(&text),
            &encode_part(&html),
        ));
        let url = "https://x.example/unsubscribe?token=3.abc=def";
        let envelope =
            lettre::address::Envelope::new(None, vec!["a@example.com".parse().unwrap()]).unwrap();
        let message =
            OutgoingMessage::new(envelope, "\r\n".into(), encode_link(url, URL_CHUNK), body);
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert_eq!(raw.len(), message.len());
        let parts: Vec<&str> = raw.split("--=_b").collect();
        assert_eq!(parts.len(), 4, "{raw}");
        assert_eq!(parts[3], "--\r\n");
        for (part, source) in [(parts[1], &text), (parts[2], &html)] {
            let (_, encoded) = part.split_once("\r\n\r\n").unwrap();
            let encoded = encoded.strip_suffix("\r\n").unwrap();
            let decoded =
                quoted_printable::decode(encoded, quoted_printable::ParseMode::Strict).unwrap();
            let expected = source.join(url).replace('\n', "\r\n");
            assert_eq!(String::from_utf8(decoded).unwrap(), expected);
            for line in encoded.split("\r\n") {
                assert!(line.len() <= 76, "{line}");
            }
        }
    }
}
