//! Outgoing webhooks as a receiver sees them: a real HTTP server on loopback, scripted to
//! accept, fail or hang, gets the announcements of real changes made through the signup
//! form, `send`, `inbound` and one-click unsubscribes, and checks every signature the way
//! docs/api.md tells a receiver to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::common::{fixture, Process, TempSite, TEST_SECRET};
use crate::inbound::{arf, dsn, inbound_site, one_click_url, pipe, send_week, to};
use crate::signup::{confirm_link, post_form};
use crate::smtp::{closed_port, Behaviour, TestSmtp};

/// One POST as the receiver got it.
#[derive(Debug, Clone)]
struct Delivery {
    headers: Vec<(String, String)>,
    body: String,
}

impl Delivery {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }

    /// What a receiver does: HMAC-SHA256 over `timestamp.body` with the shared secret.
    fn signed_by(&self, secret: &str) -> bool {
        let timestamp = self.header("Verdicts-Timestamp");
        let given = self.header("Verdicts-Signature");
        let Some(hex) = given.strip_prefix("v1=") else {
            return false;
        };
        let Ok(bytes) = data_encoding::HEXLOWER.decode(hex.as_bytes()) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(self.body.as_bytes());
        mac.verify_slice(&bytes).is_ok()
    }
}

/// What the receiver answers to its n-th request (counted from 0); `None` hangs without an
/// answer. Past the script's end it answers 200.
type Script = Vec<Option<u16>>;

