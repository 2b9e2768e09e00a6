//! VERP tags: the envelope sender and the mailto unsubscribe address of each delivery carry
//! a signed `+` tag naming the issue, the subscriber and the purpose, so whatever comes back
//! to that address is attributed without trusting anything a remote server quotes.
//!
//! A tag reads `<purpose>-<issue>-<subscriber>-<mac>`, e.g. `b-12-3456-k2x7q4mzsa3vn5ob`:
//! digits, lowercase base32 and hyphens only, so a server that folds the local part to
//! upper or lower case does not break it.
//!
//! The same secret also signs each copy's Message-ID (under a label of its own, so an ID's
//! MAC is never a valid tag and the other way round): a bounce or complaint that quotes
//! only the Message-ID is attributed when the ID carries a MAC we made, never from the
//! issue and subscriber numbers alone.

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::{IssueNumber, SubscriberId};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of MAC kept in a tag: 80 bits, 16 base32 characters.
const MAC_LEN: usize = 10;

/// What the address a message arrived at was handed out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The envelope sender (Return-Path): bounces and feedback reports come back here.
    Bounce,
    /// The List-Unsubscribe mailto: any message here unsubscribes.
    Unsubscribe,
}

impl Purpose {
    fn letter(self) -> char {
        match self {
            Purpose::Bounce => 'b',
            Purpose::Unsubscribe => 'u',
        }
    }

    fn from_letter(c: &str) -> Option<Self> {
        match c {
            "b" => Some(Purpose::Bounce),
            "u" => Some(Purpose::Unsubscribe),
            _ => None,
        }
    }
}

/// What a verified tag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub issue: IssueNumber,
    pub subscriber: SubscriberId,
    pub purpose: Purpose,
}

/// The keys that sign VERP tags and Message-IDs, each derived from the newsletter secret
/// (the one that signs unsubscribe tokens) under its own label, so a tag, a Message-ID and
/// a token never share a MAC key.
/// During a secret rotation it also holds the keys derived from the previous secrets,
/// whose tags and Message-IDs still verify (nothing new is made with them).
#[derive(Clone)]
pub struct VerpKey {
    tags: [u8; 32],
    message_ids: [u8; 32],
    previous: Vec<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for VerpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerpKey(<redacted>)")
    }
}

impl VerpKey {
    pub fn derive(secret: &[u8]) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        VerpKey {
            tags: derive(b"verdicts-verp-key-v1"),
            message_ids: derive(b"verdicts-message-id-key-v1"),
            previous: Vec::new(),
        }
    }

    /// This key, also accepting tags and Message-IDs made with the keys derived from
    /// `previous` secrets.
    pub fn with_previous<'a>(mut self, previous: impl IntoIterator<Item = &'a [u8]>) -> Self {
        self.previous = previous
            .into_iter()
            .map(|secret| {
                let k = VerpKey::derive(secret);
                (k.tags, k.message_ids)
            })
            .collect();
        self
    }

    fn mac(&self, purpose: Purpose, issue: IssueNumber, subscriber: SubscriberId) -> HmacSha256 {
        mac_with(&self.tags, purpose, issue, subscriber)
    }

    /// The tag for one delivery and purpose.
    pub fn tag(&self, tag: Tag) -> String {
        let full = self
            .mac(tag.purpose, tag.issue, tag.subscriber)
            .finalize()
            .into_bytes();
        format!(
            "{}-{}-{}-{}",
            tag.purpose.letter(),
            tag.issue,
            tag.subscriber,
            BASE32_NOPAD.encode(&full[..MAC_LEN]).to_ascii_lowercase()
        )
    }

    /// `base` with the tag added to its local part: `bounces@example.com` becomes
    /// `bounces+b-12-3456-…@example.com`. `base` is a plain address (no display name).
    pub fn address(&self, base: &str, tag: Tag) -> String {
        let (local, domain) = base.rsplit_once('@').unwrap_or((base, ""));
        if domain.is_empty() {
            format!("{local}+{}", self.tag(tag))
        } else {
            format!("{local}+{}@{domain}", self.tag(tag))
        }
    }

    /// Checks a tag (any case) and returns what it says; `None` for anything forged,
    /// altered, truncated or signed with another secret.
    pub fn verify_tag(&self, tag: &str) -> Option<Tag> {
        let tag = tag.trim().to_ascii_lowercase();
        let mut fields = tag.split('-');
        let purpose = Purpose::from_letter(fields.next()?)?;
        let issue = IssueNumber(parse_id(fields.next()?)?);
        let subscriber = SubscriberId(parse_id(fields.next()?)?);
        let mac = fields.next()?;
        if fields.next().is_some() {
            return None;
        }
        let mac = BASE32_NOPAD
            .decode(mac.to_ascii_uppercase().as_bytes())
            .ok()?;
        if mac.len() != MAC_LEN {
            return None;
        }
        let genuine = |key: &[u8; 32]| {
            mac_with(key, purpose, issue, subscriber)
                .verify_truncated_left(&mac)
                .is_ok()
        };
        if !genuine(&self.tags) && !self.previous.iter().any(|(tags, _)| genuine(tags)) {
            return None;
        }
        Some(Tag {
            issue,
            subscriber,
            purpose,
        })
    }

    /// Finds and verifies the tag in an address such as
    /// `BOUNCES+B-12-3456-…@Example.COM` or `<bounces+…@example.com>`.
    pub fn verify_address(&self, address: &str) -> Option<Tag> {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        let (_, tag) = local.rsplit_once('+')?;
        self.verify_tag(tag)
    }
}

