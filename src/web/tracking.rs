//! Votes, click redirects, the open pixel and the operator's report.
//!
//! - `GET /c/<click token>` redirects (302) to the page the token names, without touching
//!   the database; the click is handed to the tracking writer. An altered token is a 400.
//! - `GET /vote/<slug>/<tool>/<choice>?r=<reader token>` shows the choice and a button;
//!   only the `POST` of that form records the vote, so a scanner's GET changes nothing.
//! - `GET /o/<token>` is the optional open pixel; `GET /report/` the report, with the
//!   operator's token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde::Deserialize;

use super::{escape, page, WebState};
use crate::config::signup::ProxyHeader;
use crate::config::Config;
use crate::store::tracking::{Choice, NewClick, NewVote, VoteOutcome};
use crate::tracking::config::{ClickMode, TrackingConfig};
use crate::tracking::links::{slug_of, DECOY_POSITION, OPEN_TARGET};
use crate::tracking::recorder::Recorder;
use crate::tracking::token::{verify_click, verify_reader};

/// What the tracking routes need besides the shared state.
pub struct TrackingService {
    config: TrackingConfig,
    base_url: String,
    recorder: Recorder,
    /// Title and tool names by comparison, for the vote page: read from the content folder
    /// at start and again when a link names one not seen yet (at most every few seconds).
    tools: Mutex<(Comparisons, Instant)>,
    content_dir: std::path::PathBuf,
    trusted_proxies: Vec<ipnet::IpNet>,
    proxy_header: ProxyHeader,
    /// The whole config, for rendering the report on request.
    full: Config,
}

impl TrackingService {
    /// Starts the tracking writer on the configured database.
    pub fn new(config: &Config) -> anyhow::Result<TrackingService> {
        let tools = load_tools(&config.content_dir);
        Ok(TrackingService {
            config: config.tracking.clone(),
            base_url: config.newsletter.base_url.clone(),
            recorder: Recorder::start(config.database_path(), config.tracking.machine_delay)?,
            tools: Mutex::new((tools, Instant::now())),
            content_dir: config.content_dir.clone(),
            trusted_proxies: config.signup.trusted_proxies.clone(),
            proxy_header: config.signup.proxy_header,
            full: config.clone(),
        })
    }

    /// The title and tool names of a comparison, rereading the content folder for one
    /// published since (an invalid folder keeps what was known).
    fn comparison(&self, slug: &str) -> Option<(String, [String; 2])> {
        let mut tools = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = tools.0.get(slug) {
            return Some(found.clone());
        }
        if tools.1.elapsed() >= RELOAD_EVERY {
            let fresh = load_tools(&self.content_dir);
            if !fresh.is_empty() {
                tools.0 = fresh;
            }
            tools.1 = Instant::now();
        }
        tools.0.get(slug).cloned()
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let name = match self.proxy_header {
            ProxyHeader::XForwardedFor => "x-forwarded-for",
            ProxyHeader::Forwarded => "forwarded",
        };
        crate::signup::client_ip(
            peer,
            self.proxy_header,
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("garbled")),
            &self.trusted_proxies,
        )
    }
}

/// The shortest time between two reads of the content folder for an unknown comparison.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Title and the two tool names, by comparison slug.
type Comparisons = HashMap<String, (String, [String; 2])>;

