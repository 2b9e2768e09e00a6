//! The digest, rendered once per issue: Askama templates for HTML (CSS inlined) and plain
//! text (wrapped at 72 columns). The unsubscribe link is left as a placeholder so each
//! recipient's copy costs a few string copies, not a re-render.

use askama::Template;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::Newsletter;
use crate::content::{Comparison, Lens, Verdict};
use crate::digest::{self, Highlight, Pick};
use crate::store::ledger::StoredDigest;

/// Stands in for the recipient's unsubscribe URL in the rendered digest.
pub const UNSUBSCRIBE_PLACEHOLDER: &str = "https://unsubscribe.placeholder.invalid/verdicts";

/// Stands in for the issue's archive page ("View in browser") until the issue has a number.
pub const VIEW_IN_BROWSER_PLACEHOLDER: &str =
    "https://view-in-browser.placeholder.invalid/verdicts";

/// The public archive page of issue `number`: the "view in browser" link.
pub fn issue_url(base_url: &str, number: i64) -> String {
    format!("{base_url}/issues/{number}/")
}

/// Text lines are wrapped to this width (links are never broken).
pub const TEXT_WIDTH: usize = 72;

/// Gmail clips HTML bodies larger than about this many bytes.
pub const GMAIL_CLIP_BYTES: usize = 102 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error: {0}")]
    Template(#[from] askama::Error),
    #[error("inlining CSS failed: {0}")]
    Css(String),
}

struct ToolView<'a> {
    letter: &'static str,
    name: &'a str,
    tagline: &'a str,
    entry: &'a str,
    votes: String,
    pct: u8,
    pct_rest: u8,
    text_bar: String,
    summary: &'a str,
    vote_ship: String,
    vote_skip: String,
}

struct Cell {
    class: &'static str,
    mark: &'static str,
    word: &'static str,
}

struct LensRow {
    lens: &'static str,
    lens_padded: String,
    cells: [Cell; 2],
}

struct ItemView<'a> {
    title: &'a str,
    url: String,
    category: &'a str,
    tools: [ToolView<'a>; 2],
    is_split: bool,
    pick_name: &'a str,
    lenses: Vec<LensRow>,
    quote_label: String,
    quote_text: &'a str,
    note_html: Option<&'a str>,
    note_text: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "digest.html")]
struct HtmlDigest<'a> {
    subject: &'a str,
    preheader: &'a str,
    newsletter_name: &'a str,
    dateline: &'a str,
    intro: &'a str,
    items: &'a [ItemView<'a>],
    base_url: &'a str,
    site_host: &'a str,
    view_url: &'a str,
    unsubscribe_url: &'a str,
    postal_address: &'a str,
}

#[derive(Template)]
#[template(path = "digest.txt")]
struct TextDigest<'a> {
    newsletter_name: &'a str,
    dateline: &'a str,
    intro: &'a str,
    items: &'a [ItemView<'a>],
    base_url: &'a str,
    view_url: &'a str,
    unsubscribe_url: &'a str,
    postal_address: &'a str,
    rule: &'a str,
}

/// A rendered issue, ready to be personalised per recipient.
#[derive(Debug, Clone)]
pub struct RenderedDigest {
    pub subject: String,
    pub preheader: String,
    pub comparison_count: usize,
    /// The HTML split at each unsubscribe placeholder.
    html_parts: Vec<String>,
    text_parts: Vec<String>,
}

impl RenderedDigest {
    /// The digest as the ledger keeps it.
    pub fn to_stored(&self) -> StoredDigest {
        StoredDigest {
            subject: self.subject.clone(),
            preheader: self.preheader.clone(),
            comparison_count: self.comparison_count,
            html_parts: self.html_parts.clone(),
            text_parts: self.text_parts.clone(),
        }
    }

    /// The HTML for one recipient.
    pub fn html_for(&self, unsubscribe_url: &str) -> String {
        self.html_parts.join(unsubscribe_url)
    }

    /// The plain text for one recipient.
    pub fn text_for(&self, unsubscribe_url: &str) -> String {
        self.text_parts.join(unsubscribe_url)
    }

