//! The relays' event webhooks, end to end: an issue sent to readers through the test SMTP
//! server, then `verdicts serve` as a real process taking each provider's sample payloads
//! (`tests/fixtures/webhooks/`, modelled on the providers' published examples) from a real
//! HTTP client, signed here with test keys; for SNS, a test CA and signing certificate
//! served over HTTPS on loopback. Each applied event is checked once, and replayed, altered,
//! unsigned, wrongly signed, stale and oversized requests are refused with nothing changed.
//! Also the Feedback-ID header on every copy, inside the DKIM signature.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use mailparse::MailHeaderMap;

use crate::common::{fixture, seed_subscribers, Process, TempSite, TestConfig};
use crate::smtp::TestSmtp;

const AT: &str = "2026-11-23T09:00:00Z";
const READERS: usize = 3;

/// A newsletter whose issue went to reader0..reader2@example.com, with `verdicts serve`
/// running with the given `provider_webhooks:` section and environment.
struct Hooked {
    site: TempSite,
    _served: Process,
    port: u16,
    /// Our Message-ID of each reader's copy.
    message_ids: HashMap<String, String>,
}

fn reader(i: usize) -> String {
    format!("reader{i}@example.com")
}

impl Hooked {
    fn start(section: &str, env: &[(&str, &str)]) -> Hooked {
        Self::start_with(section, env, crate::smtp::Behaviour::default())
    }

    /// The same, with the test SMTP server behaving as `behaviour` says.
    fn start_with(
        section: &str,
        env: &[(&str, &str)],
        behaviour: crate::smtp::Behaviour,
    ) -> Hooked {
        let smtp = TestSmtp::start_with(behaviour);
        let site = TempSite::with_bundled_content();
        site.configure(
            &TestConfig::default()
                .smtp_port(smtp.port())
                .section(section),
        );
        seed_subscribers(&site, READERS);
        site.cmd()
            .args(["send", "--at", AT, "--yes"])
            .assert()
            .success();
        let mut message_ids = HashMap::new();
        for received in smtp.received() {
            let parsed = mailparse::parse_mail(&received.raw).unwrap();
            let to = received.rcpt[0].to_lowercase();
            message_ids.insert(to, parsed.headers.get_first_value("Message-ID").unwrap());
        }
        assert_eq!(message_ids.len(), READERS);
        let mut served = Process::start_with_env(&site, &["serve"], env);
        let port = served.web_port();
        Hooked {
            site,
            _served: served,
            port,
            message_ids,
        }
    }

    fn url(&self, provider: &str) -> String {
        format!("http://127.0.0.1:{}/webhooks/{provider}", self.port)
    }

    fn message_id(&self, i: usize) -> &str {
        &self.message_ids[&reader(i)]
    }

    /// Everything a request could change: statuses, events, unattributed reports, handled
    /// keys.
    fn state(&self) -> State {
        let db = self.site.db();
        let statuses = db
            .prepare("SELECT email, status FROM subscribers ORDER BY email")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<(String, String)>, _>>()
            .unwrap();
        let events = db
            .prepare(
                "SELECT s.email, e.kind, coalesce(e.channel, ''), e.source, coalesce(e.issue, 0)
                 FROM events e JOIN subscribers s ON s.id = e.subscriber_id ORDER BY e.id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok(format!(
                    "{} {} {} {} issue {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?
                ))
            })
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap();
        let unattributed: i64 = db
            .query_row("SELECT count(*) FROM inbound_unattributed", [], |r| {
                r.get(0)
            })
            .unwrap();
        State {
            statuses,
            events,
            unattributed,
        }
    }

    fn status(&self, i: usize) -> String {
        self.state()
            .statuses
            .into_iter()
            .find(|(e, _)| *e == reader(i))
            .unwrap()
            .1
    }

    /// Posts `body` with `headers`; the status and the answer's text.
    fn post(&self, provider: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
        let mut request = http().post(&self.url(provider));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send(body).unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.into_body().read_to_string().unwrap_or_default(),
        )
    }

    /// Posts and checks that the request was refused with `status` and changed nothing.
    fn refused(
        &self,
        what: &str,
        status: u16,
        provider: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) {
        let before = self.state();
        let (got, text) = self.post(provider, headers, body);
        assert_eq!(got, status, "{what}: {text}");
        assert_eq!(self.state(), before, "{what} changed something");
    }
}

