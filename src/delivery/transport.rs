//! The transport seam: how the engine hands one message to a server. The real transport
//! speaks SMTP over TCP ([`SmtpTransport`]); the engine's unit tests use a scripted one, so
//! the dispatcher, the ledger writer and the breaker are tested without sockets.

use std::future::Future;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use tokio::sync::oneshot;
use tracing::debug;

use super::smtp::{classify, connect, response_text, transaction, Attempt, TxError};
use crate::config::SmtpConfig;

/// Delivers one message at a time on a worker's session (its connection, if any).
pub trait Transport: Send + Sync + 'static {
    /// What a worker keeps between its messages (an open connection, or none yet).
    type Session: Send + 'static;

    /// A worker's session before its first message.
    fn session(&self) -> Self::Session;

    /// One attempt to deliver `body` to the envelope's recipients. The body must not be
    /// transferred before `durable` resolves to `true` (the delivery's `sending` mark is
    /// committed): `false` means the delivery is no longer due ([`Attempt::NotDue`]), and a
    /// dropped sender that the ledger is gone ([`Attempt::LedgerGone`]).
    fn attempt<'a>(
        &'a self,
        session: &'a mut Self::Session,
        envelope: &'a Envelope,
        body: &'a [u8],
        durable: oneshot::Receiver<bool>,
    ) -> impl Future<Output = Attempt> + Send + 'a;

    /// Ends a session politely (QUIT), briefly.
    fn close(&self, session: Self::Session) -> impl Future<Output = ()> + Send;

    /// Where messages go, for log lines ("127.0.0.1:25").
    fn describe(&self) -> String;
}

/// SMTP as configured: one connection per worker, reused while it stays healthy.
pub struct SmtpTransport {
    smtp: SmtpConfig,
    password: Option<String>,
    hello: ClientId,
}

impl SmtpTransport {
    pub fn new(smtp: SmtpConfig, password: Option<String>) -> Self {
        SmtpTransport {
            smtp,
            password,
            hello: ClientId::default(),
        }
    }

    async fn open(&self) -> Result<AsyncSmtpConnection, String> {
        match tokio::time::timeout(
            self.smtp.timeout,
            connect(&self.smtp, &self.hello, self.password.as_deref()),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from {}:{} within {:?} while connecting",
                self.smtp.host, self.smtp.port, self.smtp.timeout
            )),
        }
    }
}

impl Transport for SmtpTransport {
    type Session = Option<AsyncSmtpConnection>;

    fn session(&self) -> Self::Session {
        None
    }

    async fn attempt<'a>(
        &'a self,
        conn: &'a mut Self::Session,
        envelope: &'a Envelope,
        body: &'a [u8],
        durable: oneshot::Receiver<bool>,
    ) -> Attempt {
        let mut durable = Some(durable);
        // A reused connection may have been closed by the server while idle; that is not
        // the recipient's fault, so it gets one fresh connection before anything counts.
        for fresh_try in [false, true] {
            let reused = conn.is_some();
            if conn.as_ref().is_some_and(|c| c.has_broken()) {
                *conn = None;
            }
            if conn.is_none() {
                match self.open().await {
                    Ok(c) => *conn = Some(c),
                    Err(reason) => return Attempt::Connection(reason),
                }
            }
            let c = conn.as_mut().expect("connected above");
            let result = transaction(c, envelope, body, &mut durable, self.smtp.timeout).await;
            match result {
                Ok(resp) => return Attempt::Sent(response_text(&resp)),
                Err(TxError::Ledger) => return Attempt::LedgerGone,
                Err(TxError::NotDue) => {
                    // DATA is open: drop the session rather than send anything.
                    *conn = None;
                    return Attempt::NotDue;
                }
                Err(TxError::Unsupported(reason)) => {
                    return Attempt::Permanent {
                        reply: reason,
                        user_unknown: false,
                    }
                }
                Err(TxError::Smtp(stage, e)) => {
                    *conn = None;
                    let attempt = classify(stage, &e);
                    if matches!(attempt, Attempt::Connection(_)) && reused && !fresh_try {
                        debug!(error = %e, "reused connection failed; retrying on a new one");
                        continue;
                    }
                    return attempt;
                }
                Err(TxError::Timeout) => {
                    *conn = None;
                    return Attempt::Connection(format!(
                        "{}:{} stopped answering mid-transaction (no reply within {:?})",
                        self.smtp.host, self.smtp.port, self.smtp.timeout
                    ));
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn close(&self, session: Self::Session) {
        if let Some(mut c) = session {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
        }
    }

    fn describe(&self) -> String {
        format!("{}:{}", self.smtp.host, self.smtp.port)
    }
}
