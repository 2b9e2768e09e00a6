//! API keys: made from 32 random bytes, shown once, stored as SHA-256 only. A key reads
//! `vdk_<prefix>_<secret>`; the prefix finds the row and the whole key's hash is compared
//! with the stored one in constant time, so how long a wrong key takes to refuse does not
//! depend on how much of it matched.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use sha2::{Digest, Sha256};

/// What a key may do. Each route of the API needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    SubscribersRead,
    SubscribersWrite,
    IssuesRead,
    EventsRead,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::SubscribersRead,
        Scope::SubscribersWrite,
        Scope::IssuesRead,
        Scope::EventsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SubscribersRead => "subscribers:read",
            Scope::SubscribersWrite => "subscribers:write",
            Scope::IssuesRead => "issues:read",
            Scope::EventsRead => "events:read",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s.trim())
    }
}

/// Reads `--scope a,b,c`: every name must be a scope.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, String> {
    let mut scopes = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let scope = Scope::parse(part).ok_or_else(|| {
            format!(
                "`{part}` is not a scope; the scopes are {}",
                Scope::ALL.map(Scope::as_str).join(", ")
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(format!(
            "name at least one scope: {}",
            Scope::ALL.map(Scope::as_str).join(", ")
        ));
    }
    scopes.sort();
    Ok(scopes)
}

/// A new key: the text shown to the operator once, its prefix and its hash.
pub struct NewKey {
    pub key: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

pub fn generate() -> NewKey {
    let rng = SystemRandom::new();
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill(&mut prefix)
        .expect("the system's random source works");
    rng.fill(&mut secret)
        .expect("the system's random source works");
    let prefix = HEXLOWER.encode(&prefix);
    let key = format!("vdk_{prefix}_{}", BASE64URL_NOPAD.encode(&secret));
    let hash = hash(&key);
    NewKey { key, prefix, hash }
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The prefix a presented key claims, if it has the shape of a key at all.
pub fn claimed_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("vdk_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 12 && !secret.is_empty() && prefix.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(prefix)
}

/// Compares the presented key's hash with the stored one in constant time.
pub fn matches(presented: &str, stored_hash: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(&hash(presented), stored_hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_verifies_and_its_hash_is_not_the_key() {
        let k = generate();
        assert_eq!(claimed_prefix(&k.key), Some(k.prefix.as_str()));
        assert!(matches(&k.key, &k.hash));
        assert_ne!(k.hash.as_slice(), k.key.as_bytes());
        let mut altered = k.key.clone();
        altered.pop();
        altered.push('x');
        assert!(!matches(&altered, &k.hash) || k.key.ends_with('x'));
    }

    #[test]
    fn scopes_are_read_strictly() {
        assert_eq!(
            parse_scopes("issues:read, subscribers:read").unwrap(),
            vec![Scope::SubscribersRead, Scope::IssuesRead]
        );
        assert!(parse_scopes("subscribers:admin")
            .unwrap_err()
            .contains("`subscribers:admin` is not a scope"));
        assert!(parse_scopes("").is_err());
    }
}
