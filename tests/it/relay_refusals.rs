//! A relay that refuses everyone must never empty the list: a misconfigured smarthost
//! answering `550 User unknown` to every recipient, a provider refusing our unauthenticated
//! mail (`5.7.515`), a relay that says no to a short list. Each pauses the issue (exit 75)
//! with nobody marked bounced, and the issue completes once the relay is fixed. Refusals
//! that are the readers' own still bounce them, and `subscribers resubscribe
//! --bounced-since` undoes a bad run. All against the real SMTP test server.

use std::collections::HashMap;

use crate::common::{state_at, TempSite, TestConfig};
use crate::delivery::{send, site_with_subscribers};
use crate::smtp::{Behaviour, TestSmtp};
use predicates::prelude::*;

const SMARTHOST_UNKNOWN: &str = "550 5.1.1 <reader@example.com>: Recipient address rejected: User unknown in local recipient table";
const OUTLOOK_UNAUTHENTICATED: &str = "550 5.7.515 Access denied, sending domain example.com doesn't meet the required authentication level. The sender's domain in the 5322.From address doesn't meet the authentication requirements defined for the sender.";

fn fast(config: TestConfig) -> TestConfig {
    config
        .smtp("concurrency", "4")
        .smtp("retry_base", "50ms")
        .smtp("max_attempts", "3")
}

/// Subscriber statuses by count.
fn statuses(site: &TempSite) -> HashMap<String, u64> {
    let conn = site.db();
    let mut stmt = conn
        .prepare("SELECT status, count(*) FROM subscribers GROUP BY status")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn bounce_events(site: &TempSite) -> u64 {
    site.db()
        .query_row(
            "SELECT count(*) FROM events WHERE kind IN ('hard_bounce', 'soft_bounce')",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// (state, attempts) counts of issue 1's deliveries.
fn delivery_states(site: &TempSite) -> HashMap<(String, u32), u64> {
    let conn = site.db();
    let mut stmt = conn
        .prepare("SELECT state, attempts, count(*) FROM deliveries WHERE issue = 1 GROUP BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| Ok(((state_at(r, 0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_smarthost_refusing_every_recipient_pauses_and_bounces_nobody() {
    let server = TestSmtp::start_with(Behaviour::default().every_rcpt(SMARTHOST_UNKNOWN));
    let site = site_with_subscribers(120, fast(TestConfig::default().smtp_port(server.port())));
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"))
        .stderr(predicate::str::contains("refused nearly every recipient"))
        .stderr(predicate::str::contains("nobody was marked bounced"))
        .stderr(predicate::str::contains("User unknown"));
    assert_eq!(statuses(&site), HashMap::from([("active".into(), 120)]));
    assert_eq!(bounce_events(&site), 0);
    // Every refusal was given back: all 120 wait, none has spent an attempt.
    assert_eq!(
        delivery_states(&site),
        HashMap::from([(("pending".into(), 0), 120)])
    );

    // The operator fixes the relay: the same command finishes the issue, once each.
    server.lift();
    send(&site)
        .success()
        .stdout(predicate::str::contains("Resuming issue 1"))
        .stdout(predicate::str::contains("Totals: 120 sent, 0 failed"));
    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 120);
    assert!(counts.values().all(|&n| n == 1));
}

#[test]
fn a_provider_refusing_unauthenticated_mail_pauses_at_the_first_refusal() {
    let server = TestSmtp::start_with(Behaviour::default().every_rcpt(OUTLOOK_UNAUTHENTICATED));
    let site = site_with_subscribers(30, fast(TestConfig::default().smtp_port(server.port())));
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("sender's fault"))
        .stderr(predicate::str::contains("5.7.515"))
        .stderr(predicate::str::contains("dkim-record"));
    assert_eq!(statuses(&site), HashMap::from([("active".into(), 30)]));
    assert_eq!(bounce_events(&site), 0);
    // It stopped at once: at most one refusal per connection was asked for.
    let asked: usize = server.rcpt_attempts().values().sum();
    assert!(
        asked <= 4,
        "{asked} recipients asked after the first refusal"
    );
    assert_eq!(
        delivery_states(&site),
        HashMap::from([(("pending".into(), 0), 30)])
    );
}

#[test]
fn a_short_list_refused_whole_pauses_too() {
    let server = TestSmtp::start_with(Behaviour::default().every_rcpt("554 5.0.0 Rejected"));
    let site = site_with_subscribers(3, fast(TestConfig::default().smtp_port(server.port())));
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("all 3 recipients tried"));
    assert_eq!(statuses(&site), HashMap::from([("active".into(), 3)]));
    assert_eq!(
        delivery_states(&site),
        HashMap::from([(("pending".into(), 0), 3)])
    );
}

#[test]
fn a_run_that_sent_nothing_exits_non_zero() {
    let server = TestSmtp::start_with(Behaviour::default().unknown("reader0@example.com"));
    let site = site_with_subscribers(1, fast(TestConfig::default().smtp_port(server.port())));
    send(&site)
        .code(3)
        .stdout(predicate::str::contains("sent 0, failed 1"))
        .stdout(predicate::str::contains("1 reader marked bounced"))
        .stderr(predicate::str::contains("issue 1 sent nothing"))
        .stderr(predicate::str::contains("verdicts issues show 1"));
}

#[test]
fn readers_own_refusals_still_bounce_and_resubscribe_bounced_since_undoes_them() {
    let server = TestSmtp::start_with(
        Behaviour::default()
            .unknown("reader2@example.com")
            .unknown("reader5@example.com"),
    );
    let site = site_with_subscribers(20, fast(TestConfig::default().smtp_port(server.port())));
    let before = chrono::Utc::now() - chrono::Duration::seconds(2);
    send(&site)
        .success()
        .stdout(predicate::str::contains("Totals: 18 sent, 2 failed"))
        .stdout(predicate::str::contains("2 readers marked bounced"));
    assert_eq!(
        statuses(&site),
        HashMap::from([("active".into(), 18), ("bounced".into(), 2)])
    );

    let since = before.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    site.cmd()
        .args([
            "subscribers",
            "resubscribe",
            "--bounced-since",
            &since,
            "--dry-run",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("reader2@example.com"))
        .stdout(predicate::str::contains("reader5@example.com"))
        .stdout(predicate::str::contains("User unknown"))
        .stdout(predicate::str::contains("Would resubscribe 2 subscribers"));
    assert_eq!(statuses(&site)["bounced"], 2, "a dry run changes nothing");

    // A time after the bounces finds nobody.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    site.cmd()
        .args(["subscribers", "resubscribe", "--bounced-since", &later])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing changed"));

    site.cmd()
        .args(["subscribers", "resubscribe", "--bounced-since", &since])
        .assert()
        .success()
        .stdout(predicate::str::contains("Resubscribed 2 subscribers"));
    assert_eq!(statuses(&site), HashMap::from([("active".into(), 20)]));

    // An address and --bounced-since together, or neither, is a usage error.
    site.cmd()
        .args([
            "subscribers",
            "resubscribe",
            "a@example.com",
            "--bounced-since",
            &since,
        ])
        .assert()
        .code(2);
    site.cmd()
        .args(["subscribers", "resubscribe"])
        .assert()
        .code(2);
}
