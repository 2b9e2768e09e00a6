//! The rendered digest as a reader sees it: snapshots of both parts for the bundled week,
//! every seed fact present, hostile names escaped, and a well-formed MIME message.

use crate::common::{fixture, TempSite};
use chrono::{DateTime, Utc};
use verdicts::config::Config;
use verdicts::content::{load_dir, parse_comparison};
use verdicts::digest::render::{render_digest, RenderedDigest, GMAIL_CLIP_BYTES, TEXT_WIDTH};
use verdicts::mail::message::{IssueMessages, Recipient};
use verdicts::mail::token::TokenKey;
use verdicts::store::{IssueNumber, SubscriberId};

const UNSUB: &str = "https://verdicts.example.com/unsubscribe?token=SNAPSHOT";

fn slot() -> DateTime<Utc> {
    "2026-11-23T09:00:00Z".parse().unwrap()
}

fn bundled() -> (Config, RenderedDigest) {
    let config = Config::load(&crate::common::bundled_config()).unwrap();
    let cs = load_dir(&config.content_dir).unwrap();
    let refs: Vec<_> = cs.iter().collect();
    let digest =
        render_digest(&config.newsletter, &refs, slot(), chrono_tz::Europe::London).unwrap();
    (config, digest)
}

#[test]
fn bundled_week_html_snapshot() {
    let (_, digest) = bundled();
    insta::assert_snapshot!("bundled_html", digest.html_for(UNSUB));
}

#[test]
fn bundled_week_text_snapshot() {
    let (_, digest) = bundled();
    insta::assert_snapshot!("bundled_text", digest.text_for(UNSUB));
}

#[test]
fn subject_names_lead_and_count() {
    let (_, digest) = bundled();
    assert_eq!(
        digest.subject,
        "Gemini 2.5 Flash Lite vs Meta Llama 4 Scout Fine-Tuning Toolkit + 4 more"
    );
    assert_eq!(digest.comparison_count, 5);
}

#[test]
fn every_seed_fact_appears_in_both_parts() {
    let (config, digest) = bundled();
    let html = digest.html_for(UNSUB);
    let text = digest.text_for(UNSUB);
    let cs = load_dir(&config.content_dir).unwrap();
    for c in &cs {
        for t in &c.tools {
            let pct = format!("{}%", t.ship_percent());
            let escaped_name = t.name.replace('&', "&amp;");
            assert!(html.contains(&escaped_name), "HTML lacks {}", t.name);
            assert!(
                text.contains(&t.name) || text.contains(&t.name.replace(' ', "\n")),
                "text lacks {}",
                t.name
            );
            assert!(
                html.contains(&pct) && text.contains(&pct),
                "{pct} missing for {}",
                t.name
            );
            assert!(
                html.contains(&format!("<b>{}</b>", t.entry)),
                "HTML lacks entry {}",
                t.entry
            );
            assert!(
                text.contains(&format!("Entry: {}", t.entry)),
                "text lacks entry {}",
                t.entry
            );
        }
        let url = format!("https://verdicts.example.com/{}/", c.slug);
        assert!(
            html.contains(&format!("href=\"{url}\"")),
            "HTML lacks link {url}"
        );
        assert!(text.contains(&url), "text lacks link {url}");
    }
    for part in [&html, &text] {
        assert!(part.contains(UNSUB), "unsubscribe link missing");
        assert!(
            part.contains("1 Example Street, London EC1A 1AA"),
            "postal address missing"
        );
        assert!(part.contains("—"), "community votes should show as a dash");
    }
    assert!(html.contains("Panel pick: Gemini 2.5 Flash Lite"));
    // The quoted take opens with "Skip:", so the label does not say it too.
    assert!(html.contains("The dissent — Business on Meta Llama 4 Scout Fine-Tuning Toolkit</p>"));
    assert!(text.contains("The dissent — Business on Meta Llama 4 Scout Fine-Tuning Toolkit:\n"));
    assert!(
        !text.contains("skip:\n     \"Skip"),
        "the verdict is said twice"
    );
    assert!(html.contains("Panel split"));
}

