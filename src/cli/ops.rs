//! `verdicts init` (the explicit creation of a state database) and `verdicts backup` (a
//! consistent copy of the live one).

use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use crate::error::user_error;
use crate::store::{self, Opened};

pub fn init(config: &Config) -> anyhow::Result<()> {
    let path = config.database_path();
    match store::create(&path)? {
        (_, Opened::Created) => eprintln!("Created a new state database at {}.", path.display()),
        (conn, Opened::Existing) => {
            store::quick_check(&conn, &path)?;
            println!(
                "The state database {} already exists and is intact; nothing changed.",
                path.display()
            );
        }
    }
    Ok(())
}

pub fn backup(config: &Config, dest: &Path) -> anyhow::Result<()> {
    let path = config.database_path();
    let conn = store::open(&path)?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&path, dest) {
        return user_error(format!(
            "{} is the live database itself; name another file for the backup",
            dest.display()
        ));
    }
    if let Some(folder) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create the backup folder {}", folder.display()))?;
    }
    let bytes = store::backup(&conn, dest)?;
    println!(
        "Backed up {} to {} ({:.1} KB).",
        path.display(),
        dest.display(),
        bytes as f64 / 1024.0
    );
    Ok(())
}

/// `verdicts check --db`: the whole-file integrity check, on demand.
pub fn check_db(config: &Config) -> anyhow::Result<()> {
    let path = config.database_path();
    let conn = store::open(&path)?;
    let started = std::time::Instant::now();
    store::quick_check(&conn, &path)?;
    println!(
        "The state database {} is intact (quick_check of the whole file, {:.1} s).",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// "12 ms, deleting delivery rows", or "0 ms" when the pass wrote nothing.
fn longest_lock(report: &store::retention::Report) -> String {
    let ms = report.longest_lock.as_millis();
    if report.longest_lock_in.is_empty() {
        format!("{ms} ms")
    } else {
        format!("{ms} ms, {}", report.longest_lock_in)
    }
}

/// `verdicts compact [--dry-run] [--vacuum]`.
pub fn compact(config: &Config, dry_run: bool, vacuum: bool) -> anyhow::Result<()> {
    let path = config.database_path();
    let conn = store::open(&path)?;
    let policy = store::retention::Policy::at(super::now(), &config.retention);
    let report = store::retention::compact(&conn, &policy, dry_run)?;
    let verb = if dry_run { "Would fold" } else { "Folded" };
    if report.issues.is_empty() {
        println!("No issue is older than retention.deliveries with its rows still kept.");
    }
    for issue in &report.issues {
        println!(
            "{verb} issue {} into its totals: {} delivery row{}.",
            issue.number,
            issue.rows,
            if issue.rows == 1 { "" } else { "s" }
        );
    }
    let would = if dry_run { "Would delete" } else { "Deleted" };
    println!(
        "{would} {} event{} older than retention.events.",
        report.events,
        if report.events == 1 { "" } else { "s" }
    );
    if report.announcements > 0 {
        println!(
            "Deleted {} webhook announcement{} every receiver has had.",
            report.announcements,
            if report.announcements == 1 { "" } else { "s" }
        );
    }
    if config.retention.unsubscribed.is_some() {
        let would = if dry_run { "Would erase" } else { "Erased" };
        println!(
            "{would} {} reader{} who left before retention.unsubscribed.",
            report.erased,
            if report.erased == 1 { "" } else { "s" }
        );
    }
    if dry_run {
        println!("Dry run: nothing changed.");
        return Ok(());
    }
    if vacuum && !report.incremental {
        let before = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        store::retention::enable_incremental_vacuum(&conn)?;
        let after = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "Rewrote the file with incremental vacuum on: {} -> {}; from now on compaction returns freed space by itself.",
            megabytes(before),
            megabytes(after)
        );
        return Ok(());
    }
    if report.incremental {
        println!(
            "Returned {} to the file system; the file is {} (longest write lock {}).",
            megabytes(report.bytes_returned),
            megabytes(report.file_bytes),
            longest_lock(&report)
        );
    } else {
        println!(
            "{} of free pages are reused by new rows; the file is {} (longest write lock {}). This file predates incremental vacuum: `verdicts compact --vacuum` once, in a quiet hour, lets it shrink.",
            megabytes(report.bytes_free),
            megabytes(report.file_bytes),
            longest_lock(&report)
        );
    }
    Ok(())
}
