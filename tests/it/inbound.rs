//! Inbound mail classification over a corpus of messages modelled on what real servers send.

use std::path::Path;

use serde::Deserialize;
use verdicts::inbound::{classify, Attribution, Context, Kind};
use verdicts::mail::token::TokenKey;
use verdicts::mail::verp::VerpKey;

const FIXTURE_SECRET: &[u8] = b"fixture-secret-not-for-production-0123";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    file: String,
    server: String,
    kind: String,
    status: Option<String>,
    attribution: Option<String>,
    reason: Option<String>,
}

fn describe(a: &Attribution) -> String {
    match a {
        Attribution::Delivery {
            issue,
            subscriber,
            by,
        } => format!("{by} {issue} {subscriber}"),
        Attribution::UnsignedMessageId {
            issue,
            subscriber,
            trust,
        } => format!("{}-message-id {issue} {subscriber}", trust.as_str()),
        Attribution::Addresses(list) => format!("addresses {}", list.join(",")),
        Attribution::Nothing => "none".into(),
    }
}

/// Where the classification of one fixture differs from the manifest.
fn mismatches(dir: &Path, e: &Expected, key: &VerpKey) -> Vec<String> {
    let raw = std::fs::read(dir.join(&e.file)).expect("fixture readable");
    let got = classify(
        &raw,
        Context {
            key: Some(key),
            envelope_recipient: None,
        },
    );
    let mut wrong = Vec::new();
    if got.kind.label() != e.kind {
        wrong.push(format!("kind {} (expected {})", got.kind.label(), e.kind));
    }
    if let Some(status) = &e.status {
        let statuses: Vec<_> = match &got.kind {
            Kind::Bounce(f) => f.iter().filter_map(|f| f.status.clone()).collect(),
            _ => vec![],
        };
        if !statuses.contains(status) {
            wrong.push(format!("status {statuses:?} (expected {status})"));
        }
    }
    if let Some(attribution) = &e.attribution {
        let got = describe(&got.hints.attribution());
        if &got != attribution {
            wrong.push(format!("attribution `{got}` (expected `{attribution}`)"));
        }
    }
    if let Some(reason) = &e.reason {
        match &got.kind {
            Kind::Ignored(why) if why.to_string().contains(reason.as_str()) => {}
            other => wrong.push(format!(
                "reason {other:?} (expected one containing `{reason}`)"
            )),
        }
    }
    wrong
}

#[test]
fn every_fixture_is_classified_as_its_manifest_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound");
    let manifest: Vec<Expected> = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("expected.yaml")).expect("manifest readable"),
    )
    .expect("manifest parses");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = manifest.iter().map(|e| e.file.clone()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every fixture is in the manifest, once");
    assert!(manifest.len() >= 15);

    let key = VerpKey::derive(FIXTURE_SECRET);
    let mut failures = Vec::new();
    for e in &manifest {
        let wrong = mismatches(&dir, e, &key);
        if !wrong.is_empty() {
            failures.push(format!("{} ({}): {}", e.file, e.server, wrong.join("; ")));
        }
    }
    let right = manifest.len() - failures.len();
    println!(
        "inbound classification accuracy: {right}/{} ({:.1}%)",
        manifest.len(),
        100.0 * right as f64 / manifest.len() as f64
    );
    assert!(
        failures.is_empty(),
        "misclassified:\n{}",
        failures.join("\n")
    );
}

#[test]
fn another_newsletters_secret_attributes_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound");
    let raw = std::fs::read(dir.join("mailto-unsubscribe.eml")).unwrap();
    let other = VerpKey::derive(b"some other newsletter's secret value");
    let got = classify(
        &raw,
        Context {
            key: Some(&other),
            envelope_recipient: None,
        },
    );
    assert_eq!(got.kind.label(), "ignored");
    assert_eq!(got.hints.attribution(), Attribution::Nothing);
}

// ---------------------------------------------------------------------------------------
// End to end: real sends to the test SMTP server, bounces built for those deliveries and
// piped to `verdicts inbound`.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{fixture, Process, TempSite, TEST_SECRET};
use crate::smtp::{Behaviour, Received, TestSmtp};
use verdicts::mail::verp::Purpose;

/// Monday slots: the bundled content goes out in the first, one new comparison in each next.
const WEEKS: [&str; 4] = [
    "2026-11-23T09:00:00Z",
    "2026-11-30T09:00:00Z",
    "2026-12-07T09:00:00Z",
    "2026-12-14T09:00:00Z",
];

