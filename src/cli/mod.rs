//! The commands behind the CLI: each loads what it needs and calls into the library.

mod args;
mod deliverability;
mod inbound;
mod issues;
mod keys;
pub mod logging;
mod ops;
mod report;
mod run;
mod runtime;
mod send;
mod site;
mod subscribers;
mod webhooks;

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::content::{self, Comparison};
use crate::digest::render::{self, RenderedDigest, GMAIL_CLIP_BYTES};
use crate::digest::Window;
use crate::error::user_error;
use crate::mail::message::{IssueMessages, Recipient};
use crate::mail::token::TokenKey;
use crate::store::{DbError, IssueNumber};
pub use args::*;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // clap has already applied VERDICTS_CONFIG to `--config`.
    let config_path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    match cli.command {
        Command::Preview { at, out, force } => {
            let config = Config::load(&config_path)?;
            let slot = choose_slot(&config, at)?;
            preview(&config, slot, &out, force)
        }
        Command::Check { db } => {
            check(&config_path)?;
            if db {
                ops::check_db(&Config::load(&config_path)?)?;
            }
            Ok(())
        }
        Command::Compact { dry_run, vacuum } => {
            ops::compact(&Config::load(&config_path)?, dry_run, vacuum)
        }
        Command::Send {
            at,
            yes,
            dry_run,
            out,
            force,
            test,
            exact,
            allow_empty,
        } => {
            let config = Config::load(&config_path)?;
            let explicit = at.is_some();
            let slot = choose_slot(&config, at)?;
            if !test.is_empty() {
                return send::test(&config, slot, &test, exact);
            }
            if dry_run {
                send::dry_run(&config, slot, &out, force)
            } else if !explicit && slot > now() {
                // The latest slot's issue is done: the next one is not due yet.
                println!(
                    "Nothing to send until then: `verdicts send --at {}` sends it now, ahead of its slot.",
                    slot.format("%Y-%m-%dT%H:%M:%SZ")
                );
                Ok(())
            } else {
                send::send(&config, slot, yes, force, allow_empty)
            }
        }
        Command::Run { allow_empty } => {
            let config = Config::load(&config_path)?;
            run::run(&config, allow_empty)
        }
        Command::Init => ops::init(&Config::load(&config_path)?),
        Command::Backup { file } => ops::backup(&Config::load(&config_path)?, &file),
        Command::Report { out } => report::run(&Config::load(&config_path)?, &out),
        Command::Serve => {
            let config = Config::load(&config_path)?;
            run::serve(&config)
        }
        Command::Lint { at } => {
            let config = Config::load(&config_path)?;
            let slot = choose_slot(&config, at)?;
            deliverability::lint(&config, slot)
        }
        Command::DkimRecord => {
            let config = Config::load(&config_path)?;
            deliverability::dkim_record(&config)
        }
        Command::Issues { command } => {
            let config = Config::load(&config_path)?;
            issues::run(&config, command)
        }
        Command::Site(SiteCommand::Build { out }) => {
            let config = Config::load(&config_path)?;
            site::build(&config, out)
        }
        Command::Subscribers(cmd) => {
            let config = Config::load(&config_path)?;
            subscribers::run(cmd, &config)
        }
        Command::Inbound {
            mbox,
            unattributed,
            limit,
            imap,
            maildir,
            recipient,
        } => {
            if unattributed {
                let config = Config::load(&config_path)?;
                return inbound::list_unattributed(&config, limit);
            }
            let source = match (mbox, maildir) {
                (Some(file), _) => inbound::Source::Mbox(file),
                (None, Some(dir)) => inbound::Source::Maildir(dir),
                (None, None) if imap => inbound::Source::Imap,
                (None, None) => inbound::Source::Stdin { recipient },
            };
            inbound::run(&config_path, source)
        }
        Command::Keys(cmd) => keys::run(&Config::load(&config_path)?, cmd),
        Command::Webhooks { failed, limit } => {
            webhooks::list(&Config::load(&config_path)?, failed, limit)
        }
        Command::SignupForm => {
            let config = Config::load(&config_path)?;
            let action = format!("{}/subscribe", config.newsletter.base_url);
            print!(
                "{}",
                crate::signup::form::form_html(&action, &config.newsletter.name)
            );
            Ok(())
        }
    }
}

