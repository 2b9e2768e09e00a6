//! Delivery as an operator sees it: `verdicts send` run as a child process against a real
//! SMTP server over TCP, with the ledger on disk.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{seed_subscribers, state_at, TempSite, TestConfig, TEST_SECRET};
use crate::smtp::{closed_port, Behaviour, Received, SilentServer, TestSmtp};
use mailparse::MailHeaderMap;
use predicates::prelude::*;
use verdicts::mail::token::{claimed_subscriber, TokenKey};
use verdicts::store::SubscriberId;

const AT: &str = "2026-11-23T09:00:00Z";

/// A site with the bundled content, `n` subscribers (reader{i}@example.com) and `config`.
pub(crate) fn site_with_subscribers(n: usize, config: TestConfig) -> TempSite {
    let site = TempSite::with_bundled_content();
    site.configure(&config);
    seed_subscribers(&site, n);
    site
}

/// `verdicts send` for the bundled content's slot, without asking.
pub(crate) fn send(site: &TempSite) -> assert_cmd::assert::Assert {
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
}

/// (state, attempts) of every delivery of issue 1, by email.
fn deliveries(site: &TempSite) -> HashMap<String, (String, u32)> {
    let conn = site.db();
    let mut stmt = conn
        .prepare(
            "SELECT s.email, d.state, d.attempts FROM deliveries d
             JOIN subscribers s ON s.id = d.subscriber_id WHERE d.issue = 1",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (state_at(r, 1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub(crate) fn header(m: &Received, name: &str) -> String {
    mailparse::parse_mail(&m.raw)
        .unwrap()
        .headers
        .get_first_value(name)
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn fast_retries(config: TestConfig) -> TestConfig {
    config
        .smtp("timeout", "5s")
        .smtp("retry_base", "50ms")
        .smtp("max_attempts", 4)
}

#[test]
fn two_hundred_subscribers_each_get_exactly_one_correct_message() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(
        200,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("concurrency", "8"),
    );
    send(&site)
        .success()
        .stdout(predicate::str::contains("Created issue 1"))
        .stdout(predicate::str::contains("sent 200, failed 0"));

    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 200);
    assert!(
        counts.values().all(|&n| n == 1),
        "someone got more than one copy"
    );
    assert!(
        server.max_concurrent_sessions() <= 8,
        "concurrency is bounded"
    );

    let key = TokenKey::new(TEST_SECRET.as_bytes());
    let mut message_ids = std::collections::HashSet::new();
    for m in server.received() {
        let rcpt = &m.rcpt[0];
        let parsed = mailparse::parse_mail(&m.raw).unwrap();
        let h = &parsed.headers;
        assert!(h.get_first_value("To").unwrap().contains(rcpt.as_str()));
        assert!(h
            .get_first_value("From")
            .unwrap()
            .contains("verdicts@example.com"));
        assert_eq!(
            h.get_first_value("Subject").unwrap(),
            "Gemini 2.5 Flash Lite vs Meta Llama 4 Scout Fine-Tuning Toolkit + 4 more"
        );
        assert!(h.get_first_value("Date").is_some());
        assert_eq!(
            h.get_first_value("List-Id").unwrap(),
            "Weekly AI Tool Verdicts <weekly.example.com>"
        );
        assert_eq!(
            h.get_first_value("List-Unsubscribe-Post").unwrap(),
            "List-Unsubscribe=One-Click"
        );
        let unsub = h.get_first_value("List-Unsubscribe").unwrap();
        let (https, mailto) = unsub.split_once(", ").unwrap();
        assert!(mailto == "<mailto:verdicts@example.com?subject=unsubscribe>");
        let url = https.trim_matches(|c| c == '<' || c == '>');
        assert!(url.starts_with("https://verdicts.example.com/unsubscribe?token="));
        let token = url.split("token=").nth(1).unwrap();
        let id = claimed_subscriber(token).unwrap();
        assert!(
            key.verify(token, id, rcpt),
            "token verifies for its subscriber"
        );
        assert!(
            !key.verify(token, SubscriberId(id.get() + 1), rcpt),
            "…and not for another id"
        );
        assert!(
            !key.verify(token, id, "someone-else@example.com"),
            "…or address"
        );
        let mid = h.get_first_value("Message-ID").unwrap();
        let mac = key
            .verp_key()
            .message_id_tag(verdicts::store::IssueNumber(1), id);
        assert_eq!(
            mid,
            format!("<verdicts.20261123T0900Z.1.{id}.{mac}@example.com>"),
            "the Message-ID names the delivery and carries its MAC"
        );
        assert!(
            message_ids.insert(mid),
            "Message-IDs are unique per recipient"
        );

        assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
        assert_eq!(parsed.subparts[0].ctype.mimetype, "text/plain");
        assert_eq!(parsed.subparts[1].ctype.mimetype, "text/html");
        assert!(parsed.subparts[0].get_body().unwrap().contains(url));
        assert!(parsed.subparts[1].get_body().unwrap().contains(url));
    }

    site.cmd().arg("issues").assert().success().stdout(
        predicate::str::is_match(r"1\s+Mon 2026-11-23 09:00\s+complete\s+200\s+0\s+0\s+0\s+5")
            .unwrap(),
    );
}

