//! The public site built from the bundled content: every fact of the seed pages on the
//! comparison pages, listings and the issue archive, Atom feeds checked by an independent
//! parser, size limits, and axe-core in headless Chromium over every page type.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use scraper::{ElementRef, Html, Selector};
use verdicts::config::Config;
use verdicts::content::{load_dir, Comparison, Lens, Verdict};
use verdicts::digest::render::render_issue;
use verdicts::mail::message::{IssueMessages, Recipient};
use verdicts::mail::token::TokenKey;
use verdicts::site::{self, ArchivedIssue};
use verdicts::store::IssueNumber;

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn text(e: ElementRef<'_>) -> String {
    e.text()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn bundled_config() -> Config {
    Config::load(&crate::common::bundled_config()).unwrap()
}

fn slot() -> DateTime<Utc> {
    "2026-11-23T09:00:00Z".parse().unwrap()
}

/// The bundled week sent as issue 1.
fn one_issue(config: &Config, comparisons: &[Comparison]) -> ArchivedIssue {
    let refs: Vec<&Comparison> = comparisons.iter().collect();
    let digest = render_issue(config, &refs, slot()).unwrap();
    ArchivedIssue {
        number: IssueNumber(1),
        sent: slot(),
        subject: digest.subject.clone(),
        slugs: comparisons.iter().map(|c| c.slug.clone()).collect(),
        digest,
    }
}

struct Built {
    _dir: tempfile::TempDir,
    out: PathBuf,
    comparisons: Vec<Comparison>,
}

impl Built {
    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.out.join(path))
            .unwrap_or_else(|e| panic!("{path} should exist in the built site: {e}"))
    }

    fn page(&self, path: &str) -> Html {
        Html::parse_document(&self.read(path))
    }

    /// Every file of the site, relative to its root.
    fn files(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.out, &self.out, &mut out);
        out.sort();
        out
    }
}

fn build_bundled() -> Built {
    let config = bundled_config();
    let comparisons = load_dir(&config.content_dir).unwrap();
    let issues = [one_issue(&config, &comparisons)];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("public");
    let report = site::build(&config, &comparisons, &issues, &out).unwrap();
    let built = Built {
        _dir: dir,
        out,
        comparisons,
    };
    assert_eq!(
        report.files,
        built.files().len(),
        "the report counts the files written"
    );
    built
}

#[derive(serde::Deserialize)]
struct SeedTool {
    category: String,
    name: String,
    tagline: String,
    panel_ship: String,
    community: String,
    entry: String,
}

#[derive(serde::Deserialize)]
struct SeedPage {
    title: String,
    tools: Vec<SeedTool>,
}

