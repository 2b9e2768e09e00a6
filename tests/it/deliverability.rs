//! Deliverability: DKIM signatures that an independent verifier (Python's dkimpy) accepts and
//! that cover both List-Unsubscribe headers, the DNS record to publish, and `verdicts lint`'s
//! rules, each with a fixture that trips it, gating `preview` and `send`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{fixture, TempSite, REPO};
use crate::smtp::{Behaviour, TestSmtp};
use chrono::{DateTime, Utc};
use predicates::prelude::*;
use verdicts::config::{Config, DkimAlgorithm, DkimConfig};
use verdicts::content::load_dir;
use verdicts::deliverability::{self as lint, Finding, Sample, Severity};
use verdicts::digest::render::{render_digest, RenderedDigest};
use verdicts::mail::dkim::DkimSigner;
use verdicts::mail::message::{IssueMessages, Recipient};
use verdicts::mail::token::TokenKey;
use verdicts::store::ledger::StoredDigest;
use verdicts::store::{IssueNumber, SubscriberId};

const AT: &str = "2026-11-23T09:00:00Z";

fn slot() -> DateTime<Utc> {
    AT.parse().unwrap()
}

pub(crate) fn dkim_fixture(name: &str) -> PathBuf {
    Path::new(REPO).join("tests/fixtures/dkim").join(name)
}

fn dkim_config(key: &str, algorithm: DkimAlgorithm) -> DkimConfig {
    DkimConfig {
        domain: "example.com".into(),
        selector: "verdicts1".into(),
        key_file: dkim_fixture(key),
        algorithm,
    }
}

const DNS_NAME: &str = "verdicts1._domainkey.example.com";

/// The bundled config and the bundled week's digest.
fn bundled() -> (Config, RenderedDigest) {
    let config = Config::load(&crate::common::bundled_config()).unwrap();
    let cs = load_dir(&config.content_dir).unwrap();
    let refs: Vec<_> = cs.iter().collect();
    let digest =
        render_digest(&config.newsletter, &refs, slot(), chrono_tz::Europe::London).unwrap();
    (config, digest)
}

fn reader() -> Recipient {
    Recipient {
        subscriber_id: SubscriberId(7),
        email: "ada@example.com".parse().unwrap(),
        name: Some("Ada Lovelace".into()),
    }
}

/// Ada's copy of the bundled issue, signed with `signer`, and her unsubscribe URL.
fn signed_copy(signer: Option<DkimSigner>) -> (Vec<u8>, String) {
    let (config, digest) = bundled();
    let messages = IssueMessages::new(
        &config.newsletter,
        IssueNumber(1),
        slot(),
        &digest,
        TokenKey::new(b"a-test-key-of-enough-length"),
    )
    .with_dkim(signer);
    let url = messages.unsubscribe_url(&reader());
    (messages.build(&reader()).unwrap().formatted(), url)
}

/// What dkimpy says about `message`, looking `DNS_NAME` up in `record`: `Ok(its report)`
/// when the signature verifies. Callers check first that dkimpy is there
/// (`require_checker!(Checker::Dkim)`).
pub(crate) fn dkimpy_verify(message: &[u8], record: &Path) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("message.eml");
    std::fs::write(&eml, message).unwrap();
    let out = Command::new(crate::checkers::python())
        .arg(dkim_fixture("verify.py"))
        .arg(&eml)
        .arg(record)
        .arg(DNS_NAME)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): {}",
                crate::checkers::python().display(),
                crate::checkers::Checker::Dkim.install()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => Err(stderr),
        _ => panic!(
            "the DKIM verifier could not run: {stderr}\nInstall dkimpy and PyNaCl: {}",
            crate::checkers::Checker::Dkim.install()
        ),
    }
}

/// The signed header names in dkimpy's report (`h=a:b:c`).
fn signed_headers(report: &str) -> Vec<String> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("h="))
        .expect("h= in the report")
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect()
}