fn load_tools(dir: &std::path::Path) -> Comparisons {
    crate::content::load_dir(dir)
        .map(|cs| {
            cs.into_iter()
                .map(|c| {
                    let [a, b] = c.tools;
                    (c.slug, (c.title, [a.name, b.name]))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/c/{token}", get(click))
        .route("/o/{token}", get(open))
        .route("/vote/{slug}/{tool}/{choice}", get(vote_page).post(vote))
        .route("/{slug}/", get(comparison_page))
        .route("/report/", get(report))
        .route("/report", get(report))
}

fn service(state: &WebState) -> Option<&TrackingService> {
    state.tracking.as_ref()
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "<p>There is no page at this address.</p>",
    )
}

fn bad_link(what: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        &format!("This {what} link is not valid"),
        "<p>The link may have been altered or cut short. Please use the link in the \
         newsletter itself.</p>",
    )
}

fn peer(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[derive(Deserialize)]
struct ReaderQuery {
    r: Option<String>,
}

/// `GET`/`HEAD /c/<token>`: the redirect, then the click handed to the writer.
async fn click(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
    Query(q): Query<ReaderQuery>,
    req: Request,
) -> Response {
    let Some(svc) = service(&state) else {
        return not_found();
    };
    let Some(link) = verify_click(&state.key, &token) else {
        return bad_link("tracked");
    };
    if link.target == OPEN_TARGET {
        return bad_link("tracked");
    }
    let mut location = format!("{}{}", svc.base_url, link.target);
    // A reader's own token rides along to a comparison page, where it shows the vote.
    if let Some(r) = q.r.as_deref() {
        if slug_of(&link.target).is_some()
            && verify_reader(&state.key, r).is_some_and(|r| r.issue == link.issue)
        {
            location.push_str("?r=");
            location.push_str(r);
        }
    }
    if svc.config.clicks != ClickMode::Off {
        let headers = req.headers();
        let client = svc.client(peer(&req), headers);
        let mut machine =
            crate::tracking::machine::judge(&svc.config, req.method(), headers, client);
        if link.position == DECOY_POSITION {
            machine = Some("decoy");
        }
        let subscriber = match svc.config.clicks {
            ClickMode::PerReader => {
                q.r.as_deref()
                    .and_then(|r| verify_reader(&state.key, r))
                    .filter(|r| r.issue == link.issue && r.subscriber.get() > 0)
                    .map(|r| r.subscriber)
            }
            _ => None,
        };
        svc.recorder.click(NewClick {
            issue: link.issue,
            position: link.position,
            slug: slug_of(&link.target).map(str::to_owned),
            target: link.target,
            visitor: crate::tracking::machine::visitor(&state.key, client, headers),
            subscriber,
            at: Utc::now(),
            machine,
        });
    }
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
        ],
    )
        .into_response()
}

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// `GET /o/<token>`: the open pixel (`tracking.opens: on`); always counted as a likely
/// machine open.
async fn open(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
    req: Request,
) -> Response {
    let Some(svc) = service(&state) else {
        return not_found();
    };
    let Some(link) = verify_click(&state.key, &token).filter(|l| l.target == OPEN_TARGET) else {
        return bad_link("image");
    };
    if svc.config.opens {
        let client = svc.client(peer(&req), req.headers());
        svc.recorder.click(NewClick {
            issue: link.issue,
            position: link.position,
            target: link.target,
            slug: None,
            visitor: crate::tracking::machine::visitor(&state.key, client, req.headers()),
            subscriber: None,
            at: Utc::now(),
            machine: Some("open"),
        });
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PIXEL,
    )
        .into_response()
}

#[derive(Deserialize)]
struct VotePath {
    slug: String,
    tool: u8,
    choice: String,
}

#[derive(Deserialize)]
struct VoteForm {
    choice: Option<String>,
}

/// The vote a link asks for, checked; or the page that says why not.
fn vote_request(
    state: &WebState,
    svc: &TrackingService,
    p: &VotePath,
    r: Option<&str>,
) -> Result<(crate::tracking::token::Reader, Choice, String, String), Box<Response>> {
    let Some(choice) = Choice::parse(&p.choice) else {
        return Err(Box::new(bad_link("vote")));
    };
    if p.tool > 1 {
        return Err(Box::new(bad_link("vote")));
    }
    let Some(reader) = r.and_then(|r| verify_reader(&state.key, r)) else {
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            "This vote link is not valid",
            "<p>Votes come from the links in each subscriber's own copy of the newsletter. \
             This one is missing its reader's part, or was altered or cut short, so \
             nothing was recorded.</p>",
        )));
    };
    let Some((title, tools)) = svc.comparison(&p.slug) else {
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            "Unknown comparison",
            &format!(
                "<p>There is no comparison called <code>{}</code>, so nothing was recorded.</p>",
                escape(&p.slug)
            ),
        )));
    };
    Ok((
        reader,
        choice,
        title.clone(),
        tools[usize::from(p.tool)].clone(),
    ))
}

