//! The JSON API under `/api/v1/`, served by the web process beside the reader-facing pages.
//! Every route but the OpenAPI document needs `Authorization: Bearer <key>` with the
//! route's scope ([`keys`]); [`ROUTES`]-building [`table`] is the one list of routes, used
//! both to build the router and (by the tests) to check `docs/openapi.json` against it.
//! Bad input is a 400 whose JSON names the field; nothing is changed by a refused request.

pub mod keys;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tracing::warn;

use crate::config::signup::{ProxyHeader, SignupConfig};
use crate::mail::address::{SubscriberEmail, SubscriberName};
use crate::store::events::{self, Channel, EventKind, Hygiene, NewEvent, Source};
use crate::store::signup::{self as store_signup, SignupOutcome, SignupRequest};
use crate::store::subscribers::{
    self, AddOutcome, StatusChange, Subscriber, SubscriberSource, SubscriberStatus,
};
use crate::store::{api as store_api, ledger, IssueNumber};
pub use keys::Scope;

mod subscriber_routes;
use subscriber_routes::*;

/// The OpenAPI 3.1 document, kept in the repository and served as it is.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Failed key checks allowed per client address and minute; more are answered 429 (even
/// with a right key) until the minute is over.
const FAILURES_PER_MINUTE: u32 = 20;
/// The longest page of the subscriber list and the event feed.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// What the API's handlers share.
pub struct ApiState {
    db: Mutex<Connection>,
    signup: SignupConfig,
    /// Rung when a confirmation mail is queued, and when an announcement is.
    confirmations: Arc<Notify>,
    announcements: Arc<Notify>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl ApiState {
    pub fn new(
        db: Connection,
        signup: SignupConfig,
        confirmations: Arc<Notify>,
        announcements: Arc<Notify>,
    ) -> Self {
        ApiState {
            db: Mutex::new(db),
            signup,
            confirmations,
            announcements,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the API's connection off the async threads.
    async fn with_db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = state
                .db
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("API task failed: {e}")))?
    }

    fn limited(&self, ip: IpAddr) -> bool {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.get(&ip).is_some_and(|(since, n)| {
            since.elapsed() < Duration::from_secs(60) && *n >= FAILURES_PER_MINUTE
        })
    }

    fn note_failure(&self, ip: IpAddr) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() > 100_000 {
            failures.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
        }
        let entry = failures.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// A refused or failed request, as JSON: `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_owned()),
        }
    }

    fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    fn internal(e: impl Into<anyhow::Error>) -> Self {
        warn!(error = %format!("{:#}", e.into()), "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed on the server; nothing was changed",
        )
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<subscribers::StoreError> for ApiError {
    fn from(e: subscribers::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"verdicts\""),
            );
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

/// One route of the API: what [`table`] builds the router from and the OpenAPI test reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// In OpenAPI's (and axum's) template syntax: `/api/v1/subscribers/{email}`.
    pub path: &'static str,
    /// `None` for the one public route, the OpenAPI document.
    pub scope: Option<Scope>,
}

/// Every route with its handler.
fn table() -> Vec<(Route, MethodRouter<Arc<ApiState>>)> {
    let r = |method, path, scope| Route {
        method,
        path,
        scope,
    };
    use Scope::*;
    vec![
        (r("GET", "/api/v1/openapi.json", None), get(openapi)),
        (
            r("GET", "/api/v1/subscribers", Some(SubscribersRead)),
            get(list_subscribers),
        ),
        (
            r("POST", "/api/v1/subscribers", Some(SubscribersWrite)),
            post(create_subscriber),
        ),
        (
            r("GET", "/api/v1/subscribers/{email}", Some(SubscribersRead)),
            get(get_subscriber),
        ),
        (
            r(
                "PATCH",
                "/api/v1/subscribers/{email}",
                Some(SubscribersWrite),
            ),
            patch(update_subscriber),
        ),
        (
            r(
                "DELETE",
                "/api/v1/subscribers/{email}",
                Some(SubscribersWrite),
            ),
            delete(erase_subscriber),
        ),
        (
            r(
                "POST",
                "/api/v1/subscribers/{email}/unsubscribe",
                Some(SubscribersWrite),
            ),
            post(unsubscribe),
        ),
        (
            r(
                "POST",
                "/api/v1/subscribers/{email}/resubscribe",
                Some(SubscribersWrite),
            ),
            post(resubscribe),
        ),
        (
            r("GET", "/api/v1/issues", Some(IssuesRead)),
            get(list_issues),
        ),
        (
            r("GET", "/api/v1/issues/{number}", Some(IssuesRead)),
            get(get_issue),
        ),
        (
            r("GET", "/api/v1/events", Some(EventsRead)),
            get(list_events),
        ),
    ]
}

/// The routes the router serves, for the check against the OpenAPI document.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The API's router: each route behind the key check for its scope.
pub fn router(state: Arc<ApiState>) -> Router {
    let mut router = Router::new();
    for (route, handler) in table() {
        let handler = match route.scope {
            Some(scope) => {
                handler.route_layer(from_fn_with_state((state.clone(), scope), authorize))
            }
            None => handler,
        };
        router = router.route(route.path, handler);
    }
    router.with_state(state)
}

/// Which key made a request (set by [`authorize`]).
#[derive(Debug, Clone)]
pub struct KeyName(pub String);