fn replace_once(haystack: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(haystack.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in the message");
    text.replacen(from, to, 1).into_bytes()
}

// ---------------------------------------------------------------------------------------
// DKIM signing

#[test]
fn rsa_signed_copy_verifies_independently_and_covers_both_list_unsubscribe_headers() {
    crate::require_checker!(crate::checkers::Checker::Dkim);
    let signer = DkimSigner::load(&dkim_config("rsa2048.pem", DkimAlgorithm::Rsa)).unwrap();
    let (raw, _) = signed_copy(Some(signer));
    let report = dkimpy_verify(&raw, &dkim_fixture("rsa2048.txt")).expect("signature verifies");
    let h = signed_headers(&report);
    for name in [
        "from",
        "subject",
        "date",
        "message-id",
        "to",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "feedback-id",
    ] {
        assert!(h.contains(&name.to_string()), "h= lacks {name}: {h:?}");
    }
    assert!(report.contains("d=example.com s=verdicts1"), "{report}");
}

#[test]
fn ed25519_signed_copy_verifies_independently() {
    crate::require_checker!(crate::checkers::Checker::Dkim);
    let signer = DkimSigner::load(&dkim_config("ed25519.pem", DkimAlgorithm::Ed25519)).unwrap();
    let (raw, _) = signed_copy(Some(signer));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("a=ed25519-sha256"));
    let report = dkimpy_verify(&raw, &dkim_fixture("ed25519.txt")).expect("signature verifies");
    let h = signed_headers(&report);
    assert!(h.contains(&"list-unsubscribe".to_string()));
    assert!(h.contains(&"list-unsubscribe-post".to_string()));
}

#[test]
fn altering_the_body_or_the_unsubscribe_headers_after_signing_fails_verification() {
    crate::require_checker!(crate::checkers::Checker::Dkim);
    for (key, algorithm, record) in [
        ("rsa2048.pem", DkimAlgorithm::Rsa, "rsa2048.txt"),
        ("ed25519.pem", DkimAlgorithm::Ed25519, "ed25519.txt"),
    ] {
        let signer = DkimSigner::load(&dkim_config(key, algorithm)).unwrap();
        let (raw, url) = signed_copy(Some(signer));
        let record = dkim_fixture(record);
        assert!(
            dkimpy_verify(&raw, &record).is_ok(),
            "{key}: untouched copy"
        );

        let body_edited = replace_once(
            &raw,
            "Read the full comparison",
            "Read the whole comparison",
        );
        assert!(
            dkimpy_verify(&body_edited, &record).is_err(),
            "{key}: an edited body must fail"
        );

        let header_edited = replace_once(
            &raw,
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Clack",
        );
        assert!(
            dkimpy_verify(&header_edited, &record).is_err(),
            "{key}: an edited List-Unsubscribe-Post must fail"
        );

        let token = url.split("token=").nth(1).unwrap();
        let link_swapped = replace_once(
            &raw,
            &format!("token={}", &token[..20]),
            "token=forged-token-0",
        );
        assert!(
            dkimpy_verify(&link_swapped, &record).is_err(),
            "{key}: a swapped unsubscribe link must fail"
        );
    }
}

#[test]
fn pkcs1_and_pkcs8_rsa_keys_publish_the_record_openssl_derives() {
    let expected = std::fs::read_to_string(dkim_fixture("rsa2048.txt")).unwrap();
    for key in ["rsa2048.pem", "rsa2048-pkcs1.pem"] {
        let signer = DkimSigner::load(&dkim_config(key, DkimAlgorithm::Rsa)).unwrap();
        assert_eq!(signer.txt_record(), expected.trim(), "{key}");
        assert_eq!(signer.dns_name(), DNS_NAME);
    }
    let ed = DkimSigner::load(&dkim_config("ed25519.pem", DkimAlgorithm::Ed25519)).unwrap();
    let expected = std::fs::read_to_string(dkim_fixture("ed25519.txt")).unwrap();
    assert_eq!(ed.txt_record(), expected.trim());
}

#[test]
fn key_problems_are_named_with_the_file_and_the_fix() {
    let cases = [
        (
            "missing.pem",
            DkimAlgorithm::Rsa,
            "cannot read the DKIM key file",
        ),
        (
            "garbage.pem",
            DkimAlgorithm::Rsa,
            "not a usable private key for dkim.algorithm rsa",
        ),
        (
            "garbage.pem",
            DkimAlgorithm::Ed25519,
            "not a usable private key for dkim.algorithm ed25519",
        ),
        (
            "ed25519.pem",
            DkimAlgorithm::Rsa,
            "holds an Ed25519 key, but dkim.algorithm is rsa",
        ),
        (
            "rsa2048.pem",
            DkimAlgorithm::Ed25519,
            "holds an RSA key, but dkim.algorithm is ed25519",
        ),
        (
            "rsa2048.txt",
            DkimAlgorithm::Rsa,
            "not a usable private key",
        ),
    ];
    for (file, algorithm, expected) in cases {
        let err = DkimSigner::load(&dkim_config(file, algorithm))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{file}: {err}");
        assert!(err.contains(file), "{file}: names the file: {err}");
    }
}

