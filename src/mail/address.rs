//! Email addresses parsed once at the edge: after `SubscriberEmail::parse` the type is the
//! proof that an address is deliverable-looking, so no raw string travels further in.

use std::fmt;
use std::str::FromStr;

/// The longest address SMTP can carry in a forward path (RFC 5321 §4.5.3.1.3).
pub const MAX_ADDRESS_LEN: usize = 254;
/// The longest local part SMTP must accept (RFC 5321 §4.5.3.1.1), in octets.
pub const MAX_LOCAL_PART_OCTETS: usize = 64;

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

/// Why an address cannot be handed to a server that does not offer SMTPUTF8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsciiFormError {
    #[error(
        "`{0}` has a non-ASCII local part, which only a server offering SMTPUTF8 can deliver \
         (this server does not offer it)"
    )]
    LocalPart(String),
    #[error("the domain of `{0}` has no ASCII (IDNA) form")]
    Domain(String),
}

/// The form of `addr` for a server without SMTPUTF8 (RFC 6531): an international domain
/// becomes its IDNA (punycode) name, which names the same host; a non-ASCII local part has
/// no such spelling, so it is an error.
pub fn ascii_form(addr: &lettre::Address) -> Result<lettre::Address, AsciiFormError> {
    let full: &str = addr.as_ref();
    if full.is_ascii() {
        return Ok(addr.clone());
    }
    if !addr.user().is_ascii() {
        return Err(AsciiFormError::LocalPart(full.to_owned()));
    }
    let domain = idna::domain_to_ascii(addr.domain())
        .map_err(|_| AsciiFormError::Domain(full.to_owned()))?;
    lettre::Address::new(addr.user(), domain).map_err(|_| AsciiFormError::Domain(full.to_owned()))
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
        let address = lettre::Address::from_str(s).map_err(|e| AddressError::Invalid {
            addr: s.to_owned(),
            reason: e.to_string(),
        })?;
        // Refuse now what no server could take later: a local part over RFC 5321's 64
        // octets, or an international domain whose IDNA form is too long for the envelope.
        let invalid = |reason: String| AddressError::Invalid {
            addr: s.to_owned(),
            reason,
        };
        if address.user().len() > MAX_LOCAL_PART_OCTETS {
            return Err(invalid(format!(
                "the part before @ is {} bytes long (at most {MAX_LOCAL_PART_OCTETS})",
                address.user().len()
            )));
        }
        let domain = address.domain();
        if !domain.is_ascii() {
            let ascii = idna::domain_to_ascii(domain)
                .map_err(|_| invalid("the domain has no IDNA (punycode) form".into()))?;
            if address.user().len() + 1 + ascii.len() > MAX_ADDRESS_LEN {
                return Err(invalid(format!(
                    "with the domain in its IDNA form ({ascii}) it is longer than \
                     {MAX_ADDRESS_LEN} characters"
                )));
            }
        }
        Ok(SubscriberEmail(address))
    }

    /// True when only a server offering SMTPUTF8 can deliver to this address (its local
    /// part is not ASCII; an international domain alone travels as punycode).
    pub fn needs_smtputf8(&self) -> bool {
        !self.0.user().is_ascii()
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The comparison key: one per mailbox, however it is spelled. Letter case is folded,
    /// quotes that are not needed are dropped (`"ada"@example.com` is `ada@example.com`),
    /// and an international domain is keyed by its IDNA form (`bücher.example` and
    /// `xn--bcher-kva.example` are one domain). A `+tag` is kept: it may be a mailbox of its
    /// own, and readers use tags to tell lists apart.
    pub fn normalized(&self) -> String {
        let (local, domain) = self.canonical_parts();
        format!("{local}@{domain}")
    }

    /// The key before mailboxes were keyed by [`Self::normalized`] (the address as given,
    /// lower-cased), when it differs: links signed with it before then still work.
    pub fn legacy_key(&self) -> Option<String> {
        let old = self.as_str().to_lowercase();
        (old != self.normalized()).then_some(old)
    }

    pub fn address(&self) -> &lettre::Address {
        &self.0
    }

    /// The mailbox's local part and domain spelled one way: the local part lower-cased and
    /// unquoted when its quotes are not needed (`"ada"` is `ada`), the domain in its ASCII
    /// (IDNA) form, the one the relay is given, so `bücher.example` and
    /// `xn--bcher-kva.example` are one domain.
    fn canonical_parts(&self) -> (String, String) {
        let user = self.0.user();
        let local = match user
            .strip_prefix('"')
            .and_then(|u| u.strip_suffix('"'))
            .filter(|_| user.len() >= 2)
        {
            Some(inner) => {
                let mut unescaped = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    unescaped.push(if c == '\\' {
                        chars.next().unwrap_or(c)
                    } else {
                        c
                    });
                }
                if is_dot_atom(&unescaped) {
                    unescaped
                } else {
                    let mut quoted = String::with_capacity(unescaped.len() + 2);
                    quoted.push('"');
                    for c in unescaped.chars() {
                        if c == '"' || c == '\\' {
                            quoted.push('\\');
                        }
                        quoted.push(c);
                    }
                    quoted.push('"');
                    quoted
                }
            }
            None => user.to_owned(),
        };
        let domain = self.0.domain();
        // An ASCII domain's IDNA form is itself, lower-cased (the fast path of an import).
        let domain = if domain.is_ascii() {
            domain.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
        };
        (local.to_lowercase(), domain.to_lowercase())
    }

    /// The key the per-address signup limit counts under: the canonical mailbox, with a
    /// `+tag` dropped where the domain delivers `name+tag@` to `name@` (`plus_tag_domains`,
    /// `*` for all) and Gmail's ignored dots removed, so respellings of one inbox share
    /// one limit.
    pub fn limit_key(&self, plus_tag_domains: &[String]) -> String {
        let (mut local, mut domain) = self.canonical_parts();
        let quoted = local.starts_with('"');
        if domain == "googlemail.com" {
            domain = "gmail.com".into();
        }
        let ignores_tags = plus_tag_domains.iter().any(|d| {
            d == "*" || *d == domain || idna::domain_to_ascii(d).is_ok_and(|a| a == domain)
        });
        if !quoted && (ignores_tags || domain == "gmail.com") {
            if let Some(i) = local.find('+').filter(|&i| i > 0) {
                local.truncate(i);
            }
        }
        if !quoted && domain == "gmail.com" {
            local.retain(|c| c != '.');
        }
        format!("{local}@{domain}")
    }
}

