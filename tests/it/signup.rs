//! Signup with double opt-in, end to end: `verdicts serve` as a real process, a real HTTP
//! client posting the form (and JSON), confirmation mails arriving at the test SMTP
//! server, and the next issue going to whoever confirmed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{wait_for_http, Process, TempSite, TEST_SECRET};
use crate::smtp::{closed_port, Behaviour, TestSmtp};
use mailparse::MailHeaderMap;
use predicates::prelude::*;

/// A site with the bundled content, SMTP on `smtp_port`, the endpoint on `web_port`, and
/// the given `signup:` section.
pub(crate) fn signup_site(smtp_port: u16, web_port: u16, signup: &str) -> TempSite {
    let site = TempSite::with_bundled_content();
    let mut config = crate::common::config_yaml(smtp_port, "")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{web_port}"));
    config.push_str(signup);
    std::fs::write(site.config_path(), config).unwrap();
    // A newsletter that takes signups starts from an explicitly created database.
    site.cmd().arg("init").assert().success();
    site
}

/// `verdicts serve` for the site, once it answers.
pub(crate) struct Served {
    process: Process,
    port: u16,
}

impl Served {
    pub(crate) fn start(site: &TempSite, port: u16) -> Served {
        Self::start_command(site, port, "serve")
    }

    /// `verdicts run` (the daemon) or `verdicts serve`.
    fn start_command(site: &TempSite, port: u16, command: &str) -> Served {
        let process = Process::start(site, &[command]);
        wait_for_http(port);
        Served { process, port }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn kill_9(self) {
        self.process.kill();
    }
}

pub(crate) fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Status, Retry-After and body of a response.
pub(crate) struct Answer {
    pub(crate) status: u16,
    retry_after: Option<String>,
    pub(crate) body: String,
}

pub(crate) fn answer(resp: ureq::http::Response<ureq::Body>) -> Answer {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status,
        retry_after,
        body: resp.into_body().read_to_string().unwrap(),
    }
}

pub(crate) fn post_form(agent: &ureq::Agent, url: &str, body: &str) -> Answer {
    answer(
        agent
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .unwrap(),
    )
}

fn post_json(agent: &ureq::Agent, url: &str, body: &str) -> Answer {
    answer(
        agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap(),
    )
}

