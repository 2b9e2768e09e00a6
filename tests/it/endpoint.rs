//! The endpoint under abuse, as real processes over TCP: a flood of idle connections past
//! the file-descriptor limit systemd gives a service by default, a request that never
//! finishes its headers, a connection that goes quiet, and an oversized body.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{fixture, seed_subscribers, TempSite, TEST_SECRET};
use crate::smtp::{closed_port, TestSmtp};

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// Polls `/healthz` until it answers 200; returns how long that took.
fn healthz_within(port: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(r) = http()
            .get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
        {
            if r.status() == 200 {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < limit,
            "/healthz did not answer within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `verdicts <arg>` for `site` under `sh -c 'ulimit -n <fds>'`: soft and hard limit both,
/// so the daemon cannot raise its way out and the limits themselves must hold.
fn spawn_limited(site: &TempSite, arg: &str, fds: u32) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" {arg}"))
        .arg(assert_cmd::cargo::cargo_bin("verdicts"))
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(child: Child) -> (Option<i32>, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fifteen_hundred_idle_connections_neither_starve_healthz_nor_stop_the_slot() {
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        fds >= 2000,
        "the test needs 2,000 descriptors, the hard limit is {fds}"
    );
    let server = TestSmtp::start();
    let web = closed_port();
    let site = TempSite::new();
    let published = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    site.add_comparison(
        "fresh.md",
        &fixture("valid.md").replace("2026-11-17T12:00:00+00:00", &published),
    );
    // One slot, a few seconds after the flood begins.
    let slot = chrono::Utc::now() + chrono::Duration::seconds(12);
    let cron = slot.format("%S %M %H %d %m *").to_string();
    site.write_config(server.port(), "");
    site.edit_config(|t| {
        t.replace("0 0 9 * * Mon", &cron)
            .replace("Europe/London", "UTC")
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{web}"))
    });
    seed_subscribers(&site, 20);

    let mut daemon = spawn_limited(&site, "run", 1024);
    healthz_within(web, Duration::from_secs(30));

    // 1,500 connections that send nothing: more than the daemon's 1,024 descriptors.
    let flood_started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1500 {
        let addr = format!("127.0.0.1:{web}").parse().unwrap();
        idle.push(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap());
    }
    assert!(
        chrono::Utc::now() < slot,
        "the flood is in place before the slot"
    );
    // Connections over the cap are answered at once and closed.
    let mut refused = 0;
    for conn in idle.iter_mut().rev().take(100) {
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        if matches!(conn.read(&mut buf), Ok(n) if n == 0 || buf[..n].starts_with(b"HTTP/1.1 503")) {
            refused += 1;
        }
    }
    assert!(refused >= 90, "only {refused} of the last 100 were refused");
    println!("flood and refusal check took {:?}", flood_started.elapsed());

    // The held ones run out of time for their headers (web.header_timeout, 10 s), and
    // /healthz answers again while the flood's sockets are still open on this side.
    let waited = healthz_within(web, Duration::from_secs(30));
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is alive");

    // The slot went out to everyone despite the flood.
    assert_eq!(server.wait_for(20, Duration::from_secs(60)), 20);
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is alive");
    drop(idle);
    let (code, stderr) = stop(daemon);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("connection limit reached"),
        "the refusals are logged: {stderr}"
    );
    assert!(
        stderr.matches("connection limit reached").count() <= 2,
        "the refusal warning is rate-limited"
    );
    println!("/healthz answered {waited:?} after the flood");
}

/// A site served by `verdicts serve` with short limits, for the tests below.
fn served(extra_web: &str) -> (TempSite, u16, Child) {
    let web = closed_port();
    let site = TempSite::with_bundled_content();
    site.edit_config(|t| {
        t.replace(
            "  listen: 127.0.0.1:8080\n",
            &format!("  listen: 127.0.0.1:{web}\n{extra_web}"),
        )
    });
    site.cmd().arg("init").assert().success();
    let child = spawn_limited(&site, "serve", 1024);
    healthz_within(web, Duration::from_secs(30));
    (site, web, child)
}

/// Waits for the server to close `conn`; returns how long that took.
fn closed_after(mut conn: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("the connection stayed open past {limit:?}: {e}"),
        }
    }
}

#[test]
fn a_request_that_never_finishes_its_headers_is_cut_off() {
    let (_site, web, child) = served("  header_timeout: 1s\n  idle_timeout: 30s\n");
    let mut conn = TcpStream::connect(("127.0.0.1", web)).unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // One more header line every 300 ms: bytes keep coming, but the headers never end.
    let mut trickle = conn.try_clone().unwrap();
    std::thread::spawn(move || {
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(300));
            if trickle
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    let took = closed_after(conn, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_connection_that_goes_quiet_mid_request_is_closed() {
    let (_site, web, child) = served("  header_timeout: 30s\n  idle_timeout: 1s\n");
    // Complete headers, then silence where the body should be.
    let mut conn = TcpStream::connect(("127.0.0.1", web)).unwrap();
    conn.write_all(b"POST /unsubscribe HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nList-")
        .unwrap();
    let took = closed_after(conn, Duration::from_secs(10));
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_oversized_body_is_refused_before_it_is_read() {
    let (_site, web, child) = served("  max_body_bytes: 1024\n");
    let mut conn = TcpStream::connect(("127.0.0.1", web)).unwrap();
    conn.write_all(
        b"POST /unsubscribe?token=x HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n",
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A normal request still works.
    let r = http()
        .post(&format!("http://127.0.0.1:{web}/unsubscribe?token=x"))
        .send("List-Unsubscribe=One-Click")
        .unwrap();
    assert_eq!(r.status(), 400, "a forged token, answered normally");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_daemon_that_cannot_listen_does_not_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let site = TempSite::with_bundled_content();
    site.edit_config(|t| t.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")));
    site.cmd().arg("init").assert().success();
    site.cmd()
        .arg("run")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(3)
        .stderr(predicates::str::contains(format!(
            "cannot listen on 127.0.0.1:{port} (web.listen)"
        )));
}
