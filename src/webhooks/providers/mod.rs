//! The relays' event webhooks on the web process: `POST /webhooks/ses` (Amazon SES through
//! SNS), `/webhooks/postmark`, `/webhooks/mailgun`, `/webhooks/sendgrid` and
//! `/webhooks/generic`. Each provider's file checks that provider's own proof (a signature,
//! or Postmark's basic auth) and turns its payload into [`ProviderEvent`]s; anything that
//! does not prove itself is a 401 and changes nothing.
//!
//! The events then take the path inbound mail takes (`store::events::record`, with the list
//! hygiene rules), each under its provider's event id in the table of handled reports, so
//! a retry or a duplicate changes nothing. An event is attributed to its delivery by our
//! signed Message-ID when the payload quotes it, else by the id the relay gave the message
//! at send time, else by the recipient's address (the request itself is authenticated).

pub mod generic;
pub mod mailgun;
pub mod postmark;
pub mod sendgrid;
pub mod ses;

mod fetch;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rusqlite::Connection;
use tracing::{info, warn};

use crate::config::provider_webhooks::ProviderWebhooksConfig;
use crate::config::signup::SignupConfig;
use crate::config::Config;
use crate::inbound::{IdTrust, OurMessageId};
use crate::mail::address::SubscriberEmail;
use crate::mail::verp::VerpKey;
use crate::store::events::{self, Channel, EventKind, Hygiene, NewEvent, Source};
use crate::store::unattributed::{self, NewReport};
use crate::store::{
    self as db, provider_webhooks as store, subscribers, IssueNumber, SubscriberId,
};

mod hooks;
use hooks::*;

/// What a relay reported about one message to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    HardBounce,
    SoftBounce,
    Complaint,
    /// The reader unsubscribed through the relay (its own link or suppression list).
    Unsubscribe,
    /// Accepted by the receiving server: nothing to record.
    Delivered,
    /// Delayed, still being retried by the relay: nothing to record.
    Deferred,
}

impl Reported {
    fn event_kind(self) -> Option<EventKind> {
        match self {
            Reported::HardBounce => Some(EventKind::HardBounce),
            Reported::SoftBounce => Some(EventKind::SoftBounce),
            Reported::Complaint => Some(EventKind::Complaint),
            Reported::Unsubscribe => Some(EventKind::Unsubscribe(Channel::Relay)),
            Reported::Delivered | Reported::Deferred => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Reported::HardBounce => "hard",
            Reported::SoftBounce => "soft",
            Reported::Complaint => "complaint",
            Reported::Unsubscribe => "unsubscribe",
            Reported::Delivered => "delivered",
            Reported::Deferred => "deferred",
        }
    }
}

/// One event from a provider's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    /// The provider's own id for the event: what makes a retry a duplicate.
    pub id: String,
    pub reported: Reported,
    pub recipient: Option<String>,
    /// The provider's id for the message (SES `mail.messageId`, Postmark `MessageID`, …).
    pub provider_message_id: Option<String>,
    /// Where our Message-ID may be quoted (the event's own JSON).
    pub evidence: String,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No proof, a wrong one, a stale or replayed one: 401.
    Unauthorized(String),
    /// Proven, but not something this endpoint takes (malformed JSON): 400.
    Malformed(String),
}

impl Refusal {
    pub fn unauthorized(why: impl Into<String>) -> Self {
        Refusal::Unauthorized(why.into())
    }

    pub fn malformed(why: impl Into<String>) -> Self {
        Refusal::Malformed(why.into())
    }
}

/// A request whose proof checked out.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    pub events: Vec<ProviderEvent>,
    /// Taken once: a second request with it is a replay (Mailgun's token, a signature).
    pub one_time: Option<String>,
}

/// The secrets of the configured providers, read from the environment once.
#[derive(Clone)]
pub struct Secrets {
    postmark_password: Option<String>,
    mailgun_key: Option<Vec<u8>>,
    sendgrid_key: Option<Vec<u8>>,
    generic_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    /// Reads each configured provider's secret; a missing or empty variable is an error
    /// naming it and the config key that names it.
    pub fn from_env(config: &ProviderWebhooksConfig) -> Result<Self, crate::error::UserError> {
        let read = |var: &str, field: &str| -> Result<String, crate::error::UserError> {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
                _ => Err(crate::error::UserError::new(format!(
                    "the environment variable {var} (provider_webhooks.{field}) is not set: \
                     the webhook cannot check requests without it"
                ))),
            }
        };
        let sendgrid_key = match &config.sendgrid_key_env {
            None => None,
            Some(var) => Some(
                sendgrid::parse_public_key(&read(var, "sendgrid.public_key_env")?).map_err(
                    |why| {
                        crate::error::UserError::new(format!(
                            "the environment variable {var} (provider_webhooks.sendgrid.public_key_env) \
                             does not hold SendGrid's verification key: {why}"
                        ))
                    },
                )?,
            ),
        };
        Ok(Secrets {
            postmark_password: config
                .postmark
                .as_ref()
                .map(|p| read(&p.password_env, "postmark.password_env"))
                .transpose()?,
            mailgun_key: config
                .mailgun_key_env
                .as_deref()
                .map(|v| read(v, "mailgun.signing_key_env").map(String::into_bytes))
                .transpose()?,
            sendgrid_key,
            generic_secret: config
                .generic_secret_env
                .as_deref()
                .map(|v| read(v, "generic.secret_env").map(String::into_bytes))
                .transpose()?,
        })
    }
}