/// The status of an address, or "absent".
fn status_of(site: &TempSite, email: &str) -> String {
    use rusqlite::OptionalExtension;
    site.db()
        .query_row(
            "SELECT status FROM subscribers WHERE email_norm = ?1",
            [email],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
        .unwrap_or_else(|| "absent".into())
}

/// The confirmation link of a received mail (text part), pointed at the local endpoint.
pub(crate) fn confirm_link(server: &TestSmtp, to: &str, port: u16) -> String {
    let mail = server
        .received()
        .into_iter()
        .find(|m| m.rcpt.iter().any(|r| r == to))
        .unwrap_or_else(|| panic!("no mail to {to}"));
    let parsed = mailparse::parse_mail(&mail.raw).unwrap();
    let text = parsed
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/plain")
        .expect("a text part")
        .get_body()
        .unwrap();
    let url = text
        .lines()
        .find(|l| l.contains("/confirm?token="))
        .expect("a confirmation link")
        .trim()
        .to_owned();
    url.replace(
        "https://verdicts.example.com",
        &format!("http://127.0.0.1:{port}"),
    )
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn a_visitor_signs_up_confirms_by_button_and_gets_the_next_issue() {
    let server = TestSmtp::start();
    let web = closed_port();
    let site = signup_site(server.port(), web, "");
    site.cmd()
        .args(["subscribers", "add", "old@example.com"])
        .assert()
        .success();
    let served = Served::start(&site, web);
    let agent = http();

    // The form page is there, with the honeypot.
    let form = answer(agent.get(&served.url("/subscribe")).call().unwrap());
    assert_eq!(form.status, 200);
    assert!(
        form.body
            .contains(r#"<form method="post" action="/subscribe""#),
        "{}",
        form.body
    );
    assert!(form.body.contains(r#"name="website""#));

    let posted = post_form(
        &agent,
        &served.url("/subscribe"),
        "email=Reader%40Example.com&name=New+Reader&website=",
    );
    assert_eq!(posted.status, 200);
    assert!(posted.body.contains("Check your inbox"), "{}", posted.body);
    assert_eq!(status_of(&site, "reader@example.com"), "pending");
    site.cmd()
        .args(["subscribers", "list", "--status", "pending"])
        .assert()
        .stdout(contains("Reader@Example.com"));
    site.cmd()
        .args(["subscribers", "count"])
        .assert()
        .stdout(predicates::str::is_match("(?m)^pending +1$").unwrap())
        .stdout(predicates::str::is_match("(?m)^active +1$").unwrap());

    assert_eq!(
        server.wait_for(1, Duration::from_secs(20)),
        1,
        "a confirmation mail"
    );
    let mail = &server.received()[0];
    assert_eq!(mail.rcpt, ["Reader@Example.com"]);
    let parsed = mailparse::parse_mail(&mail.raw).unwrap();
    assert!(parsed.headers.get_first_value("List-Unsubscribe").is_none());
    assert!(parsed
        .headers
        .get_first_value("Message-ID")
        .unwrap()
        .starts_with("<verdicts.confirm."));
    assert!(parsed
        .headers
        .get_first_value("Subject")
        .unwrap()
        .contains("Confirm your subscription"));
    let link = confirm_link(&server, "Reader@Example.com", web);

    // Opening the link (as a mail scanner would) confirms nothing.
    for _ in 0..2 {
        let page = answer(agent.get(&link).call().unwrap());
        assert_eq!(page.status, 200);
        assert!(page
            .body
            .contains("<button type=\"submit\">Confirm my subscription</button>"));
    }
    assert_eq!(status_of(&site, "reader@example.com"), "pending");

    // Pressing the button does, and pressing it again is harmless.
    for _ in 0..2 {
        let done = post_form(&agent, &link, "");
        assert_eq!(done.status, 200);
        assert!(done.body.contains("You are subscribed"), "{}", done.body);
    }
    assert_eq!(status_of(&site, "reader@example.com"), "active");
    let (source, confirmed): (String, Option<String>) = site
        .db()
        .query_row(
            "SELECT source, confirmed_at FROM subscribers WHERE email_norm = 'reader@example.com'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(source, "web");
    assert!(confirmed.is_some());
    site.cmd()
        .args(["subscribers", "export"])
        .assert()
        .stdout(contains("Reader@Example.com,New Reader,active,web,"));

    // The consent record survives an export and an import into a fresh install.
    let exported = site
        .cmd()
        .args(["subscribers", "export"])
        .output()
        .unwrap()
        .stdout;
    let fresh = TempSite::new();
    std::fs::write(fresh.path().join("backup.csv"), &exported).unwrap();
    fresh
        .cmd()
        .args(["subscribers", "import", "backup.csv"])
        .assert()
        .success();
    let again = fresh
        .cmd()
        .args(["subscribers", "export"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        String::from_utf8(again).unwrap(),
        String::from_utf8(exported).unwrap()
    );

    // The next issue goes to the new subscriber too.
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .assert()
        .success();
    let counts = server.count_by_recipient();
    assert_eq!(counts["reader@example.com"], 2, "confirmation + issue");
    assert_eq!(counts["old@example.com"], 1);
    let issue = server.received().last().unwrap().clone();
    assert!(mailparse::parse_mail(&issue.raw)
        .unwrap()
        .headers
        .get_first_value("List-Unsubscribe")
        .is_some());
}

/// Puts `email` into `status` the way it would get there.
fn prepare(site: &TempSite, email: &str, status: &str) {
    match status {
        "new" => {}
        "pending" => {
            // Signed up a minute ago; its confirmation mail went out then.
            let conn = site.db();
            let now = chrono::Utc::now();
            let stamp =
                |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            conn.execute(
                "INSERT INTO subscribers (email, email_norm, status, source, created_at,
                     updated_at, signed_up_at) VALUES (?1, ?1, 'pending', 'web', ?2, ?2, ?2)",
                rusqlite::params![email, stamp(now - chrono::Duration::minutes(1))],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO confirmations (subscriber_id, source, created_at, expires_at, mail_state)
                 VALUES (last_insert_rowid(), 'web', ?1, ?2, 'sent')",
                rusqlite::params![
                    stamp(now - chrono::Duration::minutes(1)),
                    stamp(now + chrono::Duration::days(7))
                ],
            )
            .unwrap();
        }
        "active" | "unsubscribed" | "bounced" => {
            site.cmd()
                .args(["subscribers", "add", email])
                .assert()
                .success();
            if status != "active" {
                site.db()
                    .execute(
                        "UPDATE subscribers SET status = ?2 WHERE email_norm = ?1",
                        [email, status],
                    )
                    .unwrap();
            }
        }
        other => panic!("{other}"),
    }
}

#[test]
fn every_known_or_unknown_address_gets_the_same_answer_and_only_some_get_mail() {
    let server = TestSmtp::start();
    let web = closed_port();
    let site = signup_site(server.port(), web, "signup:\n  per_ip_per_hour: 1000\n");
    const STATES: [&str; 5] = ["new", "pending", "active", "unsubscribed", "bounced"];
    site.cmd().args(["subscribers", "count"]).assert().success();
    for kind in ["form", "json"] {
        for state in STATES {
            prepare(&site, &format!("{kind}-{state}@example.com"), state);
        }
    }
    let served = Served::start(&site, web);
    let agent = http();
    let url = served.url("/subscribe");
    for kind in ["form", "json"] {
        let answers: Vec<(u16, String)> = STATES
            .iter()
            .map(|state| {
                let email = format!("{kind}-{state}@example.com");
                let a = if kind == "form" {
                    post_form(&agent, &url, &format!("email={email}&website="))
                } else {
                    post_json(&agent, &url, &format!(r#"{{"email":"{email}"}}"#))
                };
                (a.status, a.body)
            })
            .collect();
        for (state, a) in STATES.iter().zip(&answers) {
            assert_eq!(
                a, &answers[0],
                "{kind}: {state} answered differently from new"
            );
        }
        if kind == "json" {
            assert_eq!(answers[0].0, 202);
            let body: serde_json::Value = serde_json::from_str(&answers[0].1).unwrap();
            assert_eq!(body, serde_json::json!({"status": "check your inbox"}));
        } else {
            assert_eq!(answers[0].0, 200);
        }
    }

    let expected = [
        "form-new@example.com",
        "form-unsubscribed@example.com",
        "json-new@example.com",
        "json-unsubscribed@example.com",
    ];
    assert_eq!(server.wait_for(4, Duration::from_secs(20)), 4);
    // Give a wrongly queued fifth mail the time to show up.
    std::thread::sleep(Duration::from_secs(2));
    let mut got: Vec<String> = server.count_by_recipient().into_keys().collect();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(server.received().len(), 4);
    // The unsubscribed reader stays unsubscribed until they confirm.
    assert_eq!(
        status_of(&site, "form-unsubscribed@example.com"),
        "unsubscribed"
    );
    assert_eq!(status_of(&site, "json-new@example.com"), "pending");
    let source: String = site
        .db()
        .query_row(
            "SELECT source FROM subscribers WHERE email_norm = 'json-new@example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(source, "api");
}

#[test]
fn honeypot_bad_addresses_big_bodies_and_bad_tokens_change_nothing() {
    let server = TestSmtp::start();
    let web = closed_port();
    let site = signup_site(server.port(), web, "signup:\n  per_ip_per_hour: 1000\n");
    let served = Served::start(&site, web);
    let agent = http();
    let url = served.url("/subscribe");
    let normal = post_form(&agent, &url, "email=ok%40example.com");
    assert_eq!(normal.status, 200);

    // Honeypot: the same answer as a real signup, and nothing else.
    let bot = post_form(
        &agent,
        &url,
        "email=bot-victim%40example.com&website=http%3A%2F%2Fspam",
    );
    assert_eq!((bot.status, &bot.body), (normal.status, &normal.body));
    let bot_json = post_json(
        &agent,
        &url,
        r#"{"email":"json-victim@example.com","website":"x"}"#,
    );
    assert_eq!(bot_json.status, 202);

    // Invalid addresses: 400 with the reason.
    let bad = post_form(&agent, &url, "email=not-an-address");
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("has no domain"), "{}", bad.body);
    let bad_json = post_json(&agent, &url, r#"{"email":"two@@example.com"}"#);
    assert_eq!(bad_json.status, 400);
    assert!(bad_json.body.contains("error"), "{}", bad_json.body);
    assert_eq!(post_form(&agent, &url, "").status, 400);

    // Over 8 KB: refused before it is read in full.
    let big = format!("email=big%40example.com&name={}", "x".repeat(9 * 1024));
    assert_eq!(post_form(&agent, &url, &big).status, 413);

    for absent in [
        "bot-victim@example.com",
        "json-victim@example.com",
        "not-an-address",
        "big@example.com",
    ] {
        assert_eq!(status_of(&site, absent), "absent", "{absent}");
    }

    // Tokens: the real one works only for its own confirmation and address.
    assert_eq!(server.wait_for(1, Duration::from_secs(20)), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.received().len(), 1, "only the real signup got mail");
    let link = confirm_link(&server, "ok@example.com", web);
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let last = token.chars().last().unwrap();
    let forged = format!(
        "{}{}",
        &token[..token.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    // A second signup, and a token signed with the real key for the first signup's
    // confirmation but the second address.
    assert_eq!(
        post_form(&agent, &url, "email=other%40example.com").status,
        200
    );
    let (id, expires): (i64, String) = site
        .db()
        .query_row(
            "SELECT id, expires_at FROM confirmations c WHERE subscriber_id =
                 (SELECT id FROM subscribers WHERE email_norm = 'ok@example.com')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let other_address = verdicts::mail::confirmation::issue_token(
        &verdicts::mail::token::TokenKey::new(TEST_SECRET.as_bytes()),
        id,
        verdicts::store::parse_timestamp(&expires).unwrap(),
        "other@example.com",
    );
    for bad in [
        forged.as_str(),
        &token[..token.len() - 6],
        other_address.as_str(),
        "",
        "x.y",
    ] {
        let bad_url = served.url(&format!("/confirm?token={bad}"));
        let got = answer(agent.get(&bad_url).call().unwrap());
        assert_eq!(got.status, 400, "GET {bad}");
        let got = post_form(&agent, &bad_url, "");
        assert_eq!(got.status, 400, "POST {bad}");
        assert!(got.body.contains("not valid"), "{}", got.body);
    }
    assert_eq!(status_of(&site, "ok@example.com"), "pending");
    assert_eq!(status_of(&site, "other@example.com"), "pending");
    assert_eq!(post_form(&agent, &link, "").status, 200);
    assert_eq!(status_of(&site, "ok@example.com"), "active");
    assert_eq!(status_of(&site, "other@example.com"), "pending");
}

#[test]
fn an_expired_confirmation_link_confirms_nothing() {
    let server = TestSmtp::start();
    let web = closed_port();
    let site = signup_site(server.port(), web, "signup:\n  expire_after: 2s\n");
    let served = Served::start(&site, web);
    let agent = http();
    assert_eq!(
        post_form(
            &agent,
            &served.url("/subscribe"),
            "email=late%40example.com"
        )
        .status,
        200
    );
    assert_eq!(server.wait_for(1, Duration::from_secs(20)), 1);
    let link = confirm_link(&server, "late@example.com", web);
    std::thread::sleep(Duration::from_millis(2500));
    let page = answer(agent.get(&link).call().unwrap());
    assert_eq!(page.status, 410);
    assert!(page.body.contains("expired"), "{}", page.body);
    let pressed = post_form(&agent, &link, "");
    assert_eq!(pressed.status, 410);
    assert_ne!(status_of(&site, "late@example.com"), "active");
}

#[test]
fn one_client_and_one_address_hit_their_limits_and_get_429() {
    let server = TestSmtp::start();
    let web = closed_port();
    // Defaults: 10 signups per client per hour, one mail per address per hour.
    let site = signup_site(server.port(), web, "");
    let served = Served::start(&site, web);
    let agent = http();
    let url = served.url("/subscribe");
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for i in 0..1000 {
        // A forged X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
        let a = answer(
            agent
                .post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("X-Forwarded-For", &format!("198.51.100.{}", i % 250))
                .send(&format!("email=bulk{i}%40example.com"))
                .unwrap_or_else(|e| panic!("signup {i}: {e}")),
        );
        if a.status == 429 {
            let secs: u64 = a.retry_after.expect("Retry-After").parse().unwrap();
            assert!((1..=3600).contains(&secs), "{secs}");
        }
        *by_status.entry(a.status).or_default() += 1;
    }
    assert_eq!(by_status.get(&200), Some(&10), "{by_status:?}");
    assert_eq!(by_status.get(&429), Some(&990), "{by_status:?}");
    let pending: i64 = site
        .db()
        .query_row(
            "SELECT count(*) FROM subscribers WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 10);
    assert_eq!(server.wait_for(10, Duration::from_secs(20)), 10);
    drop(served);

    // One address posted 50 times (by many clients behind a trusted proxy).
    let site = signup_site(
        server.port(),
        web,
        "signup:\n  trusted_proxies: [127.0.0.1]\n",
    );
    let served = Served::start(&site, web);
    let mut accepted = 0;
    for i in 0..50 {
        let a = answer(
            agent
                .post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("X-Forwarded-For", &format!("203.0.113.{i}"))
                .send("email=victim%40example.com")
                .unwrap(),
        );
        assert!(a.status == 200 || a.status == 429, "{}", a.status);
        accepted += usize::from(a.status == 200);
    }
    assert_eq!(accepted, 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        server.count_by_recipient().get("victim@example.com"),
        Some(&1)
    );
    drop(served);
}

#[test]
fn the_global_cap_stops_a_botnet_of_many_clients() {
    let server = TestSmtp::start();
    let web = closed_port();
    let site = signup_site(
        server.port(),
        web,
        "signup:\n  trusted_proxies: [127.0.0.1]\n  mails_per_hour: 5\n",
    );
    let served = Served::start(&site, web);
    let agent = http();
    let statuses: Vec<u16> = (0..30)
        .map(|i| {
            answer(
                agent
                    .post(&served.url("/subscribe"))
                    .header("Content-Type", "application/json")
                    .header("X-Forwarded-For", &format!("192.0.2.{i}"))
                    .send(&format!(r#"{{"email":"bot{i}@example.com"}}"#))
                    .unwrap(),
            )
            .status
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 25);
    assert_eq!(server.wait_for(5, Duration::from_secs(20)), 5);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.received().len(), 5);
}

#[test]
fn a_confirmation_queued_before_a_crash_is_sent_after_the_restart() {
    // The relay is down when the visitor signs up; the endpoint answers at once anyway.
    let smtp_port = closed_port();
    let web = closed_port();
    let site = signup_site(smtp_port, web, "");
    let served = Served::start(&site, web);
    let agent = http();
    let started = Instant::now();
    let a = post_form(
        &agent,
        &served.url("/subscribe"),
        "email=patient%40example.com",
    );
    assert_eq!(a.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the POST waited for the relay"
    );
    served.kill_9();

    let server = TestSmtp::start_on(smtp_port, Behaviour::default());
    let _served = Served::start(&site, web);
    assert!(
        wait_until(Duration::from_secs(20), || server.received().len() == 1),
        "the queued confirmation was not sent after the restart"
    );
    assert_eq!(server.received()[0].rcpt, ["patient@example.com"]);
    let state: String = site
        .db()
        .query_row("SELECT mail_state FROM confirmations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(state, "sent");
}

#[test]
fn confirmation_mails_go_through_the_fallback_relay_while_the_primary_is_down() {
    // Nothing listens on the primary's port; the fallback is a real SMTP server, one that
    // does not offer SMTPUTF8.
    let backup = TestSmtp::start_with(Behaviour::default().without_smtputf8());
    let web = closed_port();
    let site = signup_site(closed_port(), web, "");
    crate::relays::with_smtp(
        &site,
        &crate::relays::two_relays(closed_port(), backup.port(), ""),
    );
    let served = Served::start(&site, web);
    let agent = http();
    // The primary was never reached, so a non-ASCII local part is accepted too.
    for email in ["j%C3%B6rg%40example.com", "steady%40example.com"] {
        let a = post_form(&agent, &served.url("/subscribe"), &format!("email={email}"));
        assert_eq!(a.status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(20), || backup.received().len() == 1),
        "the confirmation mail did not reach the fallback relay"
    );
    assert_eq!(backup.received()[0].rcpt, ["steady@example.com"]);
    let confirmation = |email: &str| -> (String, Option<String>) {
        site.db()
            .query_row(
                "SELECT c.mail_state, c.last_reply FROM confirmations c
                 JOIN subscribers s ON s.id = c.subscriber_id WHERE s.email_norm = ?1",
                [email],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    assert_eq!(confirmation("steady@example.com").0, "sent");
    // The fallback cannot spell jörg's address: the mail waits for the primary instead of
    // failing for good.
    assert!(wait_until(Duration::from_secs(10), || confirmation(
        "jörg@example.com"
    )
    .1
    .is_some()));
    let (state, reply) = confirmation("jörg@example.com");
    assert_eq!(state, "queued", "{reply:?}");
    assert!(reply.unwrap().contains("SMTPUTF8"));
    // The link in the mail the fallback carried confirms the reader.
    let link = confirm_link(&backup, "steady@example.com", web);
    let confirmed = post_form(&agent, &link, "");
    assert!(
        confirmed.body.contains("You are subscribed"),
        "{}",
        confirmed.body
    );
    assert_eq!(status_of(&site, "steady@example.com"), "active");
}

#[test]
fn the_daemon_removes_signups_never_confirmed() {
    let server = TestSmtp::start();
    let web = closed_port();
    let site = signup_site(server.port(), web, "");
    site.cmd().args(["subscribers", "count"]).assert().success();
    let conn = site.db();
    let days_ago = |d: i64| {
        (chrono::Utc::now() - chrono::Duration::days(d))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    for (email, status, signed_up) in [
        ("stale@example.com", "pending", days_ago(8)),
        ("fresh@example.com", "pending", days_ago(6)),
        ("reader@example.com", "active", days_ago(30)),
    ] {
        conn.execute(
            "INSERT INTO subscribers (email, email_norm, status, source, created_at, updated_at,
                 signed_up_at) VALUES (?1, ?1, ?2, 'web', ?3, ?3, ?3)",
            [email, status, &signed_up],
        )
        .unwrap();
    }
    drop(conn);
    let _daemon = Served::start_command(&site, web, "run");
    assert!(
        wait_until(Duration::from_secs(20), || status_of(
            &site,
            "stale@example.com"
        ) == "absent"),
        "a pending signup older than expire_after (7 days) is removed"
    );
    assert_eq!(status_of(&site, "fresh@example.com"), "pending");
    assert_eq!(status_of(&site, "reader@example.com"), "active");
}

#[test]
fn signup_form_prints_a_form_for_the_endpoint() {
    let site = TempSite::new();
    site.cmd()
        .arg("signup-form")
        .assert()
        .success()
        .stdout(contains(
            r#"<form method="post" action="https://verdicts.example.com/subscribe""#,
        ))
        .stdout(contains(r#"name="website""#))
        .stdout(contains("<script").not());
}

fn contains(s: &str) -> predicates::str::ContainsPredicate {
    predicates::str::contains(s)
}