#[test]
fn a_second_send_for_a_completed_slot_sends_nothing() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(5, TestConfig::default().smtp_port(server.port()));
    send(&site).success();
    send(&site).success().stdout(predicate::str::contains(
        "was already sent (5 sent, 0 failed, 0 skipped). Nothing to send.",
    ));
    assert_eq!(server.received().len(), 5);
}

#[test]
fn temporary_failures_are_retried_until_sent() {
    let behaviour = Behaviour::default()
        .temp_fail("reader1@example.com", 2)
        .temp_fail("reader7@example.com", 1);
    let server = TestSmtp::start_with(behaviour);
    let site = site_with_subscribers(
        10,
        fast_retries(TestConfig::default().smtp_port(server.port())),
    );
    send(&site)
        .success()
        .stdout(predicate::str::contains("Totals: 10 sent, 0 failed"));

    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|&n| n == 1));
    let d = deliveries(&site);
    assert_eq!(d["reader1@example.com"], ("sent".into(), 3));
    assert_eq!(d["reader7@example.com"], ("sent".into(), 2));
    assert_eq!(d["reader2@example.com"], ("sent".into(), 1));
}

#[test]
fn temporary_failures_that_use_up_max_attempts_are_counted_and_keep_the_issue_open() {
    let server = TestSmtp::start_with(Behaviour::default().temp_fail("reader3@example.com", 100));
    let site = site_with_subscribers(
        4,
        fast_retries(TestConfig::default().smtp_port(server.port())),
    );
    // Not complete while a delivery failed only temporarily: paused, resumable (75).
    send(&site)
        .code(75)
        .stdout(predicate::str::contains("sent 3, failed 1 (1 temporarily)"))
        .stdout(predicate::str::contains("Totals: 3 sent, 1 failed"))
        .stderr(predicate::str::contains("1 delivery failed temporarily"));
    assert_eq!(
        deliveries(&site)["reader3@example.com"],
        ("failed".into(), 4)
    );
    assert_eq!(server.rcpt_attempts()["reader3@example.com"], 4);
    site.cmd()
        .args(["issues", "show", "1"])
        .assert()
        .stdout(predicate::str::contains(
            "reader3@example.com  temporary after 4 attempts",
        ))
        .stdout(predicate::str::contains("451"));
}

