//! One SMTP conversation: opening a session as configured (TCP, TLS, EHLO, AUTH), one
//! message's transaction with every exchange under a timeout, and sorting a reply into
//! sent, retry, give up, or "the server is unreachable".

use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::sync::oneshot;

use super::data::DataContent;
use crate::config::{SmtpConfig, TlsMode};
use crate::mail::outgoing::OutgoingMessage;

/// What one SMTP attempt came to, before it is written down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 250 after DATA.
    Sent(String),
    /// 4xx from the server.
    Temporary(String),
    /// 5xx from the server (or a message the server can never take).
    Permanent { reply: String, user_unknown: bool },
    /// No usable conversation: refused, reset, timed out, TLS or login failure.
    Connection(String),
    /// The ledger could not record the attempt, so the message was not sent.
    LedgerGone,
    /// The subscriber left just before their turn; nothing was sent.
    NotDue,
}

/// Where in the SMTP transaction a reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// MAIL FROM: a refusal here is about the sender, i.e. our configuration.
    Sender,
    /// RCPT TO: the only place a reply says something about the recipient's mailbox.
    Recipient,
    /// DATA and the message itself.
    Message,
}

/// Why an SMTP transaction stopped.
pub(super) enum TxError {
    Smtp(Stage, lettre::transport::smtp::Error),
    /// Something this server cannot take for this recipient (e.g. no SMTPUTF8).
    Unsupported(String),
    /// The `sending` mark never became durable.
    Ledger,
    /// The subscriber left (or the delivery was removed) just before sending.
    NotDue,
    /// No reply within the timeout.
    Timeout,
}

/// An open SMTP session, and whether its server offers PIPELINING (RFC 2920), which
/// lettre does not track.
pub(crate) struct Session {
    pub(crate) conn: AsyncSmtpConnection,
    pub(crate) pipelining: bool,
    /// The DATA content of the session's current message, kept between messages so that
    /// each copy is laid out in memory the session already has.
    data: String,
}

/// MAIL, every RCPT and DATA as one write, for a server that offers PIPELINING: lettre
/// writes any `Display` command in one write, and its replies are then read one by one.
struct Pipelined<'a> {
    mail: Mail,
    rcpts: &'a [Rcpt],
}

impl std::fmt::Display for Pipelined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.mail)?;
        for rcpt in self.rcpts {
            write!(f, "{rcpt}")?;
        }
        write!(f, "{Data}")
    }
}