#[derive(Debug, PartialEq, Eq)]
struct State {
    statuses: Vec<(String, String)>,
    events: Vec<String>,
    unattributed: i64,
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fixture with its `{{…}}` placeholders filled.
fn filled(name: &str, values: &[(&str, &str)]) -> String {
    let mut text = fixture(&format!("webhooks/{name}"));
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    assert!(
        !text.contains("{{"),
        "{name}: a placeholder is left: {text}"
    );
    text
}

/// A body of `size` bytes: JSON, so only its size can be what is refused.
fn oversized(size: usize) -> Vec<u8> {
    let mut body = br#"{"events":[],"pad":""#.to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

// ---------------------------------------------------------------------------------------
// Generic

const GENERIC_SECRET: &str = "generic-test-secret-4f1d9a";

fn generic_headers(secret: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let mac = hmac(
        secret.as_bytes(),
        &[timestamp.to_string().as_bytes(), b".", body],
    );
    vec![
        ("content-type", "application/json".into()),
        ("x-verdicts-timestamp", timestamp.to_string()),
        ("x-verdicts-signature", format!("v1={}", hex(&mac))),
    ]
}

#[test]
fn generic_webhook_applies_signed_events_once_and_refuses_the_rest() {
    let hooked = Hooked::start(
        "provider_webhooks:\n  generic: {}\n  max_age: 5m\n  max_body_bytes: 16384",
        &[("VERDICTS_WEBHOOK_SECRET", GENERIC_SECRET)],
    );
    let body = filled(
        "generic-events.json",
        &[
            ("RECIPIENT_0", &reader(0)),
            ("MESSAGE_ID_0", hooked.message_id(0)),
            ("RECIPIENT_1", &reader(1)),
        ],
    );
    let body = body.as_bytes();
    let ts = now();
    let headers = generic_headers(GENERIC_SECRET, ts, body);

    hooked.refused(
        "unsigned",
        401,
        "generic",
        &[("content-type", "application/json".into())],
        body,
    );
    hooked.refused(
        "wrongly signed",
        401,
        "generic",
        &generic_headers("another-secret", ts, body),
        body,
    );
    let altered = String::from_utf8_lossy(body).replace("hard_bounce", "soft_bounce");
    hooked.refused("altered", 401, "generic", &headers, altered.as_bytes());
    let stale = now() - 3600;
    hooked.refused(
        "stale",
        401,
        "generic",
        &generic_headers(GENERIC_SECRET, stale, body),
        body,
    );
    let big = oversized(20_000);
    hooked.refused(
        "oversized",
        413,
        "generic",
        &generic_headers(GENERIC_SECRET, ts, &big),
        &big,
    );

    let (status, text) = hooked.post("generic", &headers, body);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"applied\":2") && text.contains("\"unattributed\":1"),
        "{text}"
    );
    let after = hooked.state();
    assert_eq!(hooked.status(0), "bounced");
    assert_eq!(hooked.status(1), "unsubscribed");
    assert_eq!(hooked.status(2), "active");
    assert_eq!(
        after.events,
        [
            "reader0@example.com hard_bounce  webhook issue 1",
            "reader1@example.com unsubscribe relay webhook issue 1",
        ]
    );
    assert_eq!(
        after.unattributed, 1,
        "the stranger's complaint is kept, not applied"
    );

    hooked.refused("replayed", 401, "generic", &headers, body);
    // The relay's retry is signed anew (a later timestamp): the same events change nothing.
    let (status, text) = hooked.post(
        "generic",
        &generic_headers(GENERIC_SECRET, ts + 1, body),
        body,
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"duplicates\":3"), "{text}");
    assert_eq!(hooked.state(), after);

    // `issues show` counts the relay's events with the rest.
    let shown = hooked
        .site
        .cmd()
        .args(["issues", "show", "1"])
        .assert()
        .success();
    let out = String::from_utf8_lossy(&shown.get_output().stdout).into_owned();
    assert!(out.contains("1 hard"), "{out}");
    assert!(out.contains("0 mailto, 1 other"), "{out}");
}

