//! Unsubscribe tokens: `<subscriber id>.<HMAC-SHA256 over the id and address>`, base64url.
//! A token proves which subscriber it was issued to; forged or altered ones fail to verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::SubscriberId;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the environment variable {var} is not set; it holds the key that signs readers' links. Give this command the service's value: set secret_file in the config to the file holding it (docs/deployment.md), or export {var} from the service's environment file. Only a new newsletter makes a new one (`openssl rand -hex 32`): a different value voids every link already sent")]
    Missing { var: String },
    #[error("the secret in {var} is too short ({len} bytes); use at least {MIN_SECRET_LEN} random bytes, e.g. `openssl rand -hex 32`")]
    TooShort { var: String, len: usize },
}

/// The key that signs unsubscribe tokens, and during a rotation the previous keys whose
/// tokens still verify (nothing is signed with them).
#[derive(Clone)]
pub struct TokenKey(Vec<u8>, Vec<Vec<u8>>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        TokenKey(secret.to_vec(), Vec::new())
    }

    /// This key, also accepting tokens signed with `previous` (a rotation in progress).
    pub fn with_previous(mut self, previous: Vec<TokenKey>) -> Self {
        self.1 = previous.into_iter().map(|k| k.0).collect();
        self
    }

    /// A one-way fingerprint of the secret (16 hex digits), kept in the database to notice
    /// a changed secret; it reveals nothing about the secret itself.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }

    /// The fingerprints of the previous secrets.
    pub fn previous_fingerprints(&self) -> Vec<String> {
        self.1.iter().map(|k| fingerprint(k)).collect()
    }

    /// A key from a secret read elsewhere (a file); `source` names it in errors.
    pub fn from_secret(value: String, source: &str) -> Result<Self, SecretError> {
        if value.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                var: source.into(),
                len: value.len(),
            });
        }
        Ok(TokenKey(value.into_bytes(), Vec::new()))
    }

    /// Reads the key from the environment variable named in the config.
    pub fn from_env(var: &str) -> Result<Self, SecretError> {
        let value = std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SecretError::Missing { var: var.into() })?;
        if value.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                var: var.into(),
                len: value.len(),
            });
        }
        Ok(TokenKey(value.into_bytes(), Vec::new()))
    }

    /// A MAC keyed with this secret, for the other kinds of signed links.
    pub(crate) fn keyed(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    fn mac(&self, subscriber_id: SubscriberId, email_norm: &str) -> HmacSha256 {
        let mut mac = self.keyed();
        mac.update(b"verdicts-unsubscribe-v1\0");
        mac.update(&subscriber_id.get().to_be_bytes());
        mac.update(email_norm.as_bytes());
        mac
    }

    /// The key for VERP tags, derived from the same secret under its own label.
    pub fn verp_key(&self) -> crate::mail::verp::VerpKey {
        crate::mail::verp::VerpKey::derive(&self.0).with_previous(self.1.iter().map(Vec::as_slice))
    }

    /// The token for a subscriber (by id and normalised address).
    pub fn issue(&self, subscriber_id: SubscriberId, email_norm: &str) -> String {
        let tag = self.mac(subscriber_id, email_norm).finalize().into_bytes();
        format!("{subscriber_id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a token against the subscriber it names and their address: signed over the
    /// address's key, or over the key it had before mailboxes were keyed as one (links in
    /// issues sent before then).
    pub fn verify_for(
        &self,
        token: &str,
        subscriber_id: SubscriberId,
        email: &crate::mail::address::SubscriberEmail,
    ) -> bool {
        self.verify(token, subscriber_id, &email.normalized())
            || email
                .legacy_key()
                .is_some_and(|old| self.verify(token, subscriber_id, &old))
    }

    /// Checks a token against the subscriber it names, in constant time.
    pub fn verify(&self, token: &str, subscriber_id: SubscriberId, email_norm: &str) -> bool {
        let Some((id, tag)) = token.split_once('.') else {
            return false;
        };
        if id.parse::<i64>().ok() != Some(subscriber_id.get()) {
            return false;
        }
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        if self
            .mac(subscriber_id, email_norm)
            .verify_slice(&tag)
            .is_ok()
        {
            return true;
        }
        self.1.iter().any(|old| {
            TokenKey::new(old)
                .mac(subscriber_id, email_norm)
                .verify_slice(&tag)
                .is_ok()
        })
    }
}

fn fingerprint(secret: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"verdicts-secret-fingerprint-v1");
    data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes()[..8])
}

