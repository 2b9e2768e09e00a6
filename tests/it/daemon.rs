//! The daemon and the unsubscribe endpoint as real processes: `verdicts run` started on a
//! fast schedule against a real SMTP server, signalled and killed; the endpoint driven by a
//! real HTTP client.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{
    fixture, http, seed_subscribers, wait_for_http, Process, TempSite, TestConfig,
};
use crate::smtp::{Behaviour, TestSmtp};
use mailparse::MailHeaderMap;
use predicates::prelude::*;

/// A site whose content is one comparison published an hour ago, with `n` subscribers and
/// `config` (SMTP, schedule).
fn daemon_site(n: usize, config: TestConfig) -> TempSite {
    let site = TempSite::new();
    let published = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    site.add_comparison(
        "fresh.md",
        &fixture("valid.md").replace("2026-11-17T12:00:00+00:00", &published),
    );
    site.configure(&config);
    seed_subscribers(&site, n);
    site
}

/// Every two seconds, in UTC.
fn fast(smtp_port: u16) -> TestConfig {
    TestConfig::default()
        .smtp_port(smtp_port)
        .schedule("*/2 * * * * *", "UTC")
}

fn count(site: &TempSite, sql: &str) -> i64 {
    site.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn message_ids(server: &TestSmtp) -> Vec<String> {
    server
        .received()
        .iter()
        .map(|m| {
            mailparse::parse_mail(&m.raw)
                .unwrap()
                .headers
                .get_first_value("Message-ID")
                .unwrap()
        })
        .collect()
}

#[test]
fn every_slot_is_sent_exactly_once_and_sigterm_exits_cleanly() {
    let server = TestSmtp::start();
    let site = daemon_site(4, fast(server.port()).schedule_key("on_empty", "send"));
    let mut daemon = Process::start(&site, &["run"]);
    wait_for_http(daemon.web_port());
    // Every thread of the daemon runs at the configured lower priority (`nice: 10`), so its
    // sends yield to a mail server on the same machine.
    // (A test runner already at a lower priority passes its own on.)
    let expected = crate::common::own_nice().max(10);
    let nice = daemon.thread_nice_values();
    assert!(
        nice.len() > 1 && nice.iter().all(|&n| n == expected),
        "{nice:?}"
    );

    // A second daemon on the same database refuses to start.
    site.cmd()
        .arg("run")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already running the daemon"));

    assert!(
        server.wait_for(12, Duration::from_secs(30)) >= 12,
        "three slots' worth"
    );
    // The last outcomes reach the ledger a moment after the server has the messages.
    let started = Instant::now();
    while count(
        &site,
        "SELECT count(*) FROM issues WHERE state = 'complete'",
    ) < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "three issues complete"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.sigterm();
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("daemon started"), "{stderr}");
    assert!(
        stderr.contains("next_slot"),
        "logs say the next slot: {stderr}"
    );

    let ids = message_ids(&server);
    let mut per_id: HashMap<&String, usize> = HashMap::new();
    for id in &ids {
        *per_id.entry(id).or_default() += 1;
    }
    assert!(
        per_id.values().all(|&n| n == 1),
        "a Message-ID arrived twice"
    );
    let issues = count(
        &site,
        "SELECT count(*) FROM issues WHERE state = 'complete'",
    );
    assert!(issues >= 3);
    assert_eq!(
        count(&site, "SELECT count(DISTINCT slot) FROM issues"),
        count(&site, "SELECT count(*) FROM issues"),
        "one issue per slot"
    );
    // Each complete issue reached each subscriber exactly once.
    assert_eq!(
        count(&site, "SELECT count(*) FROM deliveries d JOIN issues i ON i.number = d.issue WHERE i.state = 'complete' AND d.state = 1"),
        issues * 4
    );
    assert_eq!(
        count(&site, "SELECT count(*) FROM deliveries WHERE state = 2"),
        0
    );
}

#[test]
fn kill_9_mid_send_then_restart_completes_the_slot() {
    const N: usize = 150;
    let server = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(20)));
    let site = daemon_site(N, fast(server.port()).smtp("concurrency", 2));
    let daemon = Process::start(&site, &["run"]);
    assert!(server.wait_for(30, Duration::from_secs(60)) >= 30);
    daemon.kill(); // SIGKILL
    assert!(server.received().len() < N, "killed mid-send");

    let daemon = Process::start(&site, &["run"]);
    assert!(server.wait_for(N, Duration::from_secs(60)) >= N);
    // Give the ledger a moment to record the last outcomes, then stop.
    let started = Instant::now();
    while count(
        &site,
        "SELECT count(*) FROM issues WHERE number = 1 AND state = 'complete'",
    ) == 0
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.sigterm();
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("resuming an unfinished issue"), "{stderr}");

    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), N, "nobody missing");
    let dups = counts.values().filter(|&&n| n > 1).count();
    assert!(dups <= 2, "{dups} duplicates with concurrency 2");
    // Later slots had nothing new and were recorded as skipped, not re-sent.
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM issues WHERE state NOT IN ('complete', 'skipped')"
        ),
        0
    );
    assert_eq!(count(&site, "SELECT count(*) FROM issue_comparisons"), 1);
}

