//! The inbound door, from the attacker's side. Everyone can mail the public bounce address
//! and post to the web endpoint; only what we signed may change a reader. Each case is a
//! message or request an outsider (or a reader acting against another reader) can make,
//! and each asserts that the database did not move: subscriber statuses, `confirmed_at`,
//! and the events table, not only the exit code or HTTP status.

use std::time::Duration;

use crate::common::{TempSite, TEST_SECRET};
use crate::inbound::{
    dsn, imap_setup, inbound_site, mailto_of, pipe, send_week, subscriber_ids, to,
};
use crate::signup::{confirm_link, http, post_form, signup_site, Served};
use crate::smtp::{closed_port, Received, TestSmtp};
use verdicts::mail::token::TokenKey;

/// Everything an attack could change: each subscriber's status and confirmation time, and
/// every event recorded.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    subscribers: Vec<(String, String, Option<String>)>,
    events: Vec<(i64, Option<i64>, String, Option<String>)>,
}

fn snapshot(site: &TempSite) -> Snapshot {
    let conn = site.db();
    let mut stmt = conn
        .prepare("SELECT email, status, confirmed_at FROM subscribers ORDER BY id")
        .unwrap();
    let subscribers = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut stmt = conn
        .prepare("SELECT subscriber_id, issue, kind, channel FROM events ORDER BY id")
        .unwrap();
    let events = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    Snapshot {
        subscribers,
        events,
    }
}

fn unattributed(site: &TempSite) -> i64 {
    site.db()
        .query_row("SELECT count(*) FROM inbound_unattributed", [], |r| {
            r.get(0)
        })
        .unwrap()
}

/// A site that sent week 1 to its six readers, all accepted.
fn sent_site() -> (TestSmtp, TempSite, Vec<Received>) {
    let server = TestSmtp::start();
    let site = inbound_site(server.port());
    let week1 = send_week(&site, &server, 0);
    (server, site, week1)
}

/// An ARF complaint to the untagged address naming `who`, quoting `message_id`.
fn forged_arf(who: &str, message_id: &str, n: usize) -> String {
    format!(
        "From: feedback@arf.attacker.example\r\n\
         To: bounces@example.com\r\n\
         Subject: complaint\r\n\
         Message-ID: <forged-arf-{n}@attacker.example>\r\n\
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
         User-Agent: ForgedFBL/1.0\r\n\
         Version: 1\r\n\
         Original-Rcpt-To: {who}\r\n\
         \r\n\
         --f0\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         From: Weekly AI Tool Verdicts <verdicts@example.com>\r\n\
         To: {who}\r\n\
         Message-ID: {message_id}\r\n\
         \r\n\
         --f0--\r\n"
    )
}

/// A plain-text bounce from "MAILER-DAEMON" to the untagged address naming `who`.
fn forged_plain_bounce(who: &str, message_id: &str, n: usize) -> String {
    format!(
        "From: MAILER-DAEMON@mx.attacker.example (Mail Delivery System)\r\n\
         To: bounces@example.com\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <forged-plain-{n}@attacker.example>\r\n\
         \r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients.\r\n\
         \r\n\
         <{who}>: host mx.example.net said: 550 5.1.1 <{who}>: Recipient\r\n\
         \x20   address rejected: User unknown in local recipient table\r\n\
         \r\n\
         --- Original message follows.\r\n\
         Message-ID: {message_id}\r\n"
    )
}

