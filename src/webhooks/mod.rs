//! Webhooks: signed HTTP requests between verdicts and other services. [`providers`] takes
//! the relays' event reports (bounces, complaints, unsubscribes) into the same event path
//! as inbound mail; [`outgoing`] announces changes to the list and to issues to the
//! operator's other systems, signed, from a database outbox.

pub mod outgoing;
pub mod providers;