#[test]
fn user_unknown_bounces_and_retry_requeues_only_the_eligible() {
    let behaviour = Behaviour::default()
        .unknown("reader2@example.com")
        .unknown("reader5@example.com")
        .reject("reader8@example.com");
    let server = TestSmtp::start_with(behaviour);
    let port = server.port();
    let site = site_with_subscribers(10, fast_retries(TestConfig::default().smtp_port(port)));
    send(&site)
        .success()
        .stdout(predicate::str::contains("Totals: 7 sent, 3 failed"));

    let d = deliveries(&site);
    for who in ["reader2", "reader5", "reader8"] {
        assert_eq!(
            d[&format!("{who}@example.com")],
            ("failed".into(), 1),
            "{who}"
        );
    }
    site.cmd()
        .args([
            "subscribers",
            "list",
            "--status",
            "bounced",
            "--format",
            "csv",
        ])
        .assert()
        .stdout(predicate::str::contains("reader2@example.com"))
        .stdout(predicate::str::contains("reader5@example.com"))
        .stdout(predicate::str::contains("reader8@example.com").not());
    site.cmd()
        .args(["issues", "show", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("3 failed"))
        .stdout(predicate::str::contains(
            "reader2@example.com  permanent after 1 attempt (subscriber bounced)",
        ))
        .stdout(predicate::str::contains("User unknown"))
        .stdout(predicate::str::contains(
            "reader8@example.com  permanent after 1 attempt (subscriber active)",
        ))
        .stdout(predicate::str::contains("554"));

    // Only reader8 (rejected as spam, still active) is eligible again.
    site.cmd()
        .args(["issues", "retry", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Re-queued 1 failed deliveries of issue 1",
        ));
    server.stop();
    let fixed = TestSmtp::start_on(port, Behaviour::default());
    send(&site)
        .success()
        .stdout(predicate::str::contains("Resuming issue 1"));
    assert_eq!(
        fixed.count_by_recipient().keys().collect::<Vec<_>>(),
        ["reader8@example.com"]
    );
    site.cmd()
        .args(["issues", "retry", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Nothing re-queued"));
}

#[test]
fn refusals_at_rcpt_and_data_come_out_the_same_with_or_without_pipelining() {
    for pipelining in [true, false] {
        let mut behaviour = Behaviour::default()
            .unknown("reader2@example.com")
            .temp_fail("reader4@example.com", 1)
            .reject("reader8@example.com");
        if !pipelining {
            behaviour = behaviour.without_pipelining();
        }
        let server = TestSmtp::start_with(behaviour);
        let site = site_with_subscribers(
            10,
            fast_retries(TestConfig::default().smtp_port(server.port())),
        );
        send(&site)
            .success()
            .stdout(predicate::str::contains("Totals: 8 sent, 2 failed"));
        let d = deliveries(&site);
        assert_eq!(d["reader2@example.com"], ("failed".into(), 1));
        assert_eq!(d["reader8@example.com"], ("failed".into(), 1));
        assert_eq!(d["reader4@example.com"], ("sent".into(), 2));
        // Nothing went to a refused recipient, nobody got two copies.
        let counts = server.count_by_recipient();
        assert!(!counts.contains_key("reader2@example.com"), "{pipelining}");
        assert!(!counts.contains_key("reader8@example.com"), "{pipelining}");
        assert_eq!(counts.len(), 8, "{pipelining}");
        assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    }
}

#[test]
fn a_server_that_never_answers_does_not_hang_send() {
    let silent = SilentServer::start();
    let site = site_with_subscribers(
        6,
        TestConfig::default()
            .smtp_port(silent.port())
            .smtp("concurrency", "2")
            .smtp("timeout", "1s")
            .smtp("retry_base", "50ms"),
    );
    let started = Instant::now();
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"))
        .stderr(predicate::str::contains("no answer"))
        .stdout(predicate::str::contains("0 sent"));
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(silent.connections() >= 2, "it did try");
    // The outage spent nobody's attempts.
    assert!(
        deliveries(&site)
            .values()
            .all(|(s, a)| s == "pending" && *a == 0),
        "{:?}",
        deliveries(&site)
    );
}

#[test]
fn server_down_at_start_then_back_completes_on_the_next_send() {
    let port = closed_port();
    let site = site_with_subscribers(
        12,
        TestConfig::default()
            .smtp_port(port)
            .smtp("retry_base", "50ms"),
    );
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("cannot connect"))
        .stderr(predicate::str::contains(
            "run `verdicts send --at 2026-11-23T09:00:00Z` again",
        ));
    assert!(deliveries(&site)
        .values()
        .all(|(s, a)| s == "pending" && *a == 0));
    site.cmd()
        .arg("issues")
        .assert()
        .stdout(predicate::str::contains("paused"));

    // Someone leaves while the issue waits: they are skipped, not sent.
    site.cmd()
        .args(["subscribers", "unsubscribe", "reader4@example.com"])
        .assert()
        .success();

    let server = TestSmtp::start_on(port, Behaviour::default());
    send(&site)
        .success()
        .stdout(predicate::str::contains("Resuming issue 1"))
        .stdout(predicate::str::contains("sent 11, failed 0, skipped 1"));
    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 11);
    assert!(!counts.contains_key("reader4@example.com"));
    assert_eq!(deliveries(&site)["reader4@example.com"].0, "skipped");
}

#[test]
fn kill_9_mid_send_then_resume_misses_nobody() {
    const N: usize = 300;
    const CONCURRENCY: usize = 4;
    let server = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(15)));
    let site = site_with_subscribers(
        N,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("concurrency", CONCURRENCY),
    );

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .args(["send", "--at", AT, "--yes"])
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(server.wait_for(N / 3, Duration::from_secs(60)) >= N / 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before_resume = server.received().len();
    assert!(before_resume < N, "the kill came mid-run");

    send(&site)
        .success()
        .stdout(predicate::str::contains("Resuming issue 1"));

    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), N, "every subscriber got the issue");
    let duplicated: Vec<&String> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(e, _)| e)
        .collect();
    assert!(
        duplicated.len() <= CONCURRENCY,
        "{} duplicates",
        duplicated.len()
    );
    assert!(counts.values().all(|&n| n <= 2));
    for email in duplicated {
        let ids: Vec<String> = server
            .received()
            .iter()
            .filter(|m| &m.rcpt[0] == email)
            .map(|m| header(m, "Message-ID"))
            .collect();
        assert_eq!(ids[0], ids[1], "a re-sent copy has the same Message-ID");
    }
    assert!(deliveries(&site).values().all(|(s, _)| s == "sent"));
}

