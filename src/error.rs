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
            || e.downcast_ref::<crate::store::DbError>().is_some_and(|e| {
                e.is_missing()
                    || matches!(
                        e,
                        crate::store::DbError::NotWritable { .. }
                            | crate::store::DbError::AsRoot { .. }
                    )
            })
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

/// The error and its causes on one line, each cause once: a message that already quotes its
/// source (`cannot read X: No such file or directory`) is not followed by that source again.
pub fn chain_message(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// True when the error is a write to a closed pipe (`verdicts issues | head -1`).
pub fn is_closed_output(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Makes a write to a closed standard output or error end the process quietly with exit 0,
/// as `head` and `grep -q` expect of the commands they read: Rust ignores SIGPIPE, so
/// `println!` on a closed pipe panics instead ("failed printing to stdout: Broken pipe").
/// Every other panic keeps the default report.
pub fn quiet_on_closed_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if payload.starts_with("failed printing to std") && payload.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