/// The issue an operator would get at a moment: its slot, window and comparisons.
pub struct PlannedIssue<'a> {
    pub slot: DateTime<Utc>,
    pub window: Window,
    pub comparisons: Vec<&'a Comparison>,
    /// The number the issue has or would get: its "View in browser" page is /issues/N/.
    pub number: IssueNumber,
    /// The digest stored with the slot's issue, when a send has created it: what its
    /// readers got, whatever the content files say now.
    pub stored: Option<RenderedDigest>,
}

impl PlannedIssue<'_> {
    /// The issue's digest: the stored one, or rendered from the content files.
    pub fn digest(&self, config: &Config) -> anyhow::Result<RenderedDigest> {
        match &self.stored {
            Some(digest) => Ok(digest.clone()),
            None => Ok(render::render_issue(config, &self.comparisons, self.slot)?),
        }
    }
}

/// The slot a command works on. With `--at`, the slot at or before that moment. Without,
/// the next issue, the same for `preview`, `lint`, `send`, `send --dry-run` and
/// `send --test`: the latest slot while its issue is not created or not finished, else the
/// next slot. The choice is printed with its reason.
fn choose_slot(config: &Config, at: Option<DateTime<Utc>>) -> anyhow::Result<DateTime<Utc>> {
    use crate::store::ledger::{self, IssueState};
    if let Some(at) = at {
        return send::slot_at_or_before(config, at);
    }
    let now = now();
    let slots = &config.schedule.slots;
    let path = config.database_path();
    let conn = if path.exists() {
        Some(crate::store::open(&path)?)
    } else {
        None
    };
    let mut reason = String::from("the first slot of the schedule");
    if let Some(latest) = slots.slot_at_or_before(now) {
        let issue = match &conn {
            Some(conn) => ledger::issue_by_slot(conn, latest)?,
            None => None,
        };
        let chosen = match &issue {
            None => Some("the latest slot; its issue has not been sent".to_owned()),
            Some(i) if i.state.is_unfinished() => Some(format!(
                "the latest slot; its issue {} is not finished",
                i.number
            )),
            Some(i) if i.state == IssueState::Skipped => {
                reason = format!(
                    "the latest slot, {}, was an empty week (issue {})",
                    describe_slot(config, latest),
                    i.number
                );
                None
            }
            Some(i) => {
                reason = format!(
                    "issue {} for the latest slot, {}, was sent",
                    i.number,
                    describe_slot(config, latest)
                );
                None
            }
        };
        if let Some(why) = chosen {
            println!(
                "Next issue: {} ({why}; --at picks another).",
                describe_slot(config, latest)
            );
            return Ok(latest);
        }
    }
    let Some(next) = slots.next_after(now) else {
        return user_error(format!(
            "the schedule `{}` has no slot after {now}",
            slots.expression()
        ));
    };
    println!(
        "Next issue: {} (the next slot: {reason}; --at picks another).",
        describe_slot(config, next)
    );
    Ok(next)
}

/// Plans the issue for the slot at or before `at`, against the ledger when there is one.
fn plan_issue<'a>(
    config: &Config,
    conn: Option<&rusqlite::Connection>,
    comparisons: &'a [Comparison],
    at: DateTime<Utc>,
) -> anyhow::Result<PlannedIssue<'a>> {
    let Some(slot) = config.schedule.slots.slot_at_or_before(at) else {
        return user_error(format!(
            "the schedule `{}` has no slot at or before {at}",
            config.schedule.slots.expression()
        ));
    };
    let (window, comparisons) = crate::issue::plan(conn, comparisons, slot)?;
    Ok(PlannedIssue {
        slot,
        window,
        comparisons,
        number: issue_number(conn, slot)?,
        stored: None,
    })
}

/// The number of the slot's issue: the one in the ledger, else the next free one (1 without
/// a ledger).
fn issue_number(
    conn: Option<&rusqlite::Connection>,
    slot: DateTime<Utc>,
) -> anyhow::Result<IssueNumber> {
    use crate::store::ledger;
    let Some(conn) = conn else {
        return Ok(IssueNumber(1));
    };
    Ok(match ledger::issue_by_slot(conn, slot)? {
        Some(issue) => issue.number,
        None => ledger::next_issue_number(conn)?,
    })
}

