//! The mail stage: each recipient's message bytes and their DKIM signature.

pub mod dkim_sign;
pub mod outgoing;
