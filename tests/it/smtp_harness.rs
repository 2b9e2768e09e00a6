//! Self-test of the SMTP test server in `tests/smtp/mod.rs`, driven by lettre's sync client.

use crate::smtp::{closed_port, Behaviour, SilentServer, TestSmtp};
use lettre::address::Envelope;
use lettre::transport::smtp::SmtpTransport;
use lettre::{Address, Transport};
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const FROM: &str = "news@verdicts.example";

fn transport(port: u16) -> SmtpTransport {
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(5)))
        .build()
}

fn envelope(to: &str) -> Envelope {
    Envelope::new(
        Some(FROM.parse::<Address>().unwrap()),
        vec![to.parse::<Address>().unwrap()],
    )
    .unwrap()
}

/// A 7-bit message with the headers tests care about and a body line starting with a dot
/// (which the client dot-stuffs and the server must unstuff). No final CRLF: lettre always
/// terminates the data with `\r\n.\r\n`, so the server receives it with one more CRLF.
fn message(to: &str, id: &str) -> String {
    format!(
        "From: Weekly Verdicts <{FROM}>\r\n\
         To: {to}\r\n\
         Subject: This week's verdicts\r\n\
         Message-ID: <{id}@verdicts.example>\r\n\
         List-Unsubscribe: <https://verdicts.example/u/abc>, <mailto:unsub@verdicts.example>\r\n\
         List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\
         \r\n\
         Hello =E2=9C=93\r\n\
         .a line starting with a dot\r\n\
         ..two dots\r\n\
         last line"
    )
}

fn assert_refused(port: u16) {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(_) => panic!("connection to port {port} was accepted"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
    }
}

#[test]
fn message_is_received_with_headers_intact() {
    let server = TestSmtp::start();
    let to = "Alice@Example.com";
    let raw = message(to, "m1");
    transport(server.port())
        .send_raw(&envelope(to), raw.as_bytes())
        .expect("send");

    let received = server.received();
    assert_eq!(received.len(), 1);
    let msg = &received[0];
    assert_eq!(msg.mail_from, FROM);
    assert_eq!(msg.rcpt, vec![to.to_string()]);
    assert_eq!(msg.raw, format!("{raw}\r\n").into_bytes());

    let parsed = mailparse::parse_mail(&msg.raw).unwrap();
    use mailparse::MailHeaderMap;
    assert_eq!(
        parsed.headers.get_first_value("Message-ID").as_deref(),
        Some("<m1@verdicts.example>")
    );
    assert_eq!(
        parsed
            .headers
            .get_first_value("List-Unsubscribe")
            .as_deref(),
        Some("<https://verdicts.example/u/abc>, <mailto:unsub@verdicts.example>")
    );
    let body = parsed.get_body().unwrap();
    assert!(body.starts_with("Hello \u{2713}\r\n.a line starting with a dot\r\n..two dots\r\n"));

    let counts = server.count_by_recipient();
    assert_eq!(counts.get("alice@example.com"), Some(&1));
    assert_eq!(server.wait_for(1, Duration::from_millis(10)), 1);
}

#[test]
fn temp_fail_first_fails_then_accepts_across_connections() {
    let to = "bob@example.com";
    let server = TestSmtp::start_with(Behaviour::default().temp_fail("Bob@example.com", 1));
    let raw = message(to, "m2");

    let err = transport(server.port())
        .send_raw(&envelope(to), raw.as_bytes())
        .expect_err("first attempt must fail");
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("451"));
    assert!(server.received().is_empty());

    // A fresh transport, hence a new connection: the attempt counter is shared.
    transport(server.port())
        .send_raw(&envelope(to), raw.as_bytes())
        .expect("second attempt succeeds");
    assert_eq!(server.received().len(), 1);
    assert_eq!(server.rcpt_attempts().get(to), Some(&2));
    assert!(server.connections() >= 2);
}

#[test]
fn user_unknown_is_a_permanent_550() {
    let mut behaviour = Behaviour::default();
    behaviour.user_unknown.insert("ghost@example.com".into());
    let server = TestSmtp::start_with(behaviour);
    let to = "ghost@example.com";
    let err = transport(server.port())
        .send_raw(&envelope(to), message(to, "m3").as_bytes())
        .expect_err("user unknown");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("550"));
    assert!(err.to_string().contains("User unknown"), "{err}");
    assert!(server.received().is_empty());

    // Others still get through.
    let ok = "carol@example.com";
    transport(server.port())
        .send_raw(&envelope(ok), message(ok, "m4").as_bytes())
        .unwrap();
    assert_eq!(server.count_by_recipient().get(ok), Some(&1));
}

#[test]
fn reject_data_is_a_permanent_554_after_data() {
    let to = "spam@example.com";
    let server = TestSmtp::start_with(Behaviour::default().reject(to));
    let err = transport(server.port())
        .send_raw(&envelope(to), message(to, "m5").as_bytes())
        .expect_err("rejected");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("554"));
    assert!(server.received().is_empty());
    assert_eq!(server.rcpt_attempts().get(to), Some(&1));
}

#[test]
fn many_concurrent_clients_and_data_delay() {
    let server = TestSmtp::start_with(Behaviour::default().delay(Duration::from_millis(20)));
    let port = server.port();
    let started = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let transport = transport(port);
                for i in 0..10 {
                    let to = format!("user{t}-{i}@example.com");
                    transport
                        .send_raw(
                            &envelope(&to),
                            message(&to, &format!("c{t}-{i}")).as_bytes(),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.wait_for(160, Duration::from_secs(5)), 160);
    assert_eq!(server.count_by_recipient().len(), 160);
    assert!(server.max_concurrent_sessions() >= 2);
    // 10 sequential 20 ms delays per client, clients in parallel.
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn silent_server_makes_the_client_time_out() {
    let silent = SilentServer::start();
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(silent.port())
        .timeout(Some(Duration::from_secs(1)))
        .build();
    let to = "dave@example.com";
    let started = Instant::now();
    let err = transport
        .send_raw(&envelope(to), message(to, "m6").as_bytes())
        .expect_err("must time out");
    // It waited for the greeting until the 1 s read timeout, then gave up. (lettre's sync
    // transport reports this as a network error of kind WouldBlock: `is_timeout()` is false.)
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?} {err}");
    assert!(waited < Duration::from_secs(10), "{waited:?} {err}");
    assert!(silent.connections() >= 1);
}

#[test]
fn stop_refuses_connections_and_port_can_be_reused() {
    let server = TestSmtp::start();
    let port = server.port();
    // An open session is cut by stop().
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 4];
    idle.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 ");
    server.stop();
    assert_refused(port);
    let mut rest = Vec::new();
    // The server closed the session: EOF (or a reset), not a timeout.
    match idle.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_ne!(e.kind(), ErrorKind::WouldBlock, "{e}"),
    }

    let again = TestSmtp::start_on(port, Behaviour::default());
    assert_eq!(again.port(), port);
    let to = "erin@example.com";
    transport(port)
        .send_raw(&envelope(to), message(to, "m7").as_bytes())
        .unwrap();
    assert_eq!(again.received().len(), 1);
    drop(again);
    assert_refused(port);
}

#[test]
fn closed_port_refuses() {
    assert_refused(closed_port());
}
