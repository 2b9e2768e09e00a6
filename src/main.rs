#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use verdicts::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    verdicts::error::quiet_on_closed_output();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match verdicts::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `verdicts preview | head -1`: the reader went away, which is not a failure.
        Err(err) if verdicts::error::is_closed_output(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", verdicts::error::chain_message(&err));
            if verdicts::store::health::is_unexplained_corruption(&err) {
                eprintln!(
                    "The state database is damaged: stop the daemon and restore the latest backup (see docs/operations.md)."
                );
            }
            ExitCode::from(verdicts::error::exit_code(&err))
        }
    }
}

fn init_tracing(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, problem) = verdicts::cli::logging::filter(rust_log.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal; journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}
