//! A hosted mailbox read over IMAP: each new message in `folder` is handled exactly as one
//! piped to `verdicts inbound`, and moved to `processed_folder` only once its result is
//! committed, so a crash or a database failure leaves it to be read again (and a message
//! read twice changes nothing the second time).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use async_imap::Client;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::config::ImapConfig;
use super::process::{process, Outcome, Settings};
use super::{Ignored, MAX_MESSAGE_BYTES};
use crate::config::TlsMode;
use crate::mail::verp::VerpKey;
use crate::store::{self, events::Hygiene};

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("the environment variable {0} (inbound.imap.password_env) is not set")]
    NoPassword(String),
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("`{0}` is not a host name TLS can check")]
    ServerName(String),
    #[error("IMAP login as {user} failed: {source}")]
    Login {
        user: String,
        source: async_imap::error::Error,
    },
    #[error("IMAP: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("the state database: {0}")]
    Store(String),
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Poll {
    /// Messages read and moved to the processed folder.
    pub handled: usize,
    /// Messages left in place because their result could not be committed.
    pub left: usize,
}

/// Everything a poll needs, owned so the daemon can keep it in a task.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub imap: ImapConfig,
    pub password: String,
    pub db_path: PathBuf,
    pub key: VerpKey,
    pub hygiene: Hygiene,
}