const READERS: [&str; 6] = [
    "dead@example.net",
    "full@example.net",
    "annoyed@example.net",
    "leaving@example.net",
    "loyal@example.net",
    "refused@example.net",
];

pub(crate) fn inbound_site(port: u16) -> TempSite {
    let site = TempSite::with_bundled_content();
    site.write_config(port, "");
    site.edit_config(|t| t + "inbound:\n  address: bounces@example.com\n");
    for who in READERS {
        site.cmd()
            .args(["subscribers", "add", who])
            .assert()
            .success();
    }
    site
}

/// Adds a comparison published in the week before `WEEKS[week]`, so that week has an issue.
fn add_week(site: &TempSite, week: usize) {
    let published = match week {
        1 => "2026-11-26T12:00:00+00:00",
        2 => "2026-12-03T12:00:00+00:00",
        3 => "2026-12-10T12:00:00+00:00",
        _ => unreachable!("four weeks"),
    };
    let text = fixture("valid.md")
        .replace(
            "slug: alpha-coder-vs-beta-writer",
            &format!("slug: alpha-coder-vs-beta-writer-week-{week}"),
        )
        .replace("2026-11-17T12:00:00+00:00", published);
    site.add_comparison(&format!("week-{week}.md"), &text);
}

pub(crate) fn send_week(site: &TempSite, server: &TestSmtp, week: usize) -> Vec<Received> {
    let before = server.received().len();
    if week > 0 {
        add_week(site, week);
    }
    site.cmd()
        .args(["send", "--at", WEEKS[week], "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    server.received()[before..].to_vec()
}

pub(crate) fn statuses(site: &TempSite) -> HashMap<String, String> {
    let conn = site.db();
    let mut stmt = conn
        .prepare("SELECT email, status FROM subscribers")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub(crate) fn subscriber_ids(site: &TempSite) -> HashMap<String, i64> {
    let conn = site.db();
    let mut stmt = conn.prepare("SELECT email, id FROM subscribers").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Everything `inbound` may change: statuses, events and handled messages.
fn state(site: &TempSite) -> (Vec<(String, String)>, i64, i64) {
    let mut s: Vec<_> = statuses(site).into_iter().collect();
    s.sort();
    let conn = site.db();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    (s, count("events"), count("inbound_processed"))
}

pub(crate) fn to(received: &[Received], who: &str) -> Received {
    received
        .iter()
        .find(|r| r.rcpt == [who])
        .unwrap_or_else(|| panic!("no message to {who}"))
        .clone()
}

/// A received message's List-Unsubscribe header.
pub(crate) fn list_unsubscribe(message: &Received) -> String {
    let mail = mailparse::parse_mail(&message.raw).unwrap();
    mail.headers
        .iter()
        .find(|h| h.get_key().eq_ignore_ascii_case("List-Unsubscribe"))
        .unwrap()
        .get_value()
}

/// The mailto address in a received message's List-Unsubscribe header.
pub(crate) fn mailto_of(message: &Received) -> String {
    let value = list_unsubscribe(message);
    let start = value.find("mailto:").unwrap() + "mailto:".len();
    value[start..].split(['?', '>']).next().unwrap().to_string()
}

/// A Postfix-style DSN for one delivery, sent back to its envelope sender.
pub(crate) fn dsn(envelope_sender: &str, recipient: &str, action: &str, status: &str) -> String {
    format!(
        "Return-Path: <>\r\n\
         Delivered-To: {envelope_sender}\r\n\
         From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n\
         To: {envelope_sender}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Message-Id: <{}.{status}.{action}@mx.example.net>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b0\"\r\n\
         \r\n\
         --b0\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         The message to {recipient} could not be delivered.\r\n\
         \r\n\
         --b0\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.example.net\r\n\
         \r\n\
         Final-Recipient: rfc822; {recipient}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; 550 {status} mailbox problem for {recipient}\r\n\
         \r\n\
         --b0--\r\n",
        envelope_sender.replace(['@', '+'], ".")
    )
}

/// A feedback-loop complaint (ARF), sent to a separate FBL address, quoting the original.
pub(crate) fn arf(original: &Received) -> String {
    let headers_end = original
        .raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap();
    let quoted = String::from_utf8_lossy(&original.raw[..headers_end]);
    format!(
        "From: feedback@arf.example.org\r\n\
         To: fbl@example.com\r\n\
         Subject: complaint\r\n\
         Message-ID: <arf-{}@arf.example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"f0\"\r\n\
         \r\n\
         --f0\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         A user marked this message as spam.\r\n\
         \r\n\
         --f0\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: ExampleFBL/1.0\r\n\
         Version: 1\r\n\
         Original-Mail-From: <{}>\r\n\
         \r\n\
         --f0\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {quoted}\r\n\
         \r\n\
         --f0--\r\n",
        original.rcpt[0].replace('@', "."),
        original.mail_from
    )
}

pub(crate) fn pipe(site: &TempSite, message: impl Into<Vec<u8>>) -> String {
    let out = site
        .cmd()
        .arg("inbound")
        .write_stdin(message.into())
        .timeout(Duration::from_secs(60))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn bounces_complaints_and_mailto_unsubscribes_close_the_loop() {
    let server = TestSmtp::start_with(Behaviour::default().unknown("refused@example.net"));
    let site = inbound_site(server.port());
    let ids = subscriber_ids(&site);
    let key = TokenKey::new(TEST_SECRET.as_bytes()).verp_key();

    // Week 1: every copy carries a VERP envelope sender and mailto naming its delivery.
    let week1 = send_week(&site, &server, 0);
    assert_eq!(week1.len(), 5, "refused@ was refused at RCPT");
    for m in &week1 {
        let who = &m.rcpt[0];
        let tag = key
            .verify_address(&m.mail_from)
            .unwrap_or_else(|| panic!("{} is not a signed VERP sender", m.mail_from));
        assert_eq!(tag.purpose, Purpose::Bounce);
        assert_eq!((tag.issue.get(), tag.subscriber.get()), (1, ids[who]));
        assert!(m.mail_from.starts_with("bounces+b-1-") && m.mail_from.ends_with("@example.com"));
        let mailto = key.verify_address(&mailto_of(m)).unwrap();
        assert_eq!(mailto.purpose, Purpose::Unsubscribe);
        assert_eq!(mailto.subscriber.get(), ids[who]);
    }
    assert_eq!(statuses(&site)["refused@example.net"], "bounced");

    // The replies of the outside world, for those deliveries.
    let dead = to(&week1, "dead@example.net");
    let out = pipe(
        &site,
        dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1"),
    );
    assert!(out.contains("now bounced"), "{out}");
    let full = to(&week1, "full@example.net");
    let out = pipe(
        &site,
        dsn(&full.mail_from, "full@example.net", "failed", "4.2.2"),
    );
    assert!(out.starts_with("soft:"), "{out}");
    // A delay notice for the same reader counts for nothing.
    let out = pipe(
        &site,
        dsn(&full.mail_from, "full@example.net", "delayed", "4.4.1"),
    );
    assert!(out.starts_with("ignored: delay"), "{out}");
    let out = pipe(&site, arf(&to(&week1, "annoyed@example.net")));
    assert!(out.contains("now unsubscribed"), "{out}");
    let leaving = to(&week1, "leaving@example.net");
    let unsubscribe = format!(
        "From: leaving@example.net\r\nTo: {}\r\nSubject: please stop\r\nMessage-ID: <bye@example.net>\r\n\r\nNo more, thanks.\r\n",
        mailto_of(&leaving)
    );
    let out = pipe(&site, unsubscribe.clone());
    assert!(out.contains("now unsubscribed"), "{out}");

    let s = statuses(&site);
    assert_eq!(s["dead@example.net"], "bounced");
    assert_eq!(
        s["full@example.net"], "active",
        "one soft bounce is not enough"
    );
    assert_eq!(s["annoyed@example.net"], "unsubscribed");
    assert_eq!(s["leaving@example.net"], "unsubscribed");
    assert_eq!(s["loyal@example.net"], "active");

    // The same messages again change nothing.
    let before = state(&site);
    let out = pipe(
        &site,
        dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1"),
    );
    assert!(out.contains("already handled"), "{out}");
    pipe(&site, unsubscribe);
    assert_eq!(state(&site), before);

    // The per-issue report counts what the issue caused.
    let show = site.cmd().args(["issues", "show", "1"]).assert().success();
    let show = String::from_utf8(show.get_output().stdout.clone()).unwrap();
    assert!(show.contains("Delivered:   5 of 6 attempted"), "{show}");
    assert!(
        show.contains("Bounces:     3 (50.00%): 2 hard, 1 soft"),
        "{show}"
    );
    assert!(show.contains("Complaints:  1 (20.00%)"), "{show}");
    assert!(
        show.contains("Unsubscribes: 1 (20.00%): 0 one-click, 0 page, 1 mailto"),
        "{show}"
    );
    assert!(
        show.contains("warning: the complaint rate 20.00% is over 0.1%"),
        "{show}"
    );
    assert!(
        show.contains("warning: the bounce rate 50.00% is over 2%"),
        "{show}"
    );
    let list = site.cmd().arg("issues").assert().success();
    let list = String::from_utf8(list.get_output().stdout.clone()).unwrap();
    assert!(
        list.contains("bounces 50.00% (2 hard, 1 soft), complaints 20.00%, unsubscribes 20.00%"),
        "{list}"
    );
    let bounced = site
        .cmd()
        .args(["subscribers", "list", "--status", "bounced"])
        .assert()
        .success();
    let bounced = String::from_utf8(bounced.get_output().stdout.clone()).unwrap();
    let line = |who: &str| {
        bounced
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap()
            .to_string()
    };
    assert!(
        line("dead@example.net").contains("hard 5.1.1: 550 5.1.1 mailbox problem"),
        "{bounced}"
    );
    assert!(
        line("refused@example.net").contains("hard 5.1.1:"),
        "{bounced}"
    );
    assert!(bounced.contains("BOUNCED     REASON"), "{bounced}");

    // Weeks 2 and 3: the full mailbox keeps bouncing; on the third issue in a row it counts.
    for week in [1, 2] {
        let sent = send_week(&site, &server, week);
        let mut rcpts: Vec<_> = sent.iter().map(|m| m.rcpt[0].clone()).collect();
        rcpts.sort();
        assert_eq!(
            rcpts,
            ["full@example.net", "loyal@example.net"],
            "week {week}"
        );
        let full = to(&sent, "full@example.net");
        let tag = key.verify_address(&full.mail_from).unwrap();
        assert_eq!(tag.issue.get(), week as i64 + 1);
        let out = pipe(
            &site,
            dsn(&full.mail_from, "full@example.net", "failed", "4.2.2"),
        );
        let now_bounced = out.contains("now bounced");
        assert_eq!(now_bounced, week == 2, "week {week}: {out}");
    }
    assert_eq!(statuses(&site)["full@example.net"], "bounced");

    // Week 4 goes to the one reader left.
    let sent = send_week(&site, &server, 3);
    let rcpts: Vec<_> = sent.iter().map(|m| m.rcpt[0].as_str()).collect();
    assert_eq!(rcpts, ["loyal@example.net"]);
}

#[test]
fn bad_input_changes_nothing_and_exits_zero() {
    let server = TestSmtp::start();
    let site = inbound_site(server.port());
    let week1 = send_week(&site, &server, 0);
    let ids = subscriber_ids(&site);
    let loyal = to(&week1, "loyal@example.net");
    let before = state(&site);

    // A tag nobody signed, for a real subscriber and issue.
    let forged = format!(
        "bounces+b-1-{}-aaaabbbbccccdddd@example.com",
        ids["loyal@example.net"]
    );
    let out = pipe(&site, dsn(&forged, "loyal@example.net", "failed", "5.1.1"));
    assert!(out.contains("does not verify"), "{out}");
    // A real tag, signed with another newsletter's secret.
    let other = TokenKey::new(b"another newsletter's secret value")
        .verp_key()
        .address(
            "bounces@example.com",
            verdicts::mail::verp::Tag {
                issue: verdicts::store::IssueNumber(1),
                subscriber: verdicts::store::SubscriberId(ids["loyal@example.net"]),
                purpose: Purpose::Unsubscribe,
            },
        );
    let out = pipe(
        &site,
        format!("From: x@example.org\r\nTo: {other}\r\nSubject: unsubscribe\r\n\r\nbye\r\n"),
    );
    assert!(out.starts_with("ignored:"), "{out}");
    // 20 MB: a real DSN with a huge attachment.
    let mut huge = dsn(&loyal.mail_from, "loyal@example.net", "failed", "5.1.1").into_bytes();
    huge.extend(std::iter::repeat_n(b'x', 20 * 1024 * 1024));
    let out = pipe(&site, huge);
    assert!(out.contains("over the 10485760-byte limit"), "{out}");
    // Random bytes.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let out = pipe(&site, noise);
    assert!(out.starts_with("ignored:"), "{out}");
    assert_eq!(state(&site), before);

    // A DSN for an address that is not on the list, sent to the untagged address: kept as
    // unattributed, with what it claims; no subscriber or event changes.
    let out = pipe(
        &site,
        dsn(
            "bounces@example.com",
            "stranger@example.org",
            "failed",
            "5.1.1",
        ),
    );
    assert!(out.starts_with("hard not applied:"), "{out}");
    assert!(
        out.contains("the only evidence is the address stranger@example.org"),
        "{out}"
    );
    let (statuses_after, events_after, _) = state(&site);
    assert_eq!((statuses_after, events_after), (before.0, before.1));
    assert_eq!(statuses(&site)["loyal@example.net"], "active");
    let listed = site
        .cmd()
        .args(["inbound", "--unattributed"])
        .assert()
        .success();
    let listed = String::from_utf8(listed.get_output().stdout.clone()).unwrap();
    assert!(
        listed.starts_with("1 unattributed report (never applied):"),
        "{listed}"
    );
    assert!(
        listed.contains("hard bounce  names stranger@example.org"),
        "{listed}"
    );
}

#[test]
fn an_unavailable_database_asks_the_mail_server_to_retry() {
    let site = TempSite::with_bundled_content();
    site.write_config(2525, "");
    // The state folder cannot be created: a file is in the way.
    std::fs::write(site.path().join("state"), "not a folder").unwrap();
    let assert = site
        .cmd()
        .arg("inbound")
        .write_stdin(fixture("inbound/postfix-dsn-user-unknown.eml"))
        .assert()
        .code(75);
    let err = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(err.contains("cannot open the state database"), "{err}");
    assert!(err.contains("delivered again later"), "{err}");
}

#[test]
fn a_mailbox_is_processed_once() {
    let server = TestSmtp::start();
    let site = inbound_site(server.port());
    let week1 = send_week(&site, &server, 0);
    let mut mbox = Vec::new();
    for who in ["dead@example.net", "full@example.net"] {
        let m = to(&week1, who);
        let status = if who.starts_with("dead") {
            "5.1.1"
        } else {
            "4.2.2"
        };
        mbox.extend_from_slice(b"From MAILER-DAEMON Mon Nov 23 09:05:00 2026\n");
        mbox.extend_from_slice(
            dsn(&m.mail_from, who, "failed", status)
                .replace("\r\n", "\n")
                .as_bytes(),
        );
        mbox.push(b'\n');
    }
    mbox.extend_from_slice(b"From someone Mon Nov 23 09:06:00 2026\n");
    mbox.extend_from_slice(fixture("inbound/outlook-out-of-office.eml").as_bytes());
    let file = site.path().join("bounces.mbox");
    std::fs::write(&file, &mbox).unwrap();

    let run = || {
        let out = site
            .cmd()
            .args(["inbound", "--mbox"])
            .arg(&file)
            .assert()
            .success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };
    let first = run();
    assert!(first.contains("3 messages"), "{first}");
    assert!(first.contains("1 hard bounce, 1 soft"), "{first}");
    assert!(first.contains("1 ignored, 0 already handled"), "{first}");
    assert!(first.contains("Now bounced: 1"), "{first}");
    let after_first = state(&site);
    let second = run();
    assert!(second.contains("0 hard bounces, 0 soft"), "{second}");
    assert!(second.contains("2 already handled"), "{second}");
    assert_eq!(state(&site), after_first);

    // The same messages as a Maildir are the same messages.
    let maildir = site.path().join("Maildir");
    std::fs::create_dir_all(maildir.join("new")).unwrap();
    std::fs::create_dir_all(maildir.join("cur")).unwrap();
    for (i, m) in verdicts::inbound::mailbox::split_mbox(&mbox)
        .iter()
        .enumerate()
    {
        std::fs::write(maildir.join("new").join(format!("1767600000.{i}.host")), m).unwrap();
    }
    let out = site
        .cmd()
        .args(["inbound", "--maildir"])
        .arg(&maildir)
        .assert()
        .success();
    let out = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(out.contains("2 already handled"), "{out}");
    assert_eq!(state(&site), after_first);
}

/// The one-click link of a received message, pointed at the local endpoint on `web`.
pub(crate) fn one_click_url(message: &Received, web: u16) -> String {
    let value = list_unsubscribe(message);
    let url = value.split(", ").next().unwrap().trim_matches(['<', '>']);
    url.replace(
        "https://verdicts.example.com",
        &format!("http://127.0.0.1:{web}"),
    )
}

#[test]
fn web_unsubscribes_count_by_channel_against_the_issue() {
    let server = TestSmtp::start();
    let site = inbound_site(server.port());
    site.edit_config(|t| t.replace("127.0.0.1:8080", "127.0.0.1:0"));
    let week1 = send_week(&site, &server, 0);

    let mut serve = Process::start(&site, &["serve"]);
    let web = serve.web_port();
    let agent = crate::common::http();
    let post = |url: &str| {
        agent
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send("List-Unsubscribe=One-Click")
            .unwrap()
            .status()
    };
    // A mail client's one-click POST.
    assert_eq!(
        post(&one_click_url(&to(&week1, "dead@example.net"), web)),
        200
    );
    // The reader opens the link and presses the page's button: the form's own action.
    let page_url = one_click_url(&to(&week1, "full@example.net"), web);
    let html = agent
        .get(&page_url)
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let action = html
        .split("action=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert_eq!(post(&format!("http://127.0.0.1:{web}{action}")), 200);
    // Again: already unsubscribed, nothing more recorded.
    assert_eq!(post(&format!("http://127.0.0.1:{web}{action}")), 200);
    serve.kill();

    let show = site.cmd().args(["issues", "show", "1"]).assert().success();
    let show = String::from_utf8(show.get_output().stdout.clone()).unwrap();
    assert!(
        show.contains("Unsubscribes: 2 (33.33%): 1 one-click, 1 page, 0 mailto"),
        "{show}"
    );
}

// ---------------------------------------------------------------------------------------
// A hosted mailbox: a real Dovecot over IMAP.

use crate::dovecot::{Dovecot, Mailbox};

/// An inbound site whose bounces land in the Dovecot mailbox, polled every second. The
/// mailbox password is the newsletter secret, so the test needs one variable only.
fn imap_site(smtp: u16, dovecot: &Dovecot) -> TempSite {
    let site = inbound_site(smtp);
    site.edit_config(|t| {
        t.replace("127.0.0.1:8080", "127.0.0.1:0")
            + &format!(
                "  imap:\n    host: 127.0.0.1\n    port: {}\n    tls: none\n    username: {}\n    password_env: VERDICTS_SECRET\n    poll: 1s\n",
                dovecot.port,
                crate::dovecot::USER
            )
    });
    site
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never happened"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(daemon: Process) {
    daemon.sigterm();
    let (code, log) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
}

/// A Dovecot, its mailbox, and an inbound site that sent week 1 and reads that mailbox.
pub(crate) fn imap_setup() -> Option<(Dovecot, Mailbox, TestSmtp, TempSite, Vec<Received>)> {
    let dovecot = Dovecot::start(TEST_SECRET)?;
    let mailbox = Mailbox::new(&dovecot, TEST_SECRET);
    let server = TestSmtp::start();
    let site = imap_site(server.port(), &dovecot);
    let week1 = send_week(&site, &server, 0);
    Some((dovecot, mailbox, server, site, week1))
}

/// A private certificate authority and a server certificate for 127.0.0.1 that it signed,
/// made with the openssl command: (CA certificate, server certificate, server key).
fn private_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for step in [
        format!(
            "req -x509 -days 2 -subj /CN=TestMailCA {ec} -keyout {} -out {}",
            p("ca-key.pem"),
            p("ca.pem")
        ),
        format!(
            "req -subj /CN=127.0.0.1 {ec} -keyout {} -out {}",
            p("key.pem"),
            p("server.csr")
        ),
        format!(
            "x509 -req -days 2 -CAcreateserial -in {} -CA {} -CAkey {} -extfile {} -out {}",
            p("server.csr"),
            p("ca.pem"),
            p("ca-key.pem"),
            p("server.ext"),
            p("cert.pem")
        ),
    ] {
        let made = std::process::Command::new("openssl")
            .args(step.split(' '))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(made.success(), "openssl {step} failed");
    }
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[test]
fn a_mailbox_behind_tls_with_a_private_certificate_is_read_once_it_is_trusted() {
    crate::require_checker!(crate::checkers::Checker::Dovecot);
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(certs.path());
    let Some(dovecot) = Dovecot::start_with_tls(TEST_SECRET, &cert, &key) else {
        return;
    };
    let mailbox = Mailbox::new(&dovecot, TEST_SECRET);
    let server = TestSmtp::start();
    let site = imap_site(server.port(), &dovecot);
    site.edit_config(|t| {
        t.replace(
            &format!("port: {}\n    tls: none", dovecot.port),
            &format!("port: {}\n    tls: tls", dovecot.tls_port.unwrap()),
        )
    });
    let week1 = send_week(&site, &server, 0);
    let dead = to(&week1, "dead@example.net");
    let bounce = dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1");
    mailbox.append("INBOX", bounce.as_bytes());

    // Only the public roots are trusted: the server's certificate is refused, nothing read.
    let out = site.cmd().args(["inbound", "--imap"]).assert().failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(mailbox.count("INBOX"), 1);

    // Trusted through inbound.imap.ca_file (relative to the config file): read and filed.
    std::fs::copy(&ca, site.path().join("imap-ca.pem")).unwrap();
    site.edit_config(|t| t.replace("    poll: 1s\n", "    poll: 1s\n    ca_file: imap-ca.pem\n"));
    site.cmd().args(["inbound", "--imap"]).assert().success();
    assert_eq!(mailbox.count("Processed"), 1);
    assert_eq!(statuses(&site)["dead@example.net"], "bounced");

    // A file without a certificate is a config error naming the field and the file (75,
    // as every failure of `inbound`: the mail waits, nothing is lost).
    std::fs::write(site.path().join("imap-ca.pem"), "not a certificate\n").unwrap();
    let out = site.cmd().args(["inbound", "--imap"]).assert().code(75);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("inbound.imap.ca_file") && err.contains("imap-ca.pem"),
        "{err}"
    );
}

#[test]
fn the_daemon_reads_a_hosted_mailbox_once_and_files_what_it_read() {
    let Some((_dovecot, mailbox, _smtp, site, week1)) = imap_setup() else {
        return;
    };
    let dead = to(&week1, "dead@example.net");
    let bounce = dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1");
    mailbox.append("INBOX", bounce.as_bytes());
    mailbox.append("INBOX", arf(&to(&week1, "annoyed@example.net")).as_bytes());
    mailbox.append(
        "INBOX",
        fixture("inbound/outlook-out-of-office.eml").as_bytes(),
    );

    let daemon = Process::start(&site, &["run"]);
    wait_until("the three messages moving to Processed", || {
        mailbox.count("Processed") == 3
    });
    assert_eq!(mailbox.count("INBOX"), 0);
    let s = statuses(&site);
    assert_eq!(s["dead@example.net"], "bounced");
    assert_eq!(s["annoyed@example.net"], "unsubscribed");
    assert_eq!(s["loyal@example.net"], "active");
    stop(daemon);
    let after = state(&site);

    // After a restart, what was filed stays filed and unread; the same bounce arriving
    // again is moved without changing anything.
    let daemon = Process::start(&site, &["run"]);
    mailbox.append("INBOX", bounce.as_bytes());
    wait_until("the repeated bounce moving to Processed", || {
        mailbox.count("Processed") == 4
    });
    stop(daemon);
    assert_eq!(mailbox.count("INBOX"), 0);
    assert_eq!(state(&site), after);
}

#[test]
fn a_database_failure_leaves_the_message_in_the_mailbox() {
    let Some((_dovecot, mailbox, _smtp, site, week1)) = imap_setup() else {
        return;
    };
    let dead = to(&week1, "dead@example.net");
    mailbox.append(
        "INBOX",
        dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1").as_bytes(),
    );

    // The database file is swapped for something SQLite cannot open.
    let db = site.db_path();
    let saved = site.path().join("state/saved.db");
    std::fs::rename(&db, &saved).unwrap();
    std::fs::create_dir(&db).unwrap();
    let out = site.cmd().args(["inbound", "--imap"]).assert().code(75);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("1 left in the mailbox"), "{err}");
    assert_eq!(mailbox.count("INBOX"), 1);
    assert_eq!(mailbox.count("Processed"), 0);

    // Back in order, the next poll handles it.
    std::fs::remove_dir(&db).unwrap();
    std::fs::rename(&saved, &db).unwrap();
    let out = site.cmd().args(["inbound", "--imap"]).assert().success();
    let out = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        out.contains("1 message handled and moved to Processed"),
        "{out}"
    );
    assert_eq!(mailbox.count("INBOX"), 0);
    assert_eq!(statuses(&site)["dead@example.net"], "bounced");
}