#[test]
fn send_refuses_without_a_signing_key() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(3, TestConfig::default().smtp_port(server.port()));
    site.cmd()
        .env_remove("VERDICTS_SECRET")
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("VERDICTS_SECRET is not set"));
    site.cmd()
        .arg("issues")
        .assert()
        .stdout(predicate::str::contains("No issues yet."));
    assert!(server.received().is_empty());
}

#[test]
fn send_without_yes_off_a_terminal_refuses_and_creates_nothing() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(3, TestConfig::default().smtp_port(server.port()));
    site.cmd()
        .args(["send", "--at", AT])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("to 3 active subscribers?"))
        .stderr(predicate::str::contains("pass --yes"));
    site.cmd()
        .arg("issues")
        .assert()
        .stdout(predicate::str::contains("No issues yet."));
}

#[test]
fn dry_run_writes_each_exact_message_and_leaves_the_ledger_alone() {
    let site = site_with_subscribers(3, TestConfig::default().smtp_port(closed_port()));
    let out = site.path().join("dry");
    site.cmd()
        .args(["send", "--at", AT, "--dry-run", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("Wrote 3 messages"));
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "1-reader0@example.com.eml",
            "2-reader1@example.com.eml",
            "3-reader2@example.com.eml"
        ]
    );
    let raw = std::fs::read(out.join("2-reader1@example.com.eml")).unwrap();
    let parsed = mailparse::parse_mail(&raw).unwrap();
    assert!(parsed
        .headers
        .get_first_value("To")
        .unwrap()
        .contains("reader1@example.com"));
    assert!(parsed.headers.get_first_value("List-Unsubscribe").is_some());
    site.cmd()
        .arg("issues")
        .assert()
        .stdout(predicate::str::contains("No issues yet."));
}

