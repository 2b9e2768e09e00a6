//! Serving a built site from the web endpoint: files from the output folder with their
//! content types, `/slug` redirected to `/slug/`, the site's 404 page with status 404, and
//! caching headers (the stylesheet's name carries its hash, so it is cached for good).
//!
//! Every redirect stays on the site: a path that starts with `//` (`//evil.example/`) would
//! come back as a `Location` a browser reads as another host, so such a path is first
//! redirected to its single-slash form (`/evil.example/`, then the site's 404), and no
//! answer leaves with a `Location` that starts with `//` or `/\`.

use std::path::Path;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_status::SetStatus;

/// Pages may change at the next build: caches check back after five minutes.
const PAGE_CACHE: &str = "public, max-age=300";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A router that answers every request it gets from the site in `out_dir`. The folder is
/// looked up on each request, so a rebuild (which swaps the folder) is served at once.
pub fn router(out_dir: &Path) -> Router {
    let not_found = SetStatus::new(
        ServeFile::new(out_dir.join("404.html")),
        StatusCode::NOT_FOUND,
    );
    let files = ServeDir::new(out_dir)
        .append_index_html_on_directories(true)
        .not_found_service(not_found);
    Router::new()
        .fallback_service(files)
        .layer(middleware::from_fn(headers))
        .layer(middleware::from_fn(on_site))
}

/// True for a `Location` a browser would take to another host (`//host`, `/\host`).
fn off_site(location: &str) -> bool {
    let mut chars = location.chars();
    chars.next() == Some('/') && matches!(chars.next(), Some('/' | '\\'))
}

/// The same path with its leading slashes (and backslashes) folded into one.
fn on_site_form(location: &str) -> String {
    format!("/{}", location.trim_start_matches(['/', '\\']))
}

/// Keeps requests and redirects on the site (see the module comment).
async fn on_site(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if off_site(path) {
        let mut to = on_site_form(path);
        if let Some(q) = req.uri().query() {
            to.push('?');
            to.push_str(q);
        }
        return axum::response::IntoResponse::into_response(axum::response::Redirect::permanent(
            &to,
        ));
    }
    let mut res = next.run(req).await;
    let rewritten = res
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .filter(|l| off_site(l))
        .map(on_site_form);
    if let Some(to) = rewritten {
        match HeaderValue::from_str(&to) {
            Ok(v) => {
                res.headers_mut().insert(header::LOCATION, v);
            }
            Err(_) => {
                res.headers_mut().remove(header::LOCATION);
            }
        }
    }
    res
}

async fn headers(req: Request, next: Next) -> Response {
    let name = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut res = next.run(req).await;
    let status = res.status();
    let cache = if status.is_success() || status == StatusCode::NOT_MODIFIED {
        if name.starts_with("style-") && name.ends_with(".css") {
            IMMUTABLE
        } else {
            PAGE_CACHE
        }
    } else {
        "no-cache"
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if status.is_success() && name.ends_with("feed.xml") {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/atom+xml; charset=utf-8"),
        );
    } else if status.is_success() && name == "sitemap.xml" {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        );
    }
    res
}