#[test]
fn html_is_inlined_and_under_half_the_gmail_clip() {
    let (_, digest) = bundled();
    let html = digest.html_for(UNSUB);
    assert!(
        html.len() < GMAIL_CLIP_BYTES / 2,
        "HTML is {} bytes, over half of Gmail's {GMAIL_CLIP_BYTES}",
        html.len()
    );
    assert!(html.contains("style=\""), "CSS should be inlined");
    assert!(
        html.contains("prefers-color-scheme: dark"),
        "dark-mode rules kept"
    );
    assert!(!html.contains("<img"), "no images required");
}

/// The HTML outside Outlook's conditional comments (which only Outlook for Windows reads).
fn html_outside_mso(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(start) = rest.find("<!--[if mso]>") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("<![endif]-->")
            .expect("closed conditional")
            + start;
        rest = &rest[end + "<![endif]-->".len()..];
    }
    out.push_str(rest);
    out
}

#[test]
fn layout_is_fluid_up_to_600_px() {
    let (_, digest) = bundled();
    let html = html_outside_mso(&digest.html_for(UNSUB));
    assert!(
        html.contains("max-width: 600px"),
        "the column is capped at 600 px"
    );
    assert!(
        !html.contains("width=\"600\"")
            && html
                .match_indices("width: 600px")
                .all(|(i, _)| html[..i].ends_with("max-")),
        "no fixed 600 px width outside Outlook's conditional comments"
    );
    assert!(
        !html.contains("@media only screen"),
        "the layout does not depend on a media query"
    );
}

#[test]
fn headings_tables_and_links_read_well_without_sight() {
    let (config, digest) = bundled();
    let html = digest.html_for(UNSUB);
    let cs = load_dir(&config.content_dir).unwrap();
    assert_eq!(html.matches("<h1").count(), 1, "one masthead heading");
    assert!(html.contains(">Weekly AI Tool Verdicts</h1>"));
    assert_eq!(
        html.matches("<h2").count(),
        cs.len(),
        "a heading per comparison"
    );
    // Each lens grid is a data table: column and row headers, not hidden from readers.
    let data_tables: Vec<&str> = html
        .split("<table")
        .skip(1)
        .filter(|t| t.contains("scope=\"col\""))
        .collect();
    assert_eq!(data_tables.len(), cs.len());
    for t in &data_tables {
        let open_tag = &t[..t.find('>').unwrap()];
        assert!(
            !open_tag.contains("role="),
            "data table with a role: {open_tag}"
        );
        assert_eq!(
            t.matches("scope=\"row\"").count(),
            4,
            "one row header per lens"
        );
    }
    // Every other table lays things out and says so.
    let layout = html.matches("<table").count() - data_tables.len();
    assert_eq!(html.matches("role=\"presentation\"").count(), layout);
    // No two "read more" links read the same.
    let more: Vec<&str> = html
        .split("Read the full comparison")
        .skip(1)
        .map(|s| &s[..s.find("<span").unwrap()])
        .collect();
    assert_eq!(more.len(), cs.len());
    for c in &cs {
        let title = c.title.replace('&', "&amp;");
        assert!(
            more.iter().any(|m| m.contains(&title)),
            "no link names {title}"
        );
    }
}

#[test]
fn dark_mode_dims_the_table_rules() {
    let (_, digest) = bundled();
    let html = digest.html_for(UNSUB);
    let dark = &html[html.find("prefers-color-scheme: dark").unwrap()..];
    let dark = &dark[..dark.find("</style>").unwrap()];
    for selector in [".colhead", ".split td", ".lens"] {
        assert!(
            dark.lines()
                .any(|l| l.contains(selector) && l.contains("border-bottom-color")),
            "no dark-mode rule line colour for {selector}"
        );
    }
}

