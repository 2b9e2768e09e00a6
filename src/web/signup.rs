//! Signup with double opt-in: `GET /subscribe` (the form), `POST /subscribe` (form or JSON),
//! `GET /confirm?token=…` (a page with one button: mail scanners open links, people press
//! buttons) and `POST /confirm?token=…` (the only thing that activates a subscriber).
//!
//! Every syntactically valid address gets the same answer, whatever its status, so the
//! form cannot be used to learn who is on the list; a filled honeypot gets it too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::{page, server_error, TokenQuery, WebState};
use crate::config::signup::{ProxyHeader, SignupConfig};
use crate::mail::address::{SubscriberEmail, SubscriberName};
use crate::mail::confirmation::{claimed_confirmation, verify_token};
use crate::signup::form::{escape, form_html};
use crate::signup::limits::{Limited, Limits};
use crate::store::signup::{
    self as store_signup, ConfirmOutcome, Confirmation, SignupOutcome, SignupRequest,
};
use crate::store::subscribers::{SubscriberSource, SubscriberStatus};

/// The largest request body accepted by `POST /subscribe`.
pub const MAX_BODY: usize = 8 * 1024;

/// What the signup handlers share (inside [`WebState`]).
pub struct SignupService {
    config: SignupConfig,
    limits: Arc<Limits>,
    wake: Arc<Notify>,
}

impl SignupService {
    /// `wake` is rung when a confirmation mail is queued; `limits` are shared with the
    /// worker that sends them (which also forgets idle entries).
    pub fn new(config: SignupConfig, limits: Arc<Limits>, wake: Arc<Notify>) -> Self {
        SignupService {
            config,
            limits,
            wake,
        }
    }
}

pub(super) fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/subscribe", get(signup_page).post(subscribe))
        .route("/confirm", get(confirm_page).post(confirm))
}

fn service(state: &WebState) -> Option<&SignupService> {
    state.signup.as_ref()
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Signups are closed",
        "<p>This newsletter does not take signups here.</p>",
    )
}

const FORM_STYLE: &str = "<style>label{font-weight:600}input[type=email],input[type=text]{font:inherit;width:100%;max-width:24rem;padding:.5rem;border:1px solid #8a93a6;border-radius:6px}\
    input:focus,button:focus{outline:3px solid #9aa3ff;outline-offset:2px}small{color:#5b6475}</style>";

async fn signup_page(State(state): State<Arc<WebState>>) -> Response {
    if service(&state).is_none() {
        return not_found();
    }
    let name = escape(&state.newsletter_name);
    page(
        StatusCode::OK,
        &format!("Subscribe to {name}"),
        &format!(
            "{FORM_STYLE}<p>One email a week with the newest comparisons and their verdicts.</p>{}",
            form_html("/subscribe", &state.newsletter_name)
        ),
    )
}

/// The fields of a signup, from the form or from JSON.
#[derive(Debug, Default, Deserialize)]
struct SignupFields {
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: Option<String>,
    /// The honeypot: people never see it, so anything in it came from a bot.
    #[serde(default)]
    website: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Form,
    Json,
}

impl Kind {
    fn of(headers: &HeaderMap) -> Kind {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if json {
            Kind::Json
        } else {
            Kind::Form
        }
    }

    fn error(self, status: StatusCode, title: &str, message: &str) -> Response {
        match self {
            Kind::Json => {
                (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
            }
            Kind::Form => page(
                status,
                title,
                &format!(
                    "<p>{}</p><p><a href=\"/subscribe\">Back to the signup form</a></p>",
                    escape(message)
                ),
            ),
        }
    }
}

/// The one answer to every accepted signup, whatever happened behind it.
fn accepted(kind: Kind, svc: &SignupService) -> Response {
    match kind {
        Kind::Json => (
            StatusCode::ACCEPTED,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({ "status": "check your inbox" })),
        )
            .into_response(),
        Kind::Form => match &svc.config.thanks_url {
            Some(url) => Redirect::to(url).into_response(),
            None => page(
                StatusCode::OK,
                "Check your inbox",
                &format!(
                    "<p>If this address is not subscribed yet, a message with a confirmation \
                     link is on its way. Open it and press the button to start receiving the \
                     newsletter; the link works for {}.</p>\
                     <p>Nothing arrived after a few minutes? Look in the spam folder.</p>",
                    describe(svc.config.expire_after)
                ),
            ),
        },
    }
}