/// The webhook side of the web process.
pub struct Receiver {
    config: ProviderWebhooksConfig,
    secrets: Secrets,
    db: Mutex<Connection>,
    ids: VerpKey,
    hygiene: Hygiene,
    proxies: SignupConfig,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    certs: ses::CertCache,
}

impl Receiver {
    /// The receiver for `config`'s providers, or `None` when none is configured.
    pub fn from_config(
        config: &Config,
        key: &crate::mail::token::TokenKey,
    ) -> anyhow::Result<Option<Arc<Receiver>>> {
        let hooks = &config.provider_webhooks;
        if !hooks.any() {
            return Ok(None);
        }
        let secrets = Secrets::from_env(hooks)?;
        let certs = ses::CertCache::new(hooks.ses.as_ref())?;
        let conn = db::open(&config.database_path())?;
        Ok(Some(Arc::new(Receiver {
            config: hooks.clone(),
            secrets,
            db: Mutex::new(conn),
            ids: key.verp_key(),
            hygiene: config.inbound.hygiene,
            proxies: config.signup.clone(),
            per_ip: RateLimiter::keyed(
                Quota::per_minute(hooks.per_ip_per_minute).allow_burst(hooks.per_ip_per_minute),
            ),
            certs,
        })))
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The provider routes, for the configured providers only.
pub fn routes(receiver: Arc<Receiver>) -> Router {
    let c = &receiver.config;
    let mut router = Router::new();
    if c.ses.is_some() {
        router = router.route("/webhooks/ses", post(ses_hook));
    }
    if c.postmark.is_some() {
        router = router.route("/webhooks/postmark", post(postmark_hook));
    }
    if c.mailgun_key_env.is_some() {
        router = router.route("/webhooks/mailgun", post(mailgun_hook));
    }
    if c.sendgrid_key_env.is_some() {
        router = router.route("/webhooks/sendgrid", post(sendgrid_hook));
    }
    if c.generic_secret_env.is_some() {
        router = router.route("/webhooks/generic", post(generic_hook));
    }
    router.with_state(receiver)
}

/// A request's headers and body, once it is within the limits.
struct Taken {
    headers: HeaderMap,
    body: Bytes,
}

fn answer(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The rate limit per client, then the body within its size limit.
async fn take(receiver: &Receiver, req: Request) -> Result<Taken, Response> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let name = match receiver.proxies.proxy_header {
        crate::config::signup::ProxyHeader::XForwardedFor => "x-forwarded-for",
        crate::config::signup::ProxyHeader::Forwarded => "forwarded",
    };
    let client = crate::signup::client_ip(
        peer,
        receiver.proxies.proxy_header,
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("garbled")),
        &receiver.proxies.trusted_proxies,
    );
    let (parts, body) = req.into_parts();
    // The body is read before any answer, as for signups: an unread body makes the server
    // close a connection the client may be reusing.
    let body = match axum::body::to_bytes(body, receiver.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            let mut r = answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "requests over {} bytes are refused (provider_webhooks.max_body_bytes)",
                    receiver.config.max_body_bytes
                ),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(r);
        }
    };
    let key = crate::signup::limit_key(client, receiver.proxies.ipv6_prefix);
    if let Err(not_until) = receiver.per_ip.check_key(&key) {
        use governor::clock::{Clock, DefaultClock};
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let secs = wait.as_secs().max(1);
        let mut r = answer(StatusCode::TOO_MANY_REQUESTS, "too many webhook requests");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(r);
    }
    Ok(Taken {
        headers: parts.headers,
        body,
    })
}

/// What applying a request's events did, as counted in the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Events recorded against a subscriber.
    pub applied: usize,
    /// Events handled before: nothing done.
    pub duplicates: usize,
    /// Bounces, complaints or unsubscribes that named no known delivery or subscriber:
    /// kept for the operator, nothing applied.
    pub unattributed: usize,
    /// Deliveries and deferrals: nothing to record.
    pub noted: usize,
}

/// Why a verified request was not applied.
enum ApplyError {
    /// Its one-time token or signature was taken before.
    Replay,
    Store(anyhow::Error),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Store(e.into())
    }
}