#[test]
fn a_comparison_is_never_in_two_issues() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(2, TestConfig::default().smtp_port(server.port()));
    send(&site).success();
    // The preview knows the week has gone out.
    site.cmd()
        .args(["preview", "--at", "2026-11-30T09:00:00Z", "--out", "o"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "has no new comparisons (window 2026-11-23 09:00 UTC to 2026-11-30 09:00 UTC)",
        ));
    // An editor re-dates an already-sent comparison into the next week.
    let file = site
        .comparisons()
        .join("gemini-2-5-flash-lite-vs-ml-intern.md");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("2026-11-18T09:15:00-05:00", "2026-11-25T09:15:00+00:00"),
    )
    .unwrap();
    site.cmd()
        .args(["send", "--at", "2026-11-30T09:00:00Z", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("No new comparisons"));
    site.cmd()
        .args(["preview", "--at", "2026-11-30T09:00:00Z", "--out", "o"])
        .assert()
        .success()
        .stdout(predicate::str::contains("has no new comparisons"));
    assert_eq!(server.received().len(), 2);
}

#[test]
fn a_list_smaller_than_the_connection_count_also_pauses_when_the_server_is_down() {
    let site = site_with_subscribers(
        2,
        TestConfig::default()
            .smtp_port(closed_port())
            .smtp("concurrency", "8")
            .smtp("retry_base", "50ms"),
    );
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"));
    assert!(deliveries(&site)
        .values()
        .all(|(s, a)| s == "pending" && *a == 0));
}

#[test]
fn a_relay_refusing_our_sender_pauses_instead_of_bouncing_everyone() {
    let server = TestSmtp::start_with(Behaviour::default().refuse_sender());
    let site = site_with_subscribers(
        5,
        fast_retries(TestConfig::default().smtp_port(server.port())),
    );
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"))
        .stderr(predicate::str::contains("refuses our sender address"));
    assert!(server.received().is_empty());
    assert!(deliveries(&site)
        .values()
        .all(|(s, a)| s == "pending" && *a == 0));
    site.cmd()
        .args(["subscribers", "count"])
        .assert()
        .stdout(predicate::str::is_match(r"bounced\s+0").unwrap());
}

#[test]
fn a_subscriber_who_leaves_mid_send_is_not_mailed() {
    let server = TestSmtp::start();
    // One connection at one message a second: reader3's turn comes about 2 s after the
    // first message arrives, time enough for the unsubscribe on a loaded CI machine.
    let site = site_with_subscribers(
        4,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("concurrency", "1")
            .smtp("rate_per_second", "1"),
    );
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .args(["send", "--at", AT, "--yes"])
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(server.wait_for(1, Duration::from_secs(30)), 1);
    site.cmd()
        .args(["subscribers", "unsubscribe", "reader3@example.com"])
        .assert()
        .success();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent 3, failed 0, skipped 1"));
    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 3);
    assert!(!counts.contains_key("reader3@example.com"));
    assert_eq!(deliveries(&site)["reader3@example.com"].0, "skipped");
}

#[test]
fn preview_after_a_send_links_the_issues_own_archive_page_or_the_next() {
    let server = TestSmtp::start();
    // Links as written, straight to the site (tracking.rs covers the tracked ones).
    let site = site_with_subscribers(
        2,
        TestConfig::default()
            .smtp_port(server.port())
            .section("tracking:\n  clicks: off"),
    );
    send(&site).success();
    let view_link = |at: &str| {
        site.cmd()
            .args(["preview", "--at", at, "--out", "o"])
            .assert()
            .success();
        let html = std::fs::read_to_string(site.path().join("o/digest.html")).unwrap();
        let start = html.find("https://verdicts.example.com/issues/").unwrap();
        html[start..].split('"').next().unwrap().to_owned()
    };
    // Nothing new: the preview falls back to the week just sent, which is issue 1.
    assert_eq!(view_link(AT), "https://verdicts.example.com/issues/1/");
    // One comparison for the following week: that issue will be number 2.
    let slug = "gemini-2-5-flash-lite-vs-ml-intern";
    let again = std::fs::read_to_string(site.comparisons().join(format!("{slug}.md")))
        .unwrap()
        .replace(&format!("slug: {slug}"), &format!("slug: {slug}-again"))
        .replace("vs ml-intern\"", "vs ml-intern, again\"")
        .replace("published: 2026-11-18T", "published: 2026-11-25T");
    std::fs::write(site.comparisons().join(format!("{slug}-again.md")), again).unwrap();
    assert_eq!(
        view_link("2026-11-30T09:00:00Z"),
        "https://verdicts.example.com/issues/2/"
    );
}
