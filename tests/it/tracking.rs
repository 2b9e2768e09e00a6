//! Readers' votes and click counts, end to end: a real send to the test SMTP server, the
//! links taken from the captured messages, and a real HTTP client against `verdicts serve`.
//! What the operator reads (`issues show`, the rebuilt site, the report) must show the
//! people and leave out the scanners.

use std::time::{Duration, Instant};

use crate::common::{seed_subscribers, Process, TempSite, TestConfig};
use crate::smtp::TestSmtp;

const SLOT: &str = "2026-11-23T09:00:00Z";
const FIRST: &str = "gemini-2-5-flash-lite-vs-llama-4-scout-fine-tuning-toolkit";
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A newsletter with the bundled week, `readers` subscribers and the given `tracking:`
/// lines, its issue sent to `server`.
fn sent_site(server: &TestSmtp, readers: usize, tracking: &str) -> TempSite {
    let site = TempSite::with_bundled_content();
    let mut config = TestConfig::default().smtp_port(server.port());
    if !tracking.is_empty() {
        config = config.section(&format!("tracking:\n{tracking}"));
    }
    site.configure(&config);
    seed_subscribers(&site, readers);
    site.cmd()
        .args(["send", "--at", SLOT, "--yes"])
        .assert()
        .success();
    assert_eq!(server.wait_for(readers, Duration::from_secs(30)), readers);
    site
}

/// Each reader's address and the links of their HTML and text parts, in order.
fn links(server: &TestSmtp) -> Vec<(String, Vec<String>)> {
    let href = regex::Regex::new(r#"https?://[^\s"'<>]+"#).unwrap();
    let mut out: Vec<(String, Vec<String>)> = server
        .received()
        .iter()
        .map(|m| {
            let mail = mailparse::parse_mail(&m.raw).unwrap();
            let mut urls = Vec::new();
            for part in &mail.subparts {
                let body = part.get_body().unwrap();
                urls.extend(href.find_iter(&body).map(|u| {
                    u.as_str()
                        .trim_end_matches(['.', ','])
                        .replace("&amp;", "&")
                }));
            }
            (m.rcpt[0].to_lowercase(), urls)
        })
        .collect();
    out.sort();
    out
}

/// The path and query of a link under the test base URL.
fn local(url: &str) -> &str {
    match url.strip_prefix("https://verdicts.example.com") {
        Some("") => "/",
        Some(path) => path,
        None => panic!("{url} is not under base_url"),
    }
}

struct Served {
    process: Process,
    port: u16,
}

impl Served {
    fn start(site: &TempSite) -> Served {
        let mut process = Process::start(site, &["serve"]);
        let port = process.web_port();
        crate::common::wait_for_http(port);
        Served { process, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str, agent: &str) -> (u16, String, String) {
        let resp = http()
            .get(&self.url(path))
            .header("User-Agent", agent)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.process.log()));
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, location, resp.into_body().read_to_string().unwrap())
    }

    fn head(&self, path: &str) -> u16 {
        http()
            .head(&self.url(path))
            .header("User-Agent", BROWSER)
            .call()
            .unwrap()
            .status()
            .as_u16()
    }

    fn post_vote(&self, path: &str, choice: &str) -> (u16, String) {
        let resp = http()
            .post(&self.url(path))
            .header("User-Agent", BROWSER)
            .content_type("application/x-www-form-urlencoded")
            .send(format!("choice={choice}"))
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().read_to_string().unwrap())
    }
}

