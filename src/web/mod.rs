//! The unsubscribe endpoint: `GET /unsubscribe?token=…` shows a confirmation page,
//! `POST /unsubscribe?token=…` (RFC 8058 one-click, or the page's button) unsubscribes,
//! idempotently. Tokens are HMAC-signed; a forged or altered one is a 400 and changes nothing.
//! `GET /healthz` reports ok and the next slot. The signup routes (`/subscribe`, `/confirm`)
//! are in [`signup`]; [`server`] is the listener and its limits.

pub mod server;

pub mod signup;

pub mod tracking;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use rusqlite::Connection;
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::schedule::SlotSchedule;
use crate::config::WebConfig;
use crate::mail::token::{claimed_subscriber, TokenKey};
use crate::store::events::{self, Channel};
use crate::store::subscribers::{self, StatusChange, Subscriber, SubscriberStatus};

/// What the handlers share.
pub struct WebState {
    db: Mutex<Connection>,
    key: TokenKey,
    newsletter_name: String,
    schedule: SlotSchedule,
    signup: Option<signup::SignupService>,
    /// The built site to serve beside the endpoints (`site.out_dir`).
    site_dir: Option<std::path::PathBuf>,
    /// The relays' event webhooks (`provider_webhooks:`), when any is configured.
    provider_webhooks: Option<Arc<crate::webhooks::providers::Receiver>>,
    /// The JSON API under `/api/v1/`.
    api: Option<Arc<crate::api::ApiState>>,
    /// Votes, click redirects and the report (`web::tracking`).
    tracking: Option<tracking::TrackingService>,
}

impl WebState {
    pub fn new(
        db: Connection,
        key: TokenKey,
        newsletter_name: String,
        schedule: SlotSchedule,
    ) -> Self {
        WebState {
            db: Mutex::new(db),
            key,
            newsletter_name,
            schedule,
            signup: None,
            site_dir: None,
            provider_webhooks: None,
            api: None,
            tracking: None,
        }
    }

    /// Opens the signup routes (`/subscribe`, `/confirm`).
    pub fn with_signup(mut self, service: signup::SignupService) -> Self {
        self.signup = Some(service);
        self
    }

    /// Opens the relays' webhook routes (`/webhooks/<provider>`).
    pub fn with_provider_webhooks(
        mut self,
        receiver: Option<Arc<crate::webhooks::providers::Receiver>>,
    ) -> Self {
        self.provider_webhooks = receiver;
        self
    }

    /// Also serves the JSON API (`/api/v1/`).
    pub fn with_api(mut self, api: crate::api::ApiState) -> Self {
        self.api = Some(Arc::new(api));
        self
    }

    /// Opens the vote, click and report routes.
    pub fn with_tracking(mut self, service: tracking::TrackingService) -> Self {
        self.tracking = Some(service);
        self
    }

    /// Also serves the site built in `dir` (every path the endpoints do not answer).
    pub fn with_site(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.site_dir = dir;
        self
    }
}

impl WebState {
    /// The shared connection. A handler that panicked while holding it left no transaction
    /// open (SQLite rolls back an unfinished one), so the connection is still good: take it
    /// back rather than fail every later request.
    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
    /// `page` when the confirmation page's button posted, absent for a one-click POST.
    via: Option<String>,
}

pub fn router(state: Arc<WebState>) -> Router {
    let site = state.site_dir.clone();
    let hooks = state.provider_webhooks.clone();
    let api = state.api.clone();
    let mut endpoints = Router::new()
        .route("/unsubscribe", get(confirm_page).post(unsubscribe))
        .route("/healthz", get(healthz))
        .merge(signup::routes())
        .merge(tracking::routes())
        .with_state(state);
    if let Some(receiver) = hooks {
        endpoints = endpoints.merge(crate::webhooks::providers::routes(receiver));
    }
    if let Some(api) = api {
        endpoints = endpoints.merge(crate::api::router(api));
    }
    match site {
        // Every other path is a page of the built site (or its 404).
        Some(dir) => endpoints.fallback_service(crate::site::serve::router(&dir)),
        None => endpoints,
    }
}

