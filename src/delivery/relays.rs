//! Several relays behind one transport: every session sends through the relay that is
//! active for the run (the primary first); when the breaker finds it down, throttling or
//! refusing everyone, or it reaches an hourly or daily limit, the run moves every session
//! to the next fallback and goes on (see `run.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use super::smtp::Attempt;
use super::transport::{Connection, SmtpTransport, Transport};
use crate::config::SmtpConfig;
use crate::mail::outgoing::OutgoingMessage;

/// The configured relays, primary first, with their passwords.
pub struct RelaySet {
    relays: Vec<SmtpTransport>,
    active: AtomicUsize,
}

impl RelaySet {
    pub fn new(relays: Vec<(SmtpConfig, Option<String>)>) -> Self {
        assert!(!relays.is_empty(), "a relay set has a primary");
        RelaySet {
            relays: relays
                .into_iter()
                .map(|(smtp, password)| SmtpTransport::new(smtp, password))
                .collect(),
            active: AtomicUsize::new(0),
        }
    }
}

/// A worker's session: the relay its connection goes to, and the connection.
pub struct RelaySession {
    relay: usize,
    conn: Option<Connection>,
}

impl Transport for RelaySet {
    type Session = RelaySession;

    fn session(&self) -> RelaySession {
        RelaySession {
            relay: self.active.load(Ordering::SeqCst),
            conn: None,
        }
    }

    async fn prepare<'a>(&'a self, session: &'a mut RelaySession) -> Result<bool, Attempt> {
        let active = self.active.load(Ordering::SeqCst);
        if session.relay != active {
            if let Some(old) = session.conn.take() {
                self.relays[session.relay].close(Some(old)).await;
            }
            session.relay = active;
        }
        self.relays[active].prepare(&mut session.conn).await
    }

    async fn attempt<'a>(
        &'a self,
        session: &'a mut RelaySession,
        message: &'a OutgoingMessage,
        durable: oneshot::Receiver<bool>,
    ) -> Attempt {
        self.relays[session.relay]
            .attempt(&mut session.conn, message, durable)
            .await
    }

    async fn close(&self, session: RelaySession) {
        self.relays[session.relay].close(session.conn).await
    }

    fn describe(&self) -> String {
        self.relays[self.active.load(Ordering::SeqCst)].describe()
    }

    fn relays(&self) -> usize {
        self.relays.len()
    }

    fn use_relay(&self, index: usize) {
        self.active
            .store(index.min(self.relays.len() - 1), Ordering::SeqCst);
    }
}

/// The fallback relays of `config`, each with its password: from `password_file` or the
/// environment variable `password_env` when the relay has a `username`. Credentials are
/// refused over plain text to anything but this machine, as for the primary.
pub fn fallbacks_with_passwords(
    config: &crate::config::Config,
) -> anyhow::Result<Vec<(SmtpConfig, Option<String>)>> {
    config
        .fallbacks
        .iter()
        .map(|smtp| Ok((smtp.clone(), fallback_password(smtp)?)))
        .collect()
}

/// One fallback relay's password (see [`fallbacks_with_passwords`]).
pub fn fallback_password(smtp: &SmtpConfig) -> anyhow::Result<Option<String>> {
    use crate::error::UserError;
    Ok(match &smtp.username {
        None => None,
        Some(user) => {
            if smtp.tls == crate::config::TlsMode::None && !crate::issue::is_loopback(&smtp.host) {
                return Err(UserError::new(format!(
                    "refusing to log in to relay {} as {user} without TLS: the password would cross the network in clear text. Set its tls to starttls or tls",
                    smtp.name
                ))
                .into());
            }
            Some(match &smtp.password_file {
                Some(path) => crate::config::read_secret_file(path, "smtp.password_file")?,
                None => match std::env::var(&smtp.password_env) {
                    Ok(p) if !p.is_empty() => p,
                    _ => {
                        return Err(UserError::new(format!(
                            "relay {} has a username but the environment variable {} (its password_env) holding the password is not set",
                            smtp.name, smtp.password_env
                        ))
                        .into())
                    }
                },
            })
        }
    })
}