/// A site with the bundled content and DKIM turned on by the three documented lines.
pub(crate) fn site_with_dkim(key: &str, extra: &str) -> TempSite {
    let site = TempSite::with_bundled_content();
    std::fs::copy(dkim_fixture(key), site.path().join("dkim.pem")).unwrap();
    site.edit_config(|c| {
        format!(
            "{c}dkim:\n  domain: example.com\n  selector: verdicts1\n  key_file: dkim.pem\n{extra}"
        )
    });
    site
}

#[test]
fn three_config_lines_turn_dkim_on_and_dkim_record_prints_what_to_publish() {
    let site = site_with_dkim("rsa2048.pem", "");
    let expected = std::fs::read_to_string(dkim_fixture("rsa2048.txt")).unwrap();
    site.cmd()
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "DKIM key for verdicts1._domainkey.example.com is valid",
        ));
    let out = site.cmd().arg("dkim-record").assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(stdout.contains(&format!("Name:  {DNS_NAME}")), "{stdout}");
    assert!(
        stdout.contains(&format!("Value: {}", expected.trim())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{DNS_NAME}. 3600 IN TXT (")),
        "{stdout}"
    );

    // The preview's sample message is signed with the same key and verifies.
    let out_dir = site.path().join("out");
    site.cmd()
        .args(["preview", "--at", AT, "--out"])
        .arg(&out_dir)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "DKIM: signing as d=example.com s=verdicts1 (rsa-sha256)",
        ));
    let eml = std::fs::read(out_dir.join("digest.eml")).unwrap();
    crate::require_checker!(crate::checkers::Checker::Dkim);
    let report = dkimpy_verify(&eml, &dkim_fixture("rsa2048.txt")).expect("preview verifies");
    assert!(signed_headers(&report).contains(&"list-unsubscribe-post".to_string()));
}

#[test]
fn dkim_record_without_dkim_shows_the_lines_to_add() {
    let site = TempSite::with_bundled_content();
    site.cmd()
        .arg("dkim-record")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("DKIM is not configured"))
        .stderr(predicate::str::contains("selector:"))
        .stderr(predicate::str::contains("key_file:"));
}

/// The TXT record file as mail-auth's resolver cache: every look-up answers with it, so
/// nothing goes to DNS.
struct RecordFile(mail_auth::Txt);

impl mail_auth::ResolverCache<String, mail_auth::Txt> for RecordFile {
    fn get<Q>(&self, _: &Q) -> Option<mail_auth::Txt>
    where
        String: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        Some(self.0.clone())
    }

    fn remove<Q>(&self, _: &Q) -> Option<mail_auth::Txt>
    where
        String: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: String, _: mail_auth::Txt, _: std::time::Instant) {}
}

/// What the `mail-auth` crate (a second verifier, independent of verdicts and of dkimpy)
/// says about `message`'s signature, with the key from `record`.
pub(crate) fn mail_auth_verify(message: &[u8], record: &Path) -> Result<(), String> {
    use mail_auth::common::parse::TxtRecordParser as _;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters};

    let record = std::fs::read(record).unwrap();
    let key = DomainKey::parse(record.trim_ascii()).expect("the record parses");
    let cache = RecordFile(mail_auth::Txt::DomainKey(std::sync::Arc::new(key)));
    let parsed = AuthenticatedMessage::parse(message).ok_or("the message does not parse")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A resolver without name servers: the cache answers every look-up, and one it did not
    // answer would fail rather than leave the machine.
    let no_dns = mail_auth::hickory_resolver::config::ResolverConfig::from_parts(
        None,
        vec![],
        mail_auth::hickory_resolver::config::NameServerConfigGroup::default(),
    );
    let authenticator = MessageAuthenticator::new(no_dns, Default::default()).unwrap();
    let outputs = runtime
        .block_on(authenticator.verify_dkim(Parameters::new(&parsed).with_txt_cache(&cache)));
    match outputs.as_slice() {
        [one] if *one.result() == DkimResult::Pass => Ok(()),
        [one] => Err(format!("{:?}", one.result())),
        other => Err(format!("{} signatures checked", other.len())),
    }
}

/// The `h=` every copy carries: the signed headers, then the over-signed ones again.
const EXPECTED_H: &str = "from:to:subject:date:message-id:mime-version:content-type:list-id:list-unsubscribe:list-unsubscribe-post:feedback-id:from:subject:to:list-unsubscribe:list-unsubscribe-post";

/// The algorithms, each with its key file, the config line choosing it, its TXT record file
/// and its `a=` tag.
const ALGORITHMS: [(&str, &str, &str, &str); 2] = [
    ("rsa2048.pem", "", "rsa2048.txt", "rsa-sha256"),
    (
        "ed25519.pem",
        "  algorithm: ed25519\n",
        "ed25519.txt",
        "ed25519-sha256",
    ),
];