/// True for a local part that needs no quotes (RFC 5322 dot-atom, with RFC 6532's UTF-8).
fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars().all(|c| {
            !c.is_ascii() && !c.is_control()
                || c.is_ascii_alphanumeric()
                || "!#$%&'*+-/=?^_`{|}~.".contains(c)
        })
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
    fn international_domains_have_an_ascii_form_and_local_parts_do_not() {
        let idn = SubscriberEmail::parse("leser@bücher.example").unwrap();
        assert!(!idn.needs_smtputf8());
        assert_eq!(
            ascii_form(idn.address()).unwrap().as_ref() as &str,
            "leser@xn--bcher-kva.example"
        );
        let quoted = SubscriberEmail::parse("\"first last\"@example.com").unwrap();
        assert_eq!(
            ascii_form(quoted.address()).unwrap().as_ref() as &str,
            "\"first last\"@example.com"
        );
        let utf8_local = SubscriberEmail::parse("jörg@example.com").unwrap();
        assert!(utf8_local.needs_smtputf8());
        let err = ascii_form(utf8_local.address()).unwrap_err();
        assert_eq!(err, AsciiFormError::LocalPart("jörg@example.com".into()));
        assert!(err.to_string().contains("SMTPUTF8"), "{err}");
    }

    #[test]
    fn refuses_what_no_server_could_take() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let err = SubscriberEmail::parse(&long_local).unwrap_err();
        assert!(matches!(err, AddressError::Invalid { .. }), "{err}");
        // Short enough as typed, too long once the domain is spelled in punycode.
        let domain = vec!["ü".repeat(15); 10].join(".") + ".example";
        let long_idn = format!("{}@{domain}", "a".repeat(40));
        assert!(long_idn.chars().count() <= MAX_ADDRESS_LEN);
        assert!(41 + idna::domain_to_ascii(&domain).unwrap().len() > MAX_ADDRESS_LEN);
        let err = SubscriberEmail::parse(&long_idn).unwrap_err();
        assert!(err.to_string().contains("IDNA"), "{err}");
    }

    #[test]
    fn compares_case_insensitively() {
        let a = SubscriberEmail::parse("Reader@Example.com").unwrap();
        let b = SubscriberEmail::parse("reader@example.COM").unwrap();
        assert_eq!(a.normalized(), b.normalized());
        assert_eq!(a.as_str(), "Reader@Example.com");
    }

    #[test]
    fn respellings_of_one_inbox_share_one_limit_key() {
        let tags = vec!["gmail.com".to_string(), "example.net".to_string()];
        let key = |s: &str| SubscriberEmail::parse(s).unwrap().limit_key(&tags);
        assert_eq!(key("Ada@Example.com"), "ada@example.com");
        assert_eq!(key("\"ada\"@example.com"), "ada@example.com");
        assert_eq!(key("\"a\\da\"@example.com"), "ada@example.com");
        assert_eq!(
            key("\"first last\"@example.com"),
            "\"first last\"@example.com"
        );
        assert_eq!(key("leser@bücher.example"), "leser@xn--bcher-kva.example");
        assert_eq!(
            key("leser@XN--BCHER-KVA.example"),
            "leser@xn--bcher-kva.example"
        );
        assert_eq!(key("ada+news@example.net"), "ada@example.net");
        assert_eq!(key("a.d.a+x@googlemail.com"), "ada@gmail.com");
        // A domain not known to ignore tags keeps them: they may be different mailboxes.
        assert_eq!(key("ada+news@example.com"), "ada+news@example.com");
        let all = vec!["*".to_string()];
        assert_eq!(
            SubscriberEmail::parse("ada+news@example.com")
                .unwrap()
                .limit_key(&all),
            "ada@example.com"
        );
    }

    #[test]
    fn one_mailbox_has_one_key() {
        let key = |s: &str| SubscriberEmail::parse(s).unwrap().normalized();
        assert_eq!(key("ada@example.com"), key("\"ada\"@example.com"));
        assert_eq!(key("ada@example.com"), key("\"Ada\"@EXAMPLE.com"));
        assert_eq!(
            key("leser@bücher.example"),
            key("leser@xn--bcher-kva.example")
        );
        assert_eq!(key("leser@bücher.example"), "leser@xn--bcher-kva.example");
        assert_ne!(key("ada@example.com"), key("ada+news@example.com"));
        assert_ne!(
            key("\"first last\"@example.com"),
            key("firstlast@example.com")
        );
        let quoted = SubscriberEmail::parse("\"ada\"@example.com").unwrap();
        assert_eq!(quoted.legacy_key().as_deref(), Some("\"ada\"@example.com"));
        assert_eq!(
            SubscriberEmail::parse("Ada@example.com")
                .unwrap()
                .legacy_key(),
            None
        );
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