#[test]
fn untagged_bounces_and_complaints_naming_a_reader_change_nothing() {
    let (_server, site, _week1) = sent_site();
    let before = snapshot(&site);
    let who = "loyal@example.net";

    // A DSN to the untagged address, naming the reader as the failed recipient.
    let out = pipe(&site, dsn("bounces@example.com", who, "failed", "5.1.1"));
    assert!(out.starts_with("hard not applied:"), "{out}");
    // An ARF complaint naming the reader in Original-Rcpt-To and To.
    let out = pipe(&site, forged_arf(who, "<nothing@attacker.example>", 0));
    assert!(out.starts_with("complaint not applied:"), "{out}");
    // A plain-text bounce from a "MAILER-DAEMON", the usual Postfix wording.
    let out = pipe(
        &site,
        forged_plain_bounce(who, "<nothing@attacker.example>", 0),
    );
    assert!(out.starts_with("hard not applied:"), "{out}");

    assert_eq!(snapshot(&site), before);
    assert_eq!(unattributed(&site), 3, "each kept to be looked at");
    let listed = site
        .cmd()
        .args(["inbound", "--unattributed"])
        .assert()
        .success();
    let listed = String::from_utf8(listed.get_output().stdout.clone()).unwrap();
    assert!(listed.starts_with("3 unattributed reports"), "{listed}");
    assert_eq!(
        listed.matches("names loyal@example.net").count(),
        3,
        "{listed}"
    );
    let show = site.cmd().args(["issues", "show", "1"]).assert().success();
    let show = String::from_utf8(show.get_output().stdout.clone()).unwrap();
    assert!(
        show.contains("Unattributed: 3 reports not applied"),
        "{show}"
    );
}

#[test]
fn a_forged_report_cannot_pre_empt_a_genuine_one_by_borrowing_its_message_id() {
    let (_server, site, week1) = sent_site();
    let dead = to(&week1, "dead@example.net");
    let genuine = dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1");
    // The same report with the same Message-ID, sent to the untagged address first.
    let forged = genuine.replace(&dead.mail_from, "bounces@example.com");
    assert_ne!(forged, genuine);
    let before = snapshot(&site);
    let out = pipe(&site, forged.clone());
    assert!(out.starts_with("hard not applied:"), "{out}");
    let out = pipe(&site, forged);
    assert!(out.contains("already handled"), "{out}");
    assert_eq!(snapshot(&site), before);
    assert_eq!(unattributed(&site), 1);
    // The genuine one still acts.
    let out = pipe(&site, genuine);
    assert!(out.contains("now bounced"), "{out}");
}

#[test]
fn guessed_message_ids_cannot_empty_the_list() {
    let (_server, site, week1) = sent_site();
    let before = snapshot(&site);
    let active_before = before
        .subscribers
        .iter()
        .filter(|s| s.1 == "active")
        .count();
    assert_eq!(active_before, 6);

    // The documented old form, for every id from 1 to 20: as a DSN, an ARF complaint and a
    // plain bounce, all to the untagged address.
    for id in 1..=20 {
        let legacy = format!("<verdicts.20261123T0900Z.1.{id}@example.com>");
        let mut bounce = dsn("bounces@example.com", "x@example.org", "failed", "5.1.1");
        bounce = bounce.replace(
            "--b0--",
            &format!("--b0\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {legacy}\r\n\r\n--b0--"),
        );
        bounce = bounce.replace("Message-Id: <", &format!("Message-Id: <legacy-{id}-"));
        pipe(&site, bounce);
        pipe(&site, forged_arf("redacted@example.org", &legacy, id));
        pipe(
            &site,
            forged_plain_bounce("redacted@example.org", &legacy, id),
        );
        // The new form with a MAC made up, and with the attacker's own valid MAC moved
        // onto another subscriber.
        let made_up = format!("<verdicts.20261123T0900Z.1.{id}.q7zq7zq7zq7zq7zq@example.com>");
        pipe(
            &site,
            forged_arf("redacted@example.org", &made_up, 100 + id),
        );
    }
    // A reader (the attacker) knows their own signed Message-ID; it names only them.
    let own = to(&week1, "annoyed@example.net");
    let own_id = mailparse::parse_mail(&own.raw)
        .unwrap()
        .headers
        .iter()
        .find(|h| h.get_key().eq_ignore_ascii_case("Message-ID"))
        .unwrap()
        .get_value();
    let ids = subscriber_ids(&site);
    let victim = ids["loyal@example.net"];
    let moved = own_id.replacen(
        &format!(".1.{}.", ids["annoyed@example.net"]),
        &format!(".1.{victim}."),
        1,
    );
    assert_ne!(moved, own_id);
    let out = pipe(&site, forged_arf("redacted@example.org", &moved, 999));
    assert!(out.contains("does not verify"), "{out}");

    let after = snapshot(&site);
    assert_eq!(after, before, "no status or event moved");
    assert_eq!(unattributed(&site), 20 * 4 + 1);
    let listed = site
        .cmd()
        .args(["inbound", "--unattributed", "--limit", "200"])
        .assert()
        .success();
    let listed = String::from_utf8(listed.get_output().stdout.clone()).unwrap();
    assert!(
        listed.contains(&format!(
            "issue 1 to subscriber {victim} (loyal@example.net) by a legacy Message-ID"
        )),
        "{listed}"
    );
    assert!(listed.contains("by a forged Message-ID"), "{listed}");
}