    /// The digest of issue `number`: its "View in browser" links point at the issue's
    /// archive page under `base_url`.
    pub fn for_issue(&self, base_url: &str, number: i64) -> RenderedDigest {
        let url = issue_url(base_url, number);
        let fill = |parts: &[String]| -> Vec<String> {
            parts
                .iter()
                .map(|p| p.replace(VIEW_IN_BROWSER_PLACEHOLDER, &url))
                .collect()
        };
        RenderedDigest {
            subject: self.subject.clone(),
            preheader: self.preheader.clone(),
            comparison_count: self.comparison_count,
            html_parts: fill(&self.html_parts),
            text_parts: fill(&self.text_parts),
        }
    }

    pub fn html_parts(&self) -> &[String] {
        &self.html_parts
    }

    pub fn text_parts(&self) -> &[String] {
        &self.text_parts
    }

    /// The same digest with every part rewritten by `html` and `text` (each given the
    /// part's index): how tracked links are put in.
    pub fn map_parts(
        &self,
        mut html: impl FnMut(usize, &str) -> String,
        mut text: impl FnMut(usize, &str) -> String,
    ) -> RenderedDigest {
        RenderedDigest {
            subject: self.subject.clone(),
            preheader: self.preheader.clone(),
            comparison_count: self.comparison_count,
            html_parts: self
                .html_parts
                .iter()
                .enumerate()
                .map(|(i, p)| html(i, p))
                .collect(),
            text_parts: self
                .text_parts
                .iter()
                .enumerate()
                .map(|(i, p)| text(i, p))
                .collect(),
        }
    }
}

/// Reassembles a digest stored by the ledger.
impl From<StoredDigest> for RenderedDigest {
    fn from(s: StoredDigest) -> Self {
        RenderedDigest {
            subject: s.subject,
            preheader: s.preheader,
            comparison_count: s.comparison_count,
            html_parts: s.html_parts,
            text_parts: s.text_parts,
        }
    }
}

/// The public page of a comparison: its folder, so a reader's click needs no redirect.
pub fn comparison_url(base_url: &str, slug: &str) -> String {
    format!("{base_url}/{slug}/")
}

/// Community votes grouped in thousands, or "—" when nobody has voted yet.
pub fn votes_label(votes: Option<u32>) -> String {
    match votes {
        None => "—".into(),
        Some(n) => {
            let digits = n.to_string();
            let mut out = String::new();
            for (i, ch) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(ch);
            }
            out
        }
    }
}

fn text_bar(pct: u8) -> String {
    let filled = usize::from(pct) / 10;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(10 - filled))
}

fn cell(v: Verdict) -> Cell {
    match v {
        Verdict::Ship => Cell {
            class: "ship",
            mark: "✓",
            word: "ship",
        },
        Verdict::Skip => Cell {
            class: "skip",
            mark: "✗",
            word: "skip",
        },
    }
}