impl Mailbox {
    pub fn new(
        imap: ImapConfig,
        db_path: PathBuf,
        key: VerpKey,
        hygiene: Hygiene,
    ) -> Result<Self, ImapError> {
        let password = std::env::var(&imap.password_env)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ImapError::NoPassword(imap.password_env.clone()))?;
        Ok(Mailbox {
            imap,
            password,
            db_path,
            key,
            hygiene,
        })
    }

    /// Connects, handles every message in the folder, and logs out.
    pub async fn poll(&self) -> Result<Poll, ImapError> {
        let i = &self.imap;
        let tcp = TcpStream::connect((i.host.as_str(), i.port))
            .await
            .map_err(|source| ImapError::Connect {
                host: i.host.clone(),
                port: i.port,
                source,
            })?;
        match i.tls {
            TlsMode::None => {
                let mut client = Client::new(tcp);
                greeting(&mut client).await?;
                self.session(client).await
            }
            TlsMode::Tls => {
                let tls = self.tls(tcp).await?;
                let mut client = Client::new(tls);
                greeting(&mut client).await?;
                self.session(client).await
            }
            TlsMode::Starttls => {
                let mut client = Client::new(tcp);
                greeting(&mut client).await?;
                client.run_command_and_check_ok("STARTTLS", None).await?;
                let tls = self.tls(client.into_inner()).await?;
                self.session(Client::new(tls)).await
            }
        }
    }

    async fn tls(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ImapError> {
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Each was checked when the config was read.
        roots.add_parsable_certificates(self.imap.extra_roots.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Connect {
            host: self.imap.host.clone(),
            port: self.imap.port,
            source: std::io::Error::other(e),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(self.imap.host.clone())
            .map_err(|_| ImapError::ServerName(self.imap.host.clone()))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|source| ImapError::Connect {
                host: self.imap.host.clone(),
                port: self.imap.port,
                source,
            })
    }

    async fn session<T>(&self, client: Client<T>) -> Result<Poll, ImapError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
    {
        let i = &self.imap;
        let mut session =
            client
                .login(&i.username, &self.password)
                .await
                .map_err(|(source, _)| ImapError::Login {
                    user: i.username.clone(),
                    source,
                })?;
        // Exists already, most of the time.
        let _ = session.create(&i.processed_folder).await;
        let can_move = session.capabilities().await?.has_str("MOVE");
        session.select(&i.folder).await?;
        let mut uids: Vec<u32> = session.uid_search("ALL").await?.into_iter().collect();
        uids.sort_unstable();
        // Sizes first, so a message over the limit is never downloaded.
        let mut sizes = std::collections::HashMap::new();
        if !uids.is_empty() {
            let fetched: Vec<_> = session
                .uid_fetch("1:*", "RFC822.SIZE")
                .await?
                .try_collect()
                .await?;
            for f in &fetched {
                if let (Some(uid), Some(size)) = (f.uid, f.size) {
                    sizes.insert(uid, size);
                }
            }
        }
        let mut poll = Poll::default();
        for uid in uids {
            let size = sizes.get(&uid).copied().unwrap_or(0) as usize;
            if size > MAX_MESSAGE_BYTES {
                let why = Ignored::TooLarge { bytes: size };
                info!(uid, folder = %i.folder, result = %format!("ignored: {why}"), "inbound message over IMAP, not downloaded");
                self.file(&mut session, uid, can_move).await?;
                poll.handled += 1;
                continue;
            }
            let raw = {
                let fetches: Vec<_> = session
                    .uid_fetch(uid.to_string(), "BODY.PEEK[]")
                    .await?
                    .try_collect()
                    .await?;
                fetches.iter().find_map(|f| f.body().map(<[u8]>::to_vec))
            };
            let Some(raw) = raw else { continue };
            match self.handle(raw).await {
                Ok(line) => {
                    info!(uid, folder = %i.folder, result = %line, "inbound message over IMAP")
                }
                Err(e) => {
                    // Left where it is: the next poll reads it again.
                    warn!(uid, error = %e, "inbound message not handled; left in the mailbox");
                    poll.left += 1;
                    continue;
                }
            }
            self.file(&mut session, uid, can_move).await?;
            poll.handled += 1;
        }
        let _ = session.logout().await;
        Ok(poll)
    }

    /// Moves a handled message to the processed folder.
    async fn file<T>(
        &self,
        session: &mut async_imap::Session<T>,
        uid: u32,
        can_move: bool,
    ) -> Result<(), ImapError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
    {
        let processed = &self.imap.processed_folder;
        if can_move {
            session.uid_mv(uid.to_string(), processed).await?;
        } else {
            session.uid_copy(uid.to_string(), processed).await?;
            let _: Vec<_> = session
                .uid_store(uid.to_string(), "+FLAGS.SILENT (\\Deleted)")
                .await?
                .try_collect()
                .await?;
            let _: Vec<_> = session.expunge().await?.try_collect().await?;
        }
        Ok(())
    }

    /// Classifies and applies one message on a blocking thread; the result is committed
    /// when this returns `Ok`.
    async fn handle(&self, raw: Vec<u8>) -> Result<String, ImapError> {
        let db_path = self.db_path.clone();
        let key = self.key.clone();
        let hygiene = self.hygiene;
        tokio::task::spawn_blocking(move || -> Result<String, ImapError> {
            let conn = store::open(&db_path).map_err(|e| ImapError::Store(format!("{e:#}")))?;
            let (inbound, outcome) = process(
                &conn,
                &raw,
                Settings {
                    key: Some(&key),
                    hygiene,
                    envelope_recipient: None,
                },
            )
            .map_err(|e| ImapError::Store(e.to_string()))?;
            Ok(match outcome {
                Outcome::Ignored(why) => format!("ignored: {why}"),
                other => format!("{}: {other:?}", inbound.kind.label()),
            })
        })
        .await
        .map_err(|e| ImapError::Store(e.to_string()))?
    }

    /// Polls every `imap.poll` until `stop` turns true; a failed poll is logged and retried
    /// at the next interval.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.poll().await {
                Ok(p) if p.handled + p.left > 0 => {
                    info!(handled = p.handled, left = p.left, "IMAP poll")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "IMAP poll failed; trying again at the next interval"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.imap.poll) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

async fn greeting<T>(client: &mut Client<T>) -> Result<(), ImapError>
where
    T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
{
    client
        .read_response()
        .await
        .map_err(async_imap::error::Error::Io)?
        .ok_or(async_imap::error::Error::ConnectionLost)?;
    Ok(())
}
