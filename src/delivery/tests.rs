//! The engine against a scripted transport: what the ledger and the report say after a
//! relay throttles, mailboxes are full, the deadline passes or a part of the run fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::test_support::{Answer, Fixture, Scripted};
use super::*;

async fn run(f: &Fixture, job: Delivery, transport: &Scripted) -> anyhow::Result<Report> {
    let _ = f;
    let (_stop_tx, stop) = watch::channel(false);
    tokio::time::timeout(
        Duration::from_secs(30),
        deliver_with(job, transport.clone(), stop),
    )
    .await
    .expect("a run never hangs")
}

fn states(f: &Fixture) -> Vec<String> {
    f.deliveries().into_iter().map(|(s, _, _)| s).collect()
}

#[tokio::test]
async fn every_accepted_delivery_is_sent_once_and_the_issue_completes() {
    let f = Fixture::new(30);
    let server = Scripted::new(|_, _| Answer::Accept);
    let report = run(&f, f.job(4, 3), &server).await.unwrap();
    assert_eq!(report.finish, Finish::Complete);
    assert_eq!((report.sent, report.failed), (30, 0));
    assert_eq!(server.accepted().len(), 30);
    assert!(server.accepted().values().all(|&n| n == 1));
}

#[tokio::test]
async fn each_message_is_built_for_what_the_server_offers() {
    let addresses = [
        "reader@bücher.example",
        "jürgen@example.com",
        "plain@example.com",
    ];
    // Without SMTPUTF8 the domain goes as punycode; a UTF-8 local part fails on its own.
    let f = Fixture::with_addresses(&addresses);
    let server = Scripted::new(|_, _| Answer::Accept).without_smtputf8();
    let report = run(&f, f.job(2, 3), &server).await.unwrap();
    assert_eq!((report.sent, report.failed), (2, 1));
    assert_eq!(
        server.accepted_envelopes(),
        ["plain@example.com", "reader@xn--bcher-kva.example"]
    );
    let (state, failure, _) = &f.deliveries()[1];
    assert_eq!(
        (state.as_str(), failure.as_deref()),
        ("failed", Some("permanent"))
    );
    let reply: String = f
        .read()
        .query_row(
            "SELECT last_reply FROM deliveries WHERE subscriber_id = ?",
            [f.ids[1]],
            |r| r.get(0),
        )
        .unwrap();
    assert!(reply.contains("SMTPUTF8"), "{reply}");

    // With SMTPUTF8 every address goes as it is written.
    let f = Fixture::with_addresses(&addresses);
    let server = Scripted::new(|_, _| Answer::Accept);
    let report = run(&f, f.job(2, 3), &server).await.unwrap();
    assert_eq!((report.sent, report.failed), (3, 0));
    assert_eq!(
        server.accepted_envelopes(),
        [
            "jürgen@example.com",
            "plain@example.com",
            "reader@bücher.example"
        ]
    );
}

#[tokio::test]
async fn a_relay_throttling_everyone_pauses_the_issue_and_spends_nobodys_attempts() {
    let f = Fixture::new(40);
    let throttling = Arc::new(AtomicBool::new(true));
    let server = Scripted::new({
        let throttling = throttling.clone();
        move |_, _| {
            if throttling.load(Ordering::SeqCst) {
                Answer::Temporary(
                    "421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
                )
            } else {
                Answer::Accept
            }
        }
    });
    let report = run(&f, f.job(4, 3), &server).await.unwrap();
    let Finish::Paused { reason } = &report.finish else {
        panic!("{:?}", report.finish)
    };
    assert!(reason.contains("4.7.28"), "{reason}");
    assert_eq!(report.failed, 0);
    assert!(
        f.deliveries()
            .iter()
            .all(|(s, _, attempts)| s == "pending" && *attempts == 0),
        "{:?}",
        f.deliveries()
    );
    assert!(
        server.attempts("reader39@example.com") == 0,
        "it stopped early"
    );

    throttling.store(false, Ordering::SeqCst);
    let report = run(&f, f.job(4, 3), &server).await.unwrap();
    assert_eq!(report.finish, Finish::Complete);
    assert_eq!(report.counts.sent, 40);
    assert!(server.accepted().values().all(|&n| n == 1));
}

#[tokio::test]
async fn full_mailboxes_are_retried_alone_and_keep_the_issue_open() {
    let f = Fixture::new(20);
    let full = Arc::new(AtomicBool::new(true));
    let is_full = |to: &str| {
        ["reader3@", "reader9@", "reader15@"]
            .iter()
            .any(|p| to.starts_with(p))
    };
    let server = Scripted::new({
        let full = full.clone();
        move |to, _| {
            if is_full(to) && full.load(Ordering::SeqCst) {
                Answer::Temporary(
                    "452 4.2.2 The email account that you tried to reach is over quota",
                )
            } else {
                Answer::Accept
            }
        }
    });
    let report = run(&f, f.job(4, 3), &server).await.unwrap();
    let Finish::Paused { reason } = &report.finish else {
        panic!(
            "never complete while deliveries failed only temporarily: {:?}",
            report.finish
        )
    };
    assert!(
        reason.contains("3 deliveries failed temporarily"),
        "{reason}"
    );
    assert_eq!(
        (report.sent, report.failed, report.failed_temporarily),
        (17, 3, 3)
    );
    assert_eq!(server.attempts("reader3@example.com"), 3);
    assert_eq!(server.attempts("reader4@example.com"), 1);

    // The next run gives each of them one more attempt, not a fresh set.
    let report = run(&f, f.job(4, 3), &server).await.unwrap();
    assert!(matches!(report.finish, Finish::Paused { .. }));
    assert_eq!(server.attempts("reader3@example.com"), 4);
    assert_eq!(server.accepted().len(), 17);

    full.store(false, Ordering::SeqCst);
    let report = run(&f, f.job(4, 3), &server).await.unwrap();
    assert_eq!(report.finish, Finish::Complete);
    assert_eq!((report.counts.sent, report.counts.failed), (20, 0));
    assert!(server.accepted().values().all(|&n| n == 1));
}