/// The current time. `VERDICTS_NOW` (RFC 3339) stands in for the clock, so tests and
/// rehearsals can ask "what would happen on Saturday 5 December?".
pub fn now() -> DateTime<Utc> {
    std::env::var("VERDICTS_NOW")
        .ok()
        .and_then(|v| parse_instant(&v).ok())
        .unwrap_or_else(Utc::now)
}

/// A human label for a slot: local time and UTC.
pub fn describe_slot(config: &Config, slot: DateTime<Utc>) -> String {
    let tz = config.schedule.slots.timezone();
    format!(
        "{} ({})",
        slot.with_timezone(&tz).format("%A %-d %B %Y %H:%M %Z"),
        slot.format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// The signing key, or for previews a stand-in when none is configured.
fn preview_key(config: &Config) -> (TokenKey, bool) {
    match crate::issue::configured_key(config) {
        Ok(k) => (k, true),
        Err(_) => (TokenKey::new(b"preview-only-key-not-for-sending"), false),
    }
}

/// The issue `preview` and `lint` show for `at`: the slot's own, or when that week is empty
/// the latest week that has content (saying so).
pub fn plan_preview<'a>(
    config: &Config,
    comparisons: &'a [Comparison],
    at: DateTime<Utc>,
) -> anyhow::Result<PlannedIssue<'a>> {
    // With a ledger, the window starts at the previous issue's cutoff and skips what was
    // already sent, exactly as `send` would; without one (a fresh clone), this is the first
    // issue. A state folder that exists but holds no database is worth a note: it may be an
    // unmounted disk. A damaged database is an error, as for `send`.
    let path = config.database_path();
    let conn = match crate::store::open(&path) {
        Ok(conn) => Some(conn),
        Err(DbError::NoStateDir { .. }) => None,
        Err(DbError::Missing { .. }) => {
            eprintln!(
                "Note: there is no state database at {}, so this is previewed as the first issue.",
                path.display()
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut plan = plan_issue(config, conn.as_ref(), comparisons, at)?;
    // A slot whose issue exists shows that issue, as its readers got it.
    if let Some(conn) = conn.as_ref() {
        use crate::store::ledger::{self, IssueState};
        if let Some(issue) =
            ledger::issue_by_slot(conn, plan.slot)?.filter(|i| i.state != IssueState::Skipped)
        {
            plan.number = issue.number;
            plan.window = Window {
                after: issue.window_after,
                cutoff: issue.cutoff,
            };
            plan.stored = Some(RenderedDigest::from(ledger::stored_digest(
                conn,
                issue.number,
            )?));
            return Ok(plan);
        }
    }
    if plan.comparisons.is_empty() {
        println!(
            "The issue for {} has no new comparisons (window {} to {}).",
            describe_slot(config, plan.slot),
            plan.window.after.format("%Y-%m-%d %H:%M UTC"),
            plan.window.cutoff.format("%Y-%m-%d %H:%M UTC"),
        );
        let Some(latest) = comparisons.iter().map(Comparison::published_utc).max() else {
            return user_error(format!(
                "there is no content to preview: {} has no comparison files",
                content::comparisons_dir(&config.content_dir).display()
            ));
        };
        let Some(slot) = config
            .schedule
            .slots
            .slot_at_or_before(latest)
            .filter(|s| *s == latest)
            .or_else(|| config.schedule.slots.next_after(latest))
        else {
            return user_error("the schedule has no slot after the latest comparison");
        };
        // That week as it was published, whether or not it has gone out since, under the
        // number it has or would get.
        plan = PlannedIssue {
            number: issue_number(conn.as_ref(), slot)?,
            ..plan_issue(config, None, comparisons, slot)?
        };
        println!(
            "Previewing the latest week that has content instead: the issue for {}.",
            describe_slot(config, plan.slot)
        );
    }
    Ok(plan)
}

/// Writes the preview files, then runs the deliverability checks: exit 1 when `send` would
/// refuse the issue (the files are still written, to look at).
fn preview(config: &Config, at: DateTime<Utc>, out: &Path, force: bool) -> anyhow::Result<()> {
    let dkim = crate::mail::dkim::load(config)?;
    let comparisons = content::load_dir(&config.content_dir)?;
    let plan = plan_preview(config, &comparisons, at)?;
    let digest = plan.digest(config)?;
    let (key, real_key) = preview_key(config);
    let files = write_preview(config, &digest, &plan, key, dkim.clone(), out)?;

    println!("Issue:       {}", describe_slot(config, plan.slot));
    if plan.stored.is_some() {
        println!(
            "Stored:      issue {} as its readers got it (sent or being sent; later content edits are not in it)",
            plan.number
        );
    }
    println!("Subject:     {}", digest.subject);
    println!("Preheader:   {}", digest.preheader);
    println!("Comparisons: {}", digest.comparison_count);
    println!(
        "HTML:        {} ({:.0}% of Gmail's ~102 KB clipping limit)",
        human_size(files.html_bytes),
        files.html_bytes as f64 * 100.0 / GMAIL_CLIP_BYTES as f64
    );
    println!("Text:        {}", human_size(files.text_bytes));
    println!("Message:     {}", human_size(files.eml_bytes));
    for p in &files.paths {
        println!("Wrote {}", p.display());
    }
    if !real_key {
        println!(
            "Note: {} is not set, so the sample unsubscribe link uses a preview-only key.",
            config.secret_env
        );
    }
    deliverability::check_preview(config, &digest, dkim.as_ref(), force)
}

struct PreviewFiles {
    paths: Vec<PathBuf>,
    html_bytes: usize,
    text_bytes: usize,
    eml_bytes: usize,
}

fn write_preview(
    config: &Config,
    digest: &RenderedDigest,
    plan: &PlannedIssue<'_>,
    key: TokenKey,
    dkim: Option<crate::mail::dkim::DkimSigner>,
    out: &Path,
) -> anyhow::Result<PreviewFiles> {
    let sample = Recipient::sample();
    // As the sample reader gets it: "View in browser" names the issue's archive page, and
    // the links are tracked as the config says.
    let digest = crate::tracking::links::track(digest, config, plan.number, &key);
    let messages = IssueMessages::new(&config.newsletter, plan.number, plan.slot, &digest, key)
        .with_dkim(dkim)
        .with_inbound(config.inbound.address.as_deref());
    let url = messages.unsubscribe_url(&sample);
    let reader = messages.reader_token(&sample);
    let html = digest
        .html_for(&url)
        .replace(crate::tracking::links::READER_PLACEHOLDER, &reader);
    let text = digest
        .text_for(&url)
        .replace(crate::tracking::links::READER_PLACEHOLDER, &reader);
    let eml = messages.build(&sample)?.formatted();

    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let mut paths = Vec::new();
    for (name, bytes) in [
        ("digest.html", html.as_bytes()),
        ("digest.txt", text.as_bytes()),
        ("digest.eml", eml.as_slice()),
    ] {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok(PreviewFiles {
        paths,
        html_bytes: html.len(),
        text_bytes: text.len(),
        eml_bytes: eml.len(),
    })
}

fn human_size(bytes: usize) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    }
}

fn check(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let comparisons = content::load_dir(&config.content_dir)?;
    let dkim = crate::mail::dkim::load(&config)?;
    println!("Config {} is valid.", config_path.display());
    if let Some(signer) = dkim {
        println!(
            "DKIM key for {} is valid (`verdicts dkim-record` shows its DNS record).",
            signer.dns_name()
        );
    }
    println!(
        "{} comparison file{} in {} are valid.",
        comparisons.len(),
        if comparisons.len() == 1 { "" } else { "s" },
        content::comparisons_dir(&config.content_dir).display()
    );
    let skipped = content::skipped_files(&config.content_dir);
    if !skipped.is_empty() {
        println!(
            "Skipped {} file{} not ending in .md (not read as comparisons):",
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" }
        );
        for path in skipped {
            println!("  {}", path.display());
        }
    }
    // Three, so a schedule that fires on the wrong day shows it at once.
    let mut slots = Vec::new();
    let mut after = now();
    while slots.len() < 3 {
        let Some(next) = config.schedule.slots.next_after(after) else {
            break;
        };
        slots.push(next);
        after = next;
    }
    if !slots.is_empty() {
        println!(
            "Next slots of `{}` ({}):",
            config.schedule.slots.expression(),
            config.schedule.slots.timezone()
        );
        for slot in slots {
            println!("  {}", describe_slot(&config, slot));
        }
    }
    Ok(())
}