/// The sample subscriber of previews and test copies. SQLite numbers real subscribers from
/// 1, so a link signed for id 0 verifies (the page works) but can unsubscribe nobody.
pub const SAMPLE_SUBSCRIBER_ID: SubscriberId = SubscriberId(0);
/// The sample subscriber's address, which its links are signed for.
pub const SAMPLE_EMAIL: &str = "reader@example.com";

impl TokenKey {
    /// True for a genuine link of the sample subscriber (from a preview or a test copy).
    pub fn is_sample(&self, token: &str) -> bool {
        self.verify(token, SAMPLE_SUBSCRIBER_ID, SAMPLE_EMAIL)
    }
}

/// The subscriber id a token claims; verify it before trusting it.
pub fn claimed_subscriber(token: &str) -> Option<SubscriberId> {
    token.split_once('.')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_keys_verify_old_tokens_and_sign_nothing() {
        let old = TokenKey::new(b"the old secret, 0123456789");
        let new = TokenKey::new(b"the new secret, 0123456789");
        let t_old = old.issue(SubscriberId(7), "ada@example.com");
        assert!(!new.verify(&t_old, SubscriberId(7), "ada@example.com"));
        let rotating = new.clone().with_previous(vec![old.clone()]);
        assert!(rotating.verify(&t_old, SubscriberId(7), "ada@example.com"));
        assert!(!rotating.verify(&t_old, SubscriberId(8), "ada@example.com"));
        assert_eq!(
            rotating.issue(SubscriberId(7), "ada@example.com"),
            new.issue(SubscriberId(7), "ada@example.com")
        );
        assert_eq!(rotating.previous_fingerprints(), [old.fingerprint()]);
        assert_ne!(old.fingerprint(), new.fingerprint());
        assert_eq!(new.fingerprint().len(), 16);
    }

    #[test]
    fn token_verifies_for_its_subscriber_only() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        let t = key.issue(SubscriberId(7), "ada@example.com");
        assert_eq!(claimed_subscriber(&t), Some(SubscriberId(7)));
        assert!(key.verify(&t, SubscriberId(7), "ada@example.com"));
        assert!(!key.verify(&t, SubscriberId(8), "ada@example.com"));
        assert!(!key.verify(&t, SubscriberId(7), "bob@example.com"));
        assert!(!TokenKey::new(b"another key entirely!").verify(
            &t,
            SubscriberId(7),
            "ada@example.com"
        ));
        let mut altered = t.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(!key.verify(
            std::str::from_utf8(&altered).unwrap(),
            SubscriberId(7),
            "ada@example.com"
        ));
        assert!(!key.verify(&t[..t.len() - 4], SubscriberId(7), "ada@example.com"));
        assert!(!key.verify("7", SubscriberId(7), "ada@example.com"));
    }

    #[test]
    fn only_genuine_sample_links_are_samples() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        assert!(key.is_sample(&key.issue(SAMPLE_SUBSCRIBER_ID, SAMPLE_EMAIL)));
        assert!(!key.is_sample(&key.issue(SAMPLE_SUBSCRIBER_ID, "ada@example.com")));
        assert!(!key.is_sample(&key.issue(SubscriberId(7), SAMPLE_EMAIL)));
        let other = TokenKey::new(b"another key entirely!");
        assert!(!key.is_sample(&other.issue(SAMPLE_SUBSCRIBER_ID, SAMPLE_EMAIL)));
    }
}
