//! `verdicts`: a self-hosted weekly digest generator and mailer for AI tool comparisons.
//!
//! Data flows one way: content + config → digest model → rendered digest → per-recipient
//! message → transport, with the SQLite ledger beside the sender.
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, clippy::dbg_macro)]

pub mod address;
pub mod cli;
pub mod commands;
pub mod config;
pub mod content;
pub mod daemon;
pub mod db;
pub mod delivery;
pub mod digest;
pub mod dkim;
pub mod error;
pub mod issue;
pub mod ledger;
pub mod lint;
pub mod lock;
pub mod mail;
pub mod message;
pub mod render;
pub mod schedule;
pub mod sender;
pub mod subscribers;
pub mod token;
pub mod web;