fn vote_form(p: &VotePath, r: &str, choice: Choice, tool: &str, title: &str, note: &str) -> String {
    let checked = |c: Choice| if c == choice { " checked" } else { "" };
    format!(
        "<p>From <em>{title}</em>.</p>{note}\
         <form method=\"post\" action=\"/vote/{slug}/{t}/{c}?r={r}\">\
         <fieldset><legend>Would you ship {tool}?</legend>\
         <p><label><input type=\"radio\" name=\"choice\" value=\"ship\"{ship}> Ship</label></p>\
         <p><label><input type=\"radio\" name=\"choice\" value=\"skip\"{skip}> Skip</label></p>\
         </fieldset><p><button type=\"submit\">Record my vote</button></p></form>",
        title = escape(title),
        tool = escape(tool),
        slug = escape(&p.slug),
        t = p.tool,
        c = choice.as_str(),
        r = escape(r),
        ship = checked(Choice::Ship),
        skip = checked(Choice::Skip),
    )
}

/// `GET /vote/…`: the choice shown with a button; nothing is recorded.
async fn vote_page(
    State(state): State<Arc<WebState>>,
    Path(p): Path<VotePath>,
    Query(q): Query<ReaderQuery>,
) -> Response {
    let Some(svc) = service(&state) else {
        return not_found();
    };
    let (reader, choice, title, tool) = match vote_request(&state, svc, &p, q.r.as_deref()) {
        Ok(v) => v,
        Err(page) => return *page,
    };
    let current = {
        let db = state.db();
        crate::store::tracking::vote_of(&db, reader.subscriber, &p.slug, p.tool)
            .ok()
            .flatten()
    };
    let note = match current {
        Some(c) => format!(
            "<p>Your vote so far: <strong>{}</strong>. You can change it.</p>",
            c.as_str()
        ),
        None => String::new(),
    };
    page(
        StatusCode::OK,
        &format!("Would you ship {}?", escape(&tool)),
        &vote_form(
            &p,
            q.r.as_deref().unwrap_or(""),
            choice,
            &tool,
            &title,
            &note,
        ),
    )
}

/// `POST /vote/…`: records the vote (one per reader per tool; a new one replaces it).
async fn vote(
    State(state): State<Arc<WebState>>,
    Path(p): Path<VotePath>,
    Query(q): Query<ReaderQuery>,
    Form(f): Form<VoteForm>,
) -> Response {
    let Some(svc) = service(&state) else {
        return not_found();
    };
    let (reader, mut choice, title, tool) = match vote_request(&state, svc, &p, q.r.as_deref()) {
        Ok(v) => v,
        Err(page) => return *page,
    };
    if let Some(c) = f.choice.as_deref() {
        match Choice::parse(c) {
            Some(c) => choice = c,
            None => return bad_link("vote"),
        }
    }
    if reader.subscriber.get() == 0 {
        return page(
            StatusCode::OK,
            "Sample vote",
            "<p><strong>This link is from a preview or a test copy:</strong> it works like \
             a subscriber's, but records no vote.</p>",
        );
    }
    let outcome = svc
        .recorder
        .vote(NewVote {
            subscriber: reader.subscriber,
            issue: reader.issue,
            slug: p.slug.clone(),
            tool: p.tool,
            choice,
            at: Utc::now(),
        })
        .await;
    let (tool, title) = (escape(&tool), escape(&title));
    match outcome {
        Ok(VoteOutcome::Cast | VoteOutcome::Unchanged) => page(
            StatusCode::OK,
            "Thank you for voting",
            &format!(
                "<p>Your vote on {tool} ({title}): <strong>{}</strong>.</p>\
                 <p>Follow the link again to change it.</p>",
                choice.as_str()
            ),
        ),
        Ok(VoteOutcome::Changed) => page(
            StatusCode::OK,
            "Your vote is changed",
            &format!(
                "<p>Your vote on {tool} ({title}) is now <strong>{}</strong>.</p>",
                choice.as_str()
            ),
        ),
        Ok(VoteOutcome::NotInIssue) => page(
            StatusCode::BAD_REQUEST,
            "This vote link is not valid",
            "<p>That comparison was not in the issue this link came from, so nothing was \
             recorded.</p>",
        ),
        Ok(VoteOutcome::NotSubscribed | VoteOutcome::UnknownReader) => page(
            StatusCode::BAD_REQUEST,
            "Votes are for subscribers",
            "<p>This address is no longer subscribed, so the vote was not recorded. Votes \
             cast while subscribed still count.</p>",
        ),
        Err(e) => {
            tracing::error!("vote not recorded: {e}");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Your vote could not be recorded",
                "<p>Something went wrong on our side; please try again in a minute.</p>",
            )
        }
    }
}

