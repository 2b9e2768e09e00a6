//! The site's pages: view models and Askama templates under `templates/site/`.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use sha2::{Digest, Sha256};

use super::{category_slug, feed, ArchivedIssue, SiteError, SiteFile, PER_PAGE};
use crate::config::Config;
use crate::content::{Comparison, Lens, Verdict};
use crate::digest::{self, Pick};
use crate::store::IssueNumber;

const STYLESHEET: &str = include_str!("../../templates/site/style.css");

/// What every page needs to know about the site.
pub(super) struct SiteView<'a> {
    pub name: &'a str,
    /// The path part of `base_url` ("" or "/news"): links are root-relative so the same
    /// files work on any host, including a local preview server.
    pub root: String,
    pub base_url: &'a str,
    pub signup_url: String,
    pub stylesheet: String,
    pub postal_address: &'a str,
}

impl<'a> SiteView<'a> {
    fn new(config: &'a Config) -> Self {
        let base_url = config.newsletter.base_url.as_str();
        let after_scheme = base_url.split_once("://").map_or(base_url, |(_, r)| r);
        let root = after_scheme
            .find('/')
            .map_or("", |i| &after_scheme[i..])
            .trim_end_matches('/')
            .to_owned();
        let hash = Sha256::digest(STYLESHEET.as_bytes());
        let stylesheet = format!(
            "style-{:02x}{:02x}{:02x}{:02x}.css",
            hash[0], hash[1], hash[2], hash[3]
        );
        SiteView {
            name: &config.newsletter.name,
            root,
            base_url,
            signup_url: signup_url(base_url),
            stylesheet,
            postal_address: &config.newsletter.postal_address,
        }
    }

    /// The absolute URL of a site path ("" for the home page, "issues/" …).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base_url)
    }
}

/// Where the signup form posts, and where archived issues send readers instead of the
/// personal unsubscribe link they were mailed with.
pub fn signup_url(base_url: &str) -> String {
    format!("{base_url}/subscribe")
}

pub(super) struct Meta {
    pub title: String,
    pub description: String,
    pub url: String,
    pub og_type: &'static str,
}

struct ToolView<'a> {
    name: &'a str,
    tagline: &'a str,
    entry: &'a str,
    votes: String,
    pct: u8,
    summary: &'a str,
}

struct Cell<'a> {
    class: &'static str,
    mark: &'static str,
    word: &'static str,
    take: &'a str,
}

struct LensRow<'a> {
    lens: &'static str,
    cells: [Cell<'a>; 2],
}

#[derive(Template)]
#[template(path = "site/comparison_body.html")]
struct ComparisonBody<'a> {
    category: &'a str,
    tools: [ToolView<'a>; 2],
    is_split: bool,
    pick_name: &'a str,
    lenses: Vec<LensRow<'a>>,
    note_html: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "site/comparison.html")]
struct ComparisonPage<'a> {
    site: &'a SiteView<'a>,
    meta: Meta,
    title: &'a str,
    category: &'a str,
    category_slug: String,
    published_iso: String,
    published_human: String,
    body: &'a str,
}

struct CategoryLink {
    name: String,
    slug: String,
    count: usize,
    current: bool,
}

struct ListItem<'a> {
    slug: &'a str,
    title: &'a str,
    category: &'a str,
    published_iso: String,
    published_human: String,
    is_split: bool,
    pick_line: String,
    /// The readers' live vote, once a tool has one past the minimum.
    community_line: Option<String>,
}

struct Pager {
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "site/list.html")]
struct ListPage<'a> {
    site: &'a SiteView<'a>,
    meta: Meta,
    eyebrow: Option<&'a str>,
    heading: &'a str,
    lede: &'a str,
    list_heading: &'a str,
    categories: &'a [CategoryLink],
    items: Vec<ListItem<'a>>,
    pager: Pager,
}

struct IssueItem<'a> {
    number: IssueNumber,
    subject: &'a str,
    sent_iso: String,
    sent_human: String,
    count: String,
}

#[derive(Template)]
#[template(path = "site/issues.html")]
struct IssuesPage<'a> {
    site: &'a SiteView<'a>,
    meta: Meta,
    items: Vec<IssueItem<'a>>,
    pager: Pager,
}

