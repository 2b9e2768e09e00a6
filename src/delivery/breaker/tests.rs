use super::*;

fn temp(reply: &str) -> Attempt {
    Attempt::Temporary(reply.into())
}

fn sent() -> Attempt {
    Attempt::Sent("250 2.0.0 Ok".into())
}

#[test]
fn replies_are_sorted_by_who_they_are_about() {
    for relay in [
        "transient error (421): 4.7.28 Gmail has detected an unusual rate of unsolicited mail",
        "454 Throttling failure: Maximum sending rate exceeded.",
        "451 4.7.1 Rate limit exceeded, try again later",
        "421 4.3.2 System not accepting network messages",
        "450 Too many connections from your IP",
    ] {
        assert_eq!(scope(relay), Scope::Relay, "{relay}");
    }
    for mailbox in [
        "transient error (452): 4.2.2 The email account that you tried to reach is over quota",
        "450 4.2.0 <a@b.c>: Recipient address rejected: Greylisted, see https://postgrey",
        "452 Mailbox full",
    ] {
        assert_eq!(scope(mailbox), Scope::Mailbox, "{mailbox}");
    }
    assert_eq!(
        scope("transient error (451): 4.3.0 Temporary failure"),
        Scope::Unclear
    );
    assert_eq!(reply_code("transient error (452): x"), Some(452));
    assert_eq!(reply_code("421 closing"), Some(421));
    assert_eq!(reply_code("no code here"), None);
}

#[test]
fn policy_refusals_blame_the_sender_and_trip_without_bouncing() {
    for reply in [
        "permanent error (550): 5.7.515 Access denied, sending domain example.com doesn't meet the required authentication level.",
        "permanent error (550): 5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users",
        "permanent error (550): 5.7.1 Message rejected due to local policy",
        "permanent error (550): Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        "permanent error (554): 5.7.1 Service unavailable; client blocked",
    ] {
        assert!(blames_sender(reply), "{reply}");
        let mut b = Breaker::new(8, 0).for_relay("ses");
        b.record(
            SubscriberId(1),
            &Attempt::Permanent {
                reply: reply.into(),
                user_unknown: false,
            },
        );
        let why = b.tripped().expect("one such reply is enough");
        assert!(why.starts_with("relay ses refuses our mail"), "{why}");
        assert!(why.contains("verdicts dkim-record"), "{why}");
        assert!(b.blamed_sender());
        assert_eq!(b.take_refunds(), vec![SubscriberId(1)]);
    }
    // A rate limit at 421 is throttling: the relay's, not a policy verdict on us.
    let throttled = "transient error (421): 4.7.0 Too many messages, rate limited";
    assert!(!blames_sender(throttled));
    assert_eq!(scope(throttled), Scope::Relay);
    // The reader's own refusal stays the reader's.
    assert!(!blames_sender(
        "permanent error (550): 5.1.1 <a@b.c>: Recipient address rejected: User unknown"
    ));
}

#[test]
fn a_throttling_streak_trips_and_refunds_every_attempt_it_cost() {
    let mut b = Breaker::new(3, 0);
    b.record(SubscriberId(1), &sent());
    for id in 2..=4 {
        b.record(SubscriberId(id), &temp("421 4.7.28 unusual rate"));
    }
    assert!(b.tripped().unwrap().contains("4.7.28"));
    // Attempts finishing after the trip are given back too.
    b.record(SubscriberId(5), &temp("421 4.7.28 unusual rate"));
    assert_eq!(
        b.take_refunds(),
        [2, 3, 4, 5].map(SubscriberId).to_vec(),
        "the accepted one keeps its attempt"
    );
}

#[test]
fn full_mailboxes_never_trip_it_however_many() {
    let mut b = Breaker::new(3, 0);
    for id in 1..=40 {
        b.record(SubscriberId(id), &temp("452 4.2.2 Mailbox full"));
    }
    assert_eq!(b.end_pass(|| "down".into()), None);
    assert!(b.take_refunds().is_empty());
}

#[test]
fn unclear_failures_trip_it_only_when_most_recipients_get_them() {
    let mut b = Breaker::new(8, 0);
    // A few recipients failing among many accepted: their own problem.
    for id in 1..=30 {
        let a = if id % 10 == 0 {
            temp("451 4.3.0 try later")
        } else {
            sent()
        };
        b.record(SubscriberId(id), &a);
    }
    assert_eq!(b.tripped(), None);
    // One recipient retried over and over is still one recipient.
    for _ in 0..30 {
        b.record(SubscriberId(99), &temp("451 4.3.0 try later"));
    }
    assert_eq!(b.tripped(), None);
    // Most of the next recipients failing: the relay's problem.
    let mut b = Breaker::new(8, 0);
    for id in 1..=12 {
        let a = if id % 4 == 0 {
            sent()
        } else {
            temp("451 4.3.0 try later")
        };
        b.record(SubscriberId(id), &a);
    }
    assert!(b.tripped().unwrap().contains("failing most recipients"));
    assert_eq!(b.take_refunds().len(), 9);
}

