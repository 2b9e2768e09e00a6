//! The load client of `scripts/bench-signup`: drives a running `verdicts serve` over
//! keep-alive HTTP/1.1 connections and prints request rates and latency percentiles.
//!
//! signup_load ADDR SECONDS SIGNUP_CONNS UNSUB_CONNS CLIENT_IPS SUBSCRIBERS
//!
//! Signup connections POST JSON signups for fresh addresses, each request from one of
//! CLIENT_IPS simulated clients (X-Forwarded-For; the endpoint must trust 127.0.0.1 as
//! its proxy). Unsubscribe connections POST RFC 8058 one-clicks with valid tokens for
//! subscribers 1..=SUBSCRIBERS (`reader{id-1}@bench.example.com`, the secret from
//! VERDICTS_SECRET). Afterwards, 200 idle connections are held open while /healthz is asked.

#[path = "support/http1.rs"]
mod http1;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::TcpStream;
use verdicts::mail::token::TokenKey;
use verdicts::store::SubscriberId;

use http1::{exchange, percentile};

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    statuses: std::collections::BTreeMap<u16, u64>,
}

async fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

fn report(name: &str, tally: &Tally, secs: f64) {
    let mut l = tally.latencies_us.clone();
    l.sort_unstable();
    println!(
        "{name:<12} {:>7} requests  {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  statuses {:?}",
        l.len(),
        l.len() as f64 / secs,
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        tally.statuses
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, seconds, signup_conns, unsub_conns, client_ips, subscribers] =
        <[String; 7]>::try_from(args).expect("usage: see the file header");
    let seconds: u64 = seconds.parse().unwrap();
    let signup_conns: usize = signup_conns.parse().unwrap();
    let unsub_conns: usize = unsub_conns.parse().unwrap();
    let client_ips: u64 = client_ips.parse().unwrap();
    let subscribers: u64 = subscribers.parse().unwrap();
    let key = TokenKey::from_env("VERDICTS_SECRET").expect("VERDICTS_SECRET");
    let host = addr.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let next_signup = Arc::new(AtomicU64::new(0));
    let next_unsub = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..signup_conns {
        let (addr, host, stop, next) = (
            addr.clone(),
            host.clone(),
            stop.clone(),
            next_signup.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut conn = connect(&addr).await;
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let ip = i % client_ips;
                let body = format!(r#"{{"email":"signup{i}@load.example.com"}}"#);
                let req = format!(
                    "POST /subscribe HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                     X-Forwarded-For: 10.{}.{}.{}\r\nContent-Length: {}\r\n\r\n{body}",
                    (ip >> 16) & 255,
                    (ip >> 8) & 255,
                    ip & 255,
                    body.len()
                );
                let t = Instant::now();
                let (status, _) = exchange(&mut conn, req.as_bytes()).await.expect("signup");
                tally.latencies_us.push(t.elapsed().as_micros() as u64);
                *tally.statuses.entry(status).or_default() += 1;
            }
            ("signup", tally)
        }));
    }
    for _ in 0..unsub_conns {
        let (addr, host, stop, next, key) = (
            addr.clone(),
            host.clone(),
            stop.clone(),
            next_unsub.clone(),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut conn = connect(&addr).await;
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed) % subscribers + 1;
                let email = format!("reader{}@bench.example.com", id - 1);
                let token = key.issue(SubscriberId(id as i64), &email);
                let body = "List-Unsubscribe=One-Click";
                let req = format!(
                    "POST /unsubscribe?token={token} HTTP/1.1\r\nHost: {host}\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let t = Instant::now();
                let (status, _) = exchange(&mut conn, req.as_bytes()).await.expect("unsubscribe");
                tally.latencies_us.push(t.elapsed().as_micros() as u64);
                *tally.statuses.entry(status).or_default() += 1;
            }
            ("unsubscribe", tally)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut signup = Tally::default();
    let mut unsub = Tally::default();
    for t in tasks {
        let (kind, tally) = t.await.unwrap();
        let into = if kind == "signup" {
            &mut signup
        } else {
            &mut unsub
        };
        into.latencies_us.extend(tally.latencies_us);
        for (s, n) in tally.statuses {
            *into.statuses.entry(s).or_default() += n;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("== {secs:.1} s, {signup_conns} signup connections from {client_ips} client IPs, {unsub_conns} unsubscribe connections");
    report("signup", &signup, secs);
    println!(
        "{:<12} {:>8.0} accepted/s",
        "",
        signup.statuses.get(&202).copied().unwrap_or(0) as f64 / secs
    );
    report("unsubscribe", &unsub, secs);

    // Idle connections: opened and never used, like slow or dead clients.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&addr).await.expect("idle connection"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut health = Tally::default();
    for _ in 0..20 {
        let mut conn = connect(&addr).await;
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let t = Instant::now();
        let status =
            tokio::time::timeout(Duration::from_secs(5), exchange(&mut conn, req.as_bytes()))
                .await
                .map_err(|_| "no answer within 5 s")
                .and_then(|r| r.map(|(s, _)| s).map_err(|_| "connection failed"));
        match status {
            Ok(s) => {
                health.latencies_us.push(t.elapsed().as_micros() as u64);
                *health.statuses.entry(s).or_default() += 1;
            }
            Err(e) => println!("healthz: {e}"),
        }
    }
    print!("with {} idle connections held: ", idle.len());
    report("healthz", &health, 1.0);
    drop(idle);
}