/// Applies a verified request in one transaction.
fn apply(
    receiver: &Receiver,
    provider: &'static str,
    verified: &Verified,
) -> Result<Applied, ApplyError> {
    let conn = receiver.db();
    let window = receiver.config.max_age;
    db::in_write_transaction(&conn, |tx| -> Result<Applied, ApplyError> {
        if let Some(token) = &verified.one_time {
            if !store::take_token(tx, provider, token, window)? {
                return Err(ApplyError::Replay);
            }
        }
        let mut done = Applied::default();
        for event in &verified.events {
            apply_one(tx, receiver, provider, event, &mut done).map_err(ApplyError::Store)?;
        }
        Ok(done)
    })
}

fn apply_one(
    tx: &Connection,
    receiver: &Receiver,
    provider: &'static str,
    event: &ProviderEvent,
    done: &mut Applied,
) -> anyhow::Result<()> {
    let Some(kind) = event.reported.event_kind() else {
        done.noted += 1;
        return Ok(());
    };
    let key = format!("webhook:{provider}:{}", event.id);
    if events::is_processed(tx, &key)? {
        done.duplicates += 1;
        return Ok(());
    }
    match attribute(tx, &receiver.ids, event)? {
        Ok((subscriber_id, issue, by)) => {
            let effect = events::record(
                tx,
                &NewEvent {
                    subscriber_id,
                    issue,
                    kind,
                    source: Source::Webhook,
                    status: event.status.as_deref(),
                    diagnostic: event.diagnostic.as_deref(),
                },
                receiver.hygiene,
            )?;
            info!(provider, event = event.reported.label(), subscriber = %subscriber_id,
                  issue = ?issue.map(|i| i.get()), attributed_by = by, ?effect,
                  "relay event applied");
            events::mark_processed(tx, &key, event.reported.label())?;
            done.applied += 1;
        }
        Err(why) => {
            info!(provider, event = event.reported.label(), reason = %why,
                  "relay event kept as unattributed");
            let addresses: Vec<String> = event.recipient.iter().cloned().collect();
            let reason = format!("{provider} webhook: {why}");
            unattributed::record(
                tx,
                &NewReport {
                    kind: event.reported.label(),
                    reason: &reason,
                    claimed: None,
                    addresses: &addresses,
                    message_id: event.provider_message_id.as_deref(),
                    status: event.status.as_deref(),
                    diagnostic: event.diagnostic.as_deref(),
                },
            )?;
            events::mark_processed(tx, &key, "unattributed")?;
            done.unattributed += 1;
        }
    }
    Ok(())
}

/// The delivery (or at least the subscriber) an event concerns, and what found it.
#[allow(clippy::type_complexity)]
fn attribute(
    conn: &Connection,
    ids: &VerpKey,
    event: &ProviderEvent,
) -> anyhow::Result<Result<(SubscriberId, Option<IssueNumber>, &'static str), String>> {
    if let Some(id) = OurMessageId::find(&event.evidence, Some(ids)) {
        if id.trust == IdTrust::Signed && events::has_delivery(conn, id.issue, id.subscriber)? {
            return Ok(Ok((id.subscriber, Some(id.issue), "message-id")));
        }
    }
    if let Some(relay_id) = &event.provider_message_id {
        if let Some((issue, subscriber)) = store::delivery_for_relay_id(conn, relay_id)? {
            return Ok(Ok((subscriber, Some(issue), "relay-message-id")));
        }
    }
    let Some(recipient) = &event.recipient else {
        return Ok(Err("names no recipient and no message of ours".into()));
    };
    let Ok(email) = SubscriberEmail::parse(recipient) else {
        return Ok(Err(format!("`{recipient}` is not an address")));
    };
    let Some(subscriber) = subscribers::find(conn, &email)? else {
        return Ok(Err(format!("{recipient} is not on the list")));
    };
    let issue = events::latest_sent_issue(conn, subscriber.id)?;
    Ok(Ok((subscriber.id, issue, "address")))
}

/// Seconds since the epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Refuses a signed timestamp further than `max_age` from `now`, either way.
pub fn fresh(timestamp: i64, now: i64, max_age: Duration) -> Result<(), Refusal> {
    let age = now.saturating_sub(timestamp);
    let limit = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    if age > limit {
        return Err(Refusal::unauthorized(format!(
            "stale: signed {age} s ago, more than the {limit} s allowed (provider_webhooks.max_age)"
        )));
    }
    if -age > limit {
        return Err(Refusal::unauthorized(format!(
            "signed {} s in the future",
            -age
        )));
    }
    Ok(())
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// HMAC-SHA256 of `parts` (concatenated) under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().to_vec()
}

/// A JSON string field of an object, when present and a string.
pub(crate) fn text(value: &serde_json::Value, field: &str) -> Option<String> {
    value.get(field).and_then(|v| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_goes_both_ways() {
        let window = Duration::from_secs(300);
        assert!(fresh(1_000, 1_200, window).is_ok());
        assert!(fresh(1_000, 1_400, window).is_err());
        assert!(fresh(1_400, 1_000, window).is_err());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