/// One message's SMTP transaction, each exchange under `timeout`. MAIL, RCPT and DATA
/// overlap with the ledger commit of the `sending` mark; the body (and with it the delivery)
/// only goes out once that mark is durable, so the ledger is never behind what the server
/// has accepted. The wait for the ledger is not charged to the server's timeout. Where the
/// server offers PIPELINING, MAIL, RCPT and DATA go in one write and their replies are read
/// in order: one round trip instead of three, for the server as for us. Any refusal ends
/// the transaction and the caller drops the connection, so replies left unread never
/// matter, and the body never follows a DATA the server refused.
pub(super) async fn transaction(
    session: &mut Session,
    message: &OutgoingMessage,
    durable: &mut Option<oneshot::Receiver<bool>>,
    timeout: Duration,
) -> Result<lettre::transport::smtp::response::Response, TxError> {
    async fn step<T>(
        stage: Stage,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, TxError> {
        match tokio::time::timeout(timeout, f).await {
            Ok(r) => r.map_err(|e| TxError::Smtp(stage, e)),
            Err(_) => Err(TxError::Timeout),
        }
    }
    let conn = &mut session.conn;
    let envelope = message.envelope();
    let mut params = Vec::new();
    let non_ascii = envelope
        .to()
        .iter()
        .chain(envelope.from())
        .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(TxError::Unsupported(
                "the address is not ASCII and the server does not offer SMTPUTF8".into(),
            ));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(TxError::Unsupported(
                "the message is not 7-bit and the server does not offer 8BITMIME".into(),
            ));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let mail = Mail::new(envelope.from().cloned(), params);
    let rcpts: Vec<Rcpt> = envelope
        .to()
        .iter()
        .map(|to| Rcpt::new(to.clone(), vec![]))
        .collect();
    if session.pipelining {
        let group = Pipelined {
            mail,
            rcpts: &rcpts,
        };
        step(Stage::Sender, timeout, conn.command(group)).await?;
        for _ in &rcpts {
            step(Stage::Recipient, timeout, conn.read_response()).await?;
        }
        step(Stage::Message, timeout, conn.read_response()).await?;
    } else {
        step(Stage::Sender, timeout, conn.command(mail)).await?;
        for rcpt in rcpts {
            step(Stage::Recipient, timeout, conn.command(rcpt)).await?;
        }
        step(Stage::Message, timeout, conn.command(Data)).await?;
    }
    if let Some(mark) = durable.take() {
        match mark.await {
            Ok(true) => {}
            Ok(false) => return Err(TxError::NotDue),
            Err(_) => return Err(TxError::Ledger),
        }
    }
    // One write of the dot-stuffed content and its terminator (see `DataContent`), laid out
    // in the session's buffer first: lettre copies a `&str` command in one piece, where a
    // command written piece by piece would grow its copy many times over.
    DataContent::new(message).write_into(&mut session.data);
    step(
        Stage::Message,
        timeout,
        session.conn.command(session.data.as_str()),
    )
    .await
}

/// True for 550/551/553 replies that say the mailbox does not exist (RFC 3463 5.1.x, or
/// the usual wording), as opposed to policy or spam rejections.
pub fn is_user_unknown(code: u16, text: &str) -> bool {
    if !matches!(code, 550 | 551 | 553) {
        return false;
    }
    let t = text.to_ascii_lowercase();
    t.contains("5.1.1")
        || t.contains("5.1.0")
        || t.contains("5.1.2")
        || t.contains("5.1.6")
        || [
            "user unknown",
            "unknown user",
            "no such user",
            "no such mailbox",
            "mailbox not found",
            "does not exist",
            "recipient not found",
            "invalid recipient",
        ]
        .iter()
        .any(|w| t.contains(w))
}

/// Sorts a lettre error into retry, give up, or "the server is not reachable". Only a
/// refusal at RCPT can mean the mailbox does not exist; a permanent refusal of our sender
/// at MAIL FROM is a configuration problem that would hit every recipient, so it pauses
/// the issue like an outage instead of failing (and bouncing) the list.
pub(super) fn classify(stage: Stage, err: &lettre::transport::smtp::Error) -> Attempt {
    let reply = err.to_string();
    if err.is_permanent() && stage == Stage::Sender {
        Attempt::Connection(format!("the server refuses our sender address: {reply}"))
    } else if err.is_permanent() {
        let code = err.status().map(u16::from).unwrap_or(500);
        Attempt::Permanent {
            user_unknown: stage == Stage::Recipient && is_user_unknown(code, &reply),
            reply,
        }
    } else if err.is_transient() {
        Attempt::Temporary(reply)
    } else if err.is_client() {
        // Something about this message the server cannot accept (e.g. an international
        // address without SMTPUTF8): retrying will not help.
        Attempt::Permanent {
            reply,
            user_unknown: false,
        }
    } else {
        Attempt::Connection(reply)
    }
}

pub(super) fn response_text(resp: &lettre::transport::smtp::response::Response) -> String {
    let mut s = resp.code().to_string();
    for line in resp.message() {
        s.push(' ');
        s.push_str(line);
    }
    s
}

/// Opens an SMTP session as configured: TCP, TLS (implicit or STARTTLS), EHLO and AUTH.
pub(crate) async fn connect(
    smtp: &SmtpConfig,
    hello: &ClientId,
    password: Option<&str>,
) -> Result<Session, String> {
    let where_ = format!("{}:{}", smtp.host, smtp.port);
    let tls = || {
        let mut params = TlsParameters::builder(smtp.host.clone());
        // `ca_file`: a relay whose certificate a private CA issued.
        for root in &smtp.extra_roots {
            params = params.add_root_certificate(
                Certificate::from_der(root.to_vec()).map_err(|e| format!("TLS setup: {e}"))?,
            );
        }
        params.build().map_err(|e| format!("TLS setup: {e}"))
    };
    let implicit = match smtp.tls {
        TlsMode::Tls => Some(tls()?),
        _ => None,
    };
    let mut conn = match implicit {
        // A message can leave in several writes (one per TLS record, for instance), and with
        // Nagle's algorithm the last would wait for the server's delayed ACK (~40 ms).
        // For plain and STARTTLS sessions we open the socket ourselves with TCP_NODELAY.
        None => {
            let tcp = tokio::net::TcpStream::connect((smtp.host.as_str(), smtp.port))
                .await
                .map_err(|e| format!("cannot connect to {where_}: {e}"))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("cannot configure the socket to {where_}: {e}"))?;
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), hello).await
        }
        Some(tls) => {
            AsyncSmtpConnection::connect_tokio1(
                (smtp.host.as_str(), smtp.port),
                Some(smtp.timeout),
                hello,
                Some(tls),
                None,
            )
            .await
        }
    }
    .map_err(|e| format!("cannot connect to {where_}: {e}"))?;
    if smtp.tls == TlsMode::Starttls {
        if !conn.can_starttls() {
            return Err(format!(
                "{where_} does not offer STARTTLS (smtp.tls is starttls)"
            ));
        }
        conn.starttls(tls()?, hello)
            .await
            .map_err(|e| format!("STARTTLS with {where_} failed: {e}"))?;
    }
    // lettre keeps only the extensions it knows, so PIPELINING is read from an EHLO of our
    // own (before AUTH, which a new EHLO might undo); without an answer, no pipelining.
    let pipelining = conn.command(Ehlo::new(hello.clone())).await.is_ok_and(|r| {
        r.message().any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
        })
    });
    if let Some(user) = &smtp.username {
        let creds = Credentials::new(user.clone(), password.unwrap_or_default().to_owned());
        conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds)
            .await
            .map_err(|e| format!("login to {where_} as {user} failed: {e}"))?;
    }
    Ok(Session {
        conn,
        pipelining,
        data: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_unknown_is_told_from_policy_rejections() {
        assert!(is_user_unknown(
            550,
            "5.1.1 <a@b.c>: Recipient address rejected: User unknown"
        ));
        assert!(is_user_unknown(553, "sorry, no such user here"));
        assert!(!is_user_unknown(550, "5.7.1 Message rejected as spam"));
        assert!(!is_user_unknown(554, "5.1.1 user unknown"));
        assert!(!is_user_unknown(552, "mailbox full"));
    }
}