fn count(site: &TempSite, sql: &str) -> i64 {
    site.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Waits until the writer has stored `n` clicks.
fn wait_for_clicks(site: &TempSite, n: i64) {
    let started = Instant::now();
    while count(site, "SELECT COUNT(*) FROM clicks") < n {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} of {n} clicks were stored",
            count(site, "SELECT COUNT(*) FROM clicks")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn issues_show(site: &TempSite) -> String {
    let out = site.cmd().args(["issues", "show", "1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The vote links of a reader's copy, as (path, tool, choice) for the first comparison.
fn vote_link(urls: &[String], tool: u8, choice: &str) -> String {
    let want = format!("/vote/{FIRST}/{tool}/{choice}?r=");
    urls.iter()
        .map(|u| local(u).to_owned())
        .find(|p| p.starts_with(&want))
        .unwrap_or_else(|| panic!("no {want} link in {urls:?}"))
}

/// The tracked link to the first comparison's page.
fn comparison_click(urls: &[String]) -> String {
    use base64::Engine;
    urls.iter()
        .map(|u| local(u).to_owned())
        .find(|p| {
            p.strip_prefix("/c/").is_some_and(|t| {
                let target = t.split('.').nth(2).unwrap_or_default();
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(target)
                    .is_ok_and(|t| t == format!("/{FIRST}/").as_bytes())
            })
        })
        .expect("a tracked link to the first comparison")
}

#[test]
fn readers_votes_and_clicks_reach_issues_show_and_the_rebuilt_site() {
    let server = TestSmtp::start();
    let site = sent_site(&server, 6, "  machine_delay: 1s\n");
    let copies = links(&server);
    assert_eq!(copies.len(), 6);
    let served = Served::start(&site);

    // Following a vote link shows the choice and changes nothing.
    let first = &copies[0].1;
    let (status, _, page) = served.get(&vote_link(first, 0, "ship"), BROWSER);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("value=\"ship\" checked"), "{page}");
    assert!(page.contains("Gemini 2.5 Flash Lite"), "{page}");
    assert_eq!(count(&site, "SELECT COUNT(*) FROM votes"), 0);

    // Five readers ship the first tool, one skips it; reader 0 first skips, then changes
    // their mind: one vote each.
    let (status, page) = served.post_vote(&vote_link(first, 0, "skip"), "skip");
    assert_eq!(status, 200, "{page}");
    for (i, (_, urls)) in copies.iter().enumerate() {
        let choice = if i == 5 { "skip" } else { "ship" };
        let (status, page) = served.post_vote(&vote_link(urls, 0, choice), choice);
        assert_eq!(status, 200, "{page}");
        if i == 0 {
            assert!(page.contains("now <strong>ship</strong>"), "{page}");
        }
    }
    assert_eq!(count(&site, "SELECT COUNT(*) FROM votes"), 6);
    // A reader's access request lists their vote.
    let show = site
        .cmd()
        .args(["subscribers", "show", &copies[5].0])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let record: serde_json::Value = serde_json::from_slice(&show).unwrap();
    assert_eq!(record["votes"][0]["choice"], "skip", "{record}");
    assert_eq!(record["votes"].as_array().unwrap().len(), 1, "{record}");

    // Four readers open the first comparison, after the machine delay has passed.
    std::thread::sleep(Duration::from_millis(1200));
    // Four people: in aggregate mode a person is a browser (address and user agent).
    for (i, (_, urls)) in copies.iter().take(4).enumerate() {
        let agent = format!("{BROWSER} reader/{i}");
        let (status, location, _) = served.get(&comparison_click(urls), &agent);
        assert_eq!(status, 302);
        // The reader's token rides along to the page (for its vote buttons).
        assert!(
            location.starts_with(&format!("https://verdicts.example.com/{FIRST}/?r=1.")),
            "{location}"
        );
    }
    wait_for_clicks(&site, 4);

    let show = issues_show(&site);
    assert!(
        show.contains("Human clickers: 4 (66.7% of 6 delivered)"),
        "{show}"
    );
    assert!(show.contains(&format!("  {FIRST}  4")), "{show}");
    assert!(show.contains("Votes:       6"), "{show}");
    assert!(show.contains("Machine clicks filtered: 0"), "{show}");
    let list = site.cmd().arg("issues").output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains("human clickers 4, CTR 66.7%"), "{list}");

    // The rebuilt site shows the live figure (5 of 6 ship) and still does after another
    // rebuild: the votes live in the database.
    for _ in 0..2 {
        site.cmd()
            .args(["site", "build", "--out", "public"])
            .assert()
            .success();
        let html = std::fs::read_to_string(site.path().join(format!("public/{FIRST}/index.html")))
            .unwrap();
        let doc = scraper::Html::parse_document(&html);
        let sel = scraper::Selector::parse("dd").unwrap();
        let figures: Vec<String> = doc
            .select(&sel)
            .map(|d| d.text().collect::<String>())
            .filter(|t| t.contains("vote") || t == "—")
            .collect();
        assert_eq!(figures, ["83% ship (6 votes)", "—"], "{html}");
        // The listings show it too.
        let home = std::fs::read_to_string(site.path().join("public/index.html")).unwrap();
        assert!(
            home.contains("Community: Gemini 2.5 Flash Lite: 83% ship (6 votes) · Meta Llama 4 Scout Fine-Tuning Toolkit: —"),
            "{home}"
        );
    }
    drop(served);
}

#[test]
fn scanners_prefetch_early_and_decoy_clicks_count_apart_and_cast_no_vote() {
    let server = TestSmtp::start();
    let site = sent_site(&server, 2, "  machine_delay: 1s\n");
    let copies = links(&server);
    let served = Served::start(&site);
    let all: Vec<String> = copies[0].1.iter().map(|u| local(u).to_owned()).collect();
    let tracked: Vec<&String> = all.iter().filter(|p| p.starts_with("/c/")).collect();
    assert!(tracked.len() > 10, "{all:?}");

    // Safe Links: every link of the copy fetched within a second of delivery.
    for path in &all {
        let (status, _, _) = served.get(path, BROWSER);
        if path.starts_with("/c/") {
            assert_eq!(status, 302, "{path}");
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    // After the delay: HEAD requests, a scanner's user agent, a prefetch.
    for path in &tracked {
        assert_eq!(served.head(path), 302);
        let (status, _, _) = served.get(path, "Mozilla/5.0 (compatible; Microsoft SafeLinks)");
        assert_eq!(status, 302);
    }
    let resp = http()
        .get(&served.url(tracked[1]))
        .header("User-Agent", BROWSER)
        .header("Sec-Purpose", "prefetch")
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    // The second reader's client follows every link, the hidden decoy included, late.
    let second: Vec<String> = copies[1].1.iter().map(|u| local(u).to_owned()).collect();
    let second_tracked: Vec<&String> = second.iter().filter(|p| p.starts_with("/c/")).collect();
    for path in &second_tracked {
        let (status, _, _) = served.get(path, "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15");
        assert_eq!(status, 302);
    }
    let total = (tracked.len() * 3 + 1 + second_tracked.len()) as i64;
    wait_for_clicks(&site, total);

    assert_eq!(count(&site, "SELECT COUNT(*) FROM votes"), 0);
    let show = issues_show(&site);
    assert!(show.contains("Human clickers: 0"), "{show}");
    assert!(
        show.contains(&format!("Machine clicks filtered: {total}")),
        "{show}"
    );
    assert_eq!(
        count(
            &site,
            "SELECT COUNT(*) FROM clicks WHERE machine IS NULL AND visitor NOT IN
             (SELECT visitor FROM clicks WHERE machine = 'decoy')"
        ),
        0
    );
}

#[test]
fn bad_tokens_and_refused_votes_record_nothing() {
    let server = TestSmtp::start();
    let site = sent_site(&server, 2, "");
    let copies = links(&server);
    let served = Served::start(&site);
    let urls = &copies[0].1;
    let click = comparison_click(urls);
    let token = click
        .split('?')
        .next()
        .unwrap()
        .strip_prefix("/c/")
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    use base64::Engine;
    let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("//evil.example/");
    for bad in [
        format!("/c/{}", &token[..token.len() - 3]),
        format!("/c/{}.{}.{evil}.{}", parts[0], parts[1], parts[3]),
        format!("/c/2.{}.{}.{}", parts[1], parts[2], parts[3]),
        "/c/garbage".to_string(),
    ] {
        let (status, location, page) = served.get(&bad, BROWSER);
        assert_eq!(status, 400, "{bad}: {page}");
        assert!(location.is_empty());
        assert!(page.contains("not valid"), "{page}");
    }

    // A vote link altered to speak for the other reader, cut short, or for a comparison
    // that does not exist.
    let vote = vote_link(urls, 1, "ship");
    let (path, reader) = vote.split_once("?r=").unwrap();
    let other = copies[1].1.iter().find(|u| u.contains("?r=")).unwrap();
    let other_reader = other.split_once("?r=").unwrap().1;
    let (issue_sub, mac) = reader.rsplit_once('.').unwrap();
    let other_mac = other_reader.rsplit_once('.').unwrap().1;
    for bad in [
        format!("{path}?r={issue_sub}.{other_mac}"),
        format!("{path}?r={}", &reader[..reader.len() - 4]),
        path.to_string(),
        format!("{path}?r=2.{}", reader.split_once('.').unwrap().1),
    ] {
        let (status, page) = served.post_vote(&bad, "ship");
        assert_eq!(status, 400, "{bad}: {page}");
    }
    let _ = mac;
    let (status, page) =
        served.post_vote(&format!("/vote/no-such-thing/0/ship?r={reader}"), "ship");
    assert_eq!(status, 400);
    assert!(page.contains("no comparison called"), "{page}");
    assert_eq!(count(&site, "SELECT COUNT(*) FROM votes"), 0);

    // A replayed vote is one vote.
    for _ in 0..3 {
        assert_eq!(served.post_vote(&vote, "ship").0, 200);
    }
    assert_eq!(count(&site, "SELECT COUNT(*) FROM votes"), 1);

    // After unsubscribing, the vote stays counted but a new one is refused.
    site.cmd()
        .args(["subscribers", "unsubscribe", &copies[0].0])
        .assert()
        .success();
    let (status, page) = served.post_vote(&vote_link(urls, 0, "skip"), "skip");
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("no longer subscribed"), "{page}");
    assert_eq!(count(&site, "SELECT COUNT(*) FROM votes"), 1);
    assert_eq!(count(&site, "SELECT COUNT(*) FROM clicks"), 0);

    // Once the issue's per-recipient rows are gone (retention), its links still redirect.
    site.db()
        .execute("DELETE FROM deliveries WHERE issue = 1", [])
        .unwrap();
    let (status, location, _) = served.get(&click, BROWSER);
    assert_eq!(status, 302);
    assert!(location.starts_with(&format!("https://verdicts.example.com/{FIRST}/")));
    wait_for_clicks(&site, 1);
}

#[test]
fn clicks_off_links_go_straight_to_the_site_and_nothing_is_recorded() {
    let server = TestSmtp::start();
    let site = sent_site(&server, 1, "  clicks: off\n");
    let copies = links(&server);
    let urls = &copies[0].1;
    assert!(urls.iter().all(|u| !u.contains("/c/")), "{urls:?}");
    assert!(urls
        .iter()
        .any(|u| u.starts_with(&format!("https://verdicts.example.com/{FIRST}/?r=1."))));
    let served = Served::start(&site);
    for u in urls.iter().filter(|u| !u.contains("/unsubscribe")) {
        let _ = served.get(local(u), BROWSER);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&site, "SELECT COUNT(*) FROM clicks"), 0);
    assert_eq!(count(&site, "SELECT COUNT(*) FROM votes"), 0);
}

#[test]
fn the_report_needs_the_operators_token_and_matches_issues_show() {
    let server = TestSmtp::start();
    // The harness passes VERDICTS_SECRET to the processes it starts; the report's token is
    // read from it here only because it is the one variable a test can count on.
    let site = sent_site(
        &server,
        8,
        "  machine_delay: 0s\n  report_token_env: VERDICTS_SECRET\n",
    );
    let copies = links(&server);
    let served = Served::start(&site);
    // Five people click, one of them twice; a scanner follows every link of one copy.
    for (i, (_, urls)) in copies.iter().take(5).enumerate() {
        let agent = format!("{BROWSER} reader/{i}");
        let tracked: Vec<String> = urls
            .iter()
            .map(|u| local(u).to_owned())
            .filter(|p| p.starts_with("/c/") && p.contains("?r="))
            .collect();
        assert_eq!(served.get(&tracked[i % tracked.len()], &agent).0, 302);
        if i == 0 {
            assert_eq!(served.get(&comparison_click(urls), &agent).0, 302);
        }
    }
    for p in copies[7]
        .1
        .iter()
        .map(|u| local(u))
        .filter(|p| p.starts_with("/c/"))
    {
        served.get(p, "Mozilla/5.0 (compatible; Barracuda Sentinel)");
    }
    for (i, (_, urls)) in copies.iter().enumerate().take(6) {
        let choice = if i < 2 { "ship" } else { "skip" };
        assert_eq!(served.post_vote(&vote_link(urls, 0, choice), choice).0, 200);
    }
    let scanned = copies[7].1.iter().filter(|u| u.contains("/c/")).count() as i64;
    wait_for_clicks(&site, 6 + scanned);

    // Served only with the operator's token.
    assert_eq!(served.get("/report/", BROWSER).0, 401);
    assert_eq!(
        served
            .get("/report/?token=wrong-token-0123456789", BROWSER)
            .0,
        401
    );
    let (status, _, served_html) = served.get(
        &format!("/report/?token={}", crate::common::TEST_SECRET),
        BROWSER,
    );
    assert_eq!(status, 200);

    let out = site.path().join("report");
    site.cmd()
        .args(["report", "--out"])
        .arg(&out)
        .assert()
        .success();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external asset"
    );
    let show = issues_show(&site);
    assert!(
        show.contains("Human clickers: 5 (62.5% of 8 delivered)"),
        "{show}"
    );
    assert!(html.contains("click-through 62.5%"), "{html}");
    assert!(
        html.contains(&format!("{scanned} machine clicks filtered")),
        "{html}"
    );
    assert!(
        show.contains(&format!("Machine clicks filtered: {scanned}")),
        "{show}"
    );
    assert!(html.contains("6 votes"), "{html}");
    // The panel ships Gemini 2.5 Flash Lite (100%), readers mostly skip it (33%).
    assert!(html.contains("<th scope=\"row\">Gemini 2.5 Flash Lite</th><td>100% ship</td><td>33% ship</td><td>6</td><td><strong>disagree</strong>"), "{html}");
    assert!(served_html.contains("click-through 62.5%"));

    let Some(chromium) =
        crate::checkers::available(crate::checkers::Checker::Browser, module_path!())
            .then(crate::checkers::chromium)
    else {
        return;
    };
    let tooling = std::path::Path::new(crate::common::REPO).join("tests/a11y");
    let run = std::process::Command::new("node")
        .arg(tooling.join("check.mjs"))
        .arg(out.join("index.html"))
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    for mode in ["light", "dark"] {
        let v = &report[0][mode];
        assert_eq!(v.as_array().map(Vec::len), Some(0), "{mode}: {v}");
    }
    // The picture in docs/report.png, at 1280 px, when asked for.
    if std::env::var_os("VERDICTS_WRITE_REPORT_PNG").is_some() {
        let png = std::path::Path::new(crate::common::REPO).join("docs/report.png");
        let shot = std::process::Command::new("node")
            .arg(tooling.join("check.mjs"))
            .args(["--screenshot"])
            .arg(&png)
            .args(["--width", "1280"])
            .arg(out.join("index.html"))
            .env("CHROMIUM", &chromium)
            .output()
            .unwrap();
        assert!(
            shot.status.success(),
            "{}",
            String::from_utf8_lossy(&shot.stderr)
        );
    }
}

#[test]
fn the_comparison_page_offers_the_vote_only_to_a_reader_with_a_token() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.configure(
        &TestConfig::default()
            .smtp_port(server.port())
            .section("site:\n  out_dir: public"),
    );
    seed_subscribers(&site, 1);
    site.cmd()
        .args(["send", "--at", SLOT, "--yes"])
        .assert()
        .success();
    server.wait_for(1, Duration::from_secs(30));
    let copies = links(&server);
    let served = Served::start(&site);
    let (status, location, _) = served.get(&comparison_click(&copies[0].1), BROWSER);
    assert_eq!(status, 302);
    let page = local(&location).to_owned();
    let (status, _, with_token) = served.get(&page, BROWSER);
    assert_eq!(status, 200);
    assert!(with_token.contains("Your vote"), "{with_token}");
    assert!(with_token.contains("Would you ship Gemini 2.5 Flash Lite?"));
    let (status, _, anonymous) = served.get(&format!("/{FIRST}/"), BROWSER);
    assert_eq!(status, 200);
    assert!(!anonymous.contains("Your vote"));
    let (_, _, forged) = served.get(&format!("/{FIRST}/?r=1.1.AAAAAAAAAAAAAAAAAAAAAA"), BROWSER);
    assert!(!forged.contains("Your vote"));
    // The page's button records the vote.
    let action = with_token
        .split("action=\"")
        .filter_map(|a| a.split('"').next())
        .find(|a| a.starts_with("/vote/"))
        .unwrap()
        .replace("&amp;", "&");
    assert_eq!(served.post_vote(&action, "skip").0, 200);
    assert_eq!(
        count(
            &site,
            "SELECT COUNT(*) FROM votes WHERE choice = 'skip' AND tool = 0"
        ),
        1
    );
}

#[test]
fn per_reader_clicks_name_the_reader_and_count_people_not_browsers() {
    let server = TestSmtp::start();
    let site = sent_site(&server, 3, "  clicks: per-reader\n  machine_delay: 0s\n");
    let copies = links(&server);
    let served = Served::start(&site);
    // Three readers behind one office proxy with the same browser: three people.
    for (_, urls) in &copies {
        assert_eq!(served.get(&comparison_click(urls), BROWSER).0, 302);
    }
    wait_for_clicks(&site, 3);
    assert_eq!(
        count(&site, "SELECT COUNT(DISTINCT subscriber_id) FROM clicks"),
        3
    );
    assert!(issues_show(&site).contains("Human clickers: 3 (100.0% of 3 delivered)"));
    // Every tracked link carries the reader's token; an altered one is not recorded as
    // theirs.
    let click = comparison_click(&copies[0].1);
    let forged = format!("{}AAAA", &click[..click.len() - 4]);
    assert_eq!(served.get(&forged, BROWSER).0, 302);
    wait_for_clicks(&site, 4);
    assert_eq!(
        count(
            &site,
            "SELECT COUNT(*) FROM clicks WHERE subscriber_id IS NULL"
        ),
        1
    );
}

#[test]
fn the_open_pixel_is_off_by_default_and_reported_as_machine_opens_when_on() {
    let server = TestSmtp::start();
    let site = sent_site(&server, 1, "");
    assert!(links(&server)[0].1.iter().all(|u| !u.contains("/o/")));
    drop(site);

    let server = TestSmtp::start();
    let site = sent_site(&server, 1, "  opens: on\n");
    let copies = links(&server);
    let pixel = copies[0]
        .1
        .iter()
        .find(|u| u.contains("/o/"))
        .expect("the pixel")
        .clone();
    let served = Served::start(&site);
    let resp = http()
        .get(&served.url(local(&pixel)))
        .header("User-Agent", BROWSER)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "image/gif");
    wait_for_clicks(&site, 1);
    let show = issues_show(&site);
    assert!(
        show.contains("Opens:       1 (machine opens likely)"),
        "{show}"
    );
    assert!(show.contains("Human clickers: 0"), "{show}");
}