impl VerpKey {
    fn message_id_mac(&self, issue: IssueNumber, subscriber: SubscriberId) -> HmacSha256 {
        message_id_mac_with(&self.message_ids, issue, subscriber)
    }

    /// The MAC part of the Message-ID of one delivery: 16 lowercase base32 characters,
    /// the same every time (a copy re-sent after a crash carries the same Message-ID).
    pub fn message_id_tag(&self, issue: IssueNumber, subscriber: SubscriberId) -> String {
        let full = self
            .message_id_mac(issue, subscriber)
            .finalize()
            .into_bytes();
        BASE32_NOPAD.encode(&full[..MAC_LEN]).to_ascii_lowercase()
    }

    /// True when `tag` (any case) is the Message-ID MAC of that delivery.
    pub fn verify_message_id_tag(
        &self,
        issue: IssueNumber,
        subscriber: SubscriberId,
        tag: &str,
    ) -> bool {
        let Ok(mac) = BASE32_NOPAD.decode(tag.trim().to_ascii_uppercase().as_bytes()) else {
            return false;
        };
        let genuine = |key: &[u8; 32]| {
            message_id_mac_with(key, issue, subscriber)
                .verify_truncated_left(&mac)
                .is_ok()
        };
        mac.len() == MAC_LEN
            && (genuine(&self.message_ids) || self.previous.iter().any(|(_, ids)| genuine(ids)))
    }
}

/// A positive decimal id without sign or leading zeros, so one tag has one spelling.
fn mac_with(
    key: &[u8; 32],
    purpose: Purpose,
    issue: IssueNumber,
    subscriber: SubscriberId,
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&[purpose.letter() as u8]);
    mac.update(&issue.get().to_be_bytes());
    mac.update(&subscriber.get().to_be_bytes());
    mac
}

fn message_id_mac_with(key: &[u8; 32], issue: IssueNumber, subscriber: SubscriberId) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&issue.get().to_be_bytes());
    mac.update(&subscriber.get().to_be_bytes());
    mac
}

fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn bounce(issue: i64, subscriber: i64) -> Tag {
        Tag {
            issue: IssueNumber(issue),
            subscriber: SubscriberId(subscriber),
            purpose: Purpose::Bounce,
        }
    }

    #[test]
    fn address_round_trips_in_any_case() {
        let key = VerpKey::derive(SECRET);
        let addr = key.address("bounces@example.com", bounce(12, 3456));
        assert!(addr.starts_with("bounces+b-12-3456-"), "{addr}");
        assert!(addr.ends_with("@example.com"));
        let local = addr.split('@').next().unwrap();
        assert!(local.len() <= 64, "local part too long: {local}");
        assert_eq!(key.verify_address(&addr), Some(bounce(12, 3456)));
        assert_eq!(
            key.verify_address(&addr.to_ascii_uppercase()),
            Some(bounce(12, 3456))
        );
        assert_eq!(
            key.verify_address(&format!("<{addr}>")),
            Some(bounce(12, 3456))
        );
        let unsub = Tag {
            purpose: Purpose::Unsubscribe,
            ..bounce(12, 3456)
        };
        let u = key.address("news+bounces@example.com", unsub);
        assert_eq!(key.verify_address(&u), Some(unsub));
        assert_ne!(key.tag(unsub), key.tag(bounce(12, 3456)));
    }

    #[test]
    fn forged_altered_or_foreign_tags_verify_nothing() {
        let key = VerpKey::derive(SECRET);
        let addr = key.address("bounces@example.com", bounce(12, 3456));
        let other = VerpKey::derive(b"another newsletter's secret, also long");
        assert_eq!(other.verify_address(&addr), None);
        // Another issue, subscriber or purpose with the same MAC.
        for (from, to) in [("-12-", "-13-"), ("-3456-", "-3457-"), ("+b-", "+u-")] {
            assert_eq!(
                key.verify_address(&addr.replacen(from, to, 1)),
                None,
                "{to}"
            );
        }
        let tag = key.tag(bounce(12, 3456));
        let mut flipped = tag.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
        assert_eq!(key.verify_tag(std::str::from_utf8(&flipped).unwrap()), None);
        assert_eq!(key.verify_tag(&tag[..tag.len() - 1]), None);
        assert_eq!(key.verify_tag(&format!("{tag}-x")), None);
        assert_eq!(key.verify_tag("b-12-3456-"), None);
        assert_eq!(key.verify_tag("b-012-3456-aaaaaaaaaaaaaaaa"), None);
        assert_eq!(key.verify_address("bounces@example.com"), None);
        assert_eq!(key.verify_address(""), None);
    }

    #[test]
    fn tags_of_a_previous_secret_verify_during_a_rotation() {
        let old: &[u8] = b"the secret before the rotation, long";
        let old_tag = VerpKey::derive(old).address("bounces@example.com", bounce(12, 3456));
        let new = VerpKey::derive(SECRET);
        assert_eq!(new.verify_address(&old_tag), None);
        let rotating = new.clone().with_previous([old]);
        assert_eq!(rotating.verify_address(&old_tag), Some(bounce(12, 3456)));
        // New tags are made with the new secret only.
        assert_eq!(rotating.tag(bounce(1, 2)), new.tag(bounce(1, 2)));
    }

    #[test]
    fn message_id_tags_verify_for_their_delivery_only() {
        let key = VerpKey::derive(SECRET);
        let (issue, subscriber) = (IssueNumber(12), SubscriberId(3456));
        let tag = key.message_id_tag(issue, subscriber);
        assert_eq!(tag.len(), 16);
        assert_eq!(tag, key.message_id_tag(issue, subscriber), "deterministic");
        assert!(key.verify_message_id_tag(issue, subscriber, &tag));
        assert!(key.verify_message_id_tag(issue, subscriber, &tag.to_ascii_uppercase()));
        assert!(!key.verify_message_id_tag(IssueNumber(13), subscriber, &tag));
        assert!(!key.verify_message_id_tag(issue, SubscriberId(3457), &tag));
        assert!(!key.verify_message_id_tag(issue, subscriber, &tag[..15]));
        assert!(!key.verify_message_id_tag(issue, subscriber, ""));
        let other = VerpKey::derive(b"another newsletter's secret, also long");
        assert!(!other.verify_message_id_tag(issue, subscriber, &tag));
        // Never the MAC of a tag for the same delivery.
        assert!(!key.tag(bounce(12, 3456)).ends_with(&tag));
    }
}
