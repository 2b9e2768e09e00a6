//! Several relays, limits and policy refusals, as an operator sees them: `verdicts send`
//! against two real SMTP servers on loopback. A primary that stops taking connections, or
//! that answers 421 to everything, mid-issue: the issue completes through the fallback,
//! each reader once, and the ledger says which relay took each message. An hourly limit
//! pauses the issue and holds across a restart; a warm-up ramp doubles its cap day by day.
//! A capped recipient domain waits its turn while the others flow. A relay refusing our
//! unauthenticated mail pauses the issue, names the relay and what to check, and bounces
//! nobody.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{state_at, TempSite, TestConfig};
use crate::delivery::{send, site_with_subscribers};
use crate::smtp::{Behaviour, Received, TestSmtp};
use predicates::prelude::*;

const OUTLOOK_UNAUTHENTICATED: &str = "550 5.7.515 Access denied, sending domain example.com doesn't meet the required authentication level.";

/// `smtp:` as a list: `primary` on one port, `backup` (its fallback) on another, with the
/// given extra lines for the primary.
pub(crate) fn two_relays(primary: u16, backup: u16, primary_extra: &str) -> String {
    format!(
        "smtp:
  - name: primary
    role: primary
    host: 127.0.0.1
    port: {primary}
    tls: none
    concurrency: 4
    retry_base: 50ms
    max_attempts: 3
    timeout: 5s
{primary_extra}  - name: backup
    role: fallback
    host: 127.0.0.1
    port: {backup}
    tls: none
    concurrency: 2
"
    )
}

/// Replaces the single `smtp:` block of the test config with `smtp`.
pub(crate) fn with_smtp(site: &TempSite, smtp: &str) {
    site.edit_config(|yaml| {
        let start = yaml.find("smtp:\n").expect("an smtp block");
        let end = yaml.find("web:\n").expect("a web block");
        format!("{}{smtp}{}", &yaml[..start], &yaml[end..])
    });
}

/// Issue 1's deliveries: email → (state, relay name).
fn ledger(site: &TempSite) -> HashMap<String, (String, Option<String>)> {
    let conn = site.db();
    let mut stmt = conn
        .prepare(
            "SELECT s.email, d.state, r.name FROM deliveries d
             JOIN subscribers s ON s.id = d.subscriber_id
             LEFT JOIN relays r ON r.id = d.relay WHERE d.issue = 1",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (state_at(r, 1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn recipients(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .flat_map(|m| m.rcpt.iter().map(|r| r.to_lowercase()))
        .collect()
}

/// The issue completed with every reader mailed once across both servers, the ledger
/// names, for each, the relay whose server has the message, and `issues show 1` prints each
/// relay's share (its `Relays:` line, returned).
fn assert_completed_once_each(
    site: &TempSite,
    n: usize,
    primary: &TestSmtp,
    backup: &TestSmtp,
) -> String {
    let (first, second) = (
        recipients(&primary.received()),
        recipients(&backup.received()),
    );
    assert!(!first.is_empty(), "the primary took part of the issue");
    assert!(!second.is_empty(), "the fallback took the rest");
    let mut once: HashMap<String, usize> = HashMap::new();
    for r in first.iter().chain(&second) {
        *once.entry(r.clone()).or_default() += 1;
    }
    assert_eq!(once.len(), n, "every reader got the issue");
    assert!(once.values().all(|&c| c == 1), "nobody got it twice");
    let ledger = ledger(site);
    for (relay, got) in [("primary", &first), ("backup", &second)] {
        for r in got {
            assert_eq!(
                ledger[r],
                ("sent".to_owned(), Some(relay.to_owned())),
                "{r} went through {relay}"
            );
        }
    }
    let line = format!(
        "Relays:      backup: {} sent; primary: {} sent",
        second.len(),
        first.len()
    );
    site.cmd()
        .args(["issues", "show", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(line.clone()));
    line
}

#[test]
fn the_issue_moves_to_the_fallback_when_the_primary_stops_taking_connections() {
    let primary = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(5)));
    let backup = TestSmtp::start();
    let site = site_with_subscribers(300, TestConfig::default());
    with_smtp(&site, &two_relays(primary.port(), backup.port(), ""));
    let primary_port = primary.port();
    // The primary goes away mid-issue: its port refuses connections from then on.
    let stopper = std::thread::spawn(move || {
        let mut primary = primary;
        primary.wait_for(60, Duration::from_secs(60));
        primary.go_down();
        primary
    });
    send(&site).success().stderr(predicate::str::contains(
        "continuing the issue on a fallback relay",
    ));
    let primary = stopper.join().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", primary_port)).is_err());
    let relays_line = assert_completed_once_each(&site, 300, &primary, &backup);

    // A year later compaction has folded the issue's delivery rows into its totals; each
    // relay's share is still shown.
    site.cmd()
        .arg("compact")
        .env("VERDICTS_NOW", "2027-11-23T09:00:00Z")
        .assert()
        .success();
    let rows: i64 = site
        .db()
        .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "compaction removed the delivery rows");
    site.cmd()
        .args(["issues", "show", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(relays_line));
}