#[test]
fn a_pass_of_nothing_but_faults_trips_it_even_when_short() {
    let mut b = Breaker::new(8, 0);
    b.record(
        SubscriberId(1),
        &Attempt::Connection("cannot connect".into()),
    );
    assert_eq!(b.end_pass(|| "down".into()), Some("cannot connect"));
    assert_eq!(b.take_refunds(), [SubscriberId(1)]);

    let mut b = Breaker::new(8, 0);
    b.record(
        SubscriberId(1),
        &Attempt::Connection("cannot connect".into()),
    );
    b.record(SubscriberId(2), &sent());
    assert_eq!(b.end_pass(|| "down".into()), None);
}

fn refused(reply: &str) -> Attempt {
    Attempt::Permanent {
        reply: format!("permanent error (550): {reply}"),
        user_unknown: true,
    }
}

#[test]
fn a_relay_refusing_nearly_everyone_trips_it_and_gives_every_refusal_back() {
    let mut b = Breaker::new(8, 0);
    for id in 1..=3 {
        b.record(SubscriberId(id), &sent());
    }
    // A few dead addresses among accepted ones: the readers' own.
    b.record(SubscriberId(4), &refused("5.1.1 User unknown"));
    b.record(SubscriberId(5), &sent());
    assert_eq!(b.tripped(), None);
    // Then the smarthost starts refusing everyone with the same words.
    for id in 6..=40 {
        b.record(SubscriberId(id), &refused("5.1.1 User unknown"));
        if b.tripped().is_some() {
            break;
        }
    }
    let why = b.tripped().expect("tripped").to_owned();
    assert!(why.contains("refused nearly every recipient"), "{why}");
    assert!(why.contains("nobody was marked bounced"), "{why}");
    let refunds = b.take_refunds();
    assert!(refunds.contains(&SubscriberId(6)), "{refunds:?}");
    assert!(
        !refunds.contains(&SubscriberId(1)),
        "accepted ones keep theirs"
    );
}

#[test]
fn dead_addresses_in_a_healthy_list_never_trip_it() {
    let mut b = Breaker::new(8, 0);
    for id in 1..=200 {
        let a = if id % 3 == 0 {
            refused("5.1.1 User unknown")
        } else {
            sent()
        };
        b.record(SubscriberId(id), &a);
    }
    assert_eq!(b.end_pass(|| "down".into()), None);
}

#[test]
fn an_issue_with_no_message_accepted_and_every_reader_refused_pauses_even_when_short() {
    let mut b = Breaker::new(8, 0);
    for id in 1..=3 {
        b.record(SubscriberId(id), &refused("5.0.0 Rejected"));
    }
    assert!(b
        .end_pass(|| "down".into())
        .unwrap()
        .contains("all 3 recipients tried"));
    // One refused reader alone is that reader's problem.
    let mut b = Breaker::new(8, 0);
    b.record(SubscriberId(1), &refused("5.1.1 User unknown"));
    assert_eq!(b.end_pass(|| "down".into()), None);
    // And an issue that earlier runs delivered is judged by the window rule only.
    let mut b = Breaker::new(8, 120);
    for id in 1..=3 {
        b.record(SubscriberId(id), &refused("5.1.1 User unknown"));
    }
    assert_eq!(b.end_pass(|| "down".into()), None);
}

#[test]
fn replies_that_blame_the_sender_trip_it_at_once() {
    for reply in [
        "permanent error (550): 5.7.515 Access denied, sending domain example.com does not meet the required authentication level",
        "permanent error (550): 5.7.26 This mail has been blocked because the sender is unauthenticated",
        "permanent error (554): 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        "permanent error (550): 5.7.1 Relaying denied",
        "transient error (451): 4.7.1 Your IP has a poor reputation, try again later",
    ] {
        assert!(blames_sender(reply), "{reply}");
        let mut b = Breaker::new(8, 500);
        b.record(SubscriberId(1), &sent());
        let a = if reply.starts_with("transient") {
            temp(reply)
        } else {
            Attempt::Permanent {
                reply: reply.into(),
                user_unknown: false,
            }
        };
        b.record(SubscriberId(2), &a);
        assert!(b.tripped().unwrap().contains("sender's fault"), "{reply}");
        assert_eq!(b.take_refunds(), [SubscriberId(2)]);
    }
    for reader in [
        "permanent error (550): 5.1.1 <a@b.c>: Recipient address rejected: User unknown",
        "permanent error (550): 5.7.1 <a@b.c>: Recipient address rejected: Access denied",
        "permanent error (552): 5.2.2 Mailbox full",
        "transient error (451): 4.7.1 Greylisted, come back later",
        "transient error (450): 4.7.1 <a@b.c>: Recipient address rejected: Policy rejection, try again later",
    ] {
        assert!(!blames_sender(reader), "{reader}");
    }
}
