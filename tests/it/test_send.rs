//! `send --test`: test copies reach the named addresses over real SMTP exactly as a
//! subscriber's copy would be (signed, same body), their links work against the real
//! endpoint and change nothing, and the ledger and the list are left as they were.

use std::time::Duration;

use predicates::prelude::*;
use verdicts::mail::token::{claimed_subscriber, TokenKey, SAMPLE_SUBSCRIBER_ID};

use crate::common::http;
use crate::common::{Process, TempSite, TEST_SECRET};
use crate::deliverability::{dkim_fixture, dkimpy_verify, site_with_dkim};
use crate::delivery::header;
use crate::smtp::{Behaviour, Received, TestSmtp};

const AT: &str = "2026-11-23T09:00:00Z";
const SUBJECT: &str = "Gemini 2.5 Flash Lite vs Meta Llama 4 Scout Fine-Tuning Toolkit + 4 more";

/// The https unsubscribe link of a message.
fn unsubscribe_link(m: &Received) -> String {
    header(m, "List-Unsubscribe")
        .split(", ")
        .next()
        .unwrap()
        .trim_matches(|c| c == '<' || c == '>')
        .to_string()
}

/// The decoded HTML part with its unsubscribe link taken out.
fn html_without_link(m: &Received) -> String {
    let parsed = mailparse::parse_mail(&m.raw).unwrap();
    let html = parsed
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/html")
        .unwrap()
        .get_body()
        .unwrap();
    let html = html.replace(&unsubscribe_link(m), "LINK");
    // The reader's own token in the vote and comparison links (`?r=`) differs too.
    regex::Regex::new(r"\?r=[0-9]+\.[0-9]+\.[A-Za-z0-9_-]+")
        .unwrap()
        .replace_all(&html, "?r=READER")
        .into_owned()
}

/// What the list and the ledger hold, as the operator's tools show them.
fn state(site: &TempSite) -> (String, i64, i64) {
    let list = site
        .cmd()
        .args(["subscribers", "list", "--format", "csv"])
        .assert()
        .success();
    let list = String::from_utf8(list.get_output().stdout.clone()).unwrap();
    let conn = site.db();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        list,
        count("SELECT count(*) FROM issues"),
        count("SELECT count(*) FROM deliveries"),
    )
}

#[test]
fn test_copies_arrive_signed_with_links_that_work_and_record_nothing() {
    let server = TestSmtp::start();
    let site = site_with_dkim("ed25519.pem", "  algorithm: ed25519\n");
    site.edit_config(|c| c.replace("port: 2525", &format!("port: {}", server.port())));
    for who in ["ada@example.com", "bob@example.com"] {
        site.cmd()
            .args(["subscribers", "add", who])
            .assert()
            .success();
    }
    let before = state(&site);

    site.cmd()
        .args([
            "send",
            "--test",
            "editor@example.com",
            "proof@example.org",
            "--at",
            AT,
        ])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("\"[TEST] {SUBJECT}\"")))
        .stdout(predicate::str::contains("editor@example.com: accepted"))
        .stdout(predicate::str::contains("proof@example.org: accepted"));

    let copies = server.received();
    let mut rcpts: Vec<&str> = copies.iter().map(|m| m.rcpt[0].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["editor@example.com", "proof@example.org"]);
    let key = TokenKey::new(TEST_SECRET.as_bytes());
    for m in &copies {
        assert_eq!(header(m, "Subject"), format!("[TEST] {SUBJECT}"));
        assert_eq!(header(m, "To"), m.rcpt[0]);
        if crate::checkers::available(crate::checkers::Checker::Dkim, module_path!()) {
            dkimpy_verify(&m.raw, &dkim_fixture("ed25519.txt")).expect("the test copy verifies");
        }
        let link = unsubscribe_link(m);
        let token = link.split("token=").nth(1).unwrap();
        assert_eq!(claimed_subscriber(token), Some(SAMPLE_SUBSCRIBER_ID));
        assert!(key.is_sample(token), "signed with the real key: {link}");
    }
    assert_eq!(
        state(&site),
        before,
        "the list and the ledger are unchanged"
    );

    // The links work against the real endpoint and unsubscribe nobody.
    let mut serve = Process::start(&site, &["serve"]);
    let web = serve.web_port();
    let local = unsubscribe_link(&copies[0]).replace(
        "https://verdicts.example.com",
        &format!("http://127.0.0.1:{web}"),
    );
    let agent = http();
    let page = agent.get(&local).call().unwrap();
    assert_eq!(page.status(), 200);
    let html = page.into_body().read_to_string().unwrap();
    assert!(
        html.contains("<button type=\"submit\">Unsubscribe</button>"),
        "{html}"
    );
    assert!(html.contains("unsubscribes nobody"), "{html}");
    let done = agent
        .post(&local)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("List-Unsubscribe=One-Click")
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(done
        .into_body()
        .read_to_string()
        .unwrap()
        .contains("You are unsubscribed"));
    serve.kill();
    assert_eq!(state(&site), before, "using the links changed nothing");

    // The real send still goes to everyone, and a subscriber's copy has the same body.
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .stdout(predicate::str::contains("Created issue 1"));
    let all = server.received();
    assert_eq!(all.len(), 4);
    let ada = all.iter().find(|m| m.rcpt == ["ada@example.com"]).unwrap();
    assert_eq!(header(ada, "Subject"), SUBJECT);
    assert_eq!(html_without_link(ada), html_without_link(&copies[0]));
}

#[test]
fn exact_copies_keep_the_subject_and_every_run_is_a_new_message() {
    let server = TestSmtp::start_with(Behaviour::default().unknown("gone@example.com"));
    let site = TempSite::with_bundled_content();
    site.write_config(server.port(), "");
    let send = |extra: &[&str]| {
        site.cmd()
            .args(["send", "--at", AT, "--test", "editor@example.com"])
            .args(extra)
            .timeout(Duration::from_secs(60))
            .assert()
    };
    send(&["--exact"]).success();
    send(&["--exact"]).success();
    let copies = server.received();
    assert_eq!(copies.len(), 2);
    for m in &copies {
        assert_eq!(header(m, "Subject"), SUBJECT);
    }
    assert_ne!(
        header(&copies[0], "Message-ID"),
        header(&copies[1], "Message-ID"),
        "a mailbox would hide a second copy with a Message-ID it has seen"
    );

    // One refused address is reported; the other copy still goes out.
    send(&["gone@example.com"])
        .code(1)
        .stdout(predicate::str::contains("gone@example.com: NOT sent"))
        .stdout(predicate::str::contains("User unknown"))
        .stderr(predicate::str::contains(
            "1 of 2 test copies were not accepted",
        ));
    assert_eq!(server.received().len(), 3);

    // A malformed address is refused before anything is sent; no ledger is created.
    send(&["not-an-address"])
        .code(1)
        .stderr(predicate::str::contains("not-an-address"));
    assert_eq!(server.received().len(), 3);
    assert!(!site.db_path().exists());
}
