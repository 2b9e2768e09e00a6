//! `verdicts`: a self-hosted weekly digest generator and mailer for AI tool comparisons.
//!
//! The modules are the pipeline's stages, in the order data flows through them:
//! [`content`] (comparison files) → [`digest`] (which comparisons an issue holds, rendered
//! once) → [`mail`] (each recipient's message) → [`delivery`] (the SMTP engine), with
//! [`store`] (the only place that speaks SQL) beside them. [`issue`] is the one dispatcher
//! that sends an issue; [`daemon`], [`web`] and [`cli`] are the ways in; [`signup`] is the
//! public door to the list (limits, the confirmation mail worker).
//! `ARCHITECTURE.md` at the repository root is the map.
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, clippy::dbg_macro)]

pub mod api;
pub mod cli;
pub mod config;
pub mod content;
pub mod daemon;
pub mod deliverability;
pub mod delivery;
pub mod digest;
pub mod error;
pub mod inbound;
pub mod issue;
pub mod mail;
pub mod signup;
pub mod site;
pub mod store;
pub mod tracking;
pub mod web;
pub mod webhooks;
