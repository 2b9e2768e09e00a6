//! The confirmation mail worker of the web process (`serve` and `run`): sends the mails
//! queued in the database by signups, retrying temporary failures, and removes signups that
//! were never confirmed. A signup returns as soon as its row is committed; a slow relay
//! delays mails, never the endpoint, and a crash before sending leaves the row queued for
//! the next start. Mails go through the issue's relays in their order: while the primary
//! cannot be reached, the fallbacks take them, and the primary is tried again after
//! [`RELAY_DOWN_WAIT`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rusqlite::Connection;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config::{Config, Newsletter, SmtpConfig};
use crate::delivery::{Attempt, SmtpTransport, Transport};
use crate::mail::confirmation::ConfirmationMail;
use crate::mail::dkim::DkimSigner;
use crate::mail::token::TokenKey;
use crate::signup::limits::Limits;
use crate::store::signup::{self as store_signup, QueuedMail};
use crate::store::subscribers::StoreError;

/// How often unconfirmed signups are swept and idle limiter entries forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long a relay that could not be reached is left alone (and how long to wait when
/// none of them could).
const RELAY_DOWN_WAIT: Duration = Duration::from_secs(30);
/// The longest wait between two attempts of one mail.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Mails sent per SMTP session.
const BATCH: usize = 50;

pub struct Outbox {
    db: Arc<Mutex<Connection>>,
    newsletter: Newsletter,
    /// Every relay in order, the primary first (whose settings give every mail's retry
    /// schedule), each with its password.
    relays: Vec<(SmtpConfig, Option<String>)>,
    /// Until when each relay (by index in `relays`) is skipped after it could not be reached.
    resting: Mutex<Vec<Option<Instant>>>,
    key: TokenKey,
    dkim: Option<DkimSigner>,
    expire_after: Duration,
    /// Rung by the endpoint when it queues a mail.
    wake: Arc<Notify>,
    limits: Arc<Limits>,
}

/// What one pass over the queue came to.
enum Pass {
    /// Nothing is due; the next queued mail (if any) is due at this time (ms since epoch).
    Idle(Option<i64>),
    /// The relay could not be reached; try again later.
    RelayDown,
    /// Some mails were handled; look again at once.
    Worked,
}