// ---------------------------------------------------------------------------------------
// Mailgun

const MAILGUN_KEY: &str = "key-mailgun-test-0b7e52c1";

fn mailgun_body(key: &str, timestamp: i64, token: &str, hooked: &Hooked, i: usize) -> String {
    let signature = hex(&hmac(
        key.as_bytes(),
        &[timestamp.to_string().as_bytes(), token.as_bytes()],
    ));
    filled(
        "mailgun-failed.json",
        &[
            ("TIMESTAMP", &timestamp.to_string()),
            ("TOKEN", token),
            ("SIGNATURE", &signature),
            ("RECIPIENT", &reader(i)),
            ("MESSAGE_ID", hooked.message_id(i).trim_matches(['<', '>'])),
        ],
    )
}

#[test]
fn mailgun_failed_permanent_bounces_once_and_a_reused_token_is_refused() {
    let hooked = Hooked::start(
        "provider_webhooks:\n  mailgun: {}\n  max_body_bytes: 16384",
        &[("VERDICTS_MAILGUN_SIGNING_KEY", MAILGUN_KEY)],
    );
    let json = [("content-type", "application/json".to_string())];
    let token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0";
    let body = mailgun_body(MAILGUN_KEY, now(), token, &hooked, 1);

    let unsigned = body.replace("\"signature\": {", "\"unsigned\": {");
    hooked.refused("unsigned", 401, "mailgun", &json, unsigned.as_bytes());
    let wrong = mailgun_body("key-someone-else", now(), token, &hooked, 1);
    hooked.refused("wrongly signed", 401, "mailgun", &json, wrong.as_bytes());
    let later = (now() + 1).to_string();
    let altered = body.replacen(
        &format!("\"timestamp\": \"{}\"", now()),
        &format!("\"timestamp\": \"{later}\""),
        1,
    );
    let altered = if altered == body {
        body.replacen(
            token,
            "b8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
            1,
        )
    } else {
        altered
    };
    hooked.refused("altered", 401, "mailgun", &json, altered.as_bytes());
    let stale = mailgun_body(
        MAILGUN_KEY,
        now() - 3600,
        "c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5",
        &hooked,
        1,
    );
    hooked.refused("stale", 401, "mailgun", &json, stale.as_bytes());
    let big = oversized(20_000);
    hooked.refused("oversized", 413, "mailgun", &json, &big);

    let (status, text) = hooked.post("mailgun", &json, body.as_bytes());
    assert_eq!(status, 200, "{text}");
    let after = hooked.state();
    assert_eq!(hooked.status(1), "bounced");
    assert_eq!(
        after.events,
        ["reader1@example.com hard_bounce  webhook issue 1"]
    );

    hooked.refused("replayed", 401, "mailgun", &json, body.as_bytes());
    // Mailgun's retry carries a new token; the event id makes it a duplicate.
    let retry = mailgun_body(
        MAILGUN_KEY,
        now(),
        "d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8",
        &hooked,
        1,
    );
    let (status, text) = hooked.post("mailgun", &json, retry.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"duplicates\":1"), "{text}");
    assert_eq!(hooked.state(), after);
}

// ---------------------------------------------------------------------------------------
// SendGrid

struct SendgridKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
}

impl SendgridKey {
    fn new() -> Self {
        SendgridKey {
            pair: aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            )
            .unwrap(),
        }
    }

    /// The verification key as SendGrid's settings page shows it.
    fn public_base64(&self) -> String {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        b64(self.pair.public_key().as_der().unwrap().as_ref())
    }

    fn headers(&self, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
        let mut signed = timestamp.to_string().into_bytes();
        signed.extend_from_slice(body);
        let sig = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), &signed)
            .unwrap();
        vec![
            ("content-type", "application/json".into()),
            ("x-twilio-email-event-webhook-signature", b64(sig.as_ref())),
            (
                "x-twilio-email-event-webhook-timestamp",
                timestamp.to_string(),
            ),
        ]
    }
}

