//! The load client of `scripts/bench-api`: drives a running `verdicts serve` over
//! keep-alive HTTP/1.1 connections.
//!
//! api_load ADDR KEY creates SECONDS CLIENTS   POSTs new subscribers from CLIENTS
//!                                              connections; prints creates/s, p50, p99
//! api_load ADDR KEY walk PAGE_SIZE            GETs every page of the subscriber list by
//!                                              cursor; prints readers, pages, seconds

#[path = "support/http1.rs"]
mod http1;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::TcpStream;

use http1::{exchange, percentile};

async fn creates(addr: String, key: String, seconds: u64, clients: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, key, stop, next) = (addr.clone(), key.clone(), stop.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = BufReader::new(TcpStream::connect(&addr).await.unwrap());
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"{{"email":"api{n}@load.example.com","name":"Load {n}","double_opt_in":false}}"#
                );
                let request = format!(
                    "POST /api/v1/subscribers HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let started = Instant::now();
                let (status, _) = exchange(&mut stream, request.as_bytes()).await.unwrap();
                latencies.push(started.elapsed().as_micros() as u64);
                if status != 201 {
                    failed += 1;
                }
            }
            (latencies, failed)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "creates: {} in {elapsed:.1} s = {:.0}/s with {clients} clients; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {failed} not 201",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
    );
}

async fn walk(addr: String, key: String, page: usize) {
    let mut stream = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    let started = Instant::now();
    let mut after: Option<String> = None;
    let (mut readers, mut pages) = (0usize, 0usize);
    loop {
        let cursor = after
            .as_deref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let request = format!(
            "GET /api/v1/subscribers?limit={page}{cursor} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        let (status, body) = exchange(&mut stream, request.as_bytes()).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        readers += json["data"].as_array().unwrap().len();
        pages += 1;
        match json["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    println!(
        "walk: {readers} readers in {pages} pages of {page} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, key) = (args[1].clone(), args[2].clone());
    match args[3].as_str() {
        "creates" => {
            creates(
                addr,
                key,
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
            )
            .await
        }
        "walk" => walk(addr, key, args[4].parse().unwrap()).await,
        other => panic!("unknown mode {other}"),
    }
}
