//! The SMTP envelope of every mail the newsletter sends (issues, test copies, confirmation
//! mails): given, never derived from the headers (a quoted local part such as
//! `"first last"@example.com` would not survive that round trip), and spelled for what the
//! server offers: with SMTPUTF8 as the addresses are, without it with international domains
//! in their IDNA (punycode) form, and an address whose local part is not ASCII refused,
//! because no spelling of it reaches that mailbox.

use lettre::address::{Address, Envelope};

use crate::mail::address::{ascii_form, SubscriberEmail};
use crate::mail::message::MessageError;

/// The envelope from `sender` to `to`, and the recipient's address as spelled in it (for
/// the To header).
pub fn envelope_for(
    sender: &Address,
    to: &SubscriberEmail,
    smtputf8: bool,
) -> Result<(Envelope, Address), MessageError> {
    let (to_addr, sender) = if smtputf8 {
        (to.address().clone(), sender.clone())
    } else {
        (ascii_form(to.address())?, ascii_form(sender)?)
    };
    let envelope = Envelope::new(Some(sender), vec![to_addr.clone()]).map_err(|source| {
        MessageError::Build {
            recipient: to.to_string(),
            source,
        }
    })?;
    Ok((envelope, to_addr))
}

/// Why no server as the relay is known could deliver to `to`: `None` when one can (or the
/// relay is not known yet). `relay_smtputf8` is whether the relay offers SMTPUTF8.
pub fn undeliverable(to: &SubscriberEmail, relay_smtputf8: Option<bool>) -> Option<String> {
    match relay_smtputf8 {
        Some(false) => ascii_form(to.address()).err().map(|e| e.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> SubscriberEmail {
        SubscriberEmail::parse(s).unwrap()
    }

    #[test]
    fn quoted_and_international_addresses_are_spelled_for_the_server() {
        let from: Address = "news@example.com".parse().unwrap();
        let (env, to) = envelope_for(&from, &email("\"second last\"@example.com"), false).unwrap();
        assert_eq!(env.to().len(), 1);
        assert_eq!(AsRef::<str>::as_ref(&to), "\"second last\"@example.com");
        let (_, to) = envelope_for(&from, &email("leser@bücher.example"), false).unwrap();
        assert_eq!(AsRef::<str>::as_ref(&to), "leser@xn--bcher-kva.example");
        let (_, to) = envelope_for(&from, &email("leser@bücher.example"), true).unwrap();
        assert_eq!(AsRef::<str>::as_ref(&to), "leser@bücher.example");
        assert!(envelope_for(&from, &email("jörg@example.com"), false).is_err());
        assert!(undeliverable(&email("jörg@example.com"), Some(false)).is_some());
        assert!(undeliverable(&email("jörg@example.com"), Some(true)).is_none());
        assert!(undeliverable(&email("jörg@example.com"), None).is_none());
        assert!(undeliverable(&email("leser@bücher.example"), Some(false)).is_none());
    }
}
