//! Webhooks: signed HTTP requests between verdicts and other services. [`providers`] takes
//! the relays' event reports (bounces, complaints, unsubscribes) into the same event path
//! as inbound mail.

pub mod providers;
