//! The command line, as a clap derive tree; the `///` comments are the help text.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "verdicts",
    version,
    about = "Weekly AI Tool Verdicts: build, preview and send the weekly digest"
)]
pub struct Cli {
    /// Config file [default: config/newsletter.yaml]
    #[arg(long, global = true, env = "VERDICTS_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// An instant given on the command line: RFC 3339 with offset (2026-11-23T09:00:00Z).
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time such as 2026-11-23T09:00:00Z: {e}"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render the issue that would go out at --at to files (digest.html, digest.txt, digest.eml)
    Preview {
        /// The moment to preview (RFC 3339) [default: now]
        #[arg(long, value_parser = parse_instant)]
        at: Option<DateTime<Utc>>,
        /// Output folder
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// Validate the config and every content file; exit 1 listing every problem
    Check,
    /// Manage the subscriber list
    #[command(subcommand)]
    Subscribers(crate::subscribers::SubscribersCommand),
}
