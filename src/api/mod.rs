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

fn email_in_path(email: &str) -> Result<SubscriberEmail, ApiError> {
    SubscriberEmail::parse(email).map_err(|e| ApiError::field("email", e.to_string()))
}

async fn list_subscribers(State(state): State<Arc<ApiState>>, uri: Uri) -> ApiResult {
    let q = query(&uri, &["status", "after", "limit"])?;
    let status = match q.get("status") {
        None => None,
        Some(s) => {
            Some(SubscriberStatus::parse(s).map_err(|e| ApiError::field("status", e.to_string()))?)
        }
    };
    let limit = limit(&q)?;
    let after = cursor(&q)?;
    let page = state
        .with_db(move |conn| {
            Ok(subscribers::page_after(
                conn,
                status,
                Some(crate::store::SubscriberId(after)),
                limit,
            )?)
        })
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|s| s.id.0.to_string()))
        .flatten();
    ok(
        StatusCode::OK,
        json!({"data": page.iter().map(subscriber_json).collect::<Vec<_>>(), "next": next}),
    )
}

async fn get_subscriber(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let found = state
        .with_db(move |conn| Ok(subscribers::find(conn, &email)?))
        .await?;
    match found {
        Some(s) => ok(StatusCode::OK, subscriber_json(&s)),
        None => Err(ApiError::not_found("no subscriber has this address")),
    }
}

/// The JSON object of a request body, with only the `allowed` fields.
fn object(body: &Bytes, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::field("body", format!("is not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::field("body", "must be a JSON object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::field(
            k,
            format!("is not a field here; the fields are {}", allowed.join(", ")),
        ));
    }
    Ok(map)
}

fn name_field(map: &Map<String, Value>) -> Result<Option<Option<SubscriberName>>, ApiError> {
    match map.get("name") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => SubscriberName::parse(s)
            .map(Some)
            .map_err(|e| ApiError::field("name", e.to_string())),
        Some(_) => Err(ApiError::field("name", "must be a string or null")),
    }
}

async fn create_subscriber(State(state): State<Arc<ApiState>>, body: Bytes) -> ApiResult {
    let map = object(&body, &["email", "name", "double_opt_in"])?;
    let email = match map.get("email") {
        Some(Value::String(s)) => {
            SubscriberEmail::parse(s).map_err(|e| ApiError::field("email", e.to_string()))?
        }
        Some(_) => return Err(ApiError::field("email", "must be a string")),
        None => return Err(ApiError::field("email", "is required")),
    };
    let name = name_field(&map)?.flatten();
    let double_opt_in = match map.get("double_opt_in") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::field("double_opt_in", "must be true or false")),
    };
    let signup = state.signup.clone();
    let (status, subscriber) = state
        .with_db(move |conn| {
            // A reader who asked to be forgotten is not brought back by another system.
            if let Some(erased) = crate::store::privacy::is_erased(conn, &email)? {
                return Err(ApiError {
                    status: StatusCode::CONFLICT,
                    code: "erased",
                    message: crate::store::privacy::refusal(email.as_str(), &erased),
                    field: Some("email".into()),
                });
            }
            if !double_opt_in {
                return match subscribers::add(conn, &email, name.as_ref(), SubscriberSource::Api)? {
                    AddOutcome::Added(s) => Ok((StatusCode::CREATED, s)),
                    AddOutcome::AlreadyListed(s) => Err(conflict(&s)),
                };
            }
            let outcome = store_signup::request_signup(
                conn,
                &SignupRequest {
                    email: &email,
                    name: name.as_ref(),
                    source: SubscriberSource::Api,
                    ip: None,
                    expire_after: signup.expire_after,
                    resend_after: signup.expire_after.min(Duration::from_secs(3600)),
                },
            )?;
            let found = subscribers::find(conn, &email)?
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("signup left no row")))?;
            match outcome {
                SignupOutcome::Queued { .. } | SignupOutcome::RecentlyMailed => {
                    Ok((StatusCode::ACCEPTED, found))
                }
                SignupOutcome::AlreadyActive | SignupOutcome::Refused => Err(conflict(&found)),
            }
        })
        .await?;
    state.confirmations.notify_one();
    state.announcements.notify_one();
    ok(status, subscriber_json(&subscriber))
}

