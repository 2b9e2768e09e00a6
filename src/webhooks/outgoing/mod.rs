//! Outgoing webhooks: the announcements that migration 13's triggers queue in the
//! database (in the same transaction as each change), POSTed to every configured receiver
//! by the web process and the daemon. The worker has the confirmation outbox's shape
//! ([`crate::signup::outbox`]): a loop that wakes when rung or when the next retry is due,
//! takes what is due from the store, and records each attempt there, so a crash at any
//! moment loses nothing and at worst delivers an announcement twice (receivers dedupe on
//! its id). Per subscriber, announcements go in order: a later one waits while an earlier
//! one is being retried. A receiver failing for 24 hours gets no more tries of that
//! announcement; the daemon's log and `verdicts lint` say so.

pub mod config;
pub mod sign;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rusqlite::Connection;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::store::webhooks::{self as store, DueDelivery};
pub use config::WebhookConfig;

/// How long each receiver keeps being retried after its first failed attempt.
pub const RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long a receiver has to answer one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox is looked at when nothing rings.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Announcements taken per receiver and pass.
const BATCH: usize = 500;
/// Delivered announcements are forgotten after this long.
const KEEP_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// A receiver with its secret loaded.
struct Receiver {
    config: WebhookConfig,
    secret: Vec<u8>,
}

pub struct Sender {
    db: Arc<Mutex<Connection>>,
    receivers: Arc<Vec<Receiver>>,
    agent: ureq::Agent,
    /// Rung by the API when it queues an announcement.
    wake: Arc<Notify>,
}

/// Reads each receiver's secret from its environment variable; a missing one is an error
/// naming the variable.
fn load_receivers(webhooks: &[WebhookConfig]) -> anyhow::Result<Vec<Receiver>> {
    webhooks
        .iter()
        .map(|w| {
            let secret = std::env::var(&w.secret_env).unwrap_or_default();
            if secret.trim().is_empty() {
                return crate::error::user_error(format!(
                    "webhooks: the receiver {} signs with the secret in the environment variable {} (webhooks.secret_env), which is not set",
                    w.url, w.secret_env
                ));
            }
            Ok(Receiver {
                config: w.clone(),
                secret: secret.into_bytes(),
            })
        })
        .collect()
}

fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(POST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("verdicts-webhooks/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .new_agent()
}

/// What an attempt came to.
enum Posted {
    Accepted(u16),
    Refused(Option<u16>, String),
}

impl Sender {
    /// `None` when no receiver is configured.
    pub fn new(
        config: &crate::config::Config,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Option<Sender>> {
        if config.webhooks.is_empty() {
            return Ok(None);
        }
        let conn = crate::store::open(&config.database_path())?;
        for w in &config.webhooks {
            store::register(&conn, &w.url)?;
        }
        Ok(Some(Sender {
            db: Arc::new(Mutex::new(conn)),
            receivers: Arc::new(load_receivers(&config.webhooks)?),
            agent: agent(),
            wake,
        }))
    }

    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn).map_err(anyhow::Error::from)
        })
        .await?
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            if tokio::time::Instant::now() >= next_prune {
                let before = Utc::now() - chrono::Duration::from_std(KEEP_FOR).unwrap_or_default();
                let prune = move |c: &rusqlite::Connection| -> rusqlite::Result<()> {
                    // In short batches, so an unsubscribe never waits behind it.
                    let up_to = store::newest_id(c)?;
                    while store::prune(c, before, up_to, 2_000)? > 0 {}
                    Ok(())
                };
                if let Err(e) = self.with_db(prune).await {
                    warn!(error = %format!("{e:#}"), "cannot prune delivered webhook announcements");
                }
                next_prune = tokio::time::Instant::now() + Duration::from_secs(3600);
            }
            let wait = match self.pass(&stop).await {
                Ok(true) => continue,
                Ok(false) => self.next_wait().await,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "webhook outbox failed");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.clamp(Duration::from_millis(20), POLL_EVERY)) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn next_wait(&self) -> Duration {
        let mut wait = POLL_EVERY;
        for r in self.receivers.iter() {
            let url = r.config.url.clone();
            if let Ok(Some(ms)) = self.with_db(move |c| store::next_due_ms(c, &url)).await {
                let ms = (ms - Utc::now().timestamp_millis()).max(0) as u64;
                wait = wait.min(Duration::from_millis(ms));
            }
        }
        wait
    }

    /// One pass over every receiver; true when something was attempted.
    async fn pass(&self, stop: &watch::Receiver<bool>) -> anyhow::Result<bool> {
        let mut worked = false;
        for (index, r) in self.receivers.iter().enumerate() {
            let (url, events) = (r.config.url.clone(), r.config.events.clone());
            self.with_db(move |c| store::fan_out(c, &url, &events))
                .await?;
            let url = r.config.url.clone();
            let pending = self
                .with_db(move |c| store::pending(c, &url, BATCH))
                .await?;
            // In the order of the changes; a subscriber whose earlier announcement waits
            // for a retry gets nothing more until it is through.
            let mut held: HashSet<i64> = HashSet::new();
            for delivery in pending {
                if *stop.borrow() {
                    return Ok(false);
                }
                if delivery.subscriber_id.is_some_and(|s| held.contains(&s)) {
                    continue;
                }
                if delivery.next_attempt_ms > Utc::now().timestamp_millis() {
                    held.extend(delivery.subscriber_id);
                    continue;
                }
                worked = true;
                let posted = self.post(index, &delivery).await;
                if matches!(posted, Posted::Refused(..)) {
                    held.extend(delivery.subscriber_id);
                }
                self.record(r, &delivery, posted).await?;
            }
        }
        Ok(worked)
    }

    async fn post(&self, index: usize, d: &DueDelivery) -> Posted {
        let receivers = self.receivers.clone();
        let agent = self.agent.clone();
        let body = sign::body(d.outbox_id, &d.event_type, &d.created_at, &d.data);
        let id = d.outbox_id;
        let event = d.event_type.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = &receivers[index];
            let timestamp = Utc::now().timestamp();
            let signature = sign::signature(&r.secret, timestamp, body.as_bytes());
            agent
                .post(&r.config.url)
                .header("Content-Type", "application/json")
                .header(sign::ID_HEADER, id.to_string())
                .header(sign::EVENT_HEADER, event)
                .header(sign::TIMESTAMP_HEADER, timestamp.to_string())
                .header(sign::SIGNATURE_HEADER, signature)
                .send(body.as_str())
                .map(|response| response.status().as_u16())
        })
        .await;
        match result {
            Ok(Ok(status)) if (200..300).contains(&status) => Posted::Accepted(status),
            Ok(Ok(status)) => Posted::Refused(Some(status), format!("answered HTTP {status}")),
            Ok(Err(e)) => Posted::Refused(None, e.to_string()),
            Err(e) => Posted::Refused(None, format!("the request task failed: {e}")),
        }
    }

    async fn record(&self, r: &Receiver, d: &DueDelivery, posted: Posted) -> anyhow::Result<()> {
        let (url, id) = (r.config.url.clone(), d.outbox_id);
        match posted {
            Posted::Accepted(status) => {
                info!(webhook = %r.config.url, event = id, kind = %d.event_type, "webhook delivered");
                self.with_db(move |c| store::record_attempt(c, id, &url, Ok(status), None))
                    .await
            }
            Posted::Refused(status, error) => {
                let first = d.first_attempt_at.unwrap_or_else(Utc::now);
                let failing_for = (Utc::now() - first).to_std().unwrap_or_default();
                let wait = backoff(r.config.retry_base, d.attempts);
                let retry_at = (failing_for + wait < RETRY_FOR)
                    .then(|| Utc::now().timestamp_millis() + wait.as_millis() as i64);
                if retry_at.is_none() {
                    warn!(
                        webhook = %r.config.url, event = id, kind = %d.event_type, %error,
                        "webhook receiver has failed for 24 hours; this announcement is given up (`verdicts webhooks --failed` lists them)"
                    );
                } else {
                    warn!(webhook = %r.config.url, event = id, %error, retry_in = ?wait, "webhook not accepted; will retry");
                }
                self.with_db(move |c| {
                    store::record_attempt(c, id, &url, Err((status, &error)), retry_at)
                })
                .await
            }
        }
    }
}

fn backoff(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1 << attempts.min(16)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 0), Duration::from_secs(10));
        assert_eq!(backoff(base, 3), Duration::from_secs(80));
        assert_eq!(backoff(base, 30), MAX_BACKOFF);
    }
}