fn item_view<'a>(base_url: &str, c: &'a Comparison) -> ItemView<'a> {
    let tool = |i: usize| {
        let t = &c.tools[i];
        let pct = t.ship_percent();
        ToolView {
            letter: ["A", "B"][i],
            name: &t.name,
            tagline: &t.tagline,
            entry: &t.entry,
            votes: crate::tracking::community::label(t),
            pct,
            pct_rest: 100 - pct,
            text_bar: text_bar(pct),
            summary: &t.summary,
            vote_ship: crate::tracking::links::vote_url(base_url, &c.slug, i, "ship"),
            vote_skip: crate::tracking::links::vote_url(base_url, &c.slug, i, "skip"),
        }
    };
    let (is_split, pick_name) = match digest::pick(c) {
        Pick::Tool(i) => (false, c.tools[i].name.as_str()),
        Pick::Split => (true, ""),
    };
    let lenses = Lens::ALL
        .iter()
        .map(|&lens| LensRow {
            lens: lens.label(),
            lens_padded: format!("{:<9}", lens.label()),
            cells: [
                cell(c.tools[0].reviews.get(lens).verdict),
                cell(c.tools[1].reviews.get(lens).verdict),
            ],
        })
        .collect();
    let q = digest::quoted_take(c);
    let kind = match q.kind {
        Highlight::Dissent => "The dissent",
        Highlight::Decisive => "The deciding vote",
        Highlight::Consensus => "The panel agrees",
    };
    let verdict = match q.verdict {
        Verdict::Ship => "ship",
        Verdict::Skip => "skip",
    };
    let take = c.tools[q.tool].reviews.get(q.lens).take.as_str();
    // Most takes open with their verdict ("Skip: …"); the label names it only when the
    // quote does not, so neither part says it twice.
    let verdict_suffix = if opens_with_word(take, verdict) {
        String::new()
    } else {
        format!(": {verdict}")
    };
    ItemView {
        title: &c.title,
        url: comparison_url(base_url, &c.slug),
        category: &c.category,
        tools: [tool(0), tool(1)],
        is_split,
        pick_name,
        lenses,
        quote_label: format!(
            "{kind} — {} on {}{verdict_suffix}",
            q.lens.label(),
            c.tools[q.tool].name
        ),
        quote_text: take,
        note_html: c.note_html.as_deref(),
        note_text: c.note_text.as_deref(),
    }
}

/// True when `text` begins with `word` (any case) as a whole word.
fn opens_with_word(text: &str, word: &str) -> bool {
    text.get(..word.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(word))
        && !text[word.len()..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric)
}

/// "A vs B + 4 more", or a plain note for an empty week.
pub fn subject(comparisons: &[&Comparison]) -> String {
    match comparisons {
        [] => "No new comparisons this week".into(),
        [only] => only.title.clone(),
        [lead, rest @ ..] => format!("{} + {} more", lead.title, rest.len()),
    }
}