fn describe(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s >= 3600 && s % 3600 == 0 => plural(s / 3600, "hour"),
        s if s >= 60 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

fn plural(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

fn too_many(kind: Kind, limited: Limited) -> Response {
    let secs = limited.retry_after.as_secs() + u64::from(limited.retry_after.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut response = kind.error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many signups",
        &format!(
            "Too many signup attempts; please try again in {}.",
            describe(Duration::from_secs(secs.div_ceil(60) * 60))
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn peer_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

async fn subscribe(State(state): State<Arc<WebState>>, req: Request) -> Response {
    let Some(svc) = service(&state) else {
        return not_found();
    };
    let kind = Kind::of(req.headers());
    let header = match svc.config.proxy_header {
        ProxyHeader::XForwardedFor => "x-forwarded-for",
        ProxyHeader::Forwarded => "forwarded",
    };
    // Every line of the header: a proxy may append its own line rather than extend the
    // one the client wrote.
    let client = crate::signup::client_ip(
        peer_ip(&req),
        svc.config.proxy_header,
        req.headers()
            .get_all(header)
            .iter()
            .map(|v| v.to_str().unwrap_or("garbled")),
        &svc.config.trusted_proxies,
    );
    // The body is read (at most 8 KB) before any answer: a response that leaves the body
    // unread makes the server close the connection, which a keep-alive client may be
    // reusing at that very moment.
    let body: Bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) if super::server::is_too_slow(&e) => {
            debug!(%client, "signup body arrived too slowly");
            let mut response = kind.error(
                StatusCode::REQUEST_TIMEOUT,
                "Too slow",
                "The request took too long to arrive; please try again.",
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        Err(_) => {
            let mut response = kind.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too much data",
                &format!(
                    "A signup is an address and a name; requests over {} KB are refused.",
                    MAX_BODY / 1024
                ),
            );
            // The rest of the body is never read, so this connection cannot serve another.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    if let Err(limited) = svc
        .limits
        .check_client(crate::signup::limit_key(client, svc.config.ipv6_prefix))
    {
        debug!(%client, "signup refused: client over its limit");
        return too_many(kind, limited);
    }
    let fields: SignupFields = match kind {
        Kind::Json => serde_json::from_slice(&body).ok(),
        Kind::Form => serde_urlencoded::from_bytes(&body).ok(),
    }
    .unwrap_or_default();
    if fields
        .website
        .as_deref()
        .is_some_and(|w| !w.trim().is_empty())
    {
        debug!(%client, "signup ignored: honeypot filled");
        return accepted(kind, svc);
    }
    let email = match SubscriberEmail::parse(&fields.email) {
        Ok(e) => e,
        Err(e) => {
            return kind.error(
                StatusCode::BAD_REQUEST,
                "That address does not look right",
                &format!("Please check the email address: {e}."),
            )
        }
    };
    let name = match fields
        .name
        .as_deref()
        .map(SubscriberName::parse)
        .transpose()
    {
        Ok(n) => n.flatten(),
        Err(e) => {
            return kind.error(
                StatusCode::BAD_REQUEST,
                "That name does not look right",
                &format!("Please check the name: {e}."),
            )
        }
    };
    // An address the relay cannot deliver to would get "check your inbox" and never a
    // confirmation: say so now, with the reason.
    if let Some(reason) = crate::mail::envelope::undeliverable(&email, svc.limits.relay_smtputf8())
    {
        debug!(%client, "signup refused: undeliverable address");
        return kind.error(
            StatusCode::BAD_REQUEST,
            "We cannot deliver to that address",
            &format!(
                "This newsletter's mail server cannot deliver to that address: {reason}. \
                 Please use another address."
            ),
        );
    }
    if let Err(limited) = svc
        .limits
        .check_address(&email.limit_key(&svc.config.plus_tag_domains))
    {
        debug!(limit = ?limited.limit, "signup refused: over a limit");
        return too_many(kind, limited);
    }
    let request = SignupRequest {
        email: &email,
        name: name.as_ref(),
        source: match kind {
            Kind::Form => SubscriberSource::Web,
            Kind::Json => SubscriberSource::Api,
        },
        ip: svc.config.record_ip.then(|| client.to_string()),
        expire_after: svc.config.expire_after,
        resend_after: Duration::from_secs(3600) / svc.config.per_address_per_hour.get(),
    };
    let outcome = tokio::task::block_in_place(|| -> anyhow::Result<SignupOutcome> {
        let db = state
            .db
            .lock()
            .map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
        Ok(store_signup::request_signup(&db, &request)?)
    });
    match outcome {
        Ok(SignupOutcome::Queued { confirmation }) => {
            info!(confirmation, "signup queued a confirmation mail");
            svc.wake.notify_one();
        }
        Ok(other) => debug!(outcome = ?other, "signup needs no mail"),
        Err(e) => return server_error(e),
    }
    accepted(kind, svc)
}

/// What a confirmation token turned out to be.
enum TokenCheck {
    Valid(Confirmation),
    Expired,
    Invalid,
}

fn check_token(state: &WebState, token: &str) -> anyhow::Result<TokenCheck> {
    let Some(id) = claimed_confirmation(token) else {
        return Ok(TokenCheck::Invalid);
    };
    let db = state
        .db
        .lock()
        .map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
    let Some(c) = store_signup::confirmation(&db, id)? else {
        return Ok(TokenCheck::Invalid);
    };
    let verified = |email: &SubscriberEmail| {
        let check = |key: &str| verify_token(&state.key, token, id, c.expires_at, key);
        check(&email.normalized()) || email.legacy_key().is_some_and(|k| check(&k))
    };
    // A link signed for an address migration 8 merged into this subscriber speaks for the
    // same mailbox.
    let verified = verified(&c.subscriber.email)
        || crate::store::rekey::merged_emails(&db, c.subscriber.id)?
            .iter()
            .filter_map(|e| SubscriberEmail::parse(e).ok())
            .any(|e| verified(&e));
    if !verified {
        return Ok(TokenCheck::Invalid);
    }
    if c.expires_at <= Utc::now() {
        return Ok(TokenCheck::Expired);
    }
    Ok(TokenCheck::Valid(c))
}

fn invalid_confirmation() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This confirmation link is not valid",
        "<p>The link may have been altered or cut short. Please use the link from the \
         confirmation message itself, or sign up again.</p>\
         <p><a href=\"/subscribe\">Sign up</a></p>",
    )
}

fn expired_confirmation() -> Response {
    page(
        StatusCode::GONE,
        "This confirmation link has expired",
        "<p>Confirmation links work for a limited time. Please sign up again to get a new \
         one.</p><p><a href=\"/subscribe\">Sign up</a></p>",
    )
}

fn spent_confirmation() -> Response {
    page(
        StatusCode::GONE,
        "This confirmation link has been used",
        "<p>A confirmation link works once, and not after its address has unsubscribed. \
         To receive the newsletter again, please sign up again.</p>\
         <p><a href=\"/subscribe\">Sign up</a></p>",
    )
}

fn subscribed(state: &WebState, email: &SubscriberEmail) -> Response {
    page(
        StatusCode::OK,
        "You are subscribed",
        &format!(
            "<p>{} will receive the next issue of {}. Every issue has a link to unsubscribe \
             with one click.</p>",
            escape(email.as_str()),
            escape(&state.newsletter_name)
        ),
    )
}

async fn confirm_page(State(state): State<Arc<WebState>>, Query(q): Query<TokenQuery>) -> Response {
    if service(&state).is_none() {
        return not_found();
    }
    let Some(token) = q.token else {
        return invalid_confirmation();
    };
    let checked = tokio::task::block_in_place(|| check_token(&state, &token));
    match checked {
        Ok(TokenCheck::Valid(c)) => match c.subscriber.status {
            SubscriberStatus::Active => subscribed(&state, &c.subscriber.email),
            SubscriberStatus::Bounced => invalid_confirmation(),
            SubscriberStatus::Pending | SubscriberStatus::Unsubscribed if c.used || c.revoked => {
                spent_confirmation()
            }
            SubscriberStatus::Pending | SubscriberStatus::Unsubscribed => page(
                StatusCode::OK,
                &format!(
                    "Confirm your subscription to {}",
                    escape(&state.newsletter_name)
                ),
                &format!(
                    "<p>Press the button to start receiving {} at {}.</p>\
                     <form method=\"post\" action=\"/confirm?token={}\">\
                     <button type=\"submit\">Confirm my subscription</button></form>",
                    escape(&state.newsletter_name),
                    escape(c.subscriber.email.as_str()),
                    escape(&token)
                ),
            ),
        },
        Ok(TokenCheck::Expired) => expired_confirmation(),
        Ok(TokenCheck::Invalid) => invalid_confirmation(),
        Err(e) => server_error(e),
    }
}

async fn confirm(State(state): State<Arc<WebState>>, Query(q): Query<TokenQuery>) -> Response {
    if service(&state).is_none() {
        return not_found();
    }
    let Some(token) = q.token else {
        return invalid_confirmation();
    };
    let result = tokio::task::block_in_place(|| -> anyhow::Result<Option<ConfirmOutcome>> {
        let id = match check_token(&state, &token)? {
            TokenCheck::Valid(c) => c.id,
            TokenCheck::Expired => return Ok(None),
            TokenCheck::Invalid => return Err(InvalidToken.into()),
        };
        let db = state
            .db
            .lock()
            .map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
        Ok(store_signup::confirm(&db, id)?)
    });
    match result {
        Ok(Some(ConfirmOutcome::Activated(s))) => {
            info!(subscriber = %s.id, "subscriber confirmed");
            subscribed(&state, &s.email)
        }
        Ok(Some(ConfirmOutcome::AlreadyActive(s))) => subscribed(&state, &s.email),
        Ok(Some(ConfirmOutcome::NotAllowed(_))) => invalid_confirmation(),
        Ok(Some(ConfirmOutcome::Spent(s))) => {
            info!(subscriber = %s.id, "a used or withdrawn confirmation link again; nothing changed");
            spent_confirmation()
        }
        // Gone between the check and the update: expired and swept.
        Ok(None) => expired_confirmation(),
        Err(e) if e.is::<InvalidToken>() => invalid_confirmation(),
        Err(e) => server_error(e),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid confirmation token")]
struct InvalidToken;