#[test]
fn sendgrid_signed_batch_applies_bounce_and_spamreport_once() {
    let key = SendgridKey::new();
    let hooked = Hooked::start(
        "provider_webhooks:\n  sendgrid: {}\n  max_body_bytes: 16384",
        &[("VERDICTS_SENDGRID_PUBLIC_KEY", &key.public_base64())],
    );
    let body = filled(
        "sendgrid-events.json",
        &[
            ("RECIPIENT_0", &reader(0)),
            ("MESSAGE_ID_0", hooked.message_id(0)),
            ("RECIPIENT_1", &reader(1)),
            ("RECIPIENT_2", &reader(2)),
            ("MESSAGE_ID_2", hooked.message_id(2)),
        ],
    );
    let body = body.as_bytes();
    let headers = key.headers(now(), body);

    hooked.refused(
        "unsigned",
        401,
        "sendgrid",
        &[("content-type", "application/json".into())],
        body,
    );
    hooked.refused(
        "wrongly signed",
        401,
        "sendgrid",
        &SendgridKey::new().headers(now(), body),
        body,
    );
    let altered = String::from_utf8_lossy(body).replace("spamreport", "delivered");
    hooked.refused("altered", 401, "sendgrid", &headers, altered.as_bytes());
    hooked.refused(
        "stale",
        401,
        "sendgrid",
        &key.headers(now() - 3600, body),
        body,
    );
    let big = oversized(20_000);
    hooked.refused(
        "oversized",
        413,
        "sendgrid",
        &key.headers(now(), &big),
        &big,
    );

    let (status, text) = hooked.post("sendgrid", &headers, body);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"applied\":2") && text.contains("\"noted\":1"),
        "{text}"
    );
    let after = hooked.state();
    assert_eq!(hooked.status(0), "bounced");
    assert_eq!(
        hooked.status(1),
        "unsubscribed",
        "a complaint ends the subscription"
    );
    assert_eq!(hooked.status(2), "active", "a deferral is not a bounce");
    assert_eq!(
        after.events,
        [
            "reader0@example.com hard_bounce  webhook issue 1",
            "reader1@example.com complaint  webhook issue 1",
        ]
    );

    hooked.refused("replayed", 401, "sendgrid", &headers, body);
    let (status, text) = hooked.post("sendgrid", &key.headers(now() + 1, body), body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"duplicates\":2"), "{text}");
    assert_eq!(hooked.state(), after);
}

// ---------------------------------------------------------------------------------------
// Postmark

const POSTMARK_PASSWORD: &str = "postmark-hook-pw-77c1";

fn basic(user: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        (
            "authorization",
            format!("Basic {}", b64(format!("{user}:{password}").as_bytes())),
        ),
    ]
}

#[test]
fn postmark_bounce_complaint_and_subscription_change_behind_basic_auth() {
    let hooked = Hooked::start(
        "provider_webhooks:\n  postmark:\n    username: hooks\n  max_body_bytes: 16384",
        &[("VERDICTS_POSTMARK_WEBHOOK_PASSWORD", POSTMARK_PASSWORD)],
    );
    let auth = basic("hooks", POSTMARK_PASSWORD);
    let bounce = filled(
        "postmark-bounce.json",
        &[
            ("RECIPIENT", &reader(0)),
            ("MESSAGE_ID", hooked.message_id(0)),
        ],
    );
    let complaint = filled("postmark-spam-complaint.json", &[("RECIPIENT", &reader(1))]);
    let change = filled(
        "postmark-subscription-change.json",
        &[("RECIPIENT", &reader(2))],
    );

    let json = [("content-type", "application/json".to_string())];
    hooked.refused("without auth", 401, "postmark", &json, bounce.as_bytes());
    hooked.refused(
        "wrong password",
        401,
        "postmark",
        &basic("hooks", "guess"),
        bounce.as_bytes(),
    );
    hooked.refused(
        "wrong user",
        401,
        "postmark",
        &basic("admin", POSTMARK_PASSWORD),
        bounce.as_bytes(),
    );
    let big = oversized(20_000);
    hooked.refused("oversized", 413, "postmark", &auth, &big);

    for body in [&bounce, &complaint, &change] {
        let (status, text) = hooked.post("postmark", &auth, body.as_bytes());
        assert_eq!(status, 200, "{text}");
    }
    let after = hooked.state();
    assert_eq!(
        after.events,
        [
            "reader0@example.com hard_bounce  webhook issue 1",
            "reader1@example.com complaint  webhook issue 1",
            "reader2@example.com unsubscribe relay webhook issue 1",
        ]
    );
    assert_eq!(hooked.status(0), "bounced");
    assert_eq!(hooked.status(1), "unsubscribed");
    assert_eq!(hooked.status(2), "unsubscribed");
    // Postmark signs nothing, so a replay is a retry: taken, and nothing changes.
    for body in [&bounce, &complaint, &change] {
        let (status, text) = hooked.post("postmark", &auth, body.as_bytes());
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"duplicates\":1"), "{text}");
    }
    assert_eq!(hooked.state(), after);
}