/// The bundled issue sent with DKIM on to three readers (one with a name that needs
/// encoding) through the test SMTP server: the copies as the server received them.
fn sent_signed_copies(key: &str, extra: &str) -> Vec<crate::smtp::Received> {
    let server = TestSmtp::start();
    let site = site_with_dkim(key, extra);
    site.edit_config(|c| c.replace("port: 2525", &format!("port: {}", server.port())));
    for args in [
        vec!["ada@example.com", "--name", "Ada Lovelace"],
        vec!["grace@example.com", "--name", "Grace “Amazing” Hopper-Żółć"],
        vec!["linus@example.com"],
    ] {
        site.cmd()
            .args(["subscribers", "add"])
            .args(&args)
            .assert()
            .success();
    }
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let received = server.received();
    assert_eq!(received.len(), 3);
    received
}

/// The header block of a raw message, as text.
fn head_of(raw: &[u8]) -> String {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    text.split_once("\r\n\r\n").unwrap().0.to_owned()
}

/// `raw` with `line` added as a header field at the top (under the signature) or the bottom.
fn with_header_added(raw: &[u8], line: &str, at_top: bool) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = if at_top {
        // After the DKIM-Signature field and its continuation lines.
        let mut lines: Vec<&str> = head.split("\r\n").collect();
        let after = 1 + lines[1..]
            .iter()
            .take_while(|l| l.starts_with([' ', '\t']))
            .count();
        lines.insert(after, line);
        lines.join("\r\n")
    } else {
        format!("{head}\r\n{line}")
    };
    format!("{head}\r\n\r\n{body}").into_bytes()
}

#[test]
fn copies_received_by_the_server_verify_with_two_independent_verifiers() {
    crate::require_checker!(crate::checkers::Checker::Dkim);
    for (key, extra, record, algorithm) in ALGORITHMS {
        let record = dkim_fixture(record);
        for m in sent_signed_copies(key, extra) {
            let head = head_of(&m.raw);
            assert!(
                head.starts_with(&format!(
                    "DKIM-Signature: v=1; a={algorithm}; c=relaxed/relaxed;"
                )),
                "{key}: the signature is the first header: {head}"
            );
            let signature_lines = head
                .split("\r\n")
                .enumerate()
                .take_while(|(i, l)| *i == 0 || l.starts_with('\t'))
                .map(|(_, l)| l);
            for line in signature_lines {
                assert!(line.len() <= 78, "{key}: signature line too long: {line}");
            }
            let report = dkimpy_verify(&m.raw, &record)
                .unwrap_or_else(|e| panic!("{key}: dkimpy rejects {:?}: {e}", m.rcpt));
            assert_eq!(signed_headers(&report).join(":"), EXPECTED_H, "{key}");
            mail_auth_verify(&m.raw, &record)
                .unwrap_or_else(|e| panic!("{key}: mail-auth rejects {:?}: {e}", m.rcpt));
        }
    }
}

#[test]
fn copies_built_for_a_server_without_smtputf8_are_signed_as_sent() {
    crate::require_checker!(crate::checkers::Checker::Dkim);
    // The message is built after the server says it does not offer SMTPUTF8: the domain
    // goes as punycode in the envelope and the To field, and the signature covers exactly
    // that spelling.
    let server = TestSmtp::start_with(Behaviour::default().without_smtputf8());
    let site = site_with_dkim("ed25519.pem", "  algorithm: ed25519\n");
    site.edit_config(|c| c.replace("port: 2525", &format!("port: {}", server.port())));
    for address in ["ada@bücher.example", "linus@example.com"] {
        site.cmd()
            .args(["subscribers", "add", address])
            .assert()
            .success();
    }
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let received = server.received();
    assert_eq!(received.len(), 2);
    let record = dkim_fixture("ed25519.txt");
    for m in &received {
        assert!(!m.smtputf8, "{:?}", m.rcpt);
        dkimpy_verify(&m.raw, &record)
            .unwrap_or_else(|e| panic!("dkimpy rejects {:?}: {e}", m.rcpt));
        mail_auth_verify(&m.raw, &record)
            .unwrap_or_else(|e| panic!("mail-auth rejects {:?}: {e}", m.rcpt));
    }
    let punycode = received
        .iter()
        .find(|m| m.rcpt == ["ada@xn--bcher-kva.example"])
        .expect("the international address went as punycode");
    assert!(head_of(&punycode.raw).contains("To: ada@xn--bcher-kva.example"));
}

