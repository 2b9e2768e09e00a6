//! How failures reach the operator: a user error (bad input, invalid content, a missing
//! subscriber) exits 1 with a message saying what and where; anything else exits 3 with the
//! cause chain on one line.

/// A mistake in what the operator asked for or supplied. Exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

impl UserError {
    pub fn new(msg: impl Into<String>) -> Self {
        UserError(msg.into())
    }
}

/// Shorthand for returning a user error from a command.
pub fn user_error<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(UserError::new(msg).into())
}

/// True when the error is the operator's to fix (exit 1) rather than an internal failure.
pub fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<UserError>()
            || e.is::<crate::content::ContentErrors>()
            || e.is::<crate::config::ConfigError>()
    })
}