// ---------------------------------------------------------------------------------------
// Amazon SES through SNS

const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:verdicts-ses-events";

/// A private CA, an HTTPS server on loopback signed by it that serves the SNS signing
/// certificate and counts visits to the subscription confirmation link, and the signing key.
struct FakeSns {
    port: u16,
    ca_file: tempfile::NamedTempFile,
    signing_key: rcgen::KeyPair,
    hits: Arc<Mutex<Vec<String>>>,
}

impl FakeSns {
    fn start() -> FakeSns {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "verdicts test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let signing_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut signing_params =
            CertificateParams::new(vec!["sns.amazonaws.com".to_owned()]).unwrap();
        signing_params
            .distinguished_name
            .push(DnType::CommonName, "sns.amazonaws.com");
        let signing_cert = signing_params.signed_by(&signing_key, &issuer).unwrap();

        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        ca_file.write_all(ca_cert.pem().as_bytes()).unwrap();

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (seen, pem) = (hits.clone(), signing_cert.pem());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut tcp) = stream else { continue };
                let (config, seen, pem) = (config.clone(), seen.clone(), pem.clone());
                std::thread::spawn(move || {
                    let mut conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&request)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(path.clone());
                    let body = if path.ends_with(".pem") {
                        pem
                    } else {
                        "<ConfirmSubscriptionResponse/>".to_owned()
                    };
                    let _ = write!(
                        tls,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.flush();
                    conn.send_close_notify();
                    let _ = conn.write_tls(&mut tcp);
                });
            }
        });
        FakeSns {
            port,
            ca_file,
            signing_key,
            hits,
        }
    }

    fn cert_url(&self) -> String {
        format!(
            "https://localhost:{}/SimpleNotificationService-test.pem",
            self.port
        )
    }

    fn section(&self) -> String {
        format!(
            "provider_webhooks:\n  ses:\n    topic_arns: ['{TOPIC}']\n    cert_hosts: [localhost]\n    ca_file: {}\n  max_body_bytes: 32768",
            self.ca_file.path().display()
        )
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

/// An SNS message of `kind` with these fields, signed with `key` (SignatureVersion 2:
/// SHA256withRSA; 1: SHA1withRSA, by openssl, `None` when it is not installed).
fn sns_message(
    fields: &[(&str, String)],
    version: u8,
    key: &rcgen::KeyPair,
    cert_url: &str,
) -> Option<String> {
    let mut message = serde_json::Map::new();
    for (k, v) in fields {
        message.insert((*k).into(), v.clone().into());
    }
    let kind = message["Type"].as_str().unwrap().to_owned();
    let order: &[&str] = if kind == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    let mut signed = String::new();
    for f in order {
        if let Some(v) = message.get(*f) {
            signed.push_str(&format!("{f}\n{}\n", v.as_str().unwrap()));
        }
    }
    let signature = match version {
        2 => {
            let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap();
            let mut sig = vec![0; pair.public_modulus_len()];
            pair.sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut sig,
            )
            .unwrap();
            sig
        }
        _ => openssl_sha1_sign(&key.serialize_pem(), signed.as_bytes())?,
    };
    message.insert("SignatureVersion".into(), version.to_string().into());
    message.insert("Signature".into(), b64(&signature).into());
    message.insert("SigningCertURL".into(), cert_url.into());
    Some(serde_json::Value::Object(message).to_string())
}

