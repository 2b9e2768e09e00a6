//! The command line, as a clap derive tree; the `///` comments are the help text.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use crate::store::IssueNumber;

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

/// An instant given on the command line: RFC 3339 with offset (2026-11-23T09:00:00Z), or
/// `now` (then `--at` means the slot at or before this moment).
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    if s == "now" {
        return Ok(super::now());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("`{s}` is not an RFC 3339 time such as 2026-11-23T09:00:00Z (or `now`): {e}")
        })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render the issue of a slot to files (digest.html, digest.txt, digest.eml); a slot
    /// whose issue exists shows that stored issue
    Preview {
        /// Preview the slot at or before this moment (RFC 3339, or `now`)
        /// [default: the next issue: the latest slot until its issue is sent, then the next slot]
        #[arg(long, value_parser = parse_instant)]
        at: Option<DateTime<Utc>>,
        /// Output folder
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Exit 0 despite deliverability warnings (as `send --force` would send); errors still fail
        #[arg(long)]
        force: bool,
    },
    /// Validate the config and every content file; exit 1 listing every problem
    Check {
        /// Also read the whole state database with `PRAGMA quick_check` (the daemon does
        /// this daily at retention.daily_at)
        #[arg(long)]
        db: bool,
    },
    /// Fold the per-recipient rows of issues older than retention.deliveries into their
    /// totals and delete them, delete events older than retention.events, erase readers
    /// who left before retention.unsubscribed, and hand the freed space back (the daemon
    /// does this daily at retention.daily_at)
    Compact {
        /// Say what would be folded and deleted, and change nothing
        #[arg(long)]
        dry_run: bool,
        /// For a database made before incremental vacuum: rewrite it once so that freed
        /// space goes back to the disk (holds the write lock throughout: a quiet hour)
        #[arg(long, conflicts_with = "dry_run")]
        vacuum: bool,
    },
    /// Create (or resume) the issue for a slot and deliver it
    Send {
        /// Send the issue of the slot at or before this moment (RFC 3339, or `now`)
        /// [default: the next issue: the latest slot until its issue is sent, then the next slot];
        /// a slot still to come is sent only when named
        #[arg(long, value_parser = parse_instant)]
        at: Option<DateTime<Utc>>,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
        /// Write each recipient's exact message to --out instead of sending; the ledger is untouched
        #[arg(long)]
        dry_run: bool,
        /// Output folder for --dry-run
        #[arg(long, default_value = "out/dry-run", requires = "dry_run")]
        out: PathBuf,
        /// Send despite deliverability warnings; errors are never overridden
        #[arg(long)]
        force: bool,
        /// Send a test copy of the issue to these addresses only, exactly as subscribers get
        /// it (links work and change nothing); the ledger and the list are untouched.
        /// The same slot as `preview` and `send` choose
        #[arg(long = "test", value_name = "ADDR", num_args = 1.., conflicts_with = "dry_run")]
        test: Vec<String>,
        /// With --test: keep the Subject as subscribers get it, without the [TEST] prefix
        #[arg(long, requires = "test")]
        exact: bool,
        /// Create the issue even with no active subscriber (its comparisons then count as sent)
        #[arg(long)]
        allow_empty: bool,
    },
    /// Issue history and delivery counts; `issues show N`, `issues retry N`
    Issues {
        #[command(subcommand)]
        command: Option<IssuesCommand>,
    },
    /// Run the daemon: send each slot's issue on schedule and serve the web endpoint
    Run {
        /// Create a slot's issue even with no active subscriber
        #[arg(long)]
        allow_empty: bool,
    },
    /// Serve only the web endpoint (web.listen): unsubscribe, signup and confirmation
    Serve,
    /// Check the issue of a slot for deliverability problems
    Lint {
        /// Check the slot at or before this moment (RFC 3339, or `now`)
        /// [default: the next issue: the latest slot until its issue is sent, then the next slot]
        #[arg(long, value_parser = parse_instant)]
        at: Option<DateTime<Utc>>,
    },
    /// Print the DNS TXT record to publish for the configured DKIM key
    DkimRecord,
    /// Build the public site (comparison pages, issue archive, feeds) from the content files
    /// and the ledger
    #[command(subcommand)]
    Site(SiteCommand),
    /// Create the state folder and an empty state database (state_dir in the config)
    Init,
    /// Write a consistent copy of the state database to FILE, safe while the daemon runs
    Backup {
        /// Where to write the copy (replaced if it exists)
        file: PathBuf,
    },
    /// Write the newsletter's report (list size, per-issue funnel, clicks per comparison,
    /// readers' votes beside the panel's) as one self-contained HTML page
    Report {
        /// Output folder (the page is index.html in it)
        #[arg(long, default_value = "out/report")]
        out: PathBuf,
    },
    /// Manage the subscriber list
    #[command(subcommand)]
    Subscribers(super::subscribers::SubscribersCommand),
    /// Read bounces, complaints and mailto unsubscribes: one message on standard input (for a
    /// mail server's pipe), or a whole mailbox. Exit 0 when handled or ignored, 75 when the
    /// database is busy or unavailable (the mail server retries)
    Inbound {
        /// Every message of this mbox file
        #[arg(long, value_name = "FILE", conflicts_with_all = ["maildir", "imap"])]
        mbox: Option<PathBuf>,
        /// List the reports kept as unattributed (never applied), newest first
        #[arg(long, conflicts_with_all = ["mbox", "maildir", "imap"])]
        unattributed: bool,
        /// With --unattributed: how many to list
        #[arg(
            long,
            value_name = "N",
            default_value_t = 50,
            requires = "unattributed"
        )]
        limit: usize,
        /// Poll the inbound.imap mailbox once (the daemon polls it on its own)
        #[arg(long, conflicts_with = "maildir")]
        imap: bool,
        /// Every message of this Maildir (its new/ and cur/ folders)
        #[arg(long, value_name = "DIR")]
        maildir: Option<PathBuf>,
        /// The address the message was delivered to, when the mail server passes it
        /// (Postfix's local delivery sets ORIGINAL_RECIPIENT); else read from Delivered-To
        #[arg(long, env = "ORIGINAL_RECIPIENT", value_name = "ADDRESS")]
        recipient: Option<String>,
    },
    /// Print the HTML signup form (no JavaScript needed) to paste into any page
    SignupForm,
    /// Manage the JSON API's keys (`/api/v1/`)
    #[command(subcommand)]
    Keys(super::keys::KeysCommand),
    /// Recent outgoing webhook deliveries and failures, newest first
    Webhooks {
        /// Only the failed and still-retrying deliveries
        #[arg(long)]
        failed: bool,
        /// How many to list
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
    },
}

fn parse_issue_number(s: &str) -> Result<IssueNumber, String> {
    s.parse::<i64>()
        .map(IssueNumber)
        .map_err(|_| format!("`{s}` is not an issue number (see `verdicts issues`)"))
}

#[derive(Debug, Subcommand)]
pub enum IssuesCommand {
    /// Every issue with its delivery counts (the default)
    List,
    /// One issue: per-state counts and the failed recipients with their last reply
    Show {
        /// Issue number
        #[arg(value_parser = parse_issue_number)]
        number: IssueNumber,
    },
    /// Re-queue the failed deliveries of an issue whose subscribers are still active
    Retry {
        /// Issue number
        #[arg(value_parser = parse_issue_number)]
        number: IssueNumber,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Write the whole site to a fresh folder and swap it in
    Build {
        /// Output folder [default: site.out_dir, else public]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}
