//! Render, MIME build and DKIM signing throughput on one core: renders the bundled digest
//! once (as an issue does), then builds complete per-recipient messages in a loop, unsigned
//! and signed with each algorithm (the test keys). Run with `cargo bench --bench build_messages`.

use std::path::Path;
use std::time::Instant;

use verdicts::config::{Config, DkimAlgorithm, DkimConfig};
use verdicts::content::load_dir;
use verdicts::digest::render::render_digest;
use verdicts::mail::dkim::DkimSigner;
use verdicts::mail::dkim_sign::SigningKey;
use verdicts::mail::message::{IssueMessages, Recipient};
use verdicts::mail::token::TokenKey;
use verdicts::store::{IssueNumber, SubscriberId};

/// The PKCS#8 DER inside a PEM file (the test keys are PKCS#8).
fn pkcs8_der(path: &Path) -> Vec<u8> {
    use base64::Engine;
    let pem = std::fs::read_to_string(path).expect("test key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

/// CPU seconds this thread has used (Linux: `/proc/thread-self/stat`, in clock ticks of
/// 1/100 s), so the rates below hold on a machine busy with other work; `None` elsewhere.
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Wall-clock and CPU-time rates of `n` operations since (`t`, `cpu`).
fn rates(n: i64, t: Instant, cpu: Option<f64>) -> String {
    let wall = n as f64 / t.elapsed().as_secs_f64();
    match (cpu, thread_cpu_secs()) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{wall:.0} msgs/s wall, {:.0} msgs/s per CPU second",
                n as f64 / (b - a)
            )
        }
        _ => format!("{wall:.0} msgs/s wall"),
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("config/newsletter.yaml")).expect("bundled config");
    let comparisons = load_dir(&config.content_dir).expect("bundled content");
    let refs: Vec<_> = comparisons.iter().collect();
    let slot = "2026-11-23T09:00:00Z".parse().expect("slot");

    let renders = 200;
    let t = Instant::now();
    let mut digest = None;
    for _ in 0..renders {
        digest = Some(
            render_digest(&config.newsletter, &refs, slot, chrono_tz::Europe::London)
                .expect("render"),
        );
    }
    let per_render = t.elapsed() / renders;
    let digest = digest.expect("rendered");
    println!("render of the digest (once per issue): {per_render:.2?}");

    let messages = IssueMessages::new(
        &config.newsletter,
        IssueNumber(1),
        slot,
        &digest,
        TokenKey::new(b"bench-key-0123456789"),
    );
    let recipient = |id: i64| Recipient {
        subscriber_id: SubscriberId(id),
        email: format!("reader{id}@bench.example.com")
            .parse()
            .expect("address"),
        name: Some(format!("Reader {id}")),
    };

    let n: i64 = 50_000;
    let mut bytes = 0usize;
    let (t, cpu) = (Instant::now(), thread_cpu_secs());
    for id in 0..n {
        bytes += messages
            .build(&recipient(id))
            .expect("build")
            .formatted()
            .len();
    }
    println!(
        "per-recipient build + serialise, unsigned: {} on one core ({n} messages, {:.1} KB each; {:.1} KB of body shared before the first personal link)",
        rates(n, t, cpu),
        bytes as f64 / n as f64 / 1024.0,
        messages.shared_body_prefix() as f64 / 1024.0,
    );

    // The crypto library alone: one signature over header data of a typical size, with the
    // same test keys, so the message rates below can be read against it (and against
    // `openssl speed rsa2048 ed25519` on the same machine).
    for (name, key, n) in [
        ("RSA-2048", "rsa2048.pem", 2_000u32),
        ("Ed25519", "ed25519.pem", 20_000),
    ] {
        let path = root.join("tests/fixtures/dkim").join(key);
        let der = pkcs8_der(&path);
        let key = if name == "Ed25519" {
            SigningKey::ed25519_from_pkcs8_der(&der).expect("test key")
        } else {
            SigningKey::rsa_from_pkcs8_der(&der).expect("test key")
        };
        let data = vec![b'h'; 600];
        let (t, cpu) = (Instant::now(), thread_cpu_secs());
        for _ in 0..n {
            std::hint::black_box(key.sign(std::hint::black_box(&data)));
        }
        let per = match (cpu, thread_cpu_secs()) {
            (Some(a), Some(b)) if b > a => (b - a) / f64::from(n),
            _ => t.elapsed().as_secs_f64() / f64::from(n),
        };
        println!(
            "one {name} signature (aws-lc-rs, {} bytes of header data): {:.1} µs of CPU ({n} signatures)",
            data.len(),
            per * 1e6
        );
    }

    for (name, key, algorithm, n) in [
        (
            "rsa-sha256 (2048)",
            "rsa2048.pem",
            DkimAlgorithm::Rsa,
            2_000i64,
        ),
        (
            "ed25519-sha256",
            "ed25519.pem",
            DkimAlgorithm::Ed25519,
            20_000,
        ),
    ] {
        let signer = DkimSigner::load(&DkimConfig {
            domain: "example.com".into(),
            selector: "bench".into(),
            key_file: root.join("tests/fixtures/dkim").join(key),
            algorithm,
        })
        .expect("test key");
        let signed = messages.clone().with_dkim(Some(signer));
        let (t, cpu) = (Instant::now(), thread_cpu_secs());
        for id in 0..n {
            bytes += signed
                .build(&recipient(id))
                .expect("build")
                .formatted()
                .len();
        }
        println!(
            "per-recipient build + serialise + DKIM {name}: {} on one core ({n} messages)",
            rates(n, t, cpu)
        );
    }
    std::hint::black_box(bytes);
}
