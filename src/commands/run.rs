//! `verdicts run` (the scheduled daemon, with the unsubscribe endpoint) and `verdicts serve`
//! (the endpoint alone).

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tracing::info;

use crate::cli::LogFormat;
use crate::config::Config;
use crate::issue;
use crate::lock::DaemonLock;
use crate::web::{self, WebState};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn web_state(config: &Config) -> anyhow::Result<Arc<WebState>> {
    let key = issue::token_key(config)?;
    let conn = crate::db::open(&config.database_path())?;
    Ok(Arc::new(WebState::new(
        conn,
        key,
        config.newsletter.name.clone(),
        config.schedule.slots.clone(),
    )))
}

/// A stop flag that turns true on SIGTERM or SIGINT.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        super::shutdown_signal().await;
        info!("shutdown requested: finishing the messages in flight");
        let _ = tx.send(true);
    });
    rx
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

pub fn run(config: &Config, _log_format: LogFormat) -> anyhow::Result<()> {
    // Check everything that can be wrong before taking the lock and listening.
    crate::content::load_dir(&config.content_dir)?;
    crate::dkim::load(config)?;
    let key = issue::token_key(config)?;
    let password = issue::smtp_password(config)?;
    let _daemon = DaemonLock::acquire(&config.state_dir)?;
    let state = web_state(config)?;
    runtime()?.block_on(async {
        let stop = stop_on_signal();
        let web = tokio::spawn(web::serve(config.web_listen, state, stopped(stop.clone())));
        let result = crate::daemon::run(config, key, password, stop).await;
        web.abort();
        let _ = web.await;
        result
    })
}

pub fn serve(config: &Config) -> anyhow::Result<()> {
    let state = web_state(config)?;
    runtime()?.block_on(async {
        let stop = stop_on_signal();
        web::serve(config.web_listen, state, stopped(stop)).await
    })
}