fn conflict(s: &Subscriber) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "already_listed",
        message: format!(
            "this address is already on the list with status {}; nothing was changed",
            s.status
        ),
        field: Some("email".into()),
    }
}

async fn update_subscriber(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
    body: Bytes,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let map = object(&body, &["name"])?;
    let Some(name) = name_field(&map)? else {
        return Err(ApiError::field(
            "name",
            "is required (a string, or null to clear it)",
        ));
    };
    let updated = state
        .with_db(move |conn| Ok(subscribers::rename(conn, &email, name.as_ref())?))
        .await?;
    match updated {
        Some(s) => ok(StatusCode::OK, subscriber_json(&s)),
        None => Err(ApiError::not_found("no subscriber has this address")),
    }
}

async fn unsubscribe(State(state): State<Arc<ApiState>>, Path(email): Path<String>) -> ApiResult {
    let email = email_in_path(&email)?;
    let changed = state
        .with_db(move |conn| {
            crate::store::in_write_transaction(conn, |conn| {
                let Some(s) = subscribers::find(conn, &email)? else {
                    return Err(ApiError::not_found("no subscriber has this address"));
                };
                if !matches!(
                    s.status,
                    SubscriberStatus::Active | SubscriberStatus::Pending
                ) {
                    return Ok(s);
                }
                if s.status == SubscriberStatus::Pending {
                    subscribers::set_status_by_id(conn, s.id, SubscriberStatus::Unsubscribed)?;
                }
                // The event (and, for an active reader, the status change) through the
                // one recording path: the announcement comes with it.
                events::record(
                    conn,
                    &NewEvent {
                        subscriber_id: s.id,
                        issue: events::latest_sent_issue(conn, s.id)?,
                        kind: EventKind::Unsubscribe(Channel::Api),
                        source: Source::Api,
                        status: None,
                        diagnostic: None,
                    },
                    Hygiene::default(),
                )?;
                subscribers::get(conn, s.id)?
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("row vanished")))
            })
        })
        .await?;
    state.announcements.notify_one();
    ok(StatusCode::OK, subscriber_json(&changed))
}

async fn resubscribe(State(state): State<Arc<ApiState>>, Path(email): Path<String>) -> ApiResult {
    let email = email_in_path(&email)?;
    let changed = state
        .with_db(move |conn| {
            crate::store::in_write_transaction(conn, |conn| {
                let Some(s) = subscribers::find(conn, &email)? else {
                    return Err(ApiError::not_found("no subscriber has this address"));
                };
                if s.status == SubscriberStatus::Pending {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "pending",
                        "this address has not confirmed its signup yet; only its confirmation link makes it active",
                    ));
                }
                match subscribers::set_status_by_id(conn, s.id, SubscriberStatus::Active)? {
                    StatusChange::Changed { subscriber, .. }
                    | StatusChange::Unchanged(subscriber) => Ok(subscriber),
                    StatusChange::NotFound => {
                        Err(ApiError::not_found("no subscriber has this address"))
                    }
                }
            })
        })
        .await?;
    state.announcements.notify_one();
    ok(StatusCode::OK, subscriber_json(&changed))
}

/// Erasing a reader belongs to the data-rights work (`store::privacy::erase`), which this
/// build does not have yet: the route answers 501 and changes nothing.
async fn erase_subscriber(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let erased = state
        .with_db(move |conn| {
            crate::store::privacy::erase(
                conn,
                email.as_str(),
                crate::store::privacy::Reason::Request,
            )
            .map_err(|e| match e {
                crate::store::privacy::EraseError::BadAddress { .. } => {
                    ApiError::field("email", e.to_string())
                }
                crate::store::privacy::EraseError::Store(e) => e.into(),
            })
        })
        .await?;
    match erased.subscriber {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::not_found("no subscriber has this address")),
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
