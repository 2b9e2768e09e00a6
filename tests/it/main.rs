//! The integration tests: one binary sharing one harness. `common` builds temporary sites
//! (config, content, state) and runs the real binary; `smtp` is a real SMTP server on a
//! loopback port with scripted behaviour.

#[macro_use]
mod checkers;
mod common;
mod smtp;

mod addresses;
mod api;
mod backup;
mod cli;
mod cli_output;
mod content;
mod daemon;
mod deliverability;
mod delivery;
mod delivery_faults;
mod deployment;
mod digest_browser;
mod docs;
mod dovecot;
mod endpoint;
mod faults;
mod first_day;
mod hardening;
mod history;
mod hostile_content;
mod hostile_inbound;
mod hostile_web;
mod inbound;
mod provider_webhooks;
mod relay_refusals;
mod relays;
mod render;
mod signup;
mod site;
mod smtp_harness;
mod subscribers;
mod test_send;
mod tracking;
mod webhooks_out;
