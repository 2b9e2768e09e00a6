//! `verdicts run` (the scheduled daemon, with the web endpoint) and `verdicts serve` (the
//! endpoint alone).

use std::sync::Arc;

use super::runtime::{self, stopped};
use crate::config::Config;
use crate::issue::{self, Dispatcher};
use crate::store::lock::DaemonLock;
use crate::web::{self, WebState};

fn web_state(config: &Config) -> anyhow::Result<Arc<WebState>> {
    let key = issue::token_key(config)?;
    let conn = crate::store::open(&config.database_path())?;
    Ok(Arc::new(WebState::new(
        conn,
        key,
        config.newsletter.name.clone(),
        config.schedule.slots.clone(),
    )))
}

pub fn run(config: &Config, allow_empty: bool) -> anyhow::Result<()> {
    // Check everything that can be wrong before taking the lock and listening.
    crate::content::load_dir(&config.content_dir)?;
    let dispatcher = Dispatcher::for_sending(config)?.allow_empty(allow_empty);
    let path = config.database_path();
    crate::store::quick_check(&crate::store::open(&path)?, &path)?;
    raise_file_limit();
    let _daemon = DaemonLock::acquire(&config.state_dir)?;
    let state = web_state(config)?;
    runtime::block_on_until_signal(None, |stop| async move {
        let (listen, limits, stop_web) = (config.web_listen, config.web.clone(), stop.clone());
        let web =
            tokio::spawn(
                async move { web::serve(listen, &limits, state, stopped(stop_web)).await },
            );
        let result = crate::daemon::run(dispatcher, stop).await;
        web.abort();
        let _ = web.await;
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
    let state = web_state(config)?;
    raise_file_limit();
    runtime::block_on_until_signal(None, |stop| async move {
        web::serve(config.web_listen, &config.web, state, stopped(stop)).await
    })
}