#[test]
fn the_issue_moves_to_the_fallback_when_the_primary_answers_421_to_everything() {
    let primary = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(5)));
    let backup = TestSmtp::start();
    let site = site_with_subscribers(300, TestConfig::default());
    with_smtp(&site, &two_relays(primary.port(), backup.port(), ""));
    std::thread::scope(|s| {
        s.spawn(|| {
            primary.wait_for(60, Duration::from_secs(60));
            primary.impose("421 4.7.0 Too many messages, rate limited; try again later");
        });
        send(&site)
            .success()
            .stderr(predicate::str::contains("relay primary is throttling"));
    });
    assert_completed_once_each(&site, 300, &primary, &backup);
    // The attempts the primary's throttling cost were given back: every reader's one
    // attempt is the one that went through.
    let spent: u32 = site
        .db()
        .query_row(
            "SELECT max(attempts) FROM deliveries WHERE issue = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(spent, 1);
}

/// How many messages the server holds once it has taken in what was already on the wire
/// when the sender stopped (a loaded machine may read a session's last bytes late).
fn settled(server: &TestSmtp) -> usize {
    let mut seen = server.received().len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = server.received().len();
        if now == seen {
            return now;
        }
        seen = now;
    }
}

#[test]
fn an_hourly_limit_pauses_the_issue_and_a_restart_sends_no_more_within_the_hour() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(
        250,
        TestConfig::default()
            .smtp_port(server.port())
            .smtp("per_hour", 100),
    );
    // An "hour" of ten seconds, so the test can see the window pass.
    let hour = Duration::from_secs(10);
    let send_in_short_hour = || {
        site.cmd()
            .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
            .env("VERDICTS_LIMIT_HOUR", "10s")
            .timeout(Duration::from_secs(120))
            .assert()
    };
    let started = Instant::now();
    send_in_short_hour()
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"))
        .stderr(predicate::str::contains("relay 127.0.0.1:"))
        .stderr(predicate::str::contains(
            "reached its hourly limit (per_hour 100 messages)",
        ));
    // Never more than the limit: a copy handed to the relay counts, even one cut off by
    // the pause (it is given back and goes later), so a loaded machine may send a few less.
    let first = settled(&server);
    assert!(
        (90..=100).contains(&first),
        "{first} sent in the first hour"
    );
    // The window slides: the first run's copies leave it an "hour" after the last went.
    let first_done = Instant::now();
    // A restarted process within the hour: the count is in the database, nothing more goes.
    send_in_short_hour()
        .code(75)
        .stderr(predicate::str::contains("hourly limit"));
    assert!(
        started.elapsed() < hour,
        "the second run was within the hour"
    );
    // A copy cut off by the first run's pause was given back, so the restart may use its
    // place; together they stay within the limit.
    let within_hour = settled(&server);
    assert!(
        (first..=100).contains(&within_hour),
        "{within_hour} sent within the hour"
    );
    // Waiting is not failing: the rest are pending with no attempt spent.
    let (pending, untried): (u64, u64) = site
        .db()
        .query_row(
            "SELECT sum(state = 0), sum(state = 0 AND attempts = 0)
             FROM deliveries WHERE issue = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let left = 250 - within_hour as u64;
    assert_eq!((pending, untried), (left, left));
    // Once the hour has passed, up to the next hundred go.
    std::thread::sleep(hour.saturating_sub(first_done.elapsed()) + Duration::from_millis(1200));
    send_in_short_hour().code(75);
    let second = settled(&server) - within_hour;
    assert!(
        (90..=100).contains(&second),
        "{second} sent in the second hour"
    );
    let counts = server.count_by_recipient();
    assert!(counts.values().all(|&c| c == 1), "nobody twice");
}