#[test]
fn signup_confirmations_verify_with_both_verifiers_for_both_algorithms() {
    crate::require_checker!(crate::checkers::Checker::Dkim);
    use verdicts::mail::address::SubscriberEmail;
    use verdicts::mail::confirmation::ConfirmationMail;
    let (config, _) = bundled();
    let email = SubscriberEmail::parse("ada@example.com").unwrap();
    let created = slot();
    let mail = ConfirmationMail {
        id: 42,
        email: &email,
        name: None,
        created_at: created,
        expires_at: created + chrono::Duration::days(7),
    };
    for (key, algorithm, record) in [
        ("rsa2048.pem", DkimAlgorithm::Rsa, "rsa2048.txt"),
        ("ed25519.pem", DkimAlgorithm::Ed25519, "ed25519.txt"),
    ] {
        let signer = DkimSigner::load(&dkim_config(key, algorithm)).unwrap();
        let raw = mail
            .build(
                &config.newsletter,
                &TokenKey::new(b"a-test-key-of-enough-length"),
                Some(&signer),
                true,
            )
            .unwrap()
            .formatted();
        let record = dkim_fixture(record);
        dkimpy_verify(&raw, &record).unwrap_or_else(|e| panic!("{key}: dkimpy: {e}"));
        mail_auth_verify(&raw, &record).unwrap_or_else(|e| panic!("{key}: mail-auth: {e}"));
        let forged = with_header_added(&raw, "Subject: Your account is locked", false);
        assert!(dkimpy_verify(&forged, &record).is_err(), "{key}");
    }
}

#[test]
fn an_added_header_or_an_altered_content_type_fails_both_verifiers() {
    crate::require_checker!(crate::checkers::Checker::Dkim);
    for (key, extra, record, _) in ALGORITHMS {
        let record = dkim_fixture(record);
        let copy = sent_signed_copies(key, extra).remove(0).raw;
        let mut forged = Vec::new();
        for (line, what) in [
            ("Subject: You won a prize", "a second Subject"),
            ("From: Mallory <mallory@example.net>", "a second From"),
            ("To: eve@example.net", "a second To"),
            (
                "List-Unsubscribe: <https://evil.example.net/unsubscribe>",
                "a second List-Unsubscribe",
            ),
            (
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                "a second List-Unsubscribe-Post",
            ),
        ] {
            for at_top in [true, false] {
                let place = if at_top { "above" } else { "below" };
                forged.push((
                    with_header_added(&copy, line, at_top),
                    format!("{what} {place} the original"),
                ));
            }
        }
        forged.push((
            replace_once(&copy, "multipart/alternative", "multipart/mixed"),
            "Content-Type changed to multipart/mixed".into(),
        ));
        forged.push((
            without_header(&copy, "MIME-Version"),
            "MIME-Version removed".into(),
        ));
        assert!(
            dkimpy_verify(&copy, &record).is_ok(),
            "{key}: the untouched copy"
        );
        assert!(
            mail_auth_verify(&copy, &record).is_ok(),
            "{key}: the untouched copy"
        );
        for (raw, what) in forged {
            assert!(
                dkimpy_verify(&raw, &record).is_err(),
                "{key}: dkimpy accepts {what}"
            );
            assert!(
                mail_auth_verify(&raw, &record).is_err(),
                "{key}: mail-auth accepts {what}"
            );
        }
    }
}

#[test]
fn a_bad_key_stops_every_command_before_anything_happens() {
    let server = TestSmtp::start();
    for (key, extra, expected) in [
        (
            "ed25519.pem",
            "",
            "holds an Ed25519 key, but dkim.algorithm is rsa",
        ),
        ("garbage.pem", "", "not a usable private key"),
        ("rsa2048.txt", "", "not a usable private key"),
    ] {
        let site = site_with_dkim(key, extra);
        site.edit_config(|c| c.replace("port: 2525", &format!("port: {}", server.port())));
        site.cmd()
            .args(["subscribers", "add", "ada@example.com"])
            .assert()
            .success();
        for args in [
            vec!["send", "--at", AT, "--yes"],
            vec!["send", "--at", AT, "--dry-run"],
            vec!["preview", "--at", AT],
            vec!["lint", "--at", AT],
            vec!["dkim-record"],
            vec!["check"],
        ] {
            site.cmd()
                .args(&args)
                .assert()
                .code(1)
                .stderr(predicate::str::contains(expected))
                .stderr(predicate::str::contains("dkim.pem"));
        }
        site.cmd()
            .arg("issues")
            .assert()
            .stdout(predicate::str::contains("No issues yet."));
    }
    let site = site_with_dkim("rsa2048.pem", "");
    std::fs::remove_file(site.path().join("dkim.pem")).unwrap();
    site.cmd()
        .args(["lint", "--at", AT])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot read the DKIM key file"));
    assert!(server.received().is_empty());
}