impl Outbox {
    pub fn new(
        config: &Config,
        key: TokenKey,
        wake: Arc<Notify>,
        limits: Arc<Limits>,
    ) -> anyhow::Result<Outbox> {
        let mut relays = vec![(config.smtp.clone(), crate::issue::smtp_password(config)?)];
        for smtp in &config.fallbacks {
            // A fallback whose password this host lacks is left out of the confirmations
            // rather than keeping the web process from starting.
            match crate::delivery::relays::fallback_password(smtp) {
                Ok(password) => relays.push((smtp.clone(), password)),
                Err(e) => warn!(
                    relay = %smtp.name,
                    error = %format!("{e:#}"),
                    "this fallback relay will not carry confirmation mails"
                ),
            }
        }
        Ok(Outbox {
            db: Arc::new(Mutex::new(crate::store::open(&config.database_path())?)),
            newsletter: config.newsletter.clone(),
            resting: Mutex::new(vec![None; relays.len()]),
            relays,
            key,
            dkim: crate::mail::dkim::load(config)?,
            expire_after: config.signup.expire_after,
            wake,
            limits,
        })
    }

    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db
                .lock()
                .map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
            f(&conn).map_err(anyhow::Error::from)
        })
        .await?
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.probe_relay() => {}
            _ = stop.changed() => return,
        }
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            if tokio::time::Instant::now() >= next_sweep {
                self.sweep().await;
                next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
            }
            let wait = match self.pass().await {
                Ok(Pass::Worked) => continue,
                Ok(Pass::Idle(next)) => next
                    .map(|ms| {
                        Duration::from_millis((ms - Utc::now().timestamp_millis()).max(0) as u64)
                    })
                    .unwrap_or(SWEEP_EVERY),
                Ok(Pass::RelayDown) => RELAY_DOWN_WAIT,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "confirmation mail queue failed");
                    RELAY_DOWN_WAIT
                }
            };
            let wait = wait
                .min(next_sweep.saturating_duration_since(tokio::time::Instant::now()))
                .max(Duration::from_millis(50));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn sweep(&self) {
        self.limits.forget_idle();
        let expire_after = self.expire_after;
        match self
            .with_db(move |conn| store_signup::expire(conn, expire_after))
            .await
        {
            Ok(expired) if expired.signups > 0 => {
                info!(removed = expired.signups, "removed signups never confirmed")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "cannot remove expired signups"),
        }
    }

    async fn pass(&self) -> anyhow::Result<Pass> {
        let now_ms = Utc::now().timestamp_millis();
        let due = self
            .with_db(move |conn| store_signup::due_mails(conn, now_ms, BATCH))
            .await?;
        if due.is_empty() {
            let next = self.with_db(store_signup::next_due_ms).await?;
            return Ok(Pass::Idle(next));
        }
        let mut due = due.into_iter().peekable();
        for (index, (smtp, password)) in self.relays.iter().enumerate() {
            if self.is_resting(index) {
                continue;
            }
            let transport = SmtpTransport::new(smtp.clone(), password.clone());
            let mut session = transport.session();
            while let Some(mail) = due.peek() {
                match self.send_one(&transport, &mut session, mail, index).await {
                    Sent::SessionLost(reply) => {
                        warn!(relay = %smtp.name, %reply, "cannot reach the relay for confirmation mails");
                        self.rest(index);
                        break;
                    }
                    outcome => {
                        if let Sent::Yes(_) = outcome {
                            info!(confirmation = mail.id, relay = %smtp.name, "confirmation mail sent");
                        }
                        self.record(mail, outcome).await?;
                        due.next();
                    }
                }
            }
            transport.close(session).await;
            // A mail is left only when this relay's session was lost.
            if due.peek().is_none() {
                return Ok(Pass::Worked);
            }
        }
        // Every relay is down: what is left stays queued for the next pass.
        Ok(Pass::RelayDown)
    }

    /// Whether relay `index` is skipped for now, after it could not be reached.
    fn is_resting(&self, index: usize) -> bool {
        let resting = self.resting.lock().expect("resting lock");
        resting[index].is_some_and(|until| Instant::now() < until)
    }

    fn rest(&self, index: usize) {
        self.resting.lock().expect("resting lock")[index] = Some(Instant::now() + RELAY_DOWN_WAIT);
    }

    /// What one attempt of `mail` came to, in the database.
    async fn record(&self, mail: &QueuedMail, outcome: Sent) -> anyhow::Result<()> {
        let id = mail.id;
        match outcome {
            Sent::Yes(reply) => {
                self.with_db(move |conn| store_signup::mark_sent(conn, id, &reply))
                    .await
            }
            // (A lost session is handled by the caller, which tries the next relay.)
            Sent::Retry(reply) | Sent::SessionLost(reply) => {
                let primary = &self.relays[0].0;
                let wait = backoff(primary.retry_base, mail.attempts);
                let next = Utc::now().timestamp_millis() + wait.as_millis() as i64;
                let give_up = mail.attempts + 1 >= primary.max_attempts.max(8);
                warn!(confirmation = id, %reply, give_up, "confirmation mail not accepted");
                self.with_db(move |conn| {
                    store_signup::mark_attempt_failed(conn, id, &reply, (!give_up).then_some(next))
                })
                .await
            }
            Sent::Never(reply) => {
                warn!(confirmation = id, %reply, "confirmation mail refused for good");
                self.with_db(move |conn| store_signup::mark_attempt_failed(conn, id, &reply, None))
                    .await
            }
        }
    }

    /// Asks the primary relay what it offers (at start), so the endpoint knows which
    /// addresses it can deliver to before the first confirmation mail is due. What the
    /// endpoint accepts follows the primary only; a fallback that cannot spell an address
    /// leaves its mail for the primary (see [`Outbox::send_one`]).
    pub async fn probe_relay(&self) {
        let (smtp, password) = &self.relays[0];
        let transport = SmtpTransport::new(smtp.clone(), password.clone());
        let mut session = transport.session();
        match transport.prepare(&mut session).await {
            Ok(smtputf8) => self.limits.learn_relay_smtputf8(smtputf8),
            Err(e) => warn!(error = ?e, "cannot reach the relay to ask what it offers"),
        }
        transport.close(session).await;
    }

    /// One confirmation mail through the issue path: the same transport, session setup,
    /// envelope and address spelling (SMTPUTF8 or punycode) and SMTP transaction as an
    /// issue's copy.
    async fn send_one(
        &self,
        transport: &SmtpTransport,
        session: &mut <SmtpTransport as Transport>::Session,
        mail: &QueuedMail,
        relay: usize,
    ) -> Sent {
        let smtputf8 = match transport.prepare(session).await {
            Ok(offered) => offered,
            Err(attempt) => return sent(attempt),
        };
        if relay == 0 {
            self.limits.learn_relay_smtputf8(smtputf8);
        }
        let built = ConfirmationMail {
            id: mail.id,
            email: &mail.email,
            name: mail.name.as_ref(),
            created_at: mail.created_at,
            expires_at: mail.expires_at,
        }
        .build(&self.newsletter, &self.key, self.dkim.as_ref(), smtputf8);
        let message = match built {
            Ok(m) => m,
            // A fallback without SMTPUTF8 cannot spell a non-ASCII local part; the primary
            // may, so the mail waits for it instead of failing for good.
            Err(e) if relay > 0 => return Sent::Retry(e.to_string()),
            Err(e) => return Sent::Never(e.to_string()),
        };
        // No ledger mark to wait for: the body may go at once.
        let (ack, durable) = tokio::sync::oneshot::channel();
        let _ = ack.send(true);
        sent(transport.attempt(session, &message, durable).await)
    }
}

fn sent(attempt: Attempt) -> Sent {
    match attempt {
        Attempt::Sent(reply) => Sent::Yes(reply),
        Attempt::Temporary(reply) => Sent::Retry(reply),
        Attempt::Permanent { reply, .. } => Sent::Never(reply),
        Attempt::Connection(reply) => Sent::SessionLost(reply),
        Attempt::LedgerGone | Attempt::NotDue => Sent::Retry("not attempted".into()),
    }
}

enum Sent {
    Yes(String),
    Retry(String),
    Never(String),
    SessionLost(String),
}

fn backoff(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1 << attempts.min(16)).min(MAX_BACKOFF)
}
