//! Every address the list accepts is delivered or refused up front: quoted local parts and
//! international domains go out through `verdicts send` to a real SMTP server, spelled as
//! that server can take them, and `send --dry-run` writes every message it can build.

use std::collections::HashMap;

use crate::common::{state_at, TempSite};
use crate::delivery::send;
use crate::smtp::{self, Behaviour, Received, TestSmtp};
use mailparse::MailHeaderMap;
use predicates::prelude::*;

const AT: &str = "2026-11-23T09:00:00Z";
const QUOTED: &str = "\"first last\"@example.com";
const IDN: &str = "leser@bücher.example";
const IDN_ASCII: &str = "leser@xn--bcher-kva.example";
const UTF8_LOCAL: &str = "jörg@example.com";
const PLAIN: &str = "plain@example.com";

/// A site with the bundled content and the four kinds of address, each added with
/// `subscribers add` as an operator would.
fn site(port: u16) -> TempSite {
    let site = TempSite::with_bundled_content();
    site.write_config(port, "  timeout: 5s\n  retry_base: 50ms\n  max_attempts: 2");
    for (email, name) in [
        (QUOTED, "First Last"),
        (IDN, "Leserin"),
        (UTF8_LOCAL, "Jörg"),
        (PLAIN, "Plain"),
    ] {
        site.cmd()
            .args(["subscribers", "add", email, "--name", name])
            .assert()
            .success();
    }
    site
}

/// (state, last reply) of every delivery of issue 1, by email as stored.
fn deliveries(site: &TempSite) -> HashMap<String, (String, Option<String>)> {
    let conn = site.db();
    let mut stmt = conn
        .prepare(
            "SELECT s.email, d.state, d.last_reply FROM deliveries d
             JOIN subscribers s ON s.id = d.subscriber_id WHERE d.issue = 1",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (state_at(r, 1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn by_rcpt(server: &TestSmtp) -> HashMap<String, Received> {
    server
        .received()
        .into_iter()
        .map(|m| {
            assert_eq!(m.rcpt.len(), 1, "one recipient per message");
            (m.rcpt[0].clone(), m)
        })
        .collect()
}

fn to_header(m: &Received) -> String {
    let parsed = mailparse::parse_mail(&m.raw).unwrap();
    let raw = parsed.headers.get_first_header("To").expect("a To header");
    String::from_utf8(raw.get_value_raw().to_vec()).unwrap()
}

#[test]
fn without_smtputf8_idn_goes_as_punycode_and_a_utf8_local_part_fails_alone() {
    let server = TestSmtp::start_with(Behaviour::default().without_smtputf8());
    let site = site(server.port());
    send(&site).success();

    let got = by_rcpt(&server);
    let mut rcpts: Vec<&str> = got.keys().map(String::as_str).collect();
    rcpts.sort();
    assert_eq!(rcpts, [QUOTED, IDN_ASCII, PLAIN]);
    for m in got.values() {
        assert!(!m.smtputf8, "SMTPUTF8 was not offered, so never asked for");
        assert!(
            m.raw.is_ascii(),
            "an SMTPUTF8-less server gets an ASCII message"
        );
    }
    assert_eq!(
        to_header(&got[QUOTED]),
        format!("\"First Last\" <{QUOTED}>")
    );
    assert!(
        to_header(&got[IDN_ASCII]).ends_with(&format!("<{IDN_ASCII}>")),
        "{}",
        to_header(&got[IDN_ASCII])
    );
    // The UTF-8 local part was never offered to the server: it has no ASCII spelling.
    assert!(!server
        .rcpt_attempts()
        .keys()
        .any(|k| k.contains("rg@example.com")));

    let d = deliveries(&site);
    for ok in [QUOTED, IDN, PLAIN] {
        assert_eq!(d[ok].0, "sent", "{ok}: {:?}", d[ok]);
    }
    let (state, reply) = &d[UTF8_LOCAL];
    assert_eq!(state, "failed");
    let reply = reply.as_deref().unwrap_or_default();
    assert!(
        reply.contains(UTF8_LOCAL) && reply.contains("SMTPUTF8"),
        "the failure names the address and the reason: {reply}"
    );
    site.cmd()
        .args(["issues", "show", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(UTF8_LOCAL).and(predicate::str::contains("SMTPUTF8")));
}

#[test]
fn with_smtputf8_international_addresses_go_as_utf8() {
    let server = TestSmtp::start();
    let site = site(server.port());
    send(&site).success();

    let got = by_rcpt(&server);
    let mut rcpts: Vec<&str> = got.keys().map(String::as_str).collect();
    rcpts.sort();
    assert_eq!(rcpts, [QUOTED, UTF8_LOCAL, IDN, PLAIN]);
    assert!(got[IDN].smtputf8 && got[UTF8_LOCAL].smtputf8);
    assert!(
        !got[PLAIN].smtputf8 && !got[QUOTED].smtputf8,
        "SMTPUTF8 only when an address needs it"
    );
    assert!(to_header(&got[UTF8_LOCAL]).ends_with(&format!("<{UTF8_LOCAL}>")));
    assert!(to_header(&got[IDN]).ends_with(&format!("<{IDN}>")));
    assert_eq!(
        to_header(&got[QUOTED]),
        format!("\"First Last\" <{QUOTED}>")
    );
    assert!(deliveries(&site).values().all(|(s, _)| s == "sent"));
}

#[test]
fn dry_run_writes_every_message_it_can_and_lists_the_rest() {
    let site = site(smtp::closed_port());
    // A row no current `subscribers add` would accept, as an older version or a hand edit
    // could have left it.
    let conn = site.db();
    conn.execute(
        "INSERT INTO subscribers (email, email_norm, status, source, created_at, updated_at,
                                  signed_up_at)
         VALUES ('broken@@example.com', 'broken@@example.com', 'active', 'cli',
                 '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
        [],
    )
    .unwrap();
    drop(conn);

    let out = site.path().join("dry");
    site.cmd()
        .args(["send", "--at", AT, "--dry-run", "--force", "--out"])
        .arg(&out)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("Wrote 4 messages"))
        .stdout(predicate::str::contains(
            "1 of them has a non-ASCII local part",
        ))
        .stdout(predicate::str::contains(
            "Could not build the message to broken@@example.com: the stored address is invalid",
        ))
        .stderr(predicate::str::contains(
            "1 of 5 messages could not be built",
        ));
    let mut tos: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| {
            let raw = std::fs::read(e.unwrap().path()).unwrap();
            let m = mailparse::parse_mail(&raw).unwrap();
            let to = m.headers.get_first_header("To").unwrap();
            String::from_utf8(to.get_value_raw().to_vec()).unwrap()
        })
        .collect();
    tos.sort();
    assert_eq!(tos.len(), 4, "{tos:?}");
    assert!(
        tos.iter().any(|t| t.ends_with(&format!("<{QUOTED}>"))),
        "{tos:?}"
    );
    assert!(
        tos.iter().any(|t| t.ends_with(&format!("<{IDN}>"))),
        "{tos:?}"
    );
}