/// Serves the router on `addr`, within the limits of `web`, until `stop` resolves.
pub async fn serve(
    addr: SocketAddr,
    web: &WebConfig,
    state: Arc<WebState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    server::serve(addr, web, router(state), stop).await
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1d2330}}\
         button{{font-size:1rem;padding:.6rem 1.2rem;border-radius:6px;border:1px solid #3c46a8;background:#3c46a8;color:#fff;cursor:pointer}}\
         @media (prefers-color-scheme: dark){{body{{background:#15171c;color:#e6e8ee}}}}</style>\
         </head><body><main><h1>{title}</h1>{body}</main></body></html>\n"
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This unsubscribe link is not valid",
        "<p>The link may have been altered or cut short. Please use the unsubscribe link \
         from the newsletter itself, or reply to any issue and we will remove you.</p>",
    )
}

/// The subscriber a token proves, or `None` for a forged, altered or stale token.
fn verified_subscriber(state: &WebState, token: &str) -> anyhow::Result<Option<Subscriber>> {
    let Some(id) = claimed_subscriber(token) else {
        return Ok(None);
    };
    let db = state.db();
    let Some(sub) = subscribers::get(&db, id)? else {
        return merged_subscriber(state, &db, token, id);
    };
    Ok(state.key.verify_for(token, id, &sub.email).then_some(sub))
}

/// A link signed for a row that migration 8 merged into another (one mailbox stored
/// twice): it still speaks for the mailbox, so it reaches the row that was kept.
fn merged_subscriber(
    state: &WebState,
    db: &Connection,
    token: &str,
    id: crate::store::SubscriberId,
) -> anyhow::Result<Option<Subscriber>> {
    let Some((kept, old_email)) = crate::store::rekey::merged_into(db, id)? else {
        return Ok(None);
    };
    let Ok(old) = crate::mail::address::SubscriberEmail::parse(&old_email) else {
        return Ok(None);
    };
    if !state.key.verify_for(token, id, &old) {
        return Ok(None);
    }
    Ok(subscribers::get(db, kept)?)
}

/// The sample subscriber's link (previews, test copies): the pages a subscriber would see,
/// saying that nothing changes, and nothing does.
fn sample_page(state: &WebState, token: &str, confirmed: bool) -> Response {
    let name = escape(&state.newsletter_name);
    let note = "<p><strong>This link is from a preview or a test copy:</strong> it works \
                like a subscriber's, but unsubscribes nobody.</p>";
    if confirmed {
        return page(
            StatusCode::OK,
            "You are unsubscribed",
            &format!("<p>A subscriber would receive no more issues of {name}.</p>{note}"),
        );
    }
    page(
        StatusCode::OK,
        &format!("Unsubscribe from {name}?"),
        &format!(
            "{note}<form method=\"post\" action=\"/unsubscribe?token={}\">\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">Unsubscribe</button></form>",
            escape(token)
        ),
    )
}

async fn confirm_page(State(state): State<Arc<WebState>>, Query(q): Query<TokenQuery>) -> Response {
    let Some(token) = q.token else {
        return invalid_link();
    };
    if state.key.is_sample(&token) {
        return sample_page(&state, &token, false);
    }
    let result = tokio::task::spawn_blocking({
        let state = state.clone();
        move || verified_subscriber(&state, &token).map(|s| (s, token))
    })
    .await;
    match result {
        Ok(Ok((Some(sub), token))) => {
            let name = escape(&state.newsletter_name);
            let email = escape(sub.email.as_str());
            if sub.status != SubscriberStatus::Active {
                return page(
                    StatusCode::OK,
                    "You are already unsubscribed",
                    &format!("<p>{email} no longer receives {name}.</p>"),
                );
            }
            page(
                StatusCode::OK,
                &format!("Unsubscribe from {name}?"),
                &format!(
                    "<p>{email} will stop receiving {name}.</p>\
                     <form method=\"post\" action=\"/unsubscribe?token={}&amp;via=page\">\
                     <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
                     <button type=\"submit\">Unsubscribe</button></form>",
                    escape(&token)
                ),
            )
        }
        Ok(Ok((None, _))) => invalid_link(),
        Ok(Err(e)) => server_error(e),
        Err(e) => server_error(e.into()),
    }
}

fn server_error(e: anyhow::Error) -> Response {
    warn!(error = %format!("{e:#}"), "unsubscribe request failed");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "<p>Please try the link again in a minute.</p>",
    )
}

/// RFC 8058 one-click (body `List-Unsubscribe=One-Click`) or the confirmation button.
async fn unsubscribe(State(state): State<Arc<WebState>>, Query(q): Query<TokenQuery>) -> Response {
    let Some(token) = q.token else {
        return invalid_link();
    };
    if state.key.is_sample(&token) {
        info!("sample unsubscribe link used; nothing changed");
        return sample_page(&state, &token, true);
    }
    let channel = match q.via.as_deref() {
        Some("page") => Channel::Page,
        _ => Channel::OneClick,
    };
    let result = tokio::task::spawn_blocking({
        let state = state.clone();
        move || -> anyhow::Result<Option<(Subscriber, bool)>> {
            let Some(sub) = verified_subscriber(&state, &token)? else {
                return Ok(None);
            };
            let db = state.db();
            let changed = crate::store::in_write_transaction(&db, |tx| -> anyhow::Result<bool> {
                // Only an active reader leaves: a bounced one stays bounced (unsubscribed
                // would reopen the dead address to signup mails), and an unsubscribed one
                // who signed up again stays as they are until they confirm.
                let current = subscribers::get(tx, sub.id)?.map(|s| s.status);
                if current != Some(SubscriberStatus::Active) {
                    return Ok(false);
                }
                let changed = matches!(
                    subscribers::set_status_by_id(tx, sub.id, SubscriberStatus::Unsubscribed)?,
                    StatusChange::Changed { .. }
                );
                if changed {
                    events::record_web_unsubscribe(tx, sub.id, channel)?;
                }
                Ok(changed)
            })?;
            Ok(Some((sub, changed)))
        }
    })
    .await;
    match result {
        Ok(Ok(Some((sub, changed)))) => {
            if changed {
                info!(subscriber = %sub.id, "unsubscribed via link");
            }
            page(
                StatusCode::OK,
                "You are unsubscribed",
                &format!(
                    "<p>{} will receive no more issues of {}.</p>",
                    escape(sub.email.as_str()),
                    escape(&state.newsletter_name)
                ),
            )
        }
        Ok(Ok(None)) => invalid_link(),
        Ok(Err(e)) => server_error(e),
        Err(e) => server_error(e.into()),
    }
}

async fn healthz(State(state): State<Arc<WebState>>) -> Response {
    let next = state.schedule.next_after(Utc::now());
    let tz = state.schedule.timezone();
    let body = serde_json::json!({
        "status": "ok",
        "next_slot": next.map(crate::store::timestamp),
        "next_slot_local": next.map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}