// ---------------------------------------------------------------------------------------
// Lint: the bundled digest is clean

fn has(findings: &[Finding], rule: &str, severity: Severity) -> bool {
    findings
        .iter()
        .any(|f| f.rule == rule && f.severity == severity)
}

#[test]
fn bundled_digest_lints_clean_with_and_without_dkim() {
    let (config, digest) = bundled();
    assert_eq!(lint::check_issue(&config, &digest, None), vec![]);

    let mut with_dkim = config.clone();
    with_dkim.dkim = Some(dkim_config("rsa2048.pem", DkimAlgorithm::Rsa));
    let signer = DkimSigner::load(with_dkim.dkim.as_ref().unwrap()).unwrap();
    assert_eq!(
        lint::check_issue(&with_dkim, &digest, Some(&signer)),
        vec![]
    );

    let site = TempSite::with_bundled_content();
    site.cmd()
        .args(["lint", "--at", AT])
        .assert()
        .success()
        .stdout(predicate::str::contains("(5 comparisons)"))
        .stdout(predicate::str::contains("Lint: no findings."));
}

// ---------------------------------------------------------------------------------------
// Lint: content and config fixtures, through the command line

/// Runs `verdicts lint` for the test week; returns (exit code, stdout).
fn lint_site(site: &TempSite) -> (i32, String) {
    let out = site.cmd().args(["lint", "--at", AT]).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn site_with(name: &str, text: &str) -> TempSite {
    let site = TempSite::new();
    site.add_comparison(name, text);
    site
}

#[test]
fn each_content_fixture_trips_its_rule() {
    for (file, expected, code) in [
        ("lint/image-without-alt.md", "warning[image-alt]", 0),
        ("lint/long-subject.md", "warning[subject-length]", 0),
        ("lint/relative-link.md", "error[link-absolute]", 1),
        ("lint/http-link.md", "warning[link-https]", 0),
    ] {
        let site = site_with("c.md", &fixture(file));
        let (status, stdout) = lint_site(&site);
        assert!(stdout.contains(expected), "{file}: {stdout}");
        assert!(
            stdout.contains("  fix: "),
            "{file} says how to fix it: {stdout}"
        );
        assert_eq!(status, code, "{file}: {stdout}");
        assert!(
            stdout.contains("Lint: 1 "),
            "{file} trips only its rule: {stdout}"
        );
    }
}

/// The valid fixture with an editor's note of `paragraphs` paragraphs of about 1 KB.
fn comparison_with_note(paragraphs: usize) -> String {
    let para = "The panel ran both tools on the same fifty tasks for a week, and these are the notes that stood out. ".repeat(10);
    fixture("valid.md").replace(
        "A short *editor's note*.\n",
        &format!("{para}\n\n").repeat(paragraphs),
    )
}

#[test]
fn a_digest_near_gmails_clipping_limit_warns_and_one_over_it_is_an_error() {
    let site = site_with("c.md", &comparison_with_note(84));
    let (status, stdout) = lint_site(&site);
    assert!(stdout.contains("warning[html-size]"), "{stdout}");
    assert_eq!(status, 0);

    let site = site_with("c.md", &comparison_with_note(100));
    let (status, stdout) = lint_site(&site);
    assert!(stdout.contains("error[html-size]"), "{stdout}");
    assert!(
        stdout.contains("over Gmail's 102.0 KB clipping limit"),
        "{stdout}"
    );
    assert_eq!(status, 1);
}

#[test]
fn an_http_base_url_breaks_one_click_unsubscribe() {
    let site = site_with("c.md", &fixture("valid.md"));
    site.edit_config(|c| c.replace("base_url: https://", "base_url: http://"));
    let (status, stdout) = lint_site(&site);
    assert_eq!(status, 1, "{stdout}");
    assert!(stdout.contains("error[unsubscribe-visible]"), "{stdout}");
    assert!(stdout.contains("error[one-click]"), "{stdout}");
    assert!(stdout.contains("warning[link-https]"), "{stdout}");
}

#[test]
fn a_dkim_domain_other_than_the_from_domain_is_an_error() {
    let site = site_with("c.md", &fixture("valid.md"));
    std::fs::copy(dkim_fixture("rsa2048.pem"), site.path().join("dkim.pem")).unwrap();
    site.edit_config(|c| {
        format!("{c}dkim:\n  domain: mailer.example.org\n  selector: s1\n  key_file: dkim.pem\n")
    });
    let (status, stdout) = lint_site(&site);
    assert_eq!(status, 1, "{stdout}");
    assert!(stdout.contains("error[dkim-alignment]"), "{stdout}");
    assert!(
        stdout.contains("set dkim.domain to example.com"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------
// Lint: rules whose failure no config or content can produce, fed a message that lacks it

fn sample_of(raw: &[u8], url: &str) -> Sample {
    Sample::parse(raw, url).unwrap()
}

/// Removes a header (with its folded continuation lines) from a raw message.
fn without_header(raw: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let mut skipping = false;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if !skipping {
                out.push(line);
            }
            continue;
        }
        skipping = line
            .split_once(':')
            .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name));
        if !skipping {
            out.push(line);
        }
    }
    format!("{}\r\n\r\n{body}", out.join("\r\n")).into_bytes()
}

