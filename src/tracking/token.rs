//! The signed tokens of votes and clicks. Each is self-contained and carries its own purpose
//! label in the MAC, so neither can be replayed as the other or as an unsubscribe token.
//!
//! - A reader token, `<issue>.<subscriber>.<mac>`, names who got which issue; it sits in the
//!   vote links (and, with `tracking.clicks: per-reader`, in the click links) of that
//!   reader's copy.
//! - A click token, `<issue>.<position>.<target>.<mac>`, names a link of an issue and the
//!   path under `base_url` it leads to (base64url), so the redirect needs no lookup and an
//!   altered target fails to verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;

use crate::mail::token::TokenKey;
use crate::store::{IssueNumber, SubscriberId};

/// Bytes of MAC kept in a token: 128 bits.
const TAG_LEN: usize = 16;

/// Who a copy of an issue went to, as proved by a reader token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    pub issue: IssueNumber,
    pub subscriber: SubscriberId,
}

/// A link of an issue, as proved by a click token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub issue: IssueNumber,
    /// The link's place in the issue (0 is the decoy; text links follow the HTML ones).
    pub position: u32,
    /// The path under `base_url`, starting with `/`.
    pub target: String,
}

fn tag(key: &TokenKey, label: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let mut mac = key.keyed();
    mac.update(label);
    for f in fields {
        mac.update(&(f.len() as u32).to_be_bytes());
        mac.update(f);
    }
    mac.finalize().into_bytes()[..TAG_LEN].to_vec()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Constant time for equal lengths.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const READER_LABEL: &[u8] = b"verdicts-reader-v1\0";
const CLICK_LABEL: &[u8] = b"verdicts-click-v1\0";

/// The token of `reader`.
pub fn reader_token(key: &TokenKey, reader: Reader) -> String {
    let t = tag(
        key,
        READER_LABEL,
        &[
            &reader.issue.get().to_be_bytes(),
            &reader.subscriber.get().to_be_bytes(),
        ],
    );
    format!(
        "{}.{}.{}",
        reader.issue,
        reader.subscriber,
        URL_SAFE_NO_PAD.encode(t)
    )
}

/// The reader a genuine token names; `None` for anything altered, truncated or forged.
pub fn verify_reader(key: &TokenKey, token: &str) -> Option<Reader> {
    let mut parts = token.split('.');
    let issue: i64 = parts.next()?.parse().ok()?;
    let subscriber: i64 = parts.next()?.parse().ok()?;
    let mac = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    if parts.next().is_some() || issue < 1 || subscriber < 0 {
        return None;
    }
    let reader = Reader {
        issue: IssueNumber(issue),
        subscriber: SubscriberId(subscriber),
    };
    let want = tag(
        key,
        READER_LABEL,
        &[&issue.to_be_bytes(), &subscriber.to_be_bytes()],
    );
    same(&want, &mac).then_some(reader)
}

/// The token of `link`.
pub fn click_token(key: &TokenKey, link: &Link) -> String {
    let t = tag(
        key,
        CLICK_LABEL,
        &[
            &link.issue.get().to_be_bytes(),
            &link.position.to_be_bytes(),
            link.target.as_bytes(),
        ],
    );
    format!(
        "{}.{}.{}.{}",
        link.issue,
        link.position,
        URL_SAFE_NO_PAD.encode(link.target.as_bytes()),
        URL_SAFE_NO_PAD.encode(t)
    )
}

/// The link a genuine click token names; `None` for anything altered or forged.
pub fn verify_click(key: &TokenKey, token: &str) -> Option<Link> {
    let mut parts = token.split('.');
    let issue: i64 = parts.next()?.parse().ok()?;
    let position: u32 = parts.next()?.parse().ok()?;
    let target = String::from_utf8(URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
    let mac = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    if parts.next().is_some() || issue < 1 || !target.starts_with('/') || target.starts_with("//") {
        return None;
    }
    let link = Link {
        issue: IssueNumber(issue),
        position,
        target,
    };
    let want = tag(
        key,
        CLICK_LABEL,
        &[
            &issue.to_be_bytes(),
            &position.to_be_bytes(),
            link.target.as_bytes(),
        ],
    );
    same(&want, &mac).then_some(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(b"0123456789abcdef0123")
    }

    #[test]
    fn reader_tokens_name_their_reader_only() {
        let r = Reader {
            issue: IssueNumber(3),
            subscriber: SubscriberId(42),
        };
        let t = reader_token(&key(), r);
        assert_eq!(verify_reader(&key(), &t), Some(r));
        assert_eq!(
            verify_reader(&TokenKey::new(b"another key, 0123456"), &t),
            None
        );
        let forged = t.replacen("3.42.", "3.43.", 1);
        assert_eq!(verify_reader(&key(), &forged), None);
        assert_eq!(verify_reader(&key(), &t[..t.len() - 2]), None);
        assert_eq!(verify_reader(&key(), "3.42"), None);
        // An unsubscribe token of the same reader is not a reader token.
        let unsub = key().issue(SubscriberId(42), "ada@example.com");
        assert_eq!(verify_reader(&key(), &format!("3.{unsub}")), None);
    }

    #[test]
    fn click_tokens_refuse_another_target() {
        let link = Link {
            issue: IssueNumber(2),
            position: 4,
            target: "/gemini-vs-llama/".into(),
        };
        let t = click_token(&key(), &link);
        assert_eq!(verify_click(&key(), &t), Some(link));
        let parts: Vec<&str> = t.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode("//evil.example/");
        let moved = format!("{}.{}.{evil}.{}", parts[0], parts[1], parts[3]);
        assert_eq!(verify_click(&key(), &moved), None);
        let other_issue = format!("3.{}.{}.{}", parts[1], parts[2], parts[3]);
        assert_eq!(verify_click(&key(), &other_issue), None);
        // A reader token is not a click token, and the other way round.
        assert_eq!(verify_reader(&key(), &t), None);
    }
}
