//! The daemon and the unsubscribe endpoint as real processes: `verdicts run` started on a
//! fast schedule against a real SMTP server, signalled and killed; the endpoint driven by a
//! real HTTP client.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{fixture, http, wait_for_http, TempSite, TEST_SECRET};
use crate::smtp::{closed_port, Behaviour, TestSmtp};
use mailparse::MailHeaderMap;
use predicates::prelude::*;

/// A site whose content is one comparison published an hour ago, with `n` subscribers,
/// SMTP on `smtp_port`, the endpoint on `web_port`, and the given schedule lines.
fn daemon_site(
    n: usize,
    smtp_port: u16,
    web_port: u16,
    schedule: &str,
    smtp_extra: &str,
) -> TempSite {
    let site = TempSite::new();
    let published = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    site.add_comparison(
        "fresh.md",
        &fixture("valid.md").replace("2026-11-17T12:00:00+00:00", &published),
    );
    let config = crate::common::config_yaml(smtp_port, smtp_extra)
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{web_port}"))
        .replace(
            "schedule:\n  cron: \"0 0 9 * * Mon\"\n  timezone: Europe/London\n",
            &format!("schedule:\n{schedule}"),
        );
    std::fs::write(site.config_path(), config).unwrap();
    let mut csv = String::from("email\n");
    for i in 0..n {
        csv.push_str(&format!("reader{i}@example.com\n"));
    }
    std::fs::write(site.path().join("subs.csv"), csv).unwrap();
    site.cmd()
        .args(["subscribers", "import", "subs.csv"])
        .assert()
        .success();
    site
}

fn start_daemon(site: &TempSite) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .arg("run")
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

/// Waits for the child to exit; returns its exit code and stderr.
fn wait_exit(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn db(site: &TempSite) -> rusqlite::Connection {
    rusqlite::Connection::open(site.path().join("state/verdicts.db")).unwrap()
}

fn count(site: &TempSite, sql: &str) -> i64 {
    db(site).query_row(sql, [], |r| r.get(0)).unwrap()
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
    let web = closed_port();
    let site = daemon_site(
        4,
        server.port(),
        web,
        "  cron: \"*/2 * * * * *\"\n  timezone: UTC\n  on_empty: send\n",
        "",
    );
    let daemon = start_daemon(&site);
    wait_for_http(web);

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
    sigterm(&daemon);
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(30));
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
        count(&site, "SELECT count(*) FROM deliveries d JOIN issues i ON i.number = d.issue WHERE i.state = 'complete' AND d.state = 'sent'"),
        issues * 4
    );
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM deliveries WHERE state = 'sending'"
        ),
        0
    );
}

#[test]
fn kill_9_mid_send_then_restart_completes_the_slot() {
    const N: usize = 150;
    let server = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(20)));
    let web = closed_port();
    let site = daemon_site(
        N,
        server.port(),
        web,
        "  cron: \"*/2 * * * * *\"\n  timezone: UTC\n",
        "  concurrency: 2",
    );
    let mut daemon = start_daemon(&site);
    assert!(server.wait_for(30, Duration::from_secs(60)) >= 30);
    daemon.kill().unwrap(); // SIGKILL
    daemon.wait().unwrap();
    assert!(server.received().len() < N, "killed mid-send");

    let daemon = start_daemon(&site);
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
    sigterm(&daemon);
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(30));
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
    let web = closed_port();
    let site = daemon_site(
        200,
        server.port(),
        web,
        "  cron: \"*/2 * * * * *\"\n  timezone: UTC\n",
        "  concurrency: 3",
    );
    let daemon = start_daemon(&site);
    assert!(server.wait_for(20, Duration::from_secs(60)) >= 20);
    sigterm(&daemon);
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM deliveries WHERE state = 'sending'"
        ),
        0
    );
    let sent = count(
        &site,
        "SELECT count(*) FROM deliveries WHERE state = 'sent'",
    );
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
    let web = closed_port();
    // Once a year on 1 January: the latest slot is months old (unless run that very morning).
    let site = daemon_site(
        2,
        server.port(),
        web,
        "  cron: \"0 0 9 1 Jan *\"\n  timezone: UTC\n  catch_up: 6h\n",
        "",
    );
    let daemon = start_daemon(&site);
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
    sigterm(&daemon);
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(30));
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
    let web = closed_port();
    let site = TempSite::with_bundled_content();
    std::fs::write(
        site.config_path(),
        crate::common::config_yaml(server.port(), "")
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{web}")),
    )
    .unwrap();
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

    let mut serve = Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .arg("serve")
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_http(web);
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

    sigterm(&serve);
    let status = serve.wait().unwrap();
    assert!(status.success());
}