/// Waits until the wall clock reaches `ms` (since the epoch).
fn sleep_until_ms(ms: i64) {
    let now = chrono::Utc::now().timestamp_millis();
    if ms > now {
        std::thread::sleep(Duration::from_millis((ms - now) as u64));
    }
}

#[test]
fn a_warm_up_ramp_sends_its_first_days_cap_and_doubles_it_day_by_day() {
    let server = TestSmtp::start();
    let site = site_with_subscribers(150, TestConfig::default().smtp_port(server.port()));
    site.edit_config(|yaml| {
        yaml.replacen(
            "smtp:\n",
            "smtp:\n  warmup:\n    first_day: 40\n    factor: 2\n",
            1,
        )
    });
    // A "day" of six seconds, so the test can see three of them.
    let day_ms = 6_000;
    let send_in_short_days = || {
        site.cmd()
            .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
            .env("VERDICTS_LIMIT_DAY", "6s")
            .timeout(Duration::from_secs(120))
            .assert()
    };
    let usage = || -> (i64, i64) {
        site.db()
            .query_row(
                "SELECT r.first_used_ms, (SELECT max(second) FROM relay_usage)
                 FROM relays r WHERE r.first_used_ms IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };

    // Day 1: the first day's cap, then a pause that names it.
    send_in_short_days()
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"))
        .stderr(predicate::str::contains(
            "warm-up limit (warmup 40 messages)",
        ));
    let first = settled(&server);
    // A copy cut off by the pause is given back and goes later, so a few may be missing.
    assert!((35..=40).contains(&first), "{first} sent on the first day");
    let (first_used, last_second) = usage();

    // Day 2 of the ramp, once the first day's copies have also left the sliding window (a
    // second's count leaves it when the window's start passes it): twice as many.
    sleep_until_ms(first_used.max(last_second * 1000) + day_ms + 300);
    assert!(chrono::Utc::now().timestamp_millis() < first_used + 2 * day_ms);
    send_in_short_days()
        .code(75)
        .stderr(predicate::str::contains(
            "warm-up limit (warmup 80 messages)",
        ));
    let second = settled(&server) - first;
    assert!(
        (75..=80).contains(&second),
        "{second} sent on the second day"
    );

    // Day 3: a cap of 160 takes the rest, and the issue completes.
    sleep_until_ms(first_used + 2 * day_ms + 300);
    send_in_short_days().success();
    assert_eq!(settled(&server), 150);
    let counts = server.count_by_recipient();
    assert_eq!(counts.len(), 150);
    assert!(counts.values().all(|&c| c == 1), "nobody twice");
}

#[test]
fn a_capped_domain_waits_its_turn_while_other_domains_flow() {
    let server = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(10)));
    let site = TempSite::with_bundled_content();
    site.configure(
        &TestConfig::default()
            .smtp_port(server.port())
            .smtp("concurrency", 6)
            .section("domains:\n  gmail.com: {concurrency: 1, per_second: 10}"),
    );
    let mut csv = String::from("email,name,status\n");
    for i in 0..120 {
        // Interleaved: every fourth reader is on Gmail (or its googlemail.com alias).
        let domain = match i % 4 {
            0 => "gmail.com",
            1 if i % 8 == 1 => "googlemail.com",
            _ => "example.org",
        };
        csv.push_str(&format!("reader{i}@{domain},,active\n"));
    }
    std::fs::write(site.path().join("list.csv"), csv).unwrap();
    site.cmd()
        .args(["subscribers", "import", "list.csv"])
        .assert()
        .success();
    send(&site).success();
    let received = server.received();
    assert_eq!(received.len(), 120);
    let google =
        |m: &Received| m.rcpt[0].ends_with("@gmail.com") || m.rcpt[0].ends_with("@googlemail.com");
    let (mut capped, others): (Vec<&Received>, Vec<&Received>) =
        received.iter().partition(|m| google(m));
    assert_eq!(capped.len(), 45);
    capped.sort_by_key(|m| m.started);
    // One Gmail message at a time: none starts before the previous one was accepted.
    for pair in capped.windows(2) {
        assert!(
            pair[1].started >= pair[0].accepted,
            "two Gmail messages in flight at once (sessions {} and {})",
            pair[0].session,
            pair[1].session
        );
    }
    // At most ten a second: 45 messages take at least 4.4 s.
    let spread = capped[44].started - capped[0].started;
    assert!(spread >= Duration::from_millis(4300), "{spread:?}");
    // The other domains did not wait for Gmail: all of them were through before a quarter
    // of the Gmail messages, over several connections at once.
    let last_other = others.iter().map(|m| m.accepted).max().unwrap();
    assert!(
        last_other < capped[11].started,
        "the other domains were held up behind the capped one"
    );
    let sessions: std::collections::HashSet<u64> = others.iter().map(|m| m.session).collect();
    assert!(sessions.len() > 1, "{sessions:?}");
}