#[test]
fn each_missing_required_header_is_an_error() {
    let (config, _) = bundled();
    let (raw, url) = signed_copy(None);
    assert!(lint::check_sample(&config, &sample_of(&raw, &url)).is_empty());
    for name in lint::REQUIRED_HEADERS {
        let findings = lint::check_sample(&config, &sample_of(&without_header(&raw, name), &url));
        assert!(
            findings
                .iter()
                .any(|f| f.rule == "headers" && f.is_error() && f.message.contains(name)),
            "{name}: {findings:?}"
        );
    }
}

#[test]
fn a_post_header_other_than_one_click_is_an_error() {
    let (config, _) = bundled();
    let (raw, url) = signed_copy(None);
    let raw = replace_once(&raw, "List-Unsubscribe=One-Click", "List-Unsubscribe=Yes");
    assert!(has(
        &lint::check_sample(&config, &sample_of(&raw, &url)),
        "one-click",
        Severity::Error
    ));
}

#[test]
fn a_message_missing_either_part_is_an_error() {
    let (config, digest) = bundled();
    let url = "https://verdicts.example.com/unsubscribe?token=1.x";
    let build = |part: lettre::message::SinglePart| {
        lettre::Message::builder()
            .from("V <verdicts@example.com>".parse().unwrap())
            .to("ada@example.com".parse().unwrap())
            .subject("A vs B")
            .singlepart(part)
            .unwrap()
            .formatted()
    };
    let html_only = build(lettre::message::SinglePart::html(digest.html_for(url)));
    let findings = lint::check_sample(&config, &sample_of(&html_only, url));
    assert!(has(&findings, "text-part", Severity::Error), "{findings:?}");
    assert!(!has(&findings, "html-part", Severity::Error));

    let text_only = build(lettre::message::SinglePart::plain(digest.text_for(url)));
    let findings = lint::check_sample(&config, &sample_of(&text_only, url));
    assert!(has(&findings, "html-part", Severity::Error), "{findings:?}");
    assert!(!has(&findings, "text-part", Severity::Error));
}

/// The bundled digest with its parts rewritten.
fn edited_digest(
    edit_html: impl Fn(&str) -> String,
    edit_text: impl Fn(&str) -> String,
    subject: Option<&str>,
) -> RenderedDigest {
    let (_, d) = bundled();
    RenderedDigest::from(StoredDigest {
        subject: subject.map_or_else(|| d.subject.clone(), str::to_owned),
        preheader: d.preheader.clone(),
        comparison_count: d.comparison_count,
        html_parts: d.html_parts().iter().map(|p| edit_html(p)).collect(),
        text_parts: d.text_parts().iter().map(|p| edit_text(p)).collect(),
    })
}

#[test]
fn a_link_missing_from_the_text_part_is_a_warning() {
    let (config, _) = bundled();
    let digest = edited_digest(
        |h| {
            h.replacen(
                "</body>",
                "<p><a href=\"https://verdicts.example.com/archive\">Archive</a></p></body>",
                1,
            )
        },
        str::to_owned,
        None,
    );
    let findings = lint::check_issue(&config, &digest, None);
    let f = findings
        .iter()
        .find(|f| f.rule == "text-links")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("https://verdicts.example.com/archive"));
}

