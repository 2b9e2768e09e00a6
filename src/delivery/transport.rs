//! The transport seam: how the engine hands one message to a server. The real transport
//! speaks SMTP over TCP ([`SmtpTransport`]); the engine's unit tests use a scripted one, so
//! the dispatcher, the ledger writer and the breaker are tested without sockets.

use std::future::Future;
use std::time::Duration;

use lettre::transport::smtp::extension::{ClientId, Extension};
use tokio::sync::oneshot;
use tracing::debug;

use super::smtp::{classify, connect, response_text, transaction, Attempt, Session, TxError};
use crate::config::SmtpConfig;
use crate::mail::outgoing::OutgoingMessage;

/// Delivers one message at a time on a worker's session (its connection, if any).
pub trait Transport: Send + Sync + 'static {
    /// What a worker keeps between its messages (an open connection, or none yet).
    type Session: Send + 'static;

    /// A worker's session before its first message.
    fn session(&self) -> Self::Session;

    /// Readies the session for the next message (connecting if it has no usable
    /// connection) and says whether the server offers SMTPUTF8, which decides how the
    /// message spells an international address. A failure is the attempt's result.
    fn prepare<'a>(
        &'a self,
        session: &'a mut Self::Session,
    ) -> impl Future<Output = Result<bool, Attempt>> + Send + 'a;

    /// One attempt to deliver `message` to its envelope's recipients. The body must not be
    /// transferred before `durable` resolves to `true` (the delivery's `sending` mark is
    /// committed): `false` means the delivery is no longer due ([`Attempt::NotDue`]), and a
    /// dropped sender that the ledger is gone ([`Attempt::LedgerGone`]).
    fn attempt<'a>(
        &'a self,
        session: &'a mut Self::Session,
        message: &'a OutgoingMessage,
        durable: oneshot::Receiver<bool>,
    ) -> impl Future<Output = Attempt> + Send + 'a;

    /// Ends a session politely (QUIT), briefly.
    fn close(&self, session: Self::Session) -> impl Future<Output = ()> + Send;

    /// Where messages go, for log lines ("127.0.0.1:25").
    fn describe(&self) -> String;

    /// How many relays the transport can send through.
    fn relays(&self) -> usize {
        1
    }

    /// Sends every session's next message through relay `index` (0 is the primary).
    fn use_relay(&self, _index: usize) {}
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

    async fn open(&self) -> Result<Session, String> {
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

/// A worker's SMTP connection, and whether a message has gone over it yet.
pub struct Connection {
    session: Session,
    used: bool,
}

impl Transport for SmtpTransport {
    type Session = Option<Connection>;

    fn session(&self) -> Self::Session {
        None
    }

    async fn prepare<'a>(&'a self, session: &'a mut Self::Session) -> Result<bool, Attempt> {
        if session
            .as_ref()
            .is_some_and(|c| c.session.conn.has_broken())
        {
            *session = None;
        }
        let c = match session {
            Some(c) => c,
            None => session.insert(Connection {
                session: self.open().await.map_err(Attempt::Connection)?,
                used: false,
            }),
        };
        Ok(c.session
            .conn
            .server_info()
            .supports_feature(Extension::SmtpUtfEight))
    }

    async fn attempt<'a>(
        &'a self,
        session: &'a mut Self::Session,
        message: &'a OutgoingMessage,
        durable: oneshot::Receiver<bool>,
    ) -> Attempt {
        let mut durable = Some(durable);
        // A reused connection may have been closed by the server while idle; that is not
        // the recipient's fault, so it gets one fresh connection before anything counts.
        // The message was built for the first connection's SMTPUTF8 support; should the
        // fresh one lack it, the transaction refuses a UTF-8 address rather than mangle it.
        for fresh_try in [false, true] {
            if let Err(attempt) = self.prepare(session).await {
                return attempt;
            }
            let c = session.as_mut().expect("prepared above");
            let reused = std::mem::replace(&mut c.used, true);
            let result =
                transaction(&mut c.session, message, &mut durable, self.smtp.timeout).await;
            match result {
                Ok(resp) => return Attempt::Sent(response_text(&resp)),
                Err(TxError::Ledger) => return Attempt::LedgerGone,
                Err(TxError::NotDue) => {
                    // DATA is open: drop the session rather than send anything.
                    *session = None;
                    return Attempt::NotDue;
                }
                Err(TxError::Unsupported(reason)) => {
                    return Attempt::Permanent {
                        reply: reason,
                        user_unknown: false,
                    }
                }
                Err(TxError::Smtp(stage, e)) => {
                    *session = None;
                    let attempt = classify(stage, &e);
                    if matches!(attempt, Attempt::Connection(_)) && reused && !fresh_try {
                        debug!(error = %e, "reused connection failed; retrying on a new one");
                        continue;
                    }
                    return attempt;
                }
                Err(TxError::Timeout) => {
                    *session = None;
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
            let _ = tokio::time::timeout(Duration::from_secs(2), c.session.conn.quit()).await;
        }
    }

    fn describe(&self) -> String {
        format!("{}:{}", self.smtp.host, self.smtp.port)
    }
}
