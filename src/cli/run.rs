//! `verdicts run` (the scheduled daemon, with the web endpoint) and `verdicts serve` (the
//! endpoint alone). Both also send the queued signup confirmation mails.

use std::sync::Arc;

use tokio::sync::Notify;

use super::runtime::{self, stopped};
use crate::api::ApiState;
use crate::config::Config;
use crate::issue::{self, Dispatcher};
use crate::signup::limits::Limits;
use crate::signup::outbox::Outbox;
use crate::store::lock::DaemonLock;
use crate::web::signup::SignupService;
use crate::web::{self, WebState};
use crate::webhooks::outgoing::Sender;

fn web_state(config: &Config) -> anyhow::Result<(Arc<WebState>, Outbox, Option<Sender>)> {
    let key = issue::token_key(config)?;
    let conn = crate::store::open(&config.database_path())?;
    // Confirmation mails are signed with this key from now on: it is the database's.
    issue::record_secret(config, &conn, &key)?;
    let wake = Arc::new(Notify::new());
    let limits = Arc::new(Limits::new(&config.signup));
    let outbox = Outbox::new(config, key.clone(), wake.clone(), limits.clone())?;
    let provider_webhooks = crate::webhooks::providers::Receiver::from_config(config, &key)?;
    let state = WebState::new(
        conn,
        key,
        config.newsletter.name.clone(),
        config.schedule.slots.clone(),
    )
    .with_signup(SignupService::new(
        config.signup.clone(),
        limits,
        wake.clone(),
    ))
    .with_site(config.site_out_dir.clone())
    .with_provider_webhooks(provider_webhooks)
    .with_tracking(crate::web::tracking::TrackingService::new(config)?);
    // The API and the webhook sender: announcements rung by the API go out at once.
    let announcements = Arc::new(Notify::new());
    let api = ApiState::new(
        crate::store::open(&config.database_path())?,
        config.signup.clone(),
        wake,
        announcements.clone(),
    );
    let sender = Sender::new(config, announcements)?;
    Ok((Arc::new(state.with_api(api)), outbox, sender))
}

pub fn run(config: &Config, allow_empty: bool) -> anyhow::Result<()> {
    // Before any thread starts, so that every one of them inherits it.
    runtime::lower_priority(config);
    // Check everything that can be wrong before taking the lock and listening.
    crate::content::load_dir(&config.content_dir)?;
    let dispatcher = Dispatcher::for_sending(config)?.allow_empty(allow_empty);
    let path = config.database_path();
    // What the daemon is about to touch: the list and the unfinished issues. The whole
    // file is checked by the daily maintenance pass (`retention.daily_at`).
    let conn = crate::store::open(&path)?;
    let unfinished: Vec<_> = crate::store::ledger::unfinished_issues(&conn)
        .map_err(|e| crate::store::health::classify(&path, e))?
        .iter()
        .map(|i| i.number)
        .collect();
    crate::store::health::check_for_send(&conn, &path, &unfinished)?;
    drop(conn);
    check_site_folder(config)?;
    raise_file_limit();
    let _daemon = DaemonLock::acquire(&config.state_dir)?;
    let (state, outbox, sender) = web_state(config)?;
    let mailbox = super::inbound::imap_mailbox(config)?;
    runtime::block_on_until_signal(None, |stop| async move {
        let mails = tokio::spawn(outbox.run(stop.clone()));
        let hooks = sender.map(|s| tokio::spawn(s.run(stop.clone())));
        // Listening first: a daemon whose unsubscribe links cannot be served must not start.
        let listener = web::server::bind(config.web_listen).await?;
        let (limits, stop_web) = (config.web.clone(), stop.clone());
        let web = tokio::spawn(async move {
            web::server::serve_on(listener, &limits, web::router(state), stopped(stop_web)).await
        });
        // The hosted mailbox, when there is one, is polled beside the schedule.
        let imap = mailbox.map(|m| tokio::spawn(m.run(stop.clone())));
        let result = crate::daemon::run(dispatcher, stop).await;
        web.abort();
        let _ = web.await;
        mails.abort();
        let _ = mails.await;
        if let Some(hooks) = hooks {
            let _ = hooks.await;
        }
        if let Some(imap) = imap {
            let _ = imap.await;
        }
        result
    })
}

/// Raises this process's open-file soft limit to its hard limit: each connection to the
/// endpoint, each SMTP session and each database handle is a descriptor, and systemd's
/// default soft limit (1,024) is low enough for idle connections to starve a send.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

pub fn serve(config: &Config) -> anyhow::Result<()> {
    let (state, outbox, sender) = web_state(config)?;
    raise_file_limit();
    runtime::block_on_until_signal(None, |stop| async move {
        let mails = tokio::spawn(outbox.run(stop.clone()));
        let hooks = sender.map(|s| tokio::spawn(s.run(stop.clone())));
        let result = web::serve(config.web_listen, &config.web, state, stopped(stop)).await;
        let _ = mails.await;
        if let Some(hooks) = hooks {
            let _ = hooks.await;
        }
        result
    })
}

/// The daemon rebuilds the site in a folder beside `site.out_dir` and swaps it in: refuse to
/// start when that parent cannot be written (systemd's ProtectSystem=strict without it in
/// ReadWritePaths), rather than log "site not rebuilt" at every rebuild while every "View
/// in browser" link is dead.
fn check_site_folder(config: &Config) -> anyhow::Result<()> {
    let Some(out) = &config.site_out_dir else {
        return Ok(());
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let refuse = |e: std::io::Error| -> anyhow::Result<()> {
        crate::error::user_error(format!(
            "the site cannot be built: {} cannot be written ({e}). Each build is written beside site.out_dir ({}) and swapped in, so the folder holding it must be writable by this user; under systemd, list {} in ReadWritePaths (docs/deployment.md)",
            parent.display(),
            out.display(),
            parent.display()
        ))
    };
    if let Err(e) = std::fs::create_dir_all(parent) {
        return refuse(e);
    }
    let probe = parent.join(format!(".verdicts-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => refuse(e),
    }
}