/// A webhook receiver on a loopback port.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn start(script: Script) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let script = Arc::new(script);
        let count = Arc::new(Mutex::new(0usize));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, script, count) = (seen.clone(), script.clone(), count.clone());
                std::thread::spawn(move || serve_one(stream, &seen, &script, &count));
            }
        });
        Receiver { port, got }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (they are all returned), up to `limit`.
    fn wait_for(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        let started = Instant::now();
        while self.got().len() < n {
            assert!(
                started.elapsed() < limit,
                "only {} of {n} requests arrived: {:?}",
                self.got().len(),
                self.got().iter().map(Delivery::kind).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.got()
    }
}

fn serve_one(
    stream: TcpStream,
    seen: &Mutex<Vec<Delivery>>,
    script: &Script,
    count: &Mutex<usize>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let n = {
            let mut c = count.lock().unwrap();
            *c += 1;
            *c - 1
        };
        seen.lock().unwrap().push(Delivery {
            headers,
            body: String::from_utf8(body).unwrap(),
        });
        match script.get(n).copied().unwrap_or(Some(200)) {
            None => {
                // Hang: keep the connection open, answer nothing.
                std::thread::sleep(Duration::from_secs(600));
                return;
            }
            Some(status) => {
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                if writer.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// The `webhooks:` section for one receiver of every event, signed with the test secret.
fn webhooks_section(url: &str) -> String {
    format!(
        "webhooks:\n  - url: {url}\n    events: [\"*\"]\n    secret_env: VERDICTS_SECRET\n    retry_base: 200ms\n"
    )
}

fn web_on_any_port(site: &TempSite) {
    site.edit_config(|t| t.replace("127.0.0.1:8080", "127.0.0.1:0"));
}

#[test]
fn a_receiver_gets_every_event_of_a_scenario_once_in_order_and_signed() {
    let smtp = TestSmtp::start_with(Behaviour::default().unknown("refused@example.net"));
    let site = inbound_site(smtp.port());
    web_on_any_port(&site);
    let receiver = Receiver::start(vec![]);
    site.edit_config(|t| t + &webhooks_section(&receiver.url()));
    let mut serve = Process::start(&site, &["serve"]);
    let web = serve.web_port();
    let agent = crate::signup::http();

    // A visitor signs up and confirms.
    let signed = post_form(
        &agent,
        &format!("http://127.0.0.1:{web}/subscribe"),
        "email=visitor%40example.org",
    );
    assert!(signed.status < 400, "{}", signed.body);
    let started = Instant::now();
    while !smtp
        .received()
        .iter()
        .any(|m| m.rcpt == ["visitor@example.org"])
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no confirmation mail"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let confirmed = post_form(&agent, &confirm_link(&smtp, "visitor@example.org", web), "");
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);

    // An issue goes out; the relay refuses one reader as unknown.
    let week1 = send_week(&site, &smtp, 0);
    // A bounce read back by `inbound`, a complaint, a one-click unsubscribe.
    let dead = to(&week1, "dead@example.net");
    pipe(
        &site,
        dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1"),
    );
    pipe(&site, arf(&to(&week1, "annoyed@example.net")));
    let status = agent
        .post(&one_click_url(&to(&week1, "leaving@example.net"), web))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("List-Unsubscribe=One-Click")
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // The next issue finds the relay down and pauses.
    site.add_comparison(
        "week-1.md",
        &fixture("valid.md")
            .replace(
                "slug: alpha-coder-vs-beta-writer",
                "slug: alpha-coder-vs-beta-writer-week-1",
            )
            .replace("2026-11-17T12:00:00+00:00", "2026-11-26T12:00:00+00:00"),
    );
    let down = closed_port();
    site.edit_config(|t| t.replace(&format!("port: {}", smtp.port()), &format!("port: {down}")));
    site.cmd()
        .args(["send", "--at", "2026-11-30T09:00:00Z", "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .code(75);

    let expected = [
        ("subscriber.pending", Some("visitor@example.org")),
        ("subscriber.confirmed", Some("visitor@example.org")),
        ("issue.created", None),
        ("subscriber.bounced", Some("refused@example.net")),
        ("issue.completed", None),
        ("subscriber.bounced", Some("dead@example.net")),
        ("subscriber.complained", Some("annoyed@example.net")),
        ("subscriber.unsubscribed", Some("leaving@example.net")),
        ("issue.created", None),
        ("issue.paused", None),
    ];
    let got = receiver.wait_for(expected.len(), Duration::from_secs(60));
    // Exactly once: nothing more arrives.
    std::thread::sleep(Duration::from_secs(2));
    let got_after = receiver.got();
    assert_eq!(
        got_after.len(),
        expected.len(),
        "{:?}",
        got_after.iter().map(Delivery::kind).collect::<Vec<_>>()
    );
    let mut last_id = 0;
    for (d, (kind, email)) in got.iter().zip(expected) {
        let body = d.json();
        assert_eq!(
            d.kind(),
            kind,
            "{body} in {:?}\n{}",
            got.iter().map(|d| d.body.clone()).collect::<Vec<_>>(),
            serve.log()
        );
        if let Some(email) = email {
            assert_eq!(body["data"]["email"], email, "{body}");
        }
        assert!(d.signed_by(TEST_SECRET), "bad signature on {body}");
        assert!(!d.signed_by("another-secret"));
        let id: i64 = d.header("Verdicts-Event-Id").parse().unwrap();
        assert_eq!(body["id"], id.to_string());
        assert_eq!(d.header("Verdicts-Event"), kind);
        assert!(id > last_id, "out of order");
        last_id = id;
    }
    assert_eq!(got[7].json()["data"]["channel"], "one-click");
    assert_eq!(got[9].json()["data"]["number"], 2);
    assert!(
        got[9].json()["data"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{}",
        got[9].body
    );
    // A body altered in transit no longer verifies.
    let mut forged = got[0].clone();
    forged.body = forged.body.replace("visitor", "intruder");
    assert!(!forged.signed_by(TEST_SECRET));

    let listed = site
        .cmd()
        .arg("webhooks")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let listed = String::from_utf8(listed).unwrap();
    assert_eq!(listed.matches("delivered").count(), 10, "{listed}");
}

#[test]
fn a_receiver_that_fails_three_times_gets_the_event_once_it_recovers() {
    let smtp = TestSmtp::start();
    let site = inbound_site(smtp.port());
    web_on_any_port(&site);
    let receiver = Receiver::start(vec![Some(500), Some(500), Some(500)]);
    site.edit_config(|t| t + &webhooks_section(&receiver.url()));
    let mut serve = Process::start(&site, &["serve"]);
    let web = serve.web_port();
    let agent = crate::signup::http();
    let signed = post_form(
        &agent,
        &format!("http://127.0.0.1:{web}/subscribe"),
        "email=patient%40example.org",
    );
    assert!(signed.status < 400, "{}", signed.body);
    let got = receiver.wait_for(4, Duration::from_secs(30));
    let ids: Vec<&str> = got.iter().map(|d| d.header("Verdicts-Event-Id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one event, retried: {ids:?}"
    );
    assert!(got
        .iter()
        .all(|d| d.kind() == "subscriber.pending" && d.signed_by(TEST_SECRET)));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        receiver.got().len(),
        4,
        "delivered once it answered 200, then no more"
    );
    let listed = site
        .cmd()
        .arg("webhooks")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let listed = String::from_utf8(listed).unwrap();
    let line = listed
        .lines()
        .find(|l| l.contains("subscriber.pending"))
        .unwrap();
    assert!(
        line.contains("delivered") && line.contains(" 4 "),
        "{listed}"
    );
    // Nothing failed for a day, so neither `webhooks --failed` nor `lint` complains.
    let failed = site
        .cmd()
        .args(["webhooks", "--failed"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8(failed)
        .unwrap()
        .contains("No failed or retrying deliveries."));
}

#[test]
fn a_kill_9_between_the_change_and_the_post_loses_no_event() {
    let smtp = TestSmtp::start();
    let site = inbound_site(smtp.port());
    web_on_any_port(&site);
    // The first POST hangs: the sender is killed while it waits for the answer.
    let receiver = Receiver::start(vec![None]);
    site.edit_config(|t| t + &webhooks_section(&receiver.url()));
    let mut serve = Process::start(&site, &["serve"]);
    let web = serve.web_port();
    let agent = crate::signup::http();
    let signed = post_form(
        &agent,
        &format!("http://127.0.0.1:{web}/subscribe"),
        "email=first%40example.org",
    );
    assert!(signed.status < 400);
    receiver.wait_for(1, Duration::from_secs(30));
    serve.kill();

    // While nothing sends, more changes are committed, each with its announcement.
    send_week(&site, &smtp, 0);

    let _serve = Process::start(&site, &["serve"]);
    let got = receiver.wait_for(4, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let got_all = receiver.got();
    let kinds: Vec<String> = got_all.iter().map(Delivery::kind).collect();
    // At least once: the announcement in flight at the kill comes again, with its id, and
    // the ones committed while nothing ran follow it.
    assert_eq!(
        kinds,
        [
            "subscriber.pending",
            "subscriber.pending",
            "issue.created",
            "issue.completed"
        ]
    );
    assert_eq!(
        got[0].header("Verdicts-Event-Id"),
        got[1].header("Verdicts-Event-Id")
    );
    assert!(got.iter().all(|d| d.signed_by(TEST_SECRET)));
}

#[test]
fn a_bad_webhooks_section_is_refused_naming_the_field() {
    let site = TempSite::with_bundled_content();
    for (section, field, reason) in [
        ("webhooks:\n  - url: ftp://example.com/x\n    events: [issue.paused]\n    secret_env: HOOK\n", "webhooks.url", "http:// or https://"),
        ("webhooks:\n  - url: https://example.com/x\n    events: [issue.sent]\n    secret_env: HOOK\n", "webhooks.events", "`issue.sent` is not an event"),
        ("webhooks:\n  - url: https://example.com/x\n    events: []\n    secret_env: HOOK\n", "webhooks.events", "at least one"),
        ("webhooks:\n  - url: https://example.com/x\n    events: [issue.paused]\n    secret_env: HOOK\n    retry_base: soon\n", "webhooks.retry_base", "not a duration"),
        ("webhooks:\n  - url: https://example.com/x\n    events: [issue.paused]\n", "secret_env", ""),
    ] {
        site.write_config(2525, "");
        site.edit_config(|t| t + section);
        let out = site.cmd().arg("check").assert().code(1).get_output().stderr.clone();
        let err = String::from_utf8(out).unwrap();
        assert!(err.contains(field) && err.contains(reason), "{section}: {err}");
    }
}

#[test]
fn a_receiver_failing_for_a_day_is_named_by_lint_and_by_webhooks() {
    let site = TempSite::with_bundled_content();
    site.edit_config(|t| t + &webhooks_section("https://down.example/hook"));
    site.cmd()
        .args(["subscribers", "add", "a@example.com"])
        .assert()
        .success();
    // What the sender leaves behind when it gives up after 24 hours of refusals.
    site.db()
        .execute_batch(
            "INSERT INTO webhook_outbox (type, data, created_at)
             VALUES ('issue.paused', '{}', '2026-12-04T09:00:00Z');
             INSERT INTO webhook_deliveries (outbox_id, endpoint, state, attempts,
                 first_attempt_at, last_attempt_at, last_status, last_error)
             VALUES (1, 'https://down.example/hook', 'failed', 17, '2026-12-04T09:00:00Z',
                     '2026-12-05T09:00:00Z', 503, 'answered HTTP 503');",
        )
        .unwrap();
    let out = site
        .cmd()
        .arg("lint")
        .env("VERDICTS_NOW", "2026-12-05T12:00:00Z")
        .output()
        .unwrap();
    let lint = String::from_utf8(out.stdout).unwrap();
    assert!(
        lint.contains("Webhooks: https://down.example/hook has failed for 24 hours")
            && lint.contains("answered HTTP 503"),
        "{lint}"
    );
    let listed = site
        .cmd()
        .args(["webhooks", "--failed"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let listed = String::from_utf8(listed).unwrap();
    assert!(
        listed.contains("FAILING: https://down.example/hook"),
        "{listed}"
    );
    assert!(
        listed.contains("issue.paused") && listed.contains("failed"),
        "{listed}"
    );
    // Once the receiver accepts a delivery again, nobody names it any more.
    site.db()
        .execute_batch(
            "INSERT INTO webhook_outbox (type, data, created_at)
             VALUES ('issue.created', '{}', '2026-12-05T10:00:00Z');
             INSERT INTO webhook_deliveries (outbox_id, endpoint, state, attempts,
                 first_attempt_at, last_attempt_at, last_status, delivered_at)
             VALUES (2, 'https://down.example/hook', 'delivered', 1, '2026-12-05T10:00:00Z',
                     '2026-12-05T10:00:00Z', 200, '2026-12-05T10:00:00Z');",
        )
        .unwrap();
    let listed = site
        .cmd()
        .arg("webhooks")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(!String::from_utf8(listed).unwrap().contains("FAILING"));
}

#[test]
fn the_daemon_delivers_announcements_too() {
    let smtp = TestSmtp::start();
    let site = inbound_site(smtp.port());
    web_on_any_port(&site);
    let receiver = Receiver::start(vec![]);
    site.edit_config(|t| t + &webhooks_section(&receiver.url()));
    let mut daemon = Process::start(&site, &["run"]);
    let web = daemon.web_port();
    let signed = post_form(
        &crate::signup::http(),
        &format!("http://127.0.0.1:{web}/subscribe"),
        "email=daemon%40example.org",
    );
    assert!(signed.status < 400, "{}", signed.body);
    let got = receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(got[0].kind(), "subscriber.pending");
    assert_eq!(got[0].json()["data"]["email"], "daemon@example.org");
    assert!(got[0].signed_by(TEST_SECRET));
}

#[test]
fn an_unsubscribe_from_the_command_line_is_announced_with_its_channel() {
    let smtp = TestSmtp::start();
    let site = inbound_site(smtp.port());
    web_on_any_port(&site);
    let receiver = Receiver::start(vec![]);
    site.edit_config(|t| t + &webhooks_section(&receiver.url()));
    let mut serve = Process::start(&site, &["serve"]);
    serve.web_port();
    site.cmd()
        .args(["subscribers", "add", "leaving@example.org"])
        .assert()
        .success();
    site.cmd()
        .args(["subscribers", "unsubscribe", "leaving@example.org"])
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "unsubscribed leaving@example.org (was active)",
        ));
    let got = receiver.wait_for(1, Duration::from_secs(30));
    let last = got.last().unwrap();
    assert_eq!(last.kind(), "subscriber.unsubscribed");
    assert_eq!(last.json()["data"]["email"], "leaving@example.org");
    assert_eq!(last.json()["data"]["channel"], "cli");
    assert!(last.signed_by(TEST_SECRET));
}
