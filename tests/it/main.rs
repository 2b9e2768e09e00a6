//! The integration tests: one binary sharing one harness. `common` builds temporary sites
//! (config, content, state) and runs the real binary; `smtp` is a real SMTP server on a
//! loopback port with scripted behaviour.

mod common;
mod smtp;

mod cli;
mod cli_output;
mod content;
mod daemon;
mod deliverability;
mod delivery;
mod docs;
mod inbound;
mod render;
mod smtp_harness;
mod subscribers;