fn preheader(comparisons: &[&Comparison]) -> String {
    let mut picks: Vec<&str> = Vec::new();
    let mut splits = 0;
    for c in comparisons {
        match digest::pick(c) {
            Pick::Tool(i) => {
                if !picks.contains(&c.tools[i].name.as_str()) {
                    picks.push(&c.tools[i].name);
                }
            }
            Pick::Split => splits += 1,
        }
    }
    if picks.is_empty() && splits == 0 {
        return "Nothing new from the panel this week.".into();
    }
    let mut s = String::from("The panel's picks this week: ");
    s.push_str(&join_and(&picks));
    if splits > 0 {
        s.push_str(&format!(
            "{}{} split decision{}",
            if picks.is_empty() { "" } else { "; " },
            splits,
            if splits == 1 { "" } else { "s" }
        ));
    }
    s.push('.');
    s
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn intro(n: usize) -> String {
    match n {
        0 => "No new comparisons were published this week. See you next week.".into(),
        1 => "One new comparison this week: two AI tools, four reviewers, ship or skip.".into(),
        n => format!(
            "{n} new comparisons this week: two AI tools each, four reviewers, ship or skip."
        ),
    }
}

/// Renders the issue of `slot` as the config describes the newsletter and its time zone.
pub fn render_issue(
    config: &crate::config::Config,
    comparisons: &[&Comparison],
    slot: DateTime<Utc>,
) -> Result<RenderedDigest, RenderError> {
    render_digest(
        &config.newsletter,
        comparisons,
        slot,
        config.schedule.slots.timezone(),
    )
}

/// Renders the digest of `comparisons` for the issue whose slot is `slot`.
pub fn render_digest(
    newsletter: &Newsletter,
    comparisons: &[&Comparison],
    slot: DateTime<Utc>,
    tz: Tz,
) -> Result<RenderedDigest, RenderError> {
    let items: Vec<ItemView<'_>> = comparisons
        .iter()
        .map(|c| item_view(&newsletter.base_url, c))
        .collect();
    let subject = subject(comparisons);
    let preheader = preheader(comparisons);
    let n = comparisons.len();
    let dateline = format!(
        "{} · {n} comparison{}",
        slot.with_timezone(&tz).format("%A %-d %B %Y"),
        if n == 1 { "" } else { "s" }
    );
    let intro = intro(n);
    let site_host = newsletter
        .base_url
        .split_once("://")
        .map(|(_, h)| h)
        .unwrap_or(&newsletter.base_url);

    let html = HtmlDigest {
        subject: &subject,
        preheader: &preheader,
        newsletter_name: &newsletter.name,
        dateline: &dateline,
        intro: &intro,
        items: &items,
        base_url: &newsletter.base_url,
        site_host,
        view_url: VIEW_IN_BROWSER_PLACEHOLDER,
        unsubscribe_url: UNSUBSCRIBE_PLACEHOLDER,
        postal_address: &newsletter.postal_address,
    }
    .render()?;
    let inliner = css_inline::CSSInliner::options()
        .load_remote_stylesheets(false)
        .build();
    let html = inliner
        .inline(&html)
        .map_err(|e| RenderError::Css(e.to_string()))?;

    let rule = "=".repeat(TEXT_WIDTH);
    let text = TextDigest {
        newsletter_name: &newsletter.name,
        dateline: &dateline,
        intro: &intro,
        items: &items,
        base_url: &newsletter.base_url,
        view_url: VIEW_IN_BROWSER_PLACEHOLDER,
        unsubscribe_url: UNSUBSCRIBE_PLACEHOLDER,
        postal_address: &newsletter.postal_address,
        rule: &rule,
    }
    .render()?;
    let text = wrap_text(&text, TEXT_WIDTH);

    Ok(RenderedDigest {
        subject,
        preheader,
        comparison_count: n,
        html_parts: html
            .split(UNSUBSCRIBE_PLACEHOLDER)
            .map(str::to_owned)
            .collect(),
        text_parts: text
            .split(UNSUBSCRIBE_PLACEHOLDER)
            .map(str::to_owned)
            .collect(),
    })
}

/// Wraps every line longer than `width` at word boundaries, keeping its indentation (and
/// hanging under an opening quote). Words longer than the width, such as URLs, stay whole.
pub fn wrap_text(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for line in text.lines() {
        let line = line.trim_end();
        if line.chars().count() <= width {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        // Continuation lines hang under an opening quote or a list number ("1. ").
        let number_width = body
            .find(". ")
            .filter(|&i| i > 0 && body[..i].bytes().all(|b| b.is_ascii_digit()))
            .map(|i| i + 2);
        let hang = if body.starts_with('"') {
            format!("{indent} ")
        } else if let Some(w) = number_width {
            format!("{indent}{}", " ".repeat(w))
        } else {
            indent.to_owned()
        };
        let options = textwrap::Options::new(width)
            .initial_indent(indent)
            .subsequent_indent(&hang)
            .break_words(false)
            .word_splitter(textwrap::WordSplitter::NoHyphenation);
        for l in textwrap::wrap(body, options) {
            out.push_str(l.trim_end());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_long_lines_with_indent_and_keeps_urls_whole() {
        let url = format!("https://example.com/{}", "x".repeat(80));
        let text = format!("     {}\n   {url}\n", "word ".repeat(30).trim_end());
        let out = wrap_text(&text, 72);
        for l in out.lines() {
            assert!(l.chars().count() <= 72 || l.trim() == url, "{l:?}");
        }
        assert!(out.lines().filter(|l| l.starts_with("     word")).count() >= 2);
        assert!(out.contains(&url));
    }

    #[test]
    fn verdict_words_are_found_only_whole_at_the_start() {
        assert!(opens_with_word("Skip: too dear", "skip"));
        assert!(opens_with_word("SHIP, for now", "ship"));
        assert!(opens_with_word("ship", "ship"));
        assert!(!opens_with_word("Shipping is slow", "ship"));
        assert!(!opens_with_word("I would skip it", "skip"));
        assert!(!opens_with_word("Sk", "skip"));
        assert!(!opens_with_word("Ünïcode first", "skip"));
    }

    #[test]
    fn votes_are_grouped_or_dashed() {
        assert_eq!(votes_label(None), "—");
        assert_eq!(votes_label(Some(1234567)), "1,234,567");
        assert_eq!(votes_label(Some(12)), "12");
    }
}
