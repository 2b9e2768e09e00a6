//! For the engine's unit tests: a ledger on disk with subscribers and an issue, and a
//! scripted transport that answers as told per recipient and attempt, without sockets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::smtp::Attempt;
use super::transport::Transport;
use super::Delivery;
use crate::config::{Newsletter, SmtpConfig, TlsMode};
use crate::digest::render::RenderedDigest;
use crate::mail::address::SubscriberEmail;
use crate::mail::message::IssueMessages;
use crate::mail::outgoing::OutgoingMessage;
use crate::mail::token::TokenKey;
use crate::store::ledger::{self, Created, NewIssue, StoredDigest};
use crate::store::subscribers::{self, AddOutcome, SubscriberSource};
use crate::store::{self, IssueNumber, SubscriberId};

/// A state folder with `n` subscribers (reader{i}@example.com) and one issue to all of them.
pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) db_path: PathBuf,
    pub(super) issue: IssueNumber,
    pub(super) ids: Vec<SubscriberId>,
}

impl Fixture {
    pub(super) fn new(n: usize) -> Self {
        let addresses: Vec<String> = (0..n).map(|i| format!("reader{i}@example.com")).collect();
        Fixture::with_addresses(&addresses)
    }

    /// The same with the given subscribers, in order.
    pub(super) fn with_addresses(addresses: &[impl AsRef<str>]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("verdicts.db");
        let (conn, _) = store::create(&db_path).unwrap();
        let ids = addresses
            .iter()
            .map(|a| {
                let email = SubscriberEmail::parse(a.as_ref()).unwrap();
                match subscribers::add(&conn, &email, None, SubscriberSource::Cli).unwrap() {
                    AddOutcome::Added(s) => s.id,
                    AddOutcome::AlreadyListed(s) => s.id,
                }
            })
            .collect();
        let slot: DateTime<Utc> = "2026-11-23T09:00:00Z".parse().unwrap();
        let created = ledger::create_issue(
            &conn,
            &NewIssue {
                slot,
                window_after: slot - chrono::Duration::days(7),
                cutoff: slot,
                slugs: vec![],
                digest: &digest(),
                skipped: false,
            },
        )
        .unwrap();
        let Created::New { number, .. } = created else {
            panic!("a fresh ledger has no issue")
        };
        Fixture {
            _dir: dir,
            db_path,
            issue: number,
            ids,
        }
    }

    pub(super) fn read(&self) -> Connection {
        store::open(&self.db_path).unwrap()
    }

    /// A delivery job with fast retries over `concurrency` workers.
    pub(super) fn job(&self, concurrency: usize, max_attempts: u32) -> Delivery {
        let newsletter = Newsletter {
            name: "Weekly".into(),
            from: "Weekly <weekly@example.com>".parse().unwrap(),
            base_url: "https://weekly.example.com".into(),
            postal_address: "1 Example Street".into(),
            list_id: "weekly.example.com".into(),
        };
        let slot = "2026-11-23T09:00:00Z".parse().unwrap();
        let messages = IssueMessages::new(
            &newsletter,
            self.issue,
            slot,
            &RenderedDigest::from(digest()),
            TokenKey::new(b"unit-test-secret-0123456789"),
        );
        Delivery {
            db_path: self.db_path.clone(),
            issue: self.issue,
            messages: Arc::new(messages),
            smtp: SmtpConfig {
                host: "scripted".into(),
                port: 25,
                tls: TlsMode::None,
                username: None,
                password_env: "UNUSED".into(),
                concurrency,
                rate_per_second: 0,
                timeout: Duration::from_secs(5),
                max_attempts,
                retry_base: Duration::from_millis(10),
                give_up_after: Duration::from_secs(72 * 3600),
                pause_max: Duration::from_secs(60),
                name: "scripted:25".into(),
                role: Default::default(),
                extra_roots: vec![],
                password_file: None,
                limits: Default::default(),
            },
            fallbacks: vec![],
            domains: vec![],
            password: None,
            hygiene: Default::default(),
            progress_bar: false,
        }
    }