#[test]
fn comparison_pages_carry_every_fact_of_the_seed_pages() {
    let built = build_bundled();
    let seeds: Vec<SeedPage> =
        serde_json::from_str(&crate::common::fixture("seed-facts.json")).unwrap();
    assert_eq!(seeds.len(), 5);
    for seed in &seeds {
        let c = built
            .comparisons
            .iter()
            .find(|c| c.title == seed.title)
            .unwrap_or_else(|| panic!("no comparison titled {}", seed.title));
        let page = built.page(&format!("{}/index.html", c.slug));
        let h1: Vec<String> = page.select(&sel("main h1")).map(text).collect();
        assert_eq!(h1, [seed.title.as_str()], "one h1, the title");

        let tools: Vec<ElementRef<'_>> = page.select(&sel("section.tool")).collect();
        assert_eq!(tools.len(), 2, "{}: both tools side by side", c.slug);
        for (tool, st) in tools.iter().zip(&seed.tools) {
            let get = |css: &str| tool.select(&sel(css)).next().map(text).unwrap_or_default();
            assert_eq!(get("h3"), st.name);
            assert_eq!(get(".category"), st.category);
            assert_eq!(get(".tagline"), st.tagline);
            let facts: Vec<(String, String)> = tool
                .select(&sel("dl.facts dt"))
                .zip(tool.select(&sel("dl.facts dd")))
                .map(|(t, d)| (text(t), text(d)))
                .collect();
            let fact = |label: &str| {
                facts
                    .iter()
                    .find(|(t, _)| t == label)
                    .map(|(_, d)| d.clone())
                    .unwrap_or_else(|| panic!("{}: no {label} for {}", c.slug, st.name))
            };
            assert_eq!(fact("Panel ship"), st.panel_ship);
            assert_eq!(fact("Community"), st.community);
            assert_eq!(fact("Entry"), st.entry);
            assert!(!get(".summary").is_empty(), "a description of {}", st.name);
        }

        // The scorecard: a data table, a row per lens, both tools' verdicts and takes.
        let table = page
            .select(&sel("table.lenses"))
            .next()
            .expect("lens table");
        let headers: Vec<String> = table
            .select(&sel("thead th[scope=col]"))
            .map(text)
            .collect();
        assert_eq!(
            headers[1..],
            [seed.tools[0].name.clone(), seed.tools[1].name.clone()]
        );
        let rows: Vec<ElementRef<'_>> = table.select(&sel("tbody tr")).collect();
        let lenses: Vec<String> = rows
            .iter()
            .map(|r| text(r.select(&sel("th[scope=row]")).next().unwrap()))
            .collect();
        assert_eq!(lenses, ["Builder", "Skeptic", "Futurist", "Business"]);
        let mut ships = [0, 0];
        for (row, lens) in rows.iter().zip(Lens::ALL) {
            let cells: Vec<ElementRef<'_>> = row.select(&sel("td")).collect();
            assert_eq!(cells.len(), 2);
            for (i, cell) in cells.iter().enumerate() {
                let verdict = text(cell.select(&sel(".verdict")).next().unwrap());
                let word = verdict.rsplit(' ').next().unwrap().to_owned();
                let review = c.tools[i].reviews.get(lens);
                let expected = match review.verdict {
                    Verdict::Ship => "ship",
                    Verdict::Skip => "skip",
                };
                assert_eq!(word, expected, "{} {lens:?} on tool {i}", c.slug);
                ships[i] += usize::from(word == "ship");
                let take = text(cell.select(&sel(".take")).next().unwrap());
                assert_eq!(
                    take,
                    review.take.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
        for (i, st) in seed.tools.iter().enumerate() {
            assert_eq!(
                format!("{}%", ships[i] * 25),
                st.panel_ship,
                "{}: the verdicts on the page add up to the seed's share for {}",
                c.slug,
                st.name
            );
        }

        let pick = text(page.select(&sel("section.tools .pick")).next().unwrap());
        assert!(pick.starts_with("The panel"), "{pick}");
        if let Some(note) = &c.note_text {
            let shown = text(
                page.select(&sel("section.note"))
                    .next()
                    .expect("editor's note"),
            );
            assert!(
                shown.contains(note.split_whitespace().next().unwrap()),
                "{shown}"
            );
        }
        // The note comes after the scorecard, and the signup form closes the page.
        let html = built.read(&format!("{}/index.html", c.slug));
        let (score, signup) = (
            html.find("scorecard-h").unwrap(),
            html.find("signup-h").unwrap(),
        );
        assert!(score < signup);
        let form = page
            .select(&sel("form[method=post]"))
            .next()
            .expect("signup form");
        assert_eq!(
            form.value().attr("action"),
            Some("https://verdicts.example.com/subscribe")
        );
        for name in ["email", "name", "website"] {
            assert!(
                form.select(&sel(&format!("input[name={name}]")))
                    .next()
                    .is_some(),
                "signup form has a {name} field"
            );
        }
    }
}

#[test]
fn listings_put_the_newest_first_and_group_categories() {
    let built = build_bundled();
    let home = built.page("index.html");
    let links: Vec<String> = home
        .select(&sel("ol.cards h3 a"))
        .map(|a| a.value().attr("href").unwrap().to_owned())
        .collect();
    let mut newest: Vec<&Comparison> = built.comparisons.iter().collect();
    newest.sort_by_key(|c| std::cmp::Reverse(c.published_utc()));
    let expected: Vec<String> = newest.iter().map(|c| format!("/{}/", c.slug)).collect();
    assert_eq!(links, expected);
    for link in &links {
        assert!(built
            .out
            .join(link.trim_start_matches('/'))
            .join("index.html")
            .exists());
    }

    let category = built.page("category/developer-tools/index.html");
    assert_eq!(
        text(category.select(&sel("main h1")).next().unwrap()),
        "Developer Tools"
    );
    assert_eq!(category.select(&sel("ol.cards li")).count(), 5);

    let archive = built.page("issues/index.html");
    let issue_links: Vec<&str> = archive
        .select(&sel("ol.cards h3 a"))
        .map(|a| a.value().attr("href").unwrap())
        .collect();
    assert_eq!(issue_links, ["/issues/1/"]);
    assert!(built.read("404.html").contains("Page not found"));
}

#[test]
fn the_archived_issue_is_the_digest_with_the_signup_link_instead_of_unsubscribe() {
    let built = build_bundled();
    let html = built.read("issues/1/index.html");
    let page = Html::parse_document(&html);
    for c in &built.comparisons {
        assert!(
            page.select(&sel("a")).any(|a| text(a) == c.title),
            "issue page links {}",
            c.title
        );
    }
    assert!(
        !html.contains("placeholder.invalid"),
        "no placeholder is left"
    );
    assert!(
        !html.contains("unsubscribe?"),
        "no personal unsubscribe link"
    );
    let unsubscribe = page
        .select(&sel("a"))
        .find(|a| text(*a).contains("Unsubscribe"))
        .expect("the footer link is still there");
    assert_eq!(
        unsubscribe.value().attr("href"),
        Some("https://verdicts.example.com/subscribe")
    );
    assert_eq!(page.select(&sel("main, [role=main]")).count(), 1);
    assert!(page
        .select(&sel("header a[href='/issues/']"))
        .next()
        .is_some());
}

#[test]
fn each_message_links_to_its_issue_page_in_both_parts() {
    let built = build_bundled();
    let config = bundled_config();
    let issue = one_issue(&config, &built.comparisons);
    let messages = IssueMessages::new(
        &config.newsletter,
        issue.number,
        issue.sent,
        &issue.digest,
        TokenKey::new(b"a-test-key-of-enough-length"),
    );
    let r = Recipient {
        subscriber_id: verdicts::store::SubscriberId(7),
        email: "ada@example.com".parse().unwrap(),
        name: None,
    };
    let raw = messages.build(&r).unwrap().formatted();
    let mail = mailparse::parse_mail(&raw).unwrap();
    let plain = mail.subparts[0].get_body().unwrap();
    let html = Html::parse_document(&mail.subparts[1].get_body().unwrap());
    let url = "https://verdicts.example.com/issues/1/";
    assert!(
        plain.contains(&format!("View in browser: {url}")),
        "{plain}"
    );
    let link = html
        .select(&sel("a"))
        .find(|a| text(*a) == "View in browser")
        .expect("a View in browser link");
    assert_eq!(link.value().attr("href"), Some(url));
    assert!(built.out.join("issues/1/index.html").is_file());
}

#[test]
fn every_page_has_its_title_description_and_open_graph_tags_and_stays_small() {
    let built = build_bundled();
    let files = built.files();
    let css: Vec<&String> = files.iter().filter(|f| f.ends_with(".css")).collect();
    assert_eq!(css.len(), 1, "one stylesheet");
    let css_bytes = std::fs::metadata(built.out.join(css[0])).unwrap().len();
    let mut titles = HashSet::new();
    for f in files.iter().filter(|f| f.ends_with(".html")) {
        let html = built.read(f);
        assert!(
            html.len() as u64 + css_bytes < 50 * 1024,
            "{f}: {} bytes of HTML + {css_bytes} of CSS",
            html.len()
        );
        assert!(!html.contains("<script"), "{f}: no JavaScript");
        let page = Html::parse_document(&html);
        let title = text(page.select(&sel("head title")).next().unwrap());
        assert!(!title.is_empty(), "{f}");
        if f != "404.html" {
            assert!(
                titles.insert(title.clone()),
                "{f}: title {title} is used twice"
            );
        }
        for meta in [
            "meta[name=description]",
            "meta[property='og:title']",
            "meta[property='og:description']",
            "meta[property='og:url']",
            "meta[property='og:type']",
        ] {
            let content = page
                .select(&sel(meta))
                .next()
                .and_then(|m| m.value().attr("content"))
                .unwrap_or_else(|| panic!("{f}: no {meta}"));
            assert!(!content.trim().is_empty(), "{f}: empty {meta}");
        }
        assert_eq!(
            page.select(&sel("main, [role=main]")).count(),
            1,
            "{f}: one main landmark"
        );
    }
    let sitemap = built.read("sitemap.xml");
    for c in &built.comparisons {
        assert!(sitemap.contains(&format!(
            "<loc>https://verdicts.example.com/{}/</loc>",
            c.slug
        )));
    }
    assert!(sitemap.contains("<loc>https://verdicts.example.com/issues/1/</loc>"));
    assert!(!sitemap.contains("404"));
}

#[test]
fn atom_feeds_parse_with_feedparser_and_follow_the_atom_rules() {
    crate::require_checker!(crate::checkers::Checker::Feedparser);
    let built = build_bundled();
    let script = Path::new(crate::common::REPO).join("tests/site/check_atom.py");
    for (feed, entries) in [
        ("feed.xml", built.comparisons.len()),
        ("issues/feed.xml", 1),
    ] {
        let out = Command::new(crate::checkers::python())
            .arg(&script)
            .arg(built.out.join(feed))
            .arg(entries.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{feed}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Full content: the comparison entry carries every take.
    let feed = built.read("feed.xml");
    let c = &built.comparisons[0];
    let take = &c.tools[1].reviews.business.take;
    let words: Vec<&str> = take.split_whitespace().take(6).collect();
    assert!(
        feed.contains(&words.join(" ")),
        "the feed entry has the full comparison"
    );
}

#[test]
fn axe_finds_no_violations_on_any_page_type() {
    let tools = Path::new(crate::common::REPO).join("tests/a11y");
    crate::require_checker!(crate::checkers::Checker::Browser);
    let built = build_bundled();
    let c = &built.comparisons[0];
    let pages = [
        "/".to_owned(),
        format!("/{}/", c.slug),
        "/category/developer-tools/".to_owned(),
        "/issues/".to_owned(),
        "/issues/1/".to_owned(),
        "/404.html".to_owned(),
    ];
    let out = Command::new("node")
        .current_dir(&tools)
        .arg("site.mjs")
        .arg(&built.out)
        .args(&pages)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "axe-core found violations:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each page was checked in light and dark mode.
    assert_eq!(
        report.matches("0 violations").count(),
        pages.len() * 2,
        "{report}"
    );
}

// ---------------------------------------------------------------------------------------
// The site in the running system: sending, serving, and the lint gate.

const AT: &str = "2026-11-23T09:00:00Z";

fn site_config(smtp_port: u16) -> crate::common::TestConfig {
    crate::common::TestConfig::default()
        .smtp_port(smtp_port)
        .section("site:\n  out_dir: public")
        // The digest's links as written, straight to the site (tracking.rs covers the
        // tracked ones).
        .section("tracking:\n  clicks: off")
}

/// Every run of token-like characters in `text` long enough to be a signed token.
fn token_candidates(text: &str) -> HashSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.~".contains(c)))
        .filter(|w| w.len() >= 16)
        .collect()
}

#[test]
fn after_a_send_the_archive_page_exists_without_any_token_and_messages_link_to_it() {
    use crate::smtp::TestSmtp;
    let server = TestSmtp::start();
    let site = crate::common::TempSite::with_bundled_content();
    site.configure(&site_config(server.port()));
    let readers = ["ada@example.com", "bob@example.com", "cy@example.com"];
    for who in readers {
        site.cmd()
            .args(["subscribers", "add", who])
            .assert()
            .success();
    }
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .success();

    let page_path = site.path().join("public/issues/1/index.html");
    let html = std::fs::read_to_string(&page_path).expect("the send built issues/1/");
    let page = Html::parse_document(&html);
    let comparisons = load_dir(&site.path().join("content")).unwrap();
    assert_eq!(comparisons.len(), 5);
    for c in &comparisons {
        assert!(
            page.select(&sel("a")).any(|a| text(a) == c.title),
            "the archived issue shows {}",
            c.title
        );
    }

    // No token in the page verifies for any subscriber.
    let key = TokenKey::new(crate::common::TEST_SECRET.as_bytes());
    let conn = site.db();
    let subscribers: Vec<(i64, String)> = conn
        .prepare("SELECT id, email_norm FROM subscribers")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(subscribers.len(), readers.len());
    let candidates = token_candidates(&html);
    for (id, email) in &subscribers {
        for t in &candidates {
            assert!(
                !key.verify(t, verdicts::store::SubscriberId(*id), email),
                "the archive holds {email}'s token"
            );
        }
    }

    // Every message links to the page; the tokens the messages carry are not in it.
    let received = server.received();
    assert_eq!(received.len(), readers.len());
    for m in &received {
        let mail = mailparse::parse_mail(&m.raw).unwrap();
        let plain = mail.subparts[0].get_body().unwrap();
        let body = Html::parse_document(&mail.subparts[1].get_body().unwrap());
        assert!(plain.contains("View in browser: https://verdicts.example.com/issues/1/"));
        assert!(body
            .select(&sel("a[href='https://verdicts.example.com/issues/1/']"))
            .next()
            .is_some());
        let unsubscribe = plain
            .lines()
            .find_map(|l| l.split_whitespace().find(|w| w.contains("token=")))
            .expect("a personal unsubscribe link");
        let token = unsubscribe.split("token=").nth(1).unwrap();
        assert!(
            !html.contains(token),
            "a reader's token leaked into the archive"
        );
    }
}

#[test]
fn serve_answers_with_the_built_site_its_types_caching_and_404() {
    let site = crate::common::TempSite::with_bundled_content();
    site.configure(&site_config(2525));
    site.cmd().arg("init").assert().success();
    site.cmd().args(["site", "build"]).assert().success();
    let mut serve = crate::common::Process::start(&site, &["serve"]);
    let port = serve.web_port();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        let started = std::time::Instant::now();
        loop {
            match agent.get(&url).call() {
                Ok(r) => return r,
                Err(e) if started.elapsed() < std::time::Duration::from_secs(20) => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("{url}: {e}"),
            }
        }
    };
    let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };

    let slug = "gemini-2-5-flash-lite-vs-ml-intern";
    let mut home = get("/");
    assert_eq!(home.status(), 200);
    assert!(header(&home, "content-type").starts_with("text/html"));
    assert_eq!(header(&home, "cache-control"), "public, max-age=300");
    let body = home.body_mut().read_to_string().unwrap();
    let stylesheet = body
        .split("rel=\"stylesheet\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();

    let css = get(&stylesheet);
    assert_eq!(css.status(), 200);
    assert!(header(&css, "content-type").starts_with("text/css"));
    assert!(header(&css, "cache-control").contains("immutable"));

    let page = get(&format!("/{slug}/"));
    assert_eq!(page.status(), 200);
    // Every comparison the digest links answers at once, without a redirect.
    site.cmd()
        .args(["preview", "--at", AT, "--out", "o"])
        .assert()
        .success();
    let digest = std::fs::read_to_string(site.path().join("o/digest.html")).unwrap();
    let pages: HashSet<&str> = digest
        .split("href=\"https://verdicts.example.com/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|path| {
            !path.starts_with("unsubscribe")
                && !path.starts_with("issues/")
                && !path.starts_with("vote/")
        })
        .collect();
    assert_eq!(pages.len(), 5, "{pages:?}");
    for path in pages {
        assert_eq!(get(&format!("/{path}")).status(), 200, "{path}");
    }
    // A bare `base_url/slug` (typed, or from an older digest) is sent to the page's folder.
    let bare = get(&format!("/{slug}"));
    assert!(bare.status().is_redirection(), "{}", bare.status());
    assert!(header(&bare, "location").ends_with(&format!("/{slug}/")));

    let feed = get("/feed.xml");
    assert_eq!(
        header(&feed, "content-type"),
        "application/atom+xml; charset=utf-8"
    );

    let mut missing = get("/renamed-slug/");
    assert_eq!(missing.status(), 404);
    assert_eq!(header(&missing, "cache-control"), "no-cache");
    assert!(missing
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("Page not found"));
    // The endpoints still answer beside the site.
    assert_eq!(get("/healthz").status(), 200);
    serve.sigterm();
}

#[test]
fn lint_fails_an_issue_linking_to_a_page_the_site_does_not_have() {
    let site = crate::common::TempSite::with_bundled_content();
    site.configure(&site_config(2525));
    site.cmd().args(["lint", "--at", AT]).assert().success();

    let file = site
        .comparisons()
        .join("gemini-2-5-flash-lite-vs-ml-intern.md");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{text}\nCompare the [older verdict](https://verdicts.example.com/gemini-vs-ml-intern).\n"),
    )
    .unwrap();
    let out = site
        .cmd()
        .args(["lint", "--at", AT])
        .assert()
        .failure()
        .get_output()
        .clone();
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(shown.contains("site-links"), "{shown}");
    assert!(
        shown.contains("https://verdicts.example.com/gemini-vs-ml-intern"),
        "{shown}"
    );
}

/// Waits for `path` to satisfy `ready`, up to `limit`.
fn wait_until(limit: std::time::Duration, what: &str, ready: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_rebuilds_the_site_when_content_changes_and_keeps_it_on_bad_content() {
    let site = crate::common::TempSite::with_bundled_content();
    // A schedule that does not fire during the test: only content changes rebuild.
    site.configure(&site_config(2525).schedule("0 0 9 1 1 *", "UTC"));
    site.cmd().arg("init").assert().success();
    let mut daemon = crate::common::Process::start(&site, &["run"]);
    let public = site.path().join("public");
    let limit = std::time::Duration::from_secs(30);
    wait_until(limit, "the site is built at start", || {
        public.join("index.html").is_file()
    });
    let new_page = public.join("alpha-coder-vs-beta-writer/index.html");
    assert!(!new_page.exists());

    site.add_comparison("alpha.md", &crate::common::fixture("valid.md"));
    wait_until(limit, "the new comparison gets its page", || {
        new_page.is_file()
    });
    let home = std::fs::read_to_string(public.join("index.html")).unwrap();
    assert!(
        home.contains("Alpha Coder vs Beta Writer"),
        "listed on the home page"
    );

    // A broken file: the daemon says why and the published site stays as it was.
    site.add_comparison("broken.md", "---\ntitle: [unclosed\n---\n");
    daemon.wait_for_log("site not rebuilt", limit);
    assert!(new_page.is_file(), "the last good site is still there");
    daemon.sigterm();
}

#[test]
fn a_slug_that_collides_with_the_site_is_refused_and_a_failed_build_leaves_the_site() {
    let site = crate::common::TempSite::with_bundled_content();
    site.configure(&site_config(2525));
    site.cmd()
        .args(["site", "build"])
        .assert()
        .success()
        .stdout(predicates::str::contains("Built 13 files"));
    let before = std::fs::read_to_string(site.path().join("public/index.html")).unwrap();

    let text = crate::common::fixture("valid.md")
        .replace("slug: alpha-coder-vs-beta-writer", "slug: issues");
    site.add_comparison("issues.md", &text);
    site.cmd()
        .args(["site", "build"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("issues.md:3: field `slug`"))
        .stderr(predicates::str::contains("taken by the site"));
    let after = std::fs::read_to_string(site.path().join("public/index.html")).unwrap();
    assert_eq!(before, after, "the published site is untouched");
}