/// SHA1withRSA by the openssl command (aws-lc-rs signs nothing with SHA-1).
fn openssl_sha1_sign(key_pem: &str, data: &[u8]) -> Option<Vec<u8>> {
    let mut key = tempfile::NamedTempFile::new().unwrap();
    key.write_all(key_pem.as_bytes()).unwrap();
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha1", "-sign"])
        .arg(key.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    out.status.success().then_some(out.stdout)
}

fn notification(
    id: &str,
    ses: &str,
    timestamp: chrono::DateTime<chrono::Utc>,
) -> Vec<(&'static str, String)> {
    vec![
        ("Type", "Notification".into()),
        ("MessageId", id.into()),
        ("TopicArn", TOPIC.into()),
        ("Message", ses.into()),
        (
            "Timestamp",
            timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ]
}

#[test]
fn ses_through_sns_confirms_the_subscription_and_applies_signed_notifications_once() {
    let sns = FakeSns::start();
    let hooked = Hooked::start(&sns.section(), &[]);
    let plain = [("content-type", "text/plain; charset=UTF-8".to_string())];
    let sign = |fields: &[(&str, String)], version: u8| {
        sns_message(fields, version, &sns.signing_key, &sns.cert_url())
    };

    // The subscription: verified, then its link is visited.
    let confirm_url = format!(
        "https://localhost:{}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37",
        sns.port
    );
    let confirmation = sign(
        &[
            ("Type", "SubscriptionConfirmation".into()),
            ("MessageId", "165545c9-2a5c-472c-8df2-7ff2be2b3b1b".into()),
            ("Token", "2336412f37".into()),
            ("TopicArn", TOPIC.into()),
            (
                "Message",
                format!("You have chosen to subscribe to the topic {TOPIC}."),
            ),
            ("SubscribeURL", confirm_url),
            (
                "Timestamp",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        ],
        2,
    )
    .unwrap();
    let (status, text) = hooked.post("ses", &plain, confirmation.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert!(
        sns.hits()
            .iter()
            .any(|h| h.contains("Action=ConfirmSubscription")),
        "the confirmation link was not visited: {:?}",
        sns.hits()
    );

    let bounce = filled(
        "ses-bounce.json",
        &[
            ("RECIPIENT", &reader(0)),
            ("MESSAGE_ID", hooked.message_id(0)),
            (
                "SES_ID",
                "0100018c6f3e0f11-5d2a9b7c-1e2f-4a3b-9c8d-7e6f5a4b3c2d-000000",
            ),
        ],
    );
    let fields = notification(
        "b1f7b2a3-0001-5e3c-9f1d-2a7c4d6e8f00",
        &bounce,
        chrono::Utc::now(),
    );
    let signed = sign(&fields, 2).unwrap();

    // Refusals first: nothing may change.
    let mut unsigned: serde_json::Value = serde_json::from_str(&signed).unwrap();
    unsigned.as_object_mut().unwrap().remove("Signature");
    hooked.refused(
        "unsigned",
        401,
        "ses",
        &plain,
        unsigned.to_string().as_bytes(),
    );
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let wrong = sns_message(&fields, 2, &stranger, &sns.cert_url()).unwrap();
    hooked.refused("wrongly signed", 401, "ses", &plain, wrong.as_bytes());
    let altered = signed.replace("Permanent", "Transient");
    assert_ne!(altered, signed);
    hooked.refused("altered", 401, "ses", &plain, altered.as_bytes());
    let stale = sign(
        &notification(
            "b1f7b2a3-0002",
            &bounce,
            chrono::Utc::now() - chrono::Duration::hours(2),
        ),
        2,
    )
    .unwrap();
    hooked.refused("stale", 401, "ses", &plain, stale.as_bytes());
    let elsewhere = sns_message(
        &fields,
        2,
        &sns.signing_key,
        &format!(
            "https://127.0.0.1:{}/SimpleNotificationService-test.pem",
            sns.port
        ),
    )
    .unwrap();
    let fetched = sns.hits().len();
    hooked.refused(
        "certificate from a host not allowed",
        401,
        "ses",
        &plain,
        elsewhere.as_bytes(),
    );
    assert_eq!(
        sns.hits().len(),
        fetched,
        "a certificate was fetched from a host not allowed"
    );
    let mut other_topic = fields.clone();
    other_topic[2].1 = "arn:aws:sns:eu-west-1:123456789012:someone-else".into();
    let other_topic = sign(&other_topic, 2).unwrap();
    hooked.refused("another topic", 401, "ses", &plain, other_topic.as_bytes());
    let big = oversized(40_000);
    hooked.refused("oversized", 413, "ses", &plain, &big);

    // The genuine notification, once.
    let (status, text) = hooked.post("ses", &plain, signed.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert_eq!(hooked.status(0), "bounced");
    let after = hooked.state();
    assert_eq!(
        after.events,
        ["reader0@example.com hard_bounce  webhook issue 1"]
    );
    // SNS retries the same signed message: taken, and nothing changes.
    let (status, text) = hooked.post("ses", &plain, signed.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"duplicates\":1"), "{text}");
    assert_eq!(hooked.state(), after);

    // A delivery is taken and changes nothing.
    let delivery = filled("ses-delivery.json", &[("RECIPIENT", &reader(2))]);
    let delivery = sign(
        &notification("d0000000-0003", &delivery, chrono::Utc::now()),
        2,
    )
    .unwrap();
    let (status, text) = hooked.post("ses", &plain, delivery.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert_eq!(hooked.state(), after);
}

#[test]
fn ses_signature_version_1_is_verified_with_sha1() {
    crate::require_checker!(crate::checkers::Checker::Openssl);
    let sns = FakeSns::start();
    let hooked = Hooked::start(&sns.section(), &[]);
    let plain = [("content-type", "text/plain; charset=UTF-8".to_string())];
    // A complaint, found by address: SES quotes no header in this one.
    let complaint = filled("ses-complaint.json", &[("RECIPIENT", &reader(1))]);
    let fields = notification("c0000000-0004", &complaint, chrono::Utc::now());
    let signed = sns_message(&fields, 1, &sns.signing_key, &sns.cert_url()).expect("openssl signs");
    let tampered = signed.replace("abuse", "not-spam");
    assert_ne!(tampered, signed);
    hooked.refused("altered", 401, "ses", &plain, tampered.as_bytes());
    let (status, text) = hooked.post("ses", &plain, signed.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert_eq!(hooked.status(1), "unsubscribed");
    assert_eq!(
        hooked.state().events,
        ["reader1@example.com complaint  webhook issue 1"]
    );
    let before = hooked.state();
    let (status, _) = hooked.post("ses", &plain, signed.as_bytes());
    assert_eq!(status, 200);
    assert_eq!(hooked.state(), before, "the retry changed something");
}

/// SES answers each message with its own id (`250 Ok <id>`), and its notifications may
/// quote only that id and a final recipient that is not the address on the list (an alias
/// that forwarded): the id recorded at send time still finds the delivery.
#[test]
fn ses_events_find_their_delivery_by_the_id_from_the_relays_250_reply() {
    let sns = FakeSns::start();
    let relay = crate::smtp::Behaviour::default()
        .accepted_reply("250 Ok 0100018c6f{n}-5d2a9b7c-1e2f-4a3b-9c8d-7e6f5a4b3c2d-000000");
    let hooked = Hooked::start_with(&sns.section(), &[], relay);
    let ses_id: String = hooked
        .site
        .db()
        .query_row(
            "SELECT r.relay_id FROM relay_message_ids r JOIN subscribers s ON s.id = r.subscriber_id
             WHERE s.email = ?",
            [reader(2)],
            |r| r.get(0),
        )
        .expect("the relay's id of reader2's copy was recorded at send time");
    assert!(ses_id.starts_with("0100018c6f"), "{ses_id}");
    let bounce = filled(
        "ses-bounce.json",
        &[
            ("RECIPIENT", "forwarded-elsewhere@example.net"),
            ("MESSAGE_ID", &format!("<{ses_id}@email.amazonses.com>")),
            ("SES_ID", &ses_id),
        ],
    );
    let signed = sns_message(
        &notification("e0000000-0005", &bounce, chrono::Utc::now()),
        2,
        &sns.signing_key,
        &sns.cert_url(),
    )
    .unwrap();
    let plain = [("content-type", "text/plain; charset=UTF-8".to_string())];
    let (status, text) = hooked.post("ses", &plain, signed.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"applied\":1"), "{text}");
    assert_eq!(hooked.status(2), "bounced");
    assert_eq!(hooked.status(0), "active");
    assert_eq!(
        hooked.state().events,
        ["reader2@example.com hard_bounce  webhook issue 1"]
    );
}

// ---------------------------------------------------------------------------------------
// Configuration

#[test]
fn serve_refuses_to_start_without_a_configured_providers_secret() {
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().section("provider_webhooks:\n  mailgun: {}"));
    site.cmd().arg("init").assert().success();
    let out = site
        .cmd()
        .arg("serve")
        .env_remove("VERDICTS_MAILGUN_SIGNING_KEY")
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("VERDICTS_MAILGUN_SIGNING_KEY")
            && err.contains("provider_webhooks.mailgun.signing_key_env"),
        "{err}"
    );
    site.configure(
        &TestConfig::default().section("provider_webhooks:\n  ses:\n    topic_arns: [my-topic]"),
    );
    let out = site.cmd().arg("check").assert().code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("provider_webhooks.ses.topic_arns") && err.contains("my-topic"),
        "{err}"
    );
}

#[test]
fn a_client_over_the_rate_limit_is_told_to_wait_and_changes_nothing() {
    let hooked = Hooked::start(
        "provider_webhooks:\n  generic: {}\n  per_ip_per_minute: 2",
        &[("VERDICTS_WEBHOOK_SECRET", GENERIC_SECRET)],
    );
    let empty = br#"{"events":[]}"#;
    for n in 0..2 {
        let (status, text) = hooked.post(
            "generic",
            &generic_headers(GENERIC_SECRET, now() + n, empty),
            empty,
        );
        assert_eq!(status, 200, "{text}");
    }
    let body = filled(
        "generic-events.json",
        &[
            ("RECIPIENT_0", &reader(0)),
            ("MESSAGE_ID_0", hooked.message_id(0)),
            ("RECIPIENT_1", &reader(1)),
        ],
    );
    let before = hooked.state();
    let mut request = http().post(&hooked.url("generic"));
    for (name, value) in generic_headers(GENERIC_SECRET, now() + 5, body.as_bytes()) {
        request = request.header(name, value);
    }
    let response = request.send(body.as_bytes()).unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    assert_eq!(hooked.state(), before);
}

#[test]
fn an_unconfigured_provider_has_no_endpoint() {
    let hooked = Hooked::start(
        "provider_webhooks:\n  generic: {}",
        &[("VERDICTS_WEBHOOK_SECRET", GENERIC_SECRET)],
    );
    let (status, _) = hooked.post("mailgun", &[], b"{}");
    assert_eq!(status, 404);
}

// ---------------------------------------------------------------------------------------
// Feedback-ID

#[test]
fn every_copy_carries_a_feedback_id_inside_its_dkim_signature() {
    let smtp = TestSmtp::start();
    let site = crate::deliverability::site_with_dkim("rsa2048.pem", "");
    site.edit_config(|c| c.replace("port: 2525", &format!("port: {}", smtp.port())));
    seed_subscribers(&site, 2);
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .success();
    let received = smtp.received();
    assert_eq!(received.len(), 2);
    let record = crate::deliverability::dkim_fixture("rsa2048.txt");
    for copy in &received {
        let parsed = mailparse::parse_mail(&copy.raw).unwrap();
        assert_eq!(
            parsed.headers.get_first_value("Feedback-ID").as_deref(),
            Some("1:weekly.example.com:verdicts:example.com")
        );
        let signature = parsed.headers.get_first_value("DKIM-Signature").unwrap();
        let h: String = signature
            .split(';')
            .find_map(|t| t.trim().strip_prefix("h="))
            .unwrap()
            .split_whitespace()
            .collect();
        assert!(
            h.to_ascii_lowercase()
                .split(':')
                .any(|n| n == "feedback-id"),
            "{h}"
        );
        crate::deliverability::mail_auth_verify(&copy.raw, &record).expect("the copy verifies");
        let edited = copy
            .text()
            .replacen("Feedback-ID: 1:", "Feedback-ID: 2:", 1);
        assert!(
            crate::deliverability::mail_auth_verify(edited.as_bytes(), &record).is_err(),
            "an edited Feedback-ID must fail verification"
        );
    }
}
