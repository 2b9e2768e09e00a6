//! The web door from the attacker's side: every case is a request someone would send to get
//! around a limit or a check, and each asserts what the database holds afterwards (the
//! subscriber rows and the confirmation outbox), not only the status code.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{wait_for_http, Process, TempSite};
use crate::smtp::{closed_port, Behaviour, TestSmtp};

/// A site with the bundled content, SMTP on `smtp_port`, the endpoint on `web_port`, and
/// extra config appended (a `signup:` section, say).
fn site(smtp_port: u16, web_port: u16, extra: &str) -> TempSite {
    let site = TempSite::with_bundled_content();
    let mut config = crate::common::config_yaml(smtp_port, "")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{web_port}"));
    config.push_str(extra);
    std::fs::write(site.config_path(), config).unwrap();
    site.cmd().arg("init").assert().success();
    site
}

fn serve(site: &TempSite, port: u16) -> Process {
    let process = Process::start(site, &["serve"]);
    wait_for_http(port);
    process
}

/// What the database holds that a signup could change: each subscriber (address, status)
/// and the number of confirmation mails queued or sent.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Snapshot {
    subscribers: Vec<(String, String)>,
    confirmations: i64,
}

fn snapshot(site: &TempSite) -> Snapshot {
    let db = site.db();
    let mut stmt = db
        .prepare("SELECT email, status FROM subscribers ORDER BY id")
        .unwrap();
    let subscribers = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let confirmations = db
        .query_row("SELECT count(*) FROM confirmations", [], |r| r.get(0))
        .unwrap();
    Snapshot {
        subscribers,
        confirmations,
    }
}

