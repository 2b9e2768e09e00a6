//! The double opt-in mail: a transactional message (no List-Unsubscribe: it is not list
//! mail) with a signed link to the confirmation page, and the token that link carries.
//!
//! A token is `<confirmation id>.<HMAC-SHA256 over the id, the link's expiry and the
//! address>`, base64url. It proves one signup of one address; it stops working when the
//! signup expires, and a token made for another address or with another key never works.

use askama::Template;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::Mac;
use lettre::message::{Mailbox, MultiPart};
use lettre::Message;

use crate::config::Newsletter;
use crate::mail::address::{SubscriberEmail, SubscriberName};
use crate::mail::dkim::DkimSigner;
use crate::mail::envelope::envelope_for;
use crate::mail::message::MessageError;
use crate::mail::outgoing::OutgoingMessage;
use crate::mail::token::TokenKey;
use crate::store;

fn confirmation_mac(
    key: &TokenKey,
    id: i64,
    expires_at: DateTime<Utc>,
    email_norm: &str,
) -> crate::mail::token::HmacSha256 {
    let mut mac = key.keyed();
    mac.update(b"verdicts-confirm-v1\0");
    mac.update(&id.to_be_bytes());
    mac.update(store::timestamp(expires_at).as_bytes());
    mac.update(b"\0");
    mac.update(email_norm.as_bytes());
    mac
}

/// The token for confirmation `id` of the address `email_norm`, valid until `expires_at`.
pub fn issue_token(key: &TokenKey, id: i64, expires_at: DateTime<Utc>, email_norm: &str) -> String {
    let tag = confirmation_mac(key, id, expires_at, email_norm)
        .finalize()
        .into_bytes();
    format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// The confirmation id a token claims; verify it before trusting it.
pub fn claimed_confirmation(token: &str) -> Option<i64> {
    token.split_once('.')?.0.parse().ok()
}

/// Checks a token against the confirmation it names (its expiry and address as stored),
/// in constant time. Whether the expiry has passed is the caller's check.
pub fn verify_token(
    key: &TokenKey,
    token: &str,
    id: i64,
    expires_at: DateTime<Utc>,
    email_norm: &str,
) -> bool {
    let Some((claimed, tag)) = token.split_once('.') else {
        return false;
    };
    if claimed.parse::<i64>().ok() != Some(id) {
        return false;
    }
    let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    confirmation_mac(key, id, expires_at, email_norm)
        .verify_slice(&tag)
        .is_ok()
}

/// What both parts of the confirmation mail show.
struct MailView<'a> {
    newsletter_name: &'a str,
    confirm_url: &'a str,
    expires: &'a str,
    base_url: &'a str,
    postal_address: &'a str,
}

#[derive(Template)]
#[template(path = "confirm.txt")]
struct TextMail<'a> {
    m: &'a MailView<'a>,
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct HtmlMail<'a> {
    m: &'a MailView<'a>,
}