#[test]
fn an_auto_reply_to_the_unsubscribe_address_does_not_unsubscribe() {
    let (_server, site, week1) = sent_site();
    let before = snapshot(&site);
    let mailto = mailto_of(&to(&week1, "loyal@example.net"));
    for (n, marker) in [
        "Auto-Submitted: auto-replied",
        "X-Autoreply: yes",
        "Precedence: auto_reply",
    ]
    .iter()
    .enumerate()
    {
        let out = pipe(
            &site,
            format!(
                "From: loyal@example.net\r\nTo: {mailto}\r\nSubject: Re: this week\r\n\
                 Message-ID: <ooo-{n}@example.net>\r\n{marker}\r\n\r\nI am away until Monday.\r\n"
            ),
        );
        assert!(out.starts_with("ignored: auto-reply"), "{out}");
    }
    let out = pipe(
        &site,
        format!(
            "From: loyal@example.net\r\nTo: {mailto}\r\nSubject: Out of office\r\n\
             Message-ID: <ooo-subject@example.net>\r\n\r\nBack next week.\r\n"
        ),
    );
    assert!(out.starts_with("ignored: auto-reply"), "{out}");
    assert_eq!(snapshot(&site), before);
}

#[test]
fn a_bounced_reader_stays_bounced_whatever_link_is_used() {
    let server = TestSmtp::start();
    let site = inbound_site(server.port());
    site.edit_config(|t| t.replace("127.0.0.1:8080", "127.0.0.1:0"));
    let week1 = send_week(&site, &server, 0);
    let dead = to(&week1, "dead@example.net");
    pipe(
        &site,
        dsn(&dead.mail_from, "dead@example.net", "failed", "5.1.1"),
    );
    let before = snapshot(&site);
    assert!(before
        .subscribers
        .iter()
        .any(|s| s.0 == "dead@example.net" && s.1 == "bounced"));

    let mut serve = crate::common::Process::start(&site, &["serve"]);
    let web = serve.web_port();
    let url = crate::inbound::one_click_url(&dead, web);
    let agent = http();
    for via in ["", "&via=page"] {
        let answer = post_form(&agent, &format!("{url}{via}"), "List-Unsubscribe=One-Click");
        assert_eq!(answer.status, 200);
    }
    serve.kill();
    assert_eq!(
        snapshot(&site),
        before,
        "still bounced, no unsubscribe recorded"
    );
}