#[derive(Deserialize)]
struct ReportQuery {
    token: Option<String>,
}

/// `GET /report/`: the report, only with the operator's token (`tracking.report_token_env`)
/// as a bearer token or `?token=`; without a configured token it does not exist.
async fn report(
    State(state): State<Arc<WebState>>,
    Query(q): Query<ReportQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(svc) = service(&state) else {
        return not_found();
    };
    let Some(expected) = svc.config.report_token() else {
        return not_found();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or(q.token);
    let ok = given.is_some_and(|g| {
        g.len() == expected.len()
            && g.bytes()
                .zip(expected.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    });
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "The report needs the operator's token.\n",
        )
            .into_response();
    }
    let html = {
        let db = state.db();
        crate::tracking::report::render(&svc.full, &db, Utc::now())
    };
    match html {
        Ok(html) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("report failed: {e:#}");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The report failed",
                "<p>See the daemon's log.</p>",
            )
        }
    }
}

/// `GET /<slug>/`: the built site's comparison page; for a reader arriving from their own
/// copy (`?r=<reader token>`), with the vote buttons for both tools. Anonymous visitors
/// get the static page as it is, so the figure cannot be stuffed.
async fn comparison_page(
    State(state): State<Arc<WebState>>,
    Path(slug): Path<String>,
    Query(q): Query<ReaderQuery>,
    req: Request,
) -> Response {
    use tower::ServiceExt;
    let Some(dir) = state.site_dir.clone() else {
        return not_found();
    };
    let with_votes = service(&state).and_then(|svc| {
        let reader = verify_reader(&state.key, q.r.as_deref()?)?;
        let (_, tools) = svc.comparison(&slug)?;
        let page = std::fs::read_to_string(dir.join(&slug).join("index.html")).ok()?;
        Some((reader, tools.clone(), page))
    });
    let Some((reader, tools, page)) = with_votes else {
        return match crate::site::serve::router(&dir).oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
    };
    let r = q.r.unwrap_or_default();
    let current = {
        let db = state.db();
        [0u8, 1].map(|t| {
            crate::store::tracking::vote_of(&db, reader.subscriber, &slug, t)
                .ok()
                .flatten()
        })
    };
    let mut forms = String::from(
        "<section class=\"reader-vote\" aria-labelledby=\"reader-vote\"><h2 id=\"reader-vote\">Your vote</h2>",
    );
    for (i, tool) in tools.iter().enumerate() {
        let now = match current[i] {
            Some(c) => format!(" (your vote: {})", c.as_str()),
            None => String::new(),
        };
        forms.push_str(&format!(
            "<form method=\"post\" action=\"/vote/{slug}/{i}/ship?r={r}\"><p>Would you ship {tool}?{now} \
             <button type=\"submit\" name=\"choice\" value=\"ship\">Ship</button> \
             <button type=\"submit\" name=\"choice\" value=\"skip\">Skip</button></p></form>",
            slug = escape(&slug),
            r = escape(&r),
            tool = escape(tool),
        ));
    }
    forms.push_str("</section>");
    let html = match page.rfind("</main>") {
        Some(at) => format!("{}{forms}{}", &page[..at], &page[at..]),
        None => page,
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}