#[test]
fn text_lines_fit_72_columns_except_links() {
    let (_, digest) = bundled();
    for line in digest.text_for(UNSUB).lines() {
        if line.chars().count() > TEXT_WIDTH {
            assert!(
                line.trim_start().starts_with("https://"),
                "line too long: {line:?}"
            );
        }
    }
}

#[test]
fn hostile_names_are_escaped_in_html() {
    let (config, _) = bundled();
    let text = fixture("valid.md")
        .replace("name: Alpha Coder", "name: \"<script>alert(1)</script>\"")
        .replace(
            "title: Alpha Coder vs Beta Writer",
            "title: \"<b>Bold</b> & co\"",
        );
    let c = parse_comparison(std::path::Path::new("hostile.md"), &text).unwrap();
    let digest = render_digest(&config.newsletter, &[&c], slot(), chrono_tz::UTC).unwrap();
    let html = digest.html_for(UNSUB);
    assert!(!html.contains("<script>"), "script tag leaked into HTML");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
            || html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;")
    );
    assert!(!html.contains("<b>Bold</b>"));
    assert!(
        digest.text_for(UNSUB).contains("<script>alert(1)</script>"),
        "text shows the name as written"
    );
    assert_eq!(digest.subject, "<b>Bold</b> & co");
}

#[test]
fn eml_is_multipart_alternative_text_then_html() {
    let (config, digest) = bundled();
    let key = TokenKey::new(b"a-test-key-of-enough-length");
    let messages = IssueMessages::new(
        &config.newsletter,
        IssueNumber(1),
        slot(),
        &digest,
        key.clone(),
    );
    let r = Recipient {
        subscriber_id: SubscriberId(42),
        email: "ada@example.com".parse().unwrap(),
        name: Some("Ada Lovelace".into()),
    };
    let raw = messages.build(&r).unwrap().formatted();
    let parsed = mailparse::parse_mail(&raw).unwrap();
    assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
    assert_eq!(parsed.subparts.len(), 2);
    assert_eq!(parsed.subparts[0].ctype.mimetype, "text/plain");
    assert_eq!(parsed.subparts[1].ctype.mimetype, "text/html");
    let text = parsed.subparts[0].get_body().unwrap();
    let html = parsed.subparts[1].get_body().unwrap();
    let url = messages.unsubscribe_url(&r);
    let token = url.split("token=").nth(1).unwrap();
    assert!(key.verify(token, SubscriberId(42), "ada@example.com"));
    assert!(text.contains(&url), "text part has the personal link");
    assert!(html.contains(&url), "HTML part has the personal link");
    assert!(text.contains("Gemini 2.5 Flash Lite"));
    use mailparse::MailHeaderMap;
    let h = &parsed.headers;
    assert_eq!(
        h.get_first_value("List-Unsubscribe-Post").unwrap(),
        "List-Unsubscribe=One-Click"
    );
    assert_eq!(
        h.get_first_value("List-Unsubscribe").unwrap(),
        format!("<{url}>, <mailto:verdicts@example.com?subject=unsubscribe>")
    );
    let mac = key
        .verp_key()
        .message_id_tag(IssueNumber(1), SubscriberId(42));
    assert_eq!(
        h.get_first_value("Message-ID").unwrap(),
        format!("<verdicts.20261123T0900Z.1.42.{mac}@example.com>")
    );
    assert!(h
        .get_first_value("List-Id")
        .unwrap()
        .contains("<weekly.example.com>"));
    assert!(h.get_first_value("Date").is_some());
    assert!(h.get_first_value("To").unwrap().contains("Ada Lovelace"));
    for line in raw.split(|b| *b == b'\n') {
        assert!(line.len() <= 998, "line over SMTP's limit");
    }
}

#[test]
fn empty_site_has_no_comparisons() {
    let site = TempSite::new();
    assert!(load_dir(&site.path().join("content")).unwrap().is_empty());
}