/// One raw HTTP/1.1 request (so a test controls every header line) and the status and
/// headers+body of its answer.
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// A form signup for `email` with the given extra header lines (each ending in CRLF).
fn signup(port: u16, email: &str, headers: &str) -> u16 {
    let body = format!("email={}", urlencode(email));
    let (status, text) = raw(
        port,
        &format!(
            "POST /subscribe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n{headers}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        status == 200 || status == 429 || status == 400,
        "{status}: {text}"
    );
    status
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_second_x_forwarded_for_line_does_not_reset_the_client_limit() {
    let smtp = TestSmtp::start();
    let web = closed_port();
    // The proxy (HAProxy, `option forwardfor`) appends a line of its own with the address
    // it saw; the attacker writes a fresh first line on every request.
    let site = site(
        smtp.port(),
        web,
        "signup:\n  trusted_proxies: [127.0.0.1]\n",
    );
    let _served = serve(&site, web);
    let mut accepted = 0;
    for i in 0..20 {
        let status = signup(
            web,
            &format!("bulk{i}@example.com"),
            &format!("X-Forwarded-For: 198.51.100.{i}\r\nX-Forwarded-For: 203.0.113.7\r\n"),
        );
        accepted += usize::from(status == 200);
    }
    assert_eq!(accepted, 10, "the default limit is 10 per client per hour");
    let after = snapshot(&site);
    assert_eq!(after.subscribers.len(), 10, "{after:?}");
    assert_eq!(after.confirmations, 10);
    // The forged first line on its own changes nothing either.
    let status = signup(
        web,
        "one-more@example.com",
        "X-Forwarded-For: 198.51.100.99, 203.0.113.7\r\n",
    );
    assert_eq!(status, 429);
    assert_eq!(snapshot(&site), after);
}

#[test]
fn rotating_ipv6_addresses_inside_one_64_shares_one_limit() {
    let smtp = TestSmtp::start();
    let web = closed_port();
    let site = site(
        smtp.port(),
        web,
        "signup:\n  trusted_proxies: [127.0.0.1]\n  proxy_header: forwarded\n",
    );
    let _served = serve(&site, web);
    let mut accepted = 0;
    for i in 0..20 {
        let status = signup(
            web,
            &format!("rot{i}@example.com"),
            &format!(
                "Forwarded: for=\"[2001:db8:5:6:{i:x}::{:x}]:4711\"\r\n",
                i * 7 + 1
            ),
        );
        accepted += usize::from(status == 200);
    }
    assert_eq!(accepted, 10);
    let after = snapshot(&site);
    assert_eq!(after.subscribers.len(), 10, "{after:?}");
    assert_eq!(after.confirmations, 10);
    // The neighbouring /64 is another site, with its own limit.
    let status = signup(
        web,
        "neighbour@example.com",
        "Forwarded: for=\"[2001:db8:5:7::1]\"\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(snapshot(&site).subscribers.len(), 11);
}

#[test]
fn respellings_of_one_inbox_get_one_confirmation_an_hour() {
    let smtp = TestSmtp::start();
    let web = closed_port();
    let site = site(
        smtp.port(),
        web,
        "signup:\n  trusted_proxies: [127.0.0.1]\n",
    );
    let _served = serve(&site, web);
    let inboxes: [&[&str]; 3] = [
        &[
            "ada@gmail.com",
            "Ada@Gmail.com",
            "ada+news@gmail.com",
            "a.d.a@googlemail.com",
            "\"ada\"@gmail.com",
            "\"ada+x\"@gmail.com",
        ],
        &[
            "leser@bücher.example",
            "leser@xn--bcher-kva.example",
            "\"leser\"@BÜCHER.example",
            "Leser@XN--BCHER-KVA.EXAMPLE",
        ],
        &[
            "reader@example.com",
            "\"reader\"@example.com",
            "\"r\\eader\"@example.com",
        ],
    ];
    let mut ip = 0;
    for spellings in inboxes {
        let before = snapshot(&site);
        for (n, email) in spellings.iter().enumerate() {
            ip += 1;
            let status = signup(web, email, &format!("X-Forwarded-For: 192.0.2.{ip}\r\n"));
            let expected = if n == 0 { 200 } else { 429 };
            assert_eq!(status, expected, "{email}");
        }
        let after = snapshot(&site);
        assert_eq!(
            after.subscribers.len(),
            before.subscribers.len() + 1,
            "{after:?}"
        );
        assert_eq!(after.confirmations, before.confirmations + 1, "{after:?}");
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// A GET of `/healthz` on a fresh connection, answered within `limit`.
fn healthz_answers(port: u16, limit: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), limit) else {
        return false;
    };
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

/// True once the server has closed `s` (EOF or reset), reading whatever it answered.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
        Err(_) => true,
    }
}

#[test]
fn trickled_bodies_at_the_bundled_defaults_are_cut_off_and_healthz_answers_throughout() {
    let started = Instant::now();
    let smtp = TestSmtp::start();
    let web = closed_port();
    // No `web:` limits and no `signup:` section: the bundled defaults (256 connections,
    // 10 s for a body, 1 KB/s at least).
    let site = site(smtp.port(), web, "");
    let _served = serve(&site, web);
    let before = snapshot(&site);
    let form = "email=victim%40example.com&name=";
    let head = |len: usize| {
        format!(
            "POST /subscribe HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // 300 attackers, more than the cap: half send a byte now and then (the issue's one
    // byte every 20 s, sped up), half keep a fair rate for a body that never ends.
    let attackers: Vec<(TcpStream, bool)> = (0..300)
        .filter_map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", web)).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let fast = i % 2 == 0;
            let len = if fast { 60_000 } else { 1000 };
            s.write_all(head(len).as_bytes()).ok()?;
            s.write_all(&form.as_bytes()[..1]).ok()?;
            Some((s, fast))
        })
        .collect();
    assert!(attackers.len() >= 250, "{} connected", attackers.len());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut attackers = attackers;
            let mut open_at: Vec<Option<Duration>> = vec![None; attackers.len()];
            let t0 = Instant::now();
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, (s, fast)) in attackers.iter_mut().enumerate() {
                    if open_at[i].is_some() {
                        continue;
                    }
                    if closed_by_server(s) {
                        open_at[i] = Some(t0.elapsed());
                        continue;
                    }
                    let chunk = if *fast { vec![b'x'; 300] } else { vec![b'x'] };
                    if (*fast || round.is_multiple_of(20)) && s.write_all(&chunk).is_err() {
                        open_at[i] = Some(t0.elapsed());
                    }
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            open_at
        })
    };
    // /healthz answers throughout, on fresh connections.
    let mut answered = 0;
    let mut failed = 0;
    let watch_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < watch_until {
        if healthz_answers(web, Duration::from_secs(2)) {
            answered += 1;
        } else {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let closed_after = trickler.join().unwrap();
    assert_eq!(
        failed, 0,
        "/healthz failed {failed} times, answered {answered}"
    );
    // Every trickled request was cut off, the slowest by the total deadline (10 s).
    let still_open = closed_after.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        still_open, 0,
        "{still_open} trickling connections still open"
    );
    let latest = closed_after.iter().flatten().max().unwrap();
    eprintln!(
        "healthz answered {answered}/{answered}; {} trickling connections, the last closed \
         after {latest:?}",
        closed_after.len()
    );
    assert!(
        *latest < Duration::from_secs(13),
        "the last one closed after {latest:?}"
    );
    // And nothing reached the database.
    assert_eq!(snapshot(&site), before);
    assert!(smtp.received().is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn signups_that_could_never_be_confirmed_are_refused_and_the_rest_are_delivered() {
    // A relay without SMTPUTF8: a non-ASCII local part has no spelling it can deliver to,
    // a quoted local part and an international domain (as punycode) do.
    let smtp = TestSmtp::start_with(Behaviour::default().without_smtputf8());
    let web = closed_port();
    let site = site(
        smtp.port(),
        web,
        "signup:\n  trusted_proxies: [127.0.0.1]\n",
    );
    let _served = serve(&site, web);
    // The web process asks the relay what it offers when it starts.
    assert!(wait_until(Duration::from_secs(10), || smtp.connections() >= 1));
    std::thread::sleep(Duration::from_millis(500));
    let before = snapshot(&site);
    let body = format!("email={}", urlencode("jörg@example.com"));
    let (status, text) = raw(
        web,
        &format!(
            "POST /subscribe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("SMTPUTF8"), "{text}");
    assert_eq!(
        snapshot(&site),
        before,
        "nothing stored for a refused signup"
    );

    let mut ip = 0;
    for email in ["\"second last\"@example.com", "leser@bücher.example"] {
        ip += 1;
        let status = signup(web, email, &format!("X-Forwarded-For: 192.0.2.{ip}\r\n"));
        assert_eq!(status, 200, "{email}");
    }
    assert_eq!(smtp.wait_for(2, Duration::from_secs(20)), 2);
    let mut rcpts: Vec<String> = smtp
        .received()
        .into_iter()
        .flat_map(|m| {
            assert!(!m.smtputf8);
            m.rcpt
        })
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["\"second last\"@example.com", "leser@xn--bcher-kva.example"]
    );
    let sent = || -> i64 {
        site.db()
            .query_row(
                "SELECT count(*) FROM confirmations WHERE mail_state = 'sent'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || sent() == 2),
        "{}",
        sent()
    );
}

#[test]
fn one_mailbox_cannot_be_stored_twice_through_any_spelling() {
    let smtp = TestSmtp::start();
    let web = closed_port();
    // Limits out of the way: this is about what the list stores.
    let site = site(
        smtp.port(),
        web,
        "signup:\n  trusted_proxies: [127.0.0.1]\n  per_address_per_hour: 100\n  \
         per_address_per_day: 100\n",
    );
    let _served = serve(&site, web);
    let mut ip = 0;
    for email in [
        "ada@example.com",
        "\"ada\"@example.com",
        "\"Ada\"@EXAMPLE.com",
        "leser@bücher.example",
        "leser@xn--bcher-kva.example",
    ] {
        ip += 1;
        let status = signup(web, email, &format!("X-Forwarded-For: 192.0.2.{ip}\r\n"));
        assert_eq!(status, 200, "{email}");
    }
    let after = snapshot(&site);
    let emails: Vec<&str> = after.subscribers.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(emails, ["ada@example.com", "leser@bücher.example"]);
    // The operator's way in knows the mailbox too.
    let out = site
        .cmd()
        .args(["subscribers", "add", "\"ada\"@Example.com"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("already listed"), "{said}");
    assert_eq!(snapshot(&site).subscribers, after.subscribers);
}

#[test]
fn double_slash_paths_never_redirect_off_site() {
    let web = closed_port();
    let site = site(2525, web, "site:\n  out_dir: public\n");
    site.cmd().args(["site", "build"]).assert().success();
    let _served = serve(&site, web);
    let before = snapshot(&site);
    for path in [
        "//issues",
        "//evil.example/",
        "//evil.example",
        "///evil.example/x?y=1",
        "//evil.example/%2e%2e/",
    ] {
        let (status, text) = raw(
            web,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: verdicts.example.com\r\nConnection: close\r\n\r\n"
            ),
        );
        let location = text.lines().find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        });
        if let Some(to) = location {
            let to = to.trim();
            assert!(
                to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\"),
                "{path} redirected to {to}"
            );
        }
        assert!(status < 500, "{path}: {status}");
    }
    let (status, text) = raw(
        web,
        "GET //issues HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 308, "{text}");
    assert!(
        text.to_lowercase().contains("location: /issues\r\n"),
        "{text}"
    );
    assert_eq!(snapshot(&site), before);
}

#[test]
fn a_list_from_before_one_mailbox_keys_is_merged_and_old_links_still_unsubscribe() {
    let web = closed_port();
    let site = site(2525, web, "");
    {
        // The list as the release before migration 8 could leave it: one mailbox twice. The
        // file is built from migrations 1 to 7 alone, so later migrations run on it as on
        // a real upgrade.
        let path = site.db_path();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let db = site.db();
        for sql in &verdicts::store::MIGRATIONS[..7] {
            db.execute_batch(sql).unwrap();
        }
        db.pragma_update(None, "user_version", 7).unwrap();
        db.execute_batch(
            "INSERT INTO subscribers (id, email, email_norm, status, source, created_at,
                                      updated_at, signed_up_at)
             VALUES (1, 'ada@example.com', 'ada@example.com', 'active', 'cli',
                     '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'),
                    (2, '\"ada\"@example.com', '\"ada\"@example.com', 'active', 'web',
                     '2026-01-02T00:00:00Z', '2026-01-02T00:00:00Z', '2026-01-02T00:00:00Z');",
        )
        .unwrap();
    }
    let served = serve(&site, web);
    let after = snapshot(&site);
    assert_eq!(
        after.subscribers,
        [("ada@example.com".to_string(), "active".to_string())]
    );
    let merges: i64 = site
        .db()
        .query_row("SELECT count(*) FROM subscriber_merges", [], |r| r.get(0))
        .unwrap();
    assert_eq!(merges, 1);
    // The unsubscribe link an old issue carried for the removed spelling still works,
    // and unsubscribes the mailbox.
    let key = verdicts::mail::token::TokenKey::new(crate::common::TEST_SECRET.as_bytes());
    let token = key.issue(verdicts::store::SubscriberId(2), "\"ada\"@example.com");
    let (status, text) = raw(
        web,
        &format!(
            "POST /unsubscribe?token={token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\n\r\n\
             List-Unsubscribe=One-Click"
        ),
    );
    assert_eq!(status, 200, "{text}\n{}", served.log());
    assert_eq!(
        snapshot(&site).subscribers,
        [("ada@example.com".to_string(), "unsubscribed".to_string())]
    );
    // A forged one for the removed row changes nothing.
    let forged = verdicts::mail::token::TokenKey::new(b"another key entirely, really")
        .issue(verdicts::store::SubscriberId(2), "\"ada\"@example.com");
    let (status, _) = raw(
        web,
        &format!(
            "POST /unsubscribe?token={forged} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(status, 400);
}

#[test]
fn twenty_tricklers_against_a_cap_of_twenty_do_not_take_healthz_down() {
    // The issue's scaled-down case: as many slow bodies as the cap allows, and more.
    let smtp = TestSmtp::start();
    let web = closed_port();
    let site = site(smtp.port(), web, "");
    site.edit_config(|c| {
        c.replace(
            &format!("127.0.0.1:{web}"),
            &format!("127.0.0.1:{web}\n  max_connections: 20"),
        )
    });
    let _served = serve(&site, web);
    let before = snapshot(&site);
    let mut attackers: Vec<TcpStream> = (0..40)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", web)).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            s.write_all(
                b"POST /subscribe HTTP/1.1\r\nHost: x\r\n\
                  Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ne",
            )
            .ok()?;
            Some(s)
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(8);
    let (mut answered, mut failed) = (0, 0);
    let mut last_trickle = Instant::now();
    while Instant::now() < until {
        if last_trickle.elapsed() >= Duration::from_secs(2) {
            for s in &mut attackers {
                let _ = s.write_all(b"m");
            }
            last_trickle = Instant::now();
        }
        if healthz_answers(web, Duration::from_secs(2)) {
            answered += 1;
        } else {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        failed, 0,
        "/healthz failed {failed} times, answered {answered}"
    );
    let open = attackers
        .iter_mut()
        .map(|s| !(0..5).any(|_| closed_by_server(s)))
        .filter(|still_open| *still_open)
        .count();
    assert_eq!(open, 0, "{open} tricklers still connected");
    assert_eq!(snapshot(&site), before);
}
