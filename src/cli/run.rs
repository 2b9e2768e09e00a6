//! `verdicts run` (the scheduled daemon, with the web endpoint) and `verdicts serve` (the
//! endpoint alone).

use std::sync::Arc;

use super::runtime::{self, stopped};
use crate::cli::LogFormat;
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

pub fn run(config: &Config, _log_format: LogFormat) -> anyhow::Result<()> {
    // Check everything that can be wrong before taking the lock and listening.
    crate::content::load_dir(&config.content_dir)?;
    let dispatcher = Dispatcher::for_sending(config)?;
    let _daemon = DaemonLock::acquire(&config.state_dir)?;
    let state = web_state(config)?;
    runtime::block_on_until_signal(None, |stop| async move {
        let web = tokio::spawn(web::serve(config.web_listen, state, stopped(stop.clone())));
        let result = crate::daemon::run(dispatcher, stop).await;
        web.abort();
        let _ = web.await;
        result
    })
}

pub fn serve(config: &Config) -> anyhow::Result<()> {
    let state = web_state(config)?;
    runtime::block_on_until_signal(None, |stop| async move {
        web::serve(config.web_listen, state, stopped(stop)).await
    })
}