#[derive(Template)]
#[template(path = "site/404.html")]
struct NotFoundPage<'a> {
    site: &'a SiteView<'a>,
    meta: Meta,
}

#[derive(Template)]
#[template(path = "site/issue_head.html")]
struct IssueHead<'a> {
    site: &'a SiteView<'a>,
    meta: Meta,
}

#[derive(Template)]
#[template(path = "site/issue_banner.html")]
struct IssueBanner<'a> {
    site: &'a SiteView<'a>,
    number: IssueNumber,
    sent_human: String,
    /// The page's only level-one heading, unless the digest brings its own.
    title_is_heading: bool,
}

fn human_date<Tz: TimeZone>(t: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.format("%-d %B %Y").to_string()
}

pub(super) fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn pick_line(c: &Comparison) -> (bool, String) {
    match digest::pick(c) {
        Pick::Tool(i) => (false, format!("The panel's pick: {}", c.tools[i].name)),
        Pick::Split => (
            true,
            format!(
                "The panel is split: both at {}% ship",
                c.tools[0].ship_percent()
            ),
        ),
    }
}

fn cell(review: &crate::content::Review) -> Cell<'_> {
    let (class, mark, word) = match review.verdict {
        Verdict::Ship => ("ship", "✓", "ship"),
        Verdict::Skip => ("skip", "✗", "skip"),
    };
    Cell {
        class,
        mark,
        word,
        take: &review.take,
    }
}

/// The comparison itself (tools, pick, scorecard, note): the page's article and the feed
/// entry's content.
fn comparison_body(c: &Comparison) -> Result<String, askama::Error> {
    let tool = |i: usize| {
        let t = &c.tools[i];
        ToolView {
            name: &t.name,
            tagline: &t.tagline,
            entry: &t.entry,
            votes: crate::tracking::community::label(t),
            pct: t.ship_percent(),
            summary: &t.summary,
        }
    };
    let (is_split, pick_name) = match digest::pick(c) {
        Pick::Tool(i) => (false, c.tools[i].name.as_str()),
        Pick::Split => (true, ""),
    };
    ComparisonBody {
        category: &c.category,
        tools: [tool(0), tool(1)],
        is_split,
        pick_name,
        lenses: Lens::ALL
            .iter()
            .map(|&lens| LensRow {
                lens: lens.label(),
                cells: [
                    cell(c.tools[0].reviews.get(lens)),
                    cell(c.tools[1].reviews.get(lens)),
                ],
            })
            .collect(),
        note_html: c.note_html.as_deref(),
    }
    .render()
}

fn comparison_description(c: &Comparison) -> String {
    let [a, b] = &c.tools;
    let (_, pick) = pick_line(c);
    format!(
        "{} ({}% panel ship, {}) against {} ({}% panel ship, {}). {pick}.",
        a.name,
        a.ship_percent(),
        a.entry,
        b.name,
        b.ship_percent(),
        b.entry
    )
}

/// `dir` is "" or ends with '/'; page 1 lives at `dir`, page n at `dir/page/n/`.
fn page_dir(dir: &str, page: usize) -> String {
    if page == 1 {
        dir.to_owned()
    } else {
        format!("{dir}page/{page}/")
    }
}

fn pager(site: &SiteView<'_>, dir: &str, page: usize, pages: usize) -> Pager {
    let link = |p: usize| format!("{}/{}", site.root, page_dir(dir, p));
    Pager {
        page,
        pages,
        prev: (page > 1).then(|| link(page - 1)),
        next: (page < pages).then(|| link(page + 1)),
    }
}

fn page_count(n: usize) -> usize {
    n.div_ceil(PER_PAGE).max(1)
}

fn list_item(c: &Comparison) -> ListItem<'_> {
    let (is_split, pick_line) = pick_line(c);
    ListItem {
        slug: &c.slug,
        title: &c.title,
        category: &c.category,
        published_iso: c.published.to_rfc3339(),
        published_human: human_date(&c.published),
        is_split,
        pick_line,
        community_line: c.tools.iter().any(|t| t.live_votes.is_some()).then(|| {
            c.tools
                .iter()
                .map(|t| format!("{}: {}", t.name, crate::tracking::community::label(t)))
                .collect::<Vec<_>>()
                .join(" · ")
        }),
    }
}

