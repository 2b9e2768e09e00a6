//! Serving a built site from the web endpoint: files from the output folder with their
//! content types, `/slug` redirected to `/slug/`, the site's 404 page with status 404, and
//! caching headers (the stylesheet's name carries its hash, so it is cached for good).

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
