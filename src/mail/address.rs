//! Email addresses parsed once at the edge: after `SubscriberEmail::parse` the type is the
//! proof that an address is deliverable-looking, so no raw string travels further in.

use std::fmt;
use std::str::FromStr;

/// The longest address SMTP can carry in a forward path (RFC 5321 §4.5.3.1.3).
pub const MAX_ADDRESS_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the address is empty")]
    Empty,
    #[error("`{0}` is longer than {MAX_ADDRESS_LEN} characters")]
    TooLong(String),
    #[error("`{0}` contains a control character (CR, LF, tab or similar)")]
    ControlCharacter(String),
    #[error("`{0}` has no domain (expected name@example.com)")]
    MissingDomain(String),
    #[error("`{addr}` is not a valid address: {reason}")]
    Invalid { addr: String, reason: String },
}

/// A subscriber's address, stored as given and compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriberEmail(lettre::Address);

impl SubscriberEmail {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if input.chars().any(char::is_control) {
            return Err(AddressError::ControlCharacter(
                input.escape_debug().to_string(),
            ));
        }
        if s.chars().count() > MAX_ADDRESS_LEN {
            let shown: String = s.chars().take(40).collect();
            return Err(AddressError::TooLong(format!("{shown}…")));
        }
        match s.rsplit_once('@') {
            None => return Err(AddressError::MissingDomain(s.to_owned())),
            Some((_, "")) => return Err(AddressError::MissingDomain(s.to_owned())),
            _ => {}
        }
        lettre::Address::from_str(s)
            .map(SubscriberEmail)
            .map_err(|e| AddressError::Invalid {
                addr: s.to_owned(),
                reason: e.to_string(),
            })
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The comparison key: unique per subscriber regardless of letter case.
    pub fn normalized(&self) -> String {
        self.as_str().to_lowercase()
    }

    pub fn address(&self) -> &lettre::Address {
        &self.0
    }
}

impl fmt::Display for SubscriberEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SubscriberEmail {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubscriberEmail::parse(s)
    }
}

/// A subscriber's display name: free text, but never control characters (they would let a
/// name inject headers or break CSV and terminal output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name `{0}` contains a control character")]
    ControlCharacter(String),
    #[error("name is longer than 200 characters")]
    TooLong,
}

impl SubscriberName {
    /// `None` for an empty or blank name.
    pub fn parse(input: &str) -> Result<Option<Self>, NameError> {
        if input.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter(
                input.escape_debug().to_string(),
            ));
        }
        let s = input.trim();
        if s.chars().count() > 200 {
            return Err(NameError::TooLong);
        }
        Ok((!s.is_empty()).then(|| SubscriberName(s.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plus_quoted_and_international() {
        for ok in [
            "reader+ai@example.com",
            "\"quoted local\"@example.com",
            "leser@bücher.example",
            "Mixed.Case@Example.COM",
        ] {
            SubscriberEmail::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn rejects_each_bad_kind_with_reason() {
        assert_eq!(SubscriberEmail::parse("  "), Err(AddressError::Empty));
        assert!(matches!(
            SubscriberEmail::parse("a@b.com\r\nBcc: x@y.com"),
            Err(AddressError::ControlCharacter(_))
        ));
        assert!(matches!(
            SubscriberEmail::parse("nobody"),
            Err(AddressError::MissingDomain(_))
        ));
        assert!(matches!(
            SubscriberEmail::parse("nobody@"),
            Err(AddressError::MissingDomain(_))
        ));
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(matches!(
            SubscriberEmail::parse(&long),
            Err(AddressError::TooLong(_))
        ));
        assert!(matches!(
            SubscriberEmail::parse("two@@example.com"),
            Err(AddressError::Invalid { .. })
        ));
    }

    #[test]
    fn compares_case_insensitively() {
        let a = SubscriberEmail::parse("Reader@Example.com").unwrap();
        let b = SubscriberEmail::parse("reader@example.COM").unwrap();
        assert_eq!(a.normalized(), b.normalized());
        assert_eq!(a.as_str(), "Reader@Example.com");
    }

    #[test]
    fn names_reject_control_characters() {
        assert!(SubscriberName::parse("Ada\nLovelace").is_err());
        assert_eq!(SubscriberName::parse("  ").unwrap(), None);
        assert_eq!(
            SubscriberName::parse(" Ada ").unwrap().unwrap().as_str(),
            "Ada"
        );
    }
}
