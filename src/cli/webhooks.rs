//! `verdicts webhooks`: the outgoing webhooks' recent deliveries and failures, and the note
//! `lint` prints about a receiver that has failed for 24 hours.

use crate::config::Config;
use crate::store::{self, webhooks as store_hooks};

pub fn list(config: &Config, failed: bool, limit: usize) -> anyhow::Result<()> {
    if config.webhooks.is_empty() {
        println!("No webhooks are configured (webhooks: in the config; see docs/api.md).");
    }
    let path = config.database_path();
    let conn = match store::open(&path) {
        Ok(conn) => conn,
        Err(e) if e.is_missing() => {
            println!(
                "No deliveries yet: there is no state database at {}.",
                path.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    for r in store_hooks::failing_receivers(&conn)? {
        println!(
            "FAILING: {} has accepted nothing for 24 hours; {} announcement{} given up (last error: {}).",
            r.endpoint,
            r.given_up,
            if r.given_up == 1 { "" } else { "s" },
            r.last_error.as_deref().unwrap_or("none recorded")
        );
    }
    let rows = store_hooks::recent(&conn, limit, failed)?;
    if rows.is_empty() {
        println!(
            "{}",
            if failed {
                "No failed or retrying deliveries."
            } else {
                "No deliveries yet."
            }
        );
        return Ok(());
    }
    println!(
        "{:>6}  {:24}  {:9}  {:>8}  {:24}  RECEIVER / LAST ERROR",
        "EVENT", "TYPE", "STATE", "ATTEMPTS", "QUEUED"
    );
    for r in rows {
        let detail = match (&r.last_error, r.last_status) {
            (Some(e), _) => format!("{} / {e}", r.endpoint),
            (None, Some(s)) => format!("{} / HTTP {s}", r.endpoint),
            (None, None) => r.endpoint.clone(),
        };
        println!(
            "{:>6}  {:24}  {:9}  {:>8}  {:24}  {detail}",
            r.outbox_id, r.event_type, r.state, r.attempts, r.created_at
        );
    }
    Ok(())
}

/// For `verdicts lint`: a line per receiver that failed for the whole retry window.
pub fn lint_note(config: &Config) {
    if config.webhooks.is_empty() {
        return;
    }
    let Ok(conn) = store::open(&config.database_path()) else {
        return;
    };
    for r in store_hooks::failing_receivers(&conn).unwrap_or_default() {
        println!(
            "Webhooks: {} has failed for 24 hours and {} announcement{} given up (last error: {}); `verdicts webhooks --failed` lists them.",
            r.endpoint,
            r.given_up,
            if r.given_up == 1 { " was" } else { "s were" },
            r.last_error.as_deref().unwrap_or("none recorded")
        );
    }
}