#[test]
fn a_replayed_confirmation_never_undoes_an_unsubscribe() {
    let server = TestSmtp::start();
    let web = closed_port();
    let site = signup_site(server.port(), web, "");
    let served = Served::start(&site, web);
    let agent = http();
    let posted = post_form(&agent, &served.url("/subscribe"), "email=eve%40example.com");
    assert_eq!(posted.status, 200);
    assert_eq!(server.wait_for(1, Duration::from_secs(20)), 1);
    let link = confirm_link(&server, "eve@example.com", web);
    assert_eq!(post_form(&agent, &link, "").status, 200);

    // The reader leaves with their one-click link.
    let id: i64 = site
        .db()
        .query_row(
            "SELECT id FROM subscribers WHERE email_norm = 'eve@example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let token = TokenKey::new(TEST_SECRET.as_bytes())
        .issue(verdicts::store::SubscriberId(id), "eve@example.com");
    let out = post_form(
        &agent,
        &served.url(&format!("/unsubscribe?token={token}")),
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(out.status, 200);
    let before = snapshot(&site);
    assert!(before
        .subscribers
        .iter()
        .any(|s| s.0 == "eve@example.com" && s.1 == "unsubscribed"));

    // Whoever holds the old confirmation link (a forwarded mail, a mailbox log) posts it
    // again, and opens it.
    for _ in 0..2 {
        let replay = post_form(&agent, &link, "");
        assert_eq!(replay.status, 410, "{}", replay.body);
        assert!(replay.body.contains("has been used"), "{}", replay.body);
    }
    let page = crate::signup::answer(agent.get(&link).call().unwrap());
    assert_eq!(page.status, 410);
    assert!(!page.body.contains("<button"), "{}", page.body);
    assert_eq!(
        snapshot(&site),
        before,
        "still unsubscribed, confirmed_at as it was"
    );
}

#[test]
fn a_forged_report_read_over_imap_changes_nothing() {
    let Some((_dovecot, mailbox, _smtp, site, _week1)) = imap_setup() else {
        return;
    };
    let before = snapshot(&site);
    mailbox.append(
        "INBOX",
        dsn(
            "bounces@example.com",
            "loyal@example.net",
            "failed",
            "5.1.1",
        )
        .as_bytes(),
    );
    mailbox.append(
        "INBOX",
        forged_arf(
            "loyal@example.net",
            "<verdicts.20261123T0900Z.1.5@example.com>",
            1,
        )
        .as_bytes(),
    );
    // 11 MB: judged by its size on the server and filed without being downloaded.
    let mut huge = dsn(
        "bounces@example.com",
        "loyal@example.net",
        "failed",
        "5.1.1",
    )
    .replace("Message-Id: <", "Message-Id: <huge-")
    .into_bytes();
    for _ in 0..(11 * 1024) {
        huge.extend_from_slice(&[b'x'; 1022]);
        huge.extend_from_slice(b"\r\n");
    }
    mailbox.append("INBOX", &huge);
    let out = site
        .cmd()
        .args(["inbound", "--imap"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let out = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(out.contains("3 messages handled"), "{out}");
    assert_eq!(mailbox.count("Processed"), 3);
    assert_eq!(mailbox.count("INBOX"), 0);
    assert_eq!(snapshot(&site), before);
    assert_eq!(unattributed(&site), 2);
}

#[test]
fn an_oversized_message_in_an_mbox_is_skipped_and_the_rest_read() {
    let (_server, site, _week1) = sent_site();
    let before = snapshot(&site);
    let file = site.path().join("big.mbox");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        f.write_all(b"From MAILER-DAEMON Mon Nov 23 09:05:00 2026\nSubject: huge\n\n")
            .unwrap();
        let line = [b'x'; 1023];
        for _ in 0..(12 * 1024) {
            f.write_all(&line).unwrap();
            f.write_all(b"\n").unwrap();
        }
        f.write_all(b"\nFrom MAILER-DAEMON Mon Nov 23 09:06:00 2026\n")
            .unwrap();
        f.write_all(
            dsn(
                "bounces@example.com",
                "loyal@example.net",
                "failed",
                "5.1.1",
            )
            .replace("\r\n", "\n")
            .as_bytes(),
        )
        .unwrap();
    }
    let out = site
        .cmd()
        .args(["inbound", "--mbox"])
        .arg(&file)
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let out = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(out.contains("2 messages"), "{out}");
    assert!(out.contains("1 ignored"), "{out}");
    assert!(out.contains("1 unattributed (not applied)"), "{out}");
    assert!(
        out.contains("1 unattributed report: see `verdicts inbound --unattributed`"),
        "{out}"
    );
    assert_eq!(snapshot(&site), before);
}
