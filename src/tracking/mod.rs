//! Hearing the readers: community votes cast from the digest, click counts that tell
//! people from link scanners, and the operator's report. The tokens ([`token`]) are
//! self-contained and signed; the digest's links are put in per issue ([`links`]);
//! requests are judged ([`machine`]) and recorded off the request path by one writer
//! ([`recorder`]); the figures are drawn by [`report`]. SQL is in `store::tracking`, the
//! HTTP handlers in `web::tracking`.

pub mod community;
pub mod config;
pub mod links;
pub mod machine;
pub mod recorder;
pub mod report;
pub mod token;