/// One confirmation mail to build.
#[derive(Debug, Clone)]
pub struct ConfirmationMail<'a> {
    pub id: i64,
    pub email: &'a SubscriberEmail,
    pub name: Option<&'a SubscriberName>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl ConfirmationMail<'_> {
    pub fn confirm_url(&self, newsletter: &Newsletter, key: &TokenKey) -> String {
        format!(
            "{}/confirm?token={}",
            newsletter.base_url,
            issue_token(key, self.id, self.expires_at, &self.email.normalized())
        )
    }

    /// The same for every attempt of one confirmation, so a copy re-sent after a crash is
    /// recognisably the same message.
    pub fn message_id(&self, newsletter: &Newsletter) -> String {
        format!(
            "<verdicts.confirm.{}.{}@{}>",
            self.created_at.format("%Y%m%dT%H%M%SZ"),
            self.id,
            newsletter.sender_domain()
        )
    }

    /// The complete message, DKIM-signed when a signer is given, spelled for a server that
    /// offers SMTPUTF8 or not, with its envelope given as an issue's is
    /// ([`crate::mail::envelope`]).
    pub fn build(
        &self,
        newsletter: &Newsletter,
        key: &TokenKey,
        dkim: Option<&DkimSigner>,
        smtputf8: bool,
    ) -> Result<OutgoingMessage, MessageError> {
        let url = self.confirm_url(newsletter, key);
        let expires = self.expires_at.format("%-d %B %Y, %H:%M UTC").to_string();
        let render_err = |e: askama::Error| MessageError::Build {
            recipient: self.email.to_string(),
            source: lettre::error::Error::Io(std::io::Error::other(e.to_string())),
        };
        let view = MailView {
            newsletter_name: &newsletter.name,
            confirm_url: &url,
            expires: &expires,
            base_url: &newsletter.base_url,
            postal_address: &newsletter.postal_address,
        };
        let text = TextMail { m: &view }.render().map_err(render_err)?;
        let html = HtmlMail { m: &view }.render().map_err(render_err)?;
        let (envelope, to_addr) = envelope_for(&newsletter.from.email, self.email, smtputf8)?;
        let to = Mailbox::new(self.name.map(|n| n.as_str().to_owned()), to_addr);
        let from = match envelope.from() {
            Some(sender) => Mailbox::new(newsletter.from.name.clone(), sender.clone()),
            None => newsletter.from.clone(),
        };
        let message = Message::builder()
            .from(from)
            .to(to)
            .envelope(envelope.clone())
            .subject(format!("Confirm your subscription to {}", newsletter.name))
            .date_now()
            .message_id(Some(self.message_id(newsletter)))
            .raw_header(lettre::message::header::HeaderValue::new(
                lettre::message::header::HeaderName::new_from_ascii_str("Feedback-ID"),
                crate::mail::message::feedback_id("signup", newsletter),
            ))
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|source| MessageError::Build {
                recipient: self.email.to_string(),
                source,
            })?;
        let raw = message.formatted();
        let raw = match dkim {
            Some(signer) => {
                // lettre writes ASCII only (non-ASCII is encoded), so the text view is exact.
                let text = String::from_utf8_lossy(&raw).into_owned();
                // The digest's header list, less what a transactional mail does not carry.
                let (fields, _) = crate::mail::dkim_sign::split_message(&text);
                let has = |name: &str| {
                    fields.iter().any(|f| {
                        f.split(':')
                            .next()
                            .is_some_and(|h| h.trim().eq_ignore_ascii_case(name))
                    })
                };
                let names = crate::mail::dkim_sign::header_list()
                    .split(':')
                    .filter(|n| has(n))
                    .collect::<Vec<_>>()
                    .join(":");
                signer.sign_raw(&text, &names).into_bytes()
            }
            None => raw,
        };
        let text = String::from_utf8(raw).map_err(|e| MessageError::Build {
            recipient: self.email.to_string(),
            source: lettre::error::Error::Io(std::io::Error::other(e.to_string())),
        })?;
        Ok(OutgoingMessage::whole(envelope, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_bound_to_its_confirmation_expiry_and_address() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        let exp = store::parse_timestamp("2026-11-30T09:00:00Z").unwrap();
        let t = issue_token(&key, 5, exp, "ada@example.com");
        assert_eq!(claimed_confirmation(&t), Some(5));
        assert!(verify_token(&key, &t, 5, exp, "ada@example.com"));
        assert!(!verify_token(&key, &t, 6, exp, "ada@example.com"));
        assert!(!verify_token(&key, &t, 5, exp, "bob@example.com"));
        let later = store::parse_timestamp("2026-12-30T09:00:00Z").unwrap();
        assert!(!verify_token(&key, &t, 5, later, "ada@example.com"));
        let other = TokenKey::new(b"another key entirely!");
        assert!(!verify_token(&other, &t, 5, exp, "ada@example.com"));
        // An unsubscribe token for the same numbers is not a confirmation token.
        let unsub = key.issue(crate::store::SubscriberId(5), "ada@example.com");
        assert!(!verify_token(&key, &unsub, 5, exp, "ada@example.com"));
    }

    #[test]
    fn the_mail_is_signed_transactional_and_links_to_the_confirm_page() {
        let text = crate::config::Config::parse(
            std::path::Path::new("config/newsletter.yaml"),
            include_str!("../../config/newsletter.yaml"),
        )
        .unwrap();
        let signer = DkimSigner::load(&crate::config::DkimConfig {
            domain: "example.com".into(),
            selector: "s1".into(),
            key_file: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/dkim/ed25519.pem"
            )
            .into(),
            algorithm: crate::config::DkimAlgorithm::Ed25519,
        })
        .unwrap();
        let key = TokenKey::new(b"0123456789abcdef0123");
        let email = SubscriberEmail::parse("ada@example.com").unwrap();
        let created = store::parse_timestamp("2026-11-23T09:00:00Z").unwrap();
        let mail = ConfirmationMail {
            id: 42,
            email: &email,
            name: None,
            created_at: created,
            expires_at: created + chrono::Duration::days(7),
        };
        let raw = String::from_utf8(
            mail.build(&text.newsletter, &key, Some(&signer), true)
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(raw.contains("DKIM-Signature: "), "{raw}");
        assert!(raw.contains("Message-ID: <verdicts.confirm.20261123T090000Z.42@"));
        assert!(!raw.contains("List-Unsubscribe"));
        assert!(raw.contains("Feedback-ID: signup:weekly.example.com:verdicts:example.com\r\n"));
        let signed_names = raw
            .split("h=")
            .nth(1)
            .and_then(|h| h.split(';').next())
            .unwrap()
            .to_ascii_lowercase();
        assert!(signed_names.contains("feedback-id"), "{signed_names}");
        let url = mail.confirm_url(&text.newsletter, &key);
        assert!(url.starts_with(&format!("{}/confirm?token=42.", text.newsletter.base_url)));
        let token = url.split("token=").nth(1).unwrap();
        assert!(verify_token(
            &key,
            token,
            42,
            mail.expires_at,
            "ada@example.com"
        ));
    }
}