#[tokio::test]
async fn past_the_deadline_the_issue_completes_and_counts_whom_it_gave_up_on() {
    let f = Fixture::new(6);
    let server = Scripted::new(|_, _| {
        Answer::Temporary("454 4.7.0 Throttling failure: Maximum sending rate exceeded")
    });
    let mut job = f.job(2, 3);
    job.smtp.give_up_after = Duration::ZERO;
    let report = run(&f, job, &server).await.unwrap();
    assert_eq!(report.finish, Finish::Complete);
    assert_eq!((report.gave_up, report.failed), (6, 6));
    assert!(f
        .deliveries()
        .iter()
        .all(|(s, failure, _)| s == "failed" && failure.as_deref() == Some("temporary")));
}

#[tokio::test]
async fn a_failing_ledger_writer_stops_the_send_within_seconds_with_its_cause() {
    let f = Fixture::new(200);
    // After a few deliveries, the database refuses to record more.
    f.read()
        .execute_batch(&format!(
            "CREATE TRIGGER full BEFORE UPDATE ON deliveries WHEN NEW.subscriber_id > {}
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
            f.ids[10].get()
        ))
        .unwrap();
    let server = Scripted::new(|_, _| Answer::Accept);
    let started = Instant::now();
    let err = run(&f, f.job(4, 3), &server).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let told = format!("{err:#}");
    assert!(told.contains("database or disk is full"), "{told}");
    // Nothing went out unrecorded: every accepted message's delivery was marked first.
    let marked = f
        .deliveries()
        .iter()
        .filter(|(s, _, _)| s == "sent" || s == "sending")
        .count();
    assert!(
        server.accepted().len() <= marked,
        "{} > {marked}",
        server.accepted().len()
    );
}

#[tokio::test]
async fn a_worker_that_dies_stops_the_send_instead_of_hanging_it() {
    let f = Fixture::new(50);
    let server = Scripted::new(|to, _| {
        if to == "reader7@example.com" {
            Answer::Panic
        } else {
            Answer::Accept
        }
    });
    let err = run(&f, f.job(1, 3), &server).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("worker stopped unexpectedly"),
        "{err:#}"
    );
}

/// Captures log lines of the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_quiet_run_says_what_it_is_waiting_for() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let f = Fixture::new(3);
    let server = Scripted::new(|_, n| {
        if n == 1 {
            Answer::Temporary("451 4.7.1 Greylisted, come back later")
        } else {
            Answer::Accept
        }
    });
    let mut job = f.job(2, 3);
    job.smtp.retry_base = Duration::from_millis(1500);
    let (_stop_tx, stop) = watch::channel(false);
    let report = deliver_watched(job, server, stop, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(report.finish, Finish::Complete);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("no delivery progress: waiting for temporary failures to come due"),
        "{text}"
    );
    assert_eq!(states(&f), ["sent", "sent", "sent"]);
}

#[test]
fn backoff_grows_and_is_capped() {
    let base = Duration::from_secs(2);
    for attempts in 1..=20 {
        let d = backoff(base, attempts);
        let nominal = base
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(MAX_BACKOFF);
        assert!(
            d >= nominal.mul_f64(0.5) && d <= nominal.mul_f64(1.5),
            "{attempts}: {d:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_pauses_while_a_refused_mailbox_fails_alone() {
    let f = Fixture::new(3);
    let down = Scripted::new(|_, _| Answer::Fault("cannot connect to 127.0.0.1:25: refused"));
    let report = run(&f, f.job(8, 3), &down).await.unwrap();
    assert!(
        matches!(&report.finish, Finish::Paused { reason } if reason.contains("refused")),
        "{:?}",
        report.finish
    );
    assert!(f
        .deliveries()
        .iter()
        .all(|(s, _, a)| s == "pending" && *a == 0));

    let up = Scripted::new(|to, _| {
        if to == "reader1@example.com" {
            Answer::Permanent("550 5.7.1 Message rejected as spam")
        } else {
            Answer::Accept
        }
    });
    let report = run(&f, f.job(8, 3), &up).await.unwrap();
    assert_eq!(report.finish, Finish::Complete);
    assert_eq!(
        (report.sent, report.failed, report.failed_temporarily),
        (2, 1, 0)
    );
    assert_eq!(states(&f), ["sent", "failed", "sent"]);
}
