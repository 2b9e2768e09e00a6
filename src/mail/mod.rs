//! The mail stage: subscriber addresses parsed once ([`address`]), each recipient's message
//! ([`message`]), its DKIM signature ([`dkim`]) and the signed unsubscribe links ([`token`]).

pub mod address;
pub mod confirmation;
pub mod dkim;
pub mod message;
pub mod token;
pub mod verp;
