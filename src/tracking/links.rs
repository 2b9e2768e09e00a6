//! The digest's tracked links, put in once per issue. The rendered digest carries plain
//! links to the site and, in each vote link, a placeholder for the reader's token.
//! [`track`] turns the links to the site (comparisons, the site, the archive) into
//! `GET /c/<click token>` links, adds the hidden decoy link and, with `tracking.opens: on`,
//! the pixel. The reader's token is a small per-copy slot filled by `mail::message` like the
//! unsubscribe link, so the shared body stays shared.

use crate::config::Config;
use crate::digest::render::RenderedDigest;
use crate::mail::token::TokenKey;
use crate::store::IssueNumber;
use crate::tracking::config::ClickMode;
use crate::tracking::token::{click_token, Link};

/// Stands in for the reader's token in the rendered digest (letters only, so quoted-printable
/// and HTML leave it as it is).
pub const READER_PLACEHOLDER: &str = "READERTOKENPLACEHOLDER";

/// The position of the decoy link, which no person can see or follow.
pub const DECOY_POSITION: u32 = 0;

/// The target of the open pixel's token.
pub const OPEN_TARGET: &str = "/open";

/// A vote link of the digest: `tool` is 0 or 1, `choice` ship or skip.
pub fn vote_url(base_url: &str, slug: &str, tool: usize, choice: &str) -> String {
    format!("{base_url}/vote/{slug}/{tool}/{choice}?r={READER_PLACEHOLDER}")
}

/// Text for a place no reader's token can reach (the public archive): the vote links keep
/// working as pages that explain they need the reader's own copy.
pub fn strip_reader(text: &str) -> String {
    // The HTML's vote lines go altogether; any other reader place is left empty.
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("<p class=\"vote\"") {
        let Some(end) = rest[at..].find("</p>") else {
            break;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at + end + "</p>".len()..];
    }
    out.push_str(rest);
    out.replace(READER_PLACEHOLDER, "")
}

/// Paths under `base_url` that are never wrapped: they are not reading links.
fn untracked(path: &str) -> bool {
    [
        "/vote/",
        "/unsubscribe",
        "/c/",
        "/o/",
        "/confirm",
        "/subscribe",
        "/report",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

/// Where a link's URL ends in HTML or plain text.
fn url_end(s: &str) -> usize {
    s.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
        .unwrap_or(s.len())
}

/// Rewrites every link to `base_url` in `part`, numbering them from `next`.
fn wrap_links(
    part: &str,
    base_url: &str,
    next: &mut u32,
    mut wrap: impl FnMut(u32, &str, &str) -> String,
) -> String {
    let mut out = String::with_capacity(part.len() + part.len() / 8);
    let mut rest = part;
    while let Some(at) = rest.find(base_url) {
        out.push_str(&rest[..at]);
        let from = &rest[at..];
        let end = url_end(from);
        let url = &from[..end];
        let path = &url[base_url.len()..];
        let path = if path.is_empty() { "/" } else { path };
        if path.starts_with('/') && !path.starts_with("//") && !untracked(path) {
            *next += 1;
            out.push_str(&wrap(*next, path, url));
        } else {
            out.push_str(url);
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

/// The issue's digest as it is mailed: its archive link filled in and, unless
/// `tracking.clicks: off`, its links to the site going through `/c/`.
pub fn track(
    digest: &RenderedDigest,
    config: &Config,
    issue: IssueNumber,
    key: &TokenKey,
) -> RenderedDigest {
    let base = config.newsletter.base_url.as_str();
    let digest = digest.for_issue(base, issue.get());
    let mode = config.tracking.clicks;
    // A comparison page reached from a reader's copy carries the reader's token, so the
    // page can offer that reader the vote buttons (it is never recorded with a click
    // unless `tracking.clicks: per-reader`).
    let reader = |target: &str| match mode {
        ClickMode::PerReader => format!("?r={READER_PLACEHOLDER}"),
        _ if slug_of(target).is_some() => format!("?r={READER_PLACEHOLDER}"),
        _ => String::new(),
    };
    if mode == ClickMode::Off {
        let mut next = DECOY_POSITION;
        // Straight to the site: only comparison pages change, gaining the reader's token.
        let direct = |_: u32, target: &str, url: &str| format!("{url}{}", reader(target));
        let html = digest.map_parts(
            |_, part| wrap_links(part, base, &mut next, direct),
            |_, part| part.to_owned(),
        );
        return html.map_parts(
            |_, part| part.to_owned(),
            |_, part| wrap_links(part, base, &mut next, direct),
        );
    }
    let click = |position: u32, target: &str, _: &str| {
        let token = click_token(
            key,
            &Link {
                issue,
                position,
                target: target.to_owned(),
            },
        );
        format!("{base}/c/{token}{}", reader(target))
    };
    let mut next = DECOY_POSITION;
    let last_html = digest.html_parts().len().saturating_sub(1);
    let html = digest.map_parts(
        |i, part| {
            let mut p = wrap_links(part, base, &mut next, &click);
            if i == 0 {
                // The decoy: hidden from people and screen readers, followed only by
                // clients that fetch every link.
                let decoy = format!(
                    "<a href=\"{}\" style=\"display:none\" aria-hidden=\"true\" tabindex=\"-1\">&#8203;</a>",
                    click(DECOY_POSITION, "/", base)
                );
                if let Some(body) = p.find("<body") {
                    if let Some(close) = p[body..].find('>') {
                        p.insert_str(body + close + 1, &decoy);
                    }
                }
            }
            if i == last_html && config.tracking.opens {
                let pixel = format!(
                    "<img src=\"{base}/o/{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0\">",
                    click_token(
                        key,
                        &Link {
                            issue,
                            position: DECOY_POSITION,
                            target: OPEN_TARGET.into(),
                        }
                    )
                );
                if let Some(end) = p.rfind("</body>") {
                    p.insert_str(end, &pixel);
                }
            }
            p
        },
        |_, part| part.to_owned(),
    );
    // The text part's links continue the numbering.
    let mut next_text = next;
    html.map_parts(
        |_, part| part.to_owned(),
        |_, part| wrap_links(part, base, &mut next_text, &click),
    )
}

/// The comparison a link's target is the page of, if it is one (`/<slug>/`).
pub fn slug_of(target: &str) -> Option<&str> {
    let inner = target.strip_prefix('/')?.strip_suffix('/')?;
    (!inner.is_empty()
        && !inner.contains('/')
        && inner != "issues"
        && inner
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    .then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_site_links_are_wrapped() {
        let mut n = 0;
        let part = "<a href=\"https://x.example/a-vs-b/\">A</a> <a href=\"https://x.example/unsubscribe?token=1\">u</a> https://x.example. https://x.example.evil/ https://x.example";
        let out = wrap_links(part, "https://x.example", &mut n, |i, p, _| {
            format!("[{i}{p}]")
        });
        assert_eq!(
            out,
            "<a href=\"[1/a-vs-b/]\">A</a> <a href=\"https://x.example/unsubscribe?token=1\">u</a> https://x.example. https://x.example.evil/ [2/]"
        );
        assert_eq!(n, 2);
    }

    #[test]
    fn slugs_are_single_folders() {
        assert_eq!(slug_of("/a-vs-b/"), Some("a-vs-b"));
        assert_eq!(slug_of("/issues/"), None);
        assert_eq!(slug_of("/issues/3/"), None);
        assert_eq!(slug_of("/"), None);
    }
}