#[test]
fn an_unsubscribe_link_without_visible_text_or_missing_from_text_is_an_error() {
    let (config, _) = bundled();
    let hidden = edited_digest(
        |h| h.replace(">Unsubscribe</a>", "></a>"),
        str::to_owned,
        None,
    );
    let findings = lint::check_issue(&config, &hidden, None);
    assert!(
        findings
            .iter()
            .any(|f| f.rule == "unsubscribe-visible" && f.message.contains("HTML")),
        "{findings:?}"
    );

    let (_, d) = bundled();
    let text_without = RenderedDigest::from(StoredDigest {
        subject: d.subject.clone(),
        preheader: d.preheader.clone(),
        comparison_count: d.comparison_count,
        html_parts: d.html_parts().to_vec(),
        text_parts: vec![d.text_for("(see the website)")],
    });
    let findings = lint::check_issue(&config, &text_without, None);
    assert!(
        findings
            .iter()
            .any(|f| f.rule == "unsubscribe-visible" && f.message.contains("text part")),
        "{findings:?}"
    );
}

#[test]
fn an_empty_subject_is_an_error() {
    let (config, _) = bundled();
    let digest = edited_digest(str::to_owned, str::to_owned, Some(""));
    assert!(has(
        &lint::check_issue(&config, &digest, None),
        "subject-length",
        Severity::Error
    ));
}

#[test]
fn a_signature_that_leaves_out_list_unsubscribe_is_an_error() {
    let (mut config, digest) = bundled();
    config.dkim = Some(dkim_config("ed25519.pem", DkimAlgorithm::Ed25519));

    // DKIM configured but the message left unsigned.
    let findings = lint::check_issue(&config, &digest, None);
    assert!(
        has(&findings, "dkim-signature", Severity::Error),
        "{findings:?}"
    );

    // Signed by a signer that covers only From, Subject, To and Date (lettre's default set).
    let signer = DkimSigner::load(config.dkim.as_ref().unwrap()).unwrap();
    let messages = IssueMessages::new(
        &config.newsletter,
        IssueNumber(1),
        slot(),
        &digest,
        TokenKey::new(b"a-test-key-of-enough-length"),
    );
    let url = messages.unsubscribe_url(&reader());
    let unsigned = String::from_utf8(messages.build(&reader()).unwrap().formatted()).unwrap();
    let narrow = signer.sign_raw(&unsigned, "From:Subject:To:Date");
    let findings = lint::check_sample(&config, &sample_of(narrow.as_bytes(), &url));
    let f = findings
        .iter()
        .find(|f| f.rule == "dkim-signature")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert!(f.is_error());
    assert!(
        f.message
            .contains("List-Unsubscribe, List-Unsubscribe-Post"),
        "{}",
        f.message
    );
}

// ---------------------------------------------------------------------------------------
// Lint gates preview and send

#[test]
fn send_refuses_a_warning_without_force_and_an_error_even_with_it() {
    let server = TestSmtp::start();
    let site = site_with("c.md", &fixture("lint/image-without-alt.md"));
    site.edit_config(|c| c.replace("port: 2525", &format!("port: {}", server.port())));
    site.cmd()
        .args(["subscribers", "add", "ada@example.com"])
        .assert()
        .success();

    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("warning[image-alt]"))
        .stderr(predicate::str::contains("pass --force to send anyway"));
    site.cmd()
        .arg("issues")
        .assert()
        .stdout(predicate::str::contains("No issues yet."));
    assert!(server.received().is_empty());

    site.cmd()
        .args(["send", "--at", AT, "--yes", "--force"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    assert_eq!(server.received().len(), 1);

    let server = TestSmtp::start();
    let site = site_with("c.md", &fixture("lint/relative-link.md"));
    site.edit_config(|c| c.replace("port: 2525", &format!("port: {}", server.port())));
    site.cmd()
        .args(["subscribers", "add", "ada@example.com"])
        .assert()
        .success();
    site.cmd()
        .args(["send", "--at", AT, "--yes", "--force"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("error[link-absolute]"))
        .stderr(predicate::str::contains("never errors"));
    assert!(server.received().is_empty());
}

#[test]
fn preview_writes_the_files_then_fails_when_send_would_refuse() {
    let site = site_with("c.md", &fixture("lint/long-subject.md"));
    let out = site.path().join("out");
    site.cmd()
        .args(["preview", "--at", AT, "--out"])
        .arg(&out)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("warning[subject-length]"))
        .stderr(predicate::str::contains(
            "would refuse this issue without --force",
        ));
    assert!(out.join("digest.eml").exists());
    site.cmd()
        .args(["preview", "--force", "--at", AT, "--out"])
        .arg(&out)
        .assert()
        .success();

    let site = site_with("c.md", &fixture("lint/relative-link.md"));
    site.cmd()
        .args(["preview", "--force", "--at", AT, "--out"])
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "`verdicts send` would refuse this issue: 1 error",
        ));
}
