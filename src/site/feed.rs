//! Atom feeds (RFC 4287) of comparisons and of issues, and the sitemap.

use std::collections::HashMap;

use askama::Template;
use chrono::{DateTime, Utc};

use super::pages::{iso, SiteView};
use super::{ArchivedIssue, SiteFile};
use crate::content::Comparison;

/// Feeds carry the newest entries only; readers poll them, the site keeps the rest.
pub const FEED_ENTRIES: usize = 50;

struct Entry {
    id: String,
    title: String,
    updated: String,
    published: String,
    url: String,
    category: Option<String>,
    summary: String,
    content: String,
}

#[derive(Template)]
#[template(path = "site/feed.xml", escape = "html")]
struct Feed<'a> {
    id: String,
    title: String,
    subtitle: String,
    updated: String,
    self_url: String,
    alternate_url: String,
    author: &'a str,
    entries: Vec<Entry>,
}

/// The content of an issue's feed entry: its preheader and what it carried.
#[derive(Template)]
#[template(path = "site/issue_entry.html")]
struct IssueEntry<'a> {
    preheader: &'a str,
    items: Vec<(String, &'a str)>,
    url: String,
}

struct SitemapUrl {
    loc: String,
    lastmod: Option<String>,
}

#[derive(Template)]
#[template(path = "site/sitemap.xml", escape = "html")]
struct Sitemap {
    urls: Vec<SitemapUrl>,
}

/// An empty feed still needs an `updated`; the epoch says "nothing yet" and never changes.
fn newest(times: impl Iterator<Item = DateTime<Utc>>) -> String {
    iso(times.max().unwrap_or(DateTime::UNIX_EPOCH))
}

pub(super) fn comparisons_feed(
    site: &SiteView<'_>,
    newest_first: &[&Comparison],
    bodies: &HashMap<&str, String>,
) -> Result<SiteFile, askama::Error> {
    let entries = newest_first
        .iter()
        .take(FEED_ENTRIES)
        .map(|c| {
            let [a, b] = &c.tools;
            Entry {
                id: site.url(&format!("{}/", c.slug)),
                title: c.title.clone(),
                updated: iso(c.published_utc()),
                published: iso(c.published_utc()),
                url: site.url(&format!("{}/", c.slug)),
                category: Some(c.category.clone()),
                summary: format!(
                    "{}: {}% panel ship. {}: {}% panel ship.",
                    a.name,
                    a.ship_percent(),
                    b.name,
                    b.ship_percent()
                ),
                content: bodies.get(c.slug.as_str()).cloned().unwrap_or_default(),
            }
        })
        .collect();
    let body = Feed {
        id: site.url(""),
        title: site.name.to_owned(),
        subtitle: "AI tool comparisons: two tools, four reviewers, ship or skip.".into(),
        updated: newest(newest_first.iter().map(|c| c.published_utc())),
        self_url: site.url("feed.xml"),
        alternate_url: site.url(""),
        author: site.name,
        entries,
    }
    .render()?;
    Ok(SiteFile {
        path: "feed.xml".into(),
        body,
    })
}

pub(super) fn issues_feed(
    site: &SiteView<'_>,
    newest_first: &[&ArchivedIssue],
    comparisons: &[Comparison],
) -> Result<SiteFile, askama::Error> {
    let titles: HashMap<&str, &str> = comparisons
        .iter()
        .map(|c| (c.slug.as_str(), c.title.as_str()))
        .collect();
    let entries = newest_first
        .iter()
        .take(FEED_ENTRIES)
        .map(|i| -> Result<Entry, askama::Error> {
            let content = IssueEntry {
                preheader: &i.digest.preheader,
                items: i
                    .slugs
                    .iter()
                    .map(|slug| {
                        let title = titles.get(slug.as_str()).copied().unwrap_or(slug);
                        (site.url(&format!("{slug}/")), title)
                    })
                    .collect(),
                url: site.url(&format!("issues/{}/", i.number)),
            }
            .render()?;
            Ok(Entry {
                id: site.url(&format!("issues/{}/", i.number)),
                title: format!("Issue {}: {}", i.number, i.subject),
                updated: iso(i.sent),
                published: iso(i.sent),
                url: site.url(&format!("issues/{}/", i.number)),
                category: None,
                summary: i.digest.preheader.clone(),
                content,
            })
        })
        .collect::<Result<Vec<_>, askama::Error>>()?;
    let body = Feed {
        id: site.url("issues/"),
        title: format!("{}: issues", site.name),
        subtitle: "Every issue of the newsletter as it was sent.".into(),
        updated: newest(newest_first.iter().map(|i| i.sent)),
        self_url: site.url("issues/feed.xml"),
        alternate_url: site.url("issues/"),
        author: site.name,
        entries,
    }
    .render()?;
    Ok(SiteFile {
        path: "issues/feed.xml".into(),
        body,
    })
}

/// Every HTML page but the 404, with the publication date of comparison pages.
pub(super) fn sitemap(
    site: &SiteView<'_>,
    files: &[SiteFile],
    comparisons: &[Comparison],
) -> Result<SiteFile, askama::Error> {
    let published: HashMap<String, String> = comparisons
        .iter()
        .map(|c| (format!("{}/", c.slug), iso(c.published_utc())))
        .collect();
    let urls = files
        .iter()
        .filter_map(|f| f.path.strip_suffix("index.html"))
        .map(|dir| SitemapUrl {
            loc: site.url(dir),
            lastmod: published.get(dir).cloned(),
        })
        .collect();
    Ok(SiteFile {
        path: "sitemap.xml".into(),
        body: Sitemap { urls }.render()?,
    })
}