struct Listing<'a> {
    dir: String,
    eyebrow: Option<&'a str>,
    heading: &'a str,
    lede: String,
    title: String,
    list_heading: &'a str,
}

fn render_listing(
    site: &SiteView<'_>,
    listing: &Listing<'_>,
    categories: &[CategoryLink],
    newest_first: &[&Comparison],
    files: &mut Vec<SiteFile>,
) -> Result<(), askama::Error> {
    let pages = page_count(newest_first.len());
    for page in 1..=pages {
        let chunk = newest_first
            .iter()
            .skip((page - 1) * PER_PAGE)
            .take(PER_PAGE);
        let dir = page_dir(&listing.dir, page);
        let title = if page == 1 {
            listing.title.clone()
        } else {
            format!("{} (page {page})", listing.title)
        };
        let body = ListPage {
            site,
            meta: Meta {
                title,
                description: listing.lede.clone(),
                url: site.url(&dir),
                og_type: "website",
            },
            eyebrow: listing.eyebrow,
            heading: listing.heading,
            lede: &listing.lede,
            list_heading: listing.list_heading,
            categories,
            items: chunk.map(|c| list_item(c)).collect(),
            pager: pager(site, &listing.dir, page, pages),
        }
        .render()?;
        files.push(SiteFile {
            path: format!("{dir}index.html"),
            body,
        });
    }
    Ok(())
}

fn issue_page(site: &SiteView<'_>, issue: &ArchivedIssue) -> Result<String, askama::Error> {
    let sent_human = human_date(&issue.sent);
    let head = IssueHead {
        site,
        meta: Meta {
            title: format!("Issue {}: {}", issue.number, issue.subject),
            description: issue.digest.preheader.clone(),
            url: site.url(&format!("issues/{}/", issue.number)),
            og_type: "article",
        },
    }
    .render()?;
    // The stored digest with the signup link where each reader had their own unsubscribe
    // link: no subscriber's token can reach the archive.
    let mut html = issue
        .digest
        .for_issue(site.base_url, issue.number.get())
        .html_for(&site.signup_url);
    // Nor any reader's vote link: in the archive they lead to a page that says so.
    html = crate::tracking::links::strip_reader(&html);
    let banner = IssueBanner {
        site,
        number: issue.number,
        sent_human,
        title_is_heading: !html.contains("<h1"),
    }
    .render()?;
    // The digest may bring its own main landmark; a second one would confuse screen readers.
    let wrap_main = !(html.contains("<main") || html.contains("role=\"main\""));
    if let Some(i) = html.find("</head>") {
        html.insert_str(i, &head);
    }
    let body_start = html
        .find("<body")
        .and_then(|i| html[i..].find('>').map(|j| i + j + 1));
    match body_start {
        Some(i) => {
            let opening = if wrap_main {
                format!("\n{banner}<main id=\"main\">")
            } else {
                format!("\n{banner}")
            };
            html.insert_str(i, &opening);
            if wrap_main {
                match html.rfind("</body>") {
                    Some(j) => html.insert_str(j, "</main>\n"),
                    None => html.push_str("</main>\n"),
                }
            }
        }
        None => html = format!("{banner}{html}"),
    }
    Ok(html)
}