#[test]
fn sigterm_mid_send_finishes_in_flight_and_leaves_nothing_sending() {
    let server = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(40)));
    let site = daemon_site(200, fast(server.port()).smtp("concurrency", 3));
    let daemon = Process::start(&site, &["run"]);
    assert!(server.wait_for(20, Duration::from_secs(60)) >= 20);
    daemon.sigterm();
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        count(&site, "SELECT count(*) FROM deliveries WHERE state = 2"),
        0
    );
    let sent = count(&site, "SELECT count(*) FROM deliveries WHERE state = 1");
    assert_eq!(
        sent as usize,
        server.received().len(),
        "the ledger matches what the server got"
    );
    assert!(sent < 200, "stopped before the end");
}

#[test]
fn a_stale_missed_slot_is_named_and_not_sent() {
    let server = TestSmtp::start();
    // Once a year on 1 January: the latest slot is months old (unless run that very morning).
    let site = daemon_site(
        2,
        TestConfig::default()
            .smtp_port(server.port())
            .schedule("0 0 9 1 Jan *", "UTC")
            .schedule_key("catch_up", "6h"),
    );
    let mut daemon = Process::start(&site, &["run"]);
    let web = daemon.web_port();
    wait_for_http(web);
    let health = http()
        .get(&format!("http://127.0.0.1:{web}/healthz"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(health.contains("-01-01T09:00:00Z"), "{health}");
    daemon.sigterm();
    let (code, stderr) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("missed slot is older than schedule.catch_up")
            && stderr.contains("-01-01T09:00:00Z"),
        "{stderr}"
    );
    assert!(server.received().is_empty());
    assert_eq!(count(&site, "SELECT count(*) FROM issues"), 0);
}

#[test]
fn one_click_unsubscribe_from_a_sent_message() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().smtp_port(server.port()));
    for who in ["ada@example.com", "bob@example.com", "cy@example.com"] {
        site.cmd()
            .args(["subscribers", "add", who])
            .assert()
            .success();
    }
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .assert()
        .success();

    let mut serve = Process::start(&site, &["serve"]);
    let web = serve.web_port();
    wait_for_http(web);
    // The https link of each message, pointed at the local endpoint.
    let links: HashMap<String, String> = server
        .received()
        .iter()
        .map(|m| {
            let h = mailparse::parse_mail(&m.raw)
                .unwrap()
                .headers
                .get_first_value("List-Unsubscribe")
                .unwrap();
            let url = h
                .split(", ")
                .next()
                .unwrap()
                .trim_matches(|c| c == '<' || c == '>')
                .to_string();
            let local = url.replace(
                "https://verdicts.example.com",
                &format!("http://127.0.0.1:{web}"),
            );
            (m.rcpt[0].clone(), local)
        })
        .collect();

    let agent = http();

    // GET shows a confirmation page with a button, and changes nothing.
    let page = agent.get(&links["bob@example.com"]).call().unwrap();
    assert_eq!(page.status(), 200);
    let html = page.into_body().read_to_string().unwrap();
    assert!(html.contains("<form method=\"post\""), "{html}");
    assert!(html.contains("<button type=\"submit\">Unsubscribe</button>"));
    assert!(html.contains("bob@example.com"));

    // RFC 8058 one-click POST, as a mailbox provider sends it.
    let one_click = |url: &str| {
        agent
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send("List-Unsubscribe=One-Click")
            .unwrap()
    };
    let resp = one_click(&links["ada@example.com"]);
    assert_eq!(resp.status(), 200);
    assert!(resp
        .into_body()
        .read_to_string()
        .unwrap()
        .contains("You are unsubscribed"));
    assert_eq!(
        one_click(&links["ada@example.com"]).status(),
        200,
        "idempotent"
    );

    // Bob's token with one character changed: rejected, nobody changed.
    let bob = &links["bob@example.com"];
    let last = bob.chars().last().unwrap();
    let forged = format!(
        "{}{}",
        &bob[..bob.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    assert_eq!(one_click(&forged).status(), 400);
    let truncated = &bob[..bob.len() - 5];
    assert_eq!(one_click(truncated).status(), 400);
    // Bob's signature on Cy's id is rejected too.
    let cy_id = links["cy@example.com"]
        .split("token=")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let bob_sig = bob
        .split("token=")
        .nth(1)
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let swapped = format!("http://127.0.0.1:{web}/unsubscribe?token={cy_id}.{bob_sig}");
    assert_eq!(one_click(&swapped).status(), 400);

    site.cmd()
        .args([
            "subscribers",
            "list",
            "--status",
            "unsubscribed",
            "--format",
            "csv",
        ])
        .assert()
        .stdout(predicate::str::contains("ada@example.com"))
        .stdout(predicate::str::contains("bob@example.com").not())
        .stdout(predicate::str::contains("cy@example.com").not());

    // The next issue skips Ada.
    let next =
        fixture("valid.md").replace("2026-11-17T12:00:00+00:00", "2026-11-25T12:00:00+00:00");
    site.add_comparison("next-week.md", &next);
    site.cmd()
        .args(["send", "--at", "2026-11-30T09:00:00Z", "--yes"])
        .assert()
        .success();
    let counts = server.count_by_recipient();
    assert_eq!(counts["ada@example.com"], 1);
    assert_eq!(counts["bob@example.com"], 2);
    assert_eq!(counts["cy@example.com"], 2);

    serve.sigterm();
    let (code, log) = serve.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
}
