//! The state database (built in the next commit).