    /// (state, failure, attempts) of every delivery, by subscriber index.
    pub(super) fn deliveries(&self) -> Vec<(String, Option<String>, u32)> {
        let conn = self.read();
        let mut stmt = conn
            .prepare(
                "SELECT state, failure, attempts FROM deliveries WHERE issue = ?
                 ORDER BY subscriber_id",
            )
            .unwrap();
        stmt.query_map([self.issue], |r| {
            Ok((
                crate::store::ledger::state_name(r.get(0)?).to_owned(),
                r.get(1)?,
                r.get(2)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }
}

fn digest() -> StoredDigest {
    StoredDigest {
        subject: "This week".into(),
        preheader: "Nothing new".into(),
        comparison_count: 0,
        html_parts: vec![
            "<p>Hello. <a href=\"".into(),
            "\">Unsubscribe</a></p>".into(),
        ],
        text_parts: vec!["Hello. Unsubscribe: ".into(), "\n".into()],
    }
}

/// How the scripted server answers one attempt.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    Accept,
    Temporary(&'static str),
    Permanent(&'static str),
    Fault(&'static str),
    /// Panics inside the worker.
    Panic,
}

type Script = dyn Fn(&str, usize) -> Answer + Send + Sync;

/// Answers each attempt by `script(recipient, attempt number for that recipient)`.
#[derive(Clone)]
pub(super) struct Scripted {
    script: Arc<Script>,
    log: Arc<Mutex<Log>>,
    smtputf8: bool,
}

#[derive(Default)]
pub(super) struct Log {
    pub(super) attempts: HashMap<String, usize>,
    pub(super) accepted: HashMap<String, usize>,
}

impl Scripted {
    pub(super) fn new(script: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> Self {
        Scripted {
            script: Arc::new(script),
            log: Arc::default(),
            smtputf8: true,
        }
    }

    /// A server that does not offer SMTPUTF8.
    pub(super) fn without_smtputf8(mut self) -> Self {
        self.smtputf8 = false;
        self
    }

    /// The envelope recipients of every accepted message, as spelled on the wire.
    pub(super) fn accepted_envelopes(&self) -> Vec<String> {
        let mut to: Vec<String> = self.log.lock().unwrap().accepted.keys().cloned().collect();
        to.sort();
        to
    }

    pub(super) fn attempts(&self, who: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .attempts
            .get(who)
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn accepted(&self) -> HashMap<String, usize> {
        self.log.lock().unwrap().accepted.clone()
    }
}

impl Transport for Scripted {
    type Session = ();

    fn session(&self) {}

    async fn prepare<'a>(&'a self, _session: &'a mut ()) -> Result<bool, Attempt> {
        Ok(self.smtputf8)
    }

    async fn attempt<'a>(
        &'a self,
        _session: &'a mut (),
        message: &'a OutgoingMessage,
        durable: oneshot::Receiver<bool>,
    ) -> Attempt {
        let to = message.envelope().to()[0].to_string();
        let n = {
            let mut log = self.log.lock().unwrap();
            let n = log.attempts.entry(to.clone()).or_insert(0);
            *n += 1;
            *n
        };
        // Answer like a server: RCPT replies come before the body needs the mark.
        tokio::task::yield_now().await;
        match (self.script)(&to, n) {
            Answer::Accept => match durable.await {
                Ok(true) => {
                    *self.log.lock().unwrap().accepted.entry(to).or_insert(0) += 1;
                    Attempt::Sent("250 2.0.0 Ok: queued".into())
                }
                Ok(false) => Attempt::NotDue,
                Err(_) => Attempt::LedgerGone,
            },
            Answer::Temporary(reply) => Attempt::Temporary(reply.into()),
            Answer::Permanent(reply) => Attempt::Permanent {
                reply: reply.into(),
                user_unknown: false,
            },
            Answer::Fault(reply) => Attempt::Connection(reply.into()),
            Answer::Panic => panic!("the scripted transport was told to panic"),
        }
    }

    async fn close(&self, _session: ()) {}

    fn describe(&self) -> String {
        "the scripted server".into()
    }
}
