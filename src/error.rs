//! How failures reach the operator: a user error (bad input, invalid content, a missing
//! subscriber, a state folder or database that is not where the config says) exits 1 with a
//! message saying what and where; anything else (a damaged database among them) exits 3
//! with the cause chain on one line.

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
            || e.downcast_ref::<crate::store::DbError>()
                .is_some_and(crate::store::DbError::is_missing)
    })
}

/// A send that stopped short but is resumable: the server was unreachable or throttling, or
/// a stop was requested. Exit code 75 (EX_TEMPFAIL): run the same command again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Resumable(pub String);

/// The exit code for an error: 1 for the operator's mistakes, 75 for a resumable send, 3
/// for anything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if is_user_error(err) {
        1
    } else if err.chain().any(|e| e.is::<Resumable>()) {
        75
    } else {
        3
    }
}
