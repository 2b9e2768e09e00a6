//! The mail stage: subscriber addresses parsed once ([`address`]), each recipient's message
//! ([`message`]) laid out for sending ([`outgoing`], in SMTP's [`transparent`] form), its DKIM signature ([`dkim`], computed
//! by [`dkim_sign`]) and the signed unsubscribe links ([`token`]).

pub mod address;
pub mod confirmation;
pub mod dkim;
pub mod dkim_sign;
pub mod envelope;
pub mod message;
pub mod outgoing;
pub mod token;
pub mod transparent;
pub mod verp;