#[test]
fn a_relay_refusing_unauthenticated_mail_pauses_names_the_relay_and_bounces_nobody() {
    let primary = TestSmtp::start_with(Behaviour::default().every_rcpt(OUTLOOK_UNAUTHENTICATED));
    let backup = TestSmtp::start();
    let site = site_with_subscribers(40, TestConfig::default());
    with_smtp(&site, &two_relays(primary.port(), backup.port(), ""));
    send(&site)
        .code(75)
        .stderr(predicate::str::contains(
            "issue 1 paused: relay primary refuses our mail",
        ))
        .stderr(predicate::str::contains("5.7.515"))
        .stderr(predicate::str::contains("verdicts dkim-record"))
        .stderr(predicate::str::contains("no reader was marked bounced"));
    // The sending domain's authentication is not the relay's to fix: no fallback was tried.
    assert!(backup.received().is_empty());
    let conn = site.db();
    let (active, bounces, spent): (u64, u64, u64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM subscribers WHERE status = 'active'),
                    (SELECT count(*) FROM events WHERE kind IN ('hard_bounce', 'soft_bounce')),
                    (SELECT count(*) FROM deliveries WHERE issue = 1 AND (state <> 0 OR attempts > 0))",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((active, bounces, spent), (40, 0, 0));
}

#[test]
fn a_list_of_relays_with_two_primaries_is_refused_naming_the_file_and_field() {
    let site = site_with_subscribers(1, TestConfig::default());
    with_smtp(
        &site,
        &two_relays(2525, 2526, "").replace("role: fallback", "role: primary"),
    );
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("config.yaml: field `smtp.role`"))
        .stderr(predicate::str::contains("2 with `role: primary`"));
}

/// A private CA and a certificate for 127.0.0.1 that it signed: (CA PEM, cert DER, key DER).
fn private_ca() -> (String, Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.der().to_vec(), key.serialize_der())
}

/// Implicit TLS in front of `backend` (a plain test server) with the given certificate, on a
/// port of its own: what a relay on port 465 with a private CA's certificate looks like.
fn tls_front(backend: u16, cert: Vec<u8>, key: Vec<u8>) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends the handshake.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    port
}

#[test]
fn a_relay_whose_certificate_a_private_ca_issued_is_trusted_through_its_ca_file() {
    let server = TestSmtp::start();
    let (ca_pem, cert, key) = private_ca();
    let port = tls_front(server.port(), cert, key);
    let site = site_with_subscribers(5, TestConfig::default());
    std::fs::write(site.path().join("relay-ca.pem"), ca_pem).unwrap();
    let relay = |ca: &str| {
        format!(
            "smtp:\n  name: office\n  host: 127.0.0.1\n  port: {port}\n  tls: tls\n  timeout: 5s\n  max_attempts: 2\n  retry_base: 50ms\n{ca}"
        )
    };
    // Without the CA, the certificate is not trusted: nothing goes, the issue pauses.
    with_smtp(&site, &relay(""));
    send(&site)
        .code(75)
        .stderr(predicate::str::contains("issue 1 paused"))
        .stderr(predicate::str::contains("certificate"));
    assert!(server.received().is_empty());
    // With `ca_file`, the same relay is trusted and the issue goes out over TLS.
    site.edit_config(|yaml| {
        yaml.replace(
            "  max_attempts: 2\n",
            "  max_attempts: 2\n  ca_file: relay-ca.pem\n",
        )
    });
    send(&site).success();
    assert_eq!(server.received().len(), 5);
}
