//! Inbound mail classification over a corpus of messages modelled on what real servers send.

use std::path::Path;

use serde::Deserialize;
use verdicts::inbound::{classify, Attribution, Context, Kind};
use verdicts::mail::verp::VerpKey;

const FIXTURE_SECRET: &[u8] = b"fixture-secret-not-for-production-0123";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    file: String,
    server: String,
    kind: String,
    status: Option<String>,
    attribution: Option<String>,
    reason: Option<String>,
}

fn describe(a: &Attribution) -> String {
    match a {
        Attribution::Delivery {
            issue,
            subscriber,
            by,
        } => format!("{by} {issue} {subscriber}"),
        Attribution::Addresses(list) => format!("addresses {}", list.join(",")),
        Attribution::Nothing => "none".into(),
    }
}

/// Where the classification of one fixture differs from the manifest.
fn mismatches(dir: &Path, e: &Expected, key: &VerpKey) -> Vec<String> {
    let raw = std::fs::read(dir.join(&e.file)).expect("fixture readable");
    let got = classify(
        &raw,
        Context {
            key: Some(key),
            envelope_recipient: None,
        },
    );
    let mut wrong = Vec::new();
    if got.kind.label() != e.kind {
        wrong.push(format!("kind {} (expected {})", got.kind.label(), e.kind));
    }
    if let Some(status) = &e.status {
        let statuses: Vec<_> = match &got.kind {
            Kind::Bounce(f) => f.iter().filter_map(|f| f.status.clone()).collect(),
            _ => vec![],
        };
        if !statuses.contains(status) {
            wrong.push(format!("status {statuses:?} (expected {status})"));
        }
    }
    if let Some(attribution) = &e.attribution {
        let got = describe(&got.hints.attribution());
        if &got != attribution {
            wrong.push(format!("attribution `{got}` (expected `{attribution}`)"));
        }
    }
    if let Some(reason) = &e.reason {
        match &got.kind {
            Kind::Ignored(why) if why.to_string().contains(reason.as_str()) => {}
            other => wrong.push(format!(
                "reason {other:?} (expected one containing `{reason}`)"
            )),
        }
    }
    wrong
}

#[test]
fn every_fixture_is_classified_as_its_manifest_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound");
    let manifest: Vec<Expected> = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("expected.yaml")).expect("manifest readable"),
    )
    .expect("manifest parses");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = manifest.iter().map(|e| e.file.clone()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every fixture is in the manifest, once");
    assert!(manifest.len() >= 15);

    let key = VerpKey::derive(FIXTURE_SECRET);
    let mut failures = Vec::new();
    for e in &manifest {
        let wrong = mismatches(&dir, e, &key);
        if !wrong.is_empty() {
            failures.push(format!("{} ({}): {}", e.file, e.server, wrong.join("; ")));
        }
    }
    let right = manifest.len() - failures.len();
    println!(
        "inbound classification accuracy: {right}/{} ({:.1}%)",
        manifest.len(),
        100.0 * right as f64 / manifest.len() as f64
    );
    assert!(
        failures.is_empty(),
        "misclassified:\n{}",
        failures.join("\n")
    );
}

#[test]
fn another_newsletters_secret_attributes_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound");
    let raw = std::fs::read(dir.join("mailto-unsubscribe.eml")).unwrap();
    let other = VerpKey::derive(b"some other newsletter's secret value");
    let got = classify(
        &raw,
        Context {
            key: Some(&other),
            envelope_recipient: None,
        },
    );
    assert_eq!(got.kind.label(), "ignored");
    assert_eq!(got.hints.attribution(), Attribution::Nothing);
}