async fn authorize(
    State((state, scope)): State<(Arc<ApiState>, Scope)>,
    mut req: Request,
    next: Next,
) -> Response {
    let client = client_ip(&state.signup, &req);
    if state.limited(client) {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests with a wrong key from this address; try again in a minute",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return response;
    }
    let presented = bearer(req.headers()).map(str::to_owned);
    let Some(presented) = presented else {
        state.note_failure(client);
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the API key as `Authorization: Bearer <key>` (`verdicts keys create` makes one)",
        )
        .into_response();
    };
    let checked = state
        .with_db(move |conn| {
            let Some(prefix) = keys::claimed_prefix(&presented) else {
                return Ok(None);
            };
            let Some(stored) = store_api::key_by_prefix(conn, prefix)? else {
                return Ok(None);
            };
            if stored.revoked_at.is_some() || !keys::matches(&presented, &stored.hash) {
                return Ok(None);
            }
            let now = Utc::now();
            if stored
                .last_used_at
                .is_none_or(|t| now - t > chrono::Duration::minutes(1))
            {
                store_api::touch_key(conn, stored.id, now)?;
            }
            Ok(Some(stored))
        })
        .await;
    let stored = match checked {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            state.note_failure(client);
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is wrong or revoked",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    if !stored.scopes.iter().any(|s| s == scope.as_str()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the key `{}` lacks the scope {} that this route needs",
                stored.name,
                scope.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(KeyName(stored.name));
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

fn client_ip(signup: &SignupConfig, req: &Request) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let header = match signup.proxy_header {
        ProxyHeader::XForwardedFor => "x-forwarded-for",
        ProxyHeader::Forwarded => "forwarded",
    };
    let ip = crate::signup::client_ip(
        peer,
        signup.proxy_header,
        req.headers()
            .get_all(header)
            .iter()
            .map(|v| v.to_str().unwrap_or("garbled")),
        &signup.trusted_proxies,
    );
    crate::signup::limit_key(ip, signup.ipv6_prefix)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn time(t: DateTime<Utc>) -> String {
    crate::store::timestamp(t)
}

fn subscriber_json(s: &Subscriber) -> Value {
    json!({
        "id": s.id.0,
        "email": s.email.as_str(),
        "name": s.name.as_ref().map(SubscriberName::as_str),
        "status": s.status.as_str(),
        "source": s.source.as_str(),
        "created_at": time(s.created_at),
        "updated_at": time(s.updated_at),
        "signed_up_at": time(s.signed_up_at),
        "confirmed_at": s.confirmed_at.map(time),
        "unsubscribed_at": s.unsubscribed_at.map(time),
    })
}

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// The query string as pairs, each name one of `allowed`.
fn query(uri: &Uri, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("cannot be read: {e}")))?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::field(
                &k,
                format!(
                    "is not a parameter here; the parameters are {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::field(&k, "is given twice"));
        }
    }
    Ok(out)
}

fn limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::field(
                "limit",
                format!("`{v}` is not a whole number from 1 to {MAX_LIMIT}"),
            )),
        },
    }
}

fn cursor(q: &HashMap<String, String>) -> Result<i64, ApiError> {
    match q.get("after") {
        None => Ok(0),
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::field(
                "after",
                format!("`{v}` is not a cursor (the `next` value of a previous page)"),
            )
        }),
    }
}

fn issue_json(issue: &ledger::Issue) -> Value {
    json!({
        "number": issue.number.0,
        "slot": time(issue.slot),
        "subject": issue.subject,
        "state": issue.state.as_str(),
        "comparisons": issue.slugs,
        "created_at": time(issue.created_at),
        "completed_at": issue.completed_at.map(time),
    })
}

async fn list_issues(State(state): State<Arc<ApiState>>, uri: Uri) -> ApiResult {
    query(&uri, &[])?;
    let issues = state.with_db(|conn| Ok(ledger::issues(conn)?)).await?;
    ok(
        StatusCode::OK,
        json!({"data": issues.iter().map(issue_json).collect::<Vec<_>>()}),
    )
}

async fn get_issue(State(state): State<Arc<ApiState>>, Path(number): Path<String>) -> ApiResult {
    let number = number
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(IssueNumber)
        .ok_or_else(|| ApiError::field("number", format!("`{number}` is not an issue number")))?;
    let found = state
        .with_db(move |conn| {
            let Some(issue) = ledger::issue(conn, number)? else {
                return Ok(None);
            };
            let counts = ledger::delivery_counts(conn, number)?;
            let ev = events::issue_events(conn, number)?;
            Ok(Some((issue, counts, ev)))
        })
        .await?;
    let Some((issue, counts, ev)) = found else {
        return Err(ApiError::not_found(format!("there is no issue {number}")));
    };
    let mut body = issue_json(&issue);
    body["figures"] = json!({
        "recipients": counts.total(),
        "sent": counts.sent,
        "failed": counts.failed,
        "pending": counts.outstanding(),
        "skipped": counts.skipped,
        "hard_bounces": ev.hard_bounces,
        "soft_bounces": ev.soft_bounces,
        "complaints": ev.complaints,
        "unsubscribes": ev.unsubscribes(),
    });
    ok(StatusCode::OK, body)
}

async fn list_events(State(state): State<Arc<ApiState>>, uri: Uri) -> ApiResult {
    let q = query(&uri, &["after", "limit"])?;
    let limit = limit(&q)?;
    let after = cursor(&q)?;
    let page = state
        .with_db(move |conn| Ok(store_api::events_after(conn, after, limit)?))
        .await?;
    let next = page
        .last()
        .map(|e| e.id.to_string())
        .unwrap_or_else(|| after.to_string());
    let data: Vec<Value> = page
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "subscriber_id": e.subscriber_id.0,
                "email": e.email,
                "kind": e.kind,
                "channel": e.channel,
                "source": e.source,
                "issue": e.issue,
                "at": e.at,
            })
        })
        .collect();
    ok(StatusCode::OK, json!({"data": data, "next": next}))
}