/// Renders every file of the site.
pub(super) fn render_all(
    config: &Config,
    comparisons: &[Comparison],
    issues: &[ArchivedIssue],
) -> Result<Vec<SiteFile>, SiteError> {
    let site = SiteView::new(config);
    let mut files = Vec::with_capacity(comparisons.len() + issues.len() + 16);
    files.push(SiteFile {
        path: site.stylesheet.clone(),
        body: STYLESHEET.to_owned(),
    });

    let mut newest_first: Vec<&Comparison> = comparisons.iter().collect();
    newest_first.sort_by(|a, b| {
        b.published_utc()
            .cmp(&a.published_utc())
            .then(a.slug.cmp(&b.slug))
    });

    // Comparison pages; their bodies are kept for the feed.
    let mut bodies: HashMap<&str, String> = HashMap::with_capacity(comparisons.len());
    for c in &newest_first {
        let body = comparison_body(c)?;
        let page = ComparisonPage {
            site: &site,
            meta: Meta {
                title: format!("{} · {}", c.title, site.name),
                description: comparison_description(c),
                url: site.url(&format!("{}/", c.slug)),
                og_type: "article",
            },
            title: &c.title,
            category: &c.category,
            category_slug: category_slug(&c.category),
            published_iso: c.published.to_rfc3339(),
            published_human: human_date(&c.published),
            body: &body,
        }
        .render()?;
        files.push(SiteFile {
            path: format!("{}/index.html", c.slug),
            body: page,
        });
        bodies.insert(&c.slug, body);
    }

    // Categories, by slug (names that differ only in punctuation share a page).
    let mut by_category: BTreeMap<String, (String, Vec<&Comparison>)> = BTreeMap::new();
    for c in &newest_first {
        by_category
            .entry(category_slug(&c.category))
            .or_insert_with(|| (c.category.clone(), Vec::new()))
            .1
            .push(c);
    }
    let category_links = |current: Option<&str>| -> Vec<CategoryLink> {
        by_category
            .iter()
            .map(|(slug, (name, list))| CategoryLink {
                name: name.clone(),
                slug: slug.clone(),
                count: list.len(),
                current: current == Some(slug.as_str()),
            })
            .collect()
    };

    let n = comparisons.len();
    render_listing(
        &site,
        &Listing {
            dir: String::new(),
            eyebrow: None,
            heading: site.name,
            lede: format!(
                "Two AI tools per comparison, four reviewers, a ship-or-skip verdict from each: {n} comparison{} so far, newest first.",
                if n == 1 { "" } else { "s" }
            ),
            title: format!("{}: AI tool comparisons", site.name),
            list_heading: "Comparisons, newest first",
        },
        &category_links(None),
        &newest_first,
        &mut files,
    )?;
    for (slug, (name, list)) in &by_category {
        let k = list.len();
        render_listing(
            &site,
            &Listing {
                dir: format!("category/{slug}/"),
                eyebrow: Some("Category"),
                heading: name,
                lede: format!(
                    "{k} comparison{} of {name} tools, newest first.",
                    if k == 1 { "" } else { "s" }
                ),
                title: format!("{name} · {}", site.name),
                list_heading: "Comparisons in this category",
            },
            &category_links(Some(slug)),
            list,
            &mut files,
        )?;
    }

    // The archive: one page per issue, and the list of them.
    let mut issues_newest: Vec<&ArchivedIssue> = issues.iter().collect();
    issues_newest.sort_by_key(|i| std::cmp::Reverse(i.number));
    for issue in &issues_newest {
        files.push(SiteFile {
            path: format!("issues/{}/index.html", issue.number),
            body: issue_page(&site, issue)?,
        });
    }
    let pages = page_count(issues_newest.len());
    for page in 1..=pages {
        let dir = page_dir("issues/", page);
        let items = issues_newest
            .iter()
            .skip((page - 1) * PER_PAGE)
            .take(PER_PAGE)
            .map(|i| {
                let k = i.slugs.len();
                IssueItem {
                    number: i.number,
                    subject: &i.subject,
                    sent_iso: iso(i.sent),
                    sent_human: human_date(&i.sent),
                    count: format!("{k} comparison{}", if k == 1 { "" } else { "s" }),
                }
            })
            .collect();
        let body = IssuesPage {
            site: &site,
            meta: Meta {
                title: format!("Past issues · {}", site.name),
                description: format!("Every issue of {} as it was sent.", site.name),
                url: site.url(&dir),
                og_type: "website",
            },
            items,
            pager: pager(&site, "issues/", page, pages),
        }
        .render()?;
        files.push(SiteFile {
            path: format!("{dir}index.html"),
            body,
        });
    }

    files.push(SiteFile {
        path: "404.html".into(),
        body: NotFoundPage {
            site: &site,
            meta: Meta {
                title: format!("Page not found · {}", site.name),
                description: "There is no page at this address.".into(),
                url: site.url(""),
                og_type: "website",
            },
        }
        .render()?,
    });

    files.push(feed::comparisons_feed(&site, &newest_first, &bodies)?);
    files.push(feed::issues_feed(&site, &issues_newest, comparisons)?);
    let sitemap = feed::sitemap(&site, &files, comparisons)?;
    files.push(sitemap);
    Ok(files)
}
