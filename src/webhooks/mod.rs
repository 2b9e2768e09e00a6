//! Webhooks: `outgoing` announces changes to the list and to issues to the operator's
//! other systems, signed, from a database outbox.

pub mod outgoing;
