//! SMTP delivery: the data path and the threads that build and sign each copy.

pub mod build_pool;
pub mod data;
