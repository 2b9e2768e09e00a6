//! The rendered digest in a real browser (Debian's headless Chromium driven by the npm
//! tooling in tests/a11y/): axe-core finds no accessibility violation in light or dark
//! mode, and with every <style> element stripped, as some mail apps do, the issue still
//! fits a 375 px phone without sideways scrolling.
//!
//! Needs `chromium`, `node` and `npm ci` in tests/a11y: the `browser` checker of
//! tests/it/checkers.rs (skipped when missing, a failure under VERDICTS_TEST_REQUIRE_ALL=1).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, fixture};
use chrono::{DateTime, Utc};
use serde_json::Value;
use verdicts::config::Config;
use verdicts::content::{load_dir, parse_comparison};
use verdicts::digest::render::render_digest;

const PHONE: u64 = 375;

fn slot() -> DateTime<Utc> {
    "2026-11-23T09:00:00Z".parse().unwrap()
}

fn tooling_dir() -> PathBuf {
    Path::new(common::REPO).join("tests/a11y")
}

/// The browser, or `None` when the browser checker is missing (see tests/it/checkers.rs).
fn tooling() -> Option<PathBuf> {
    crate::checkers::available(crate::checkers::Checker::Browser, module_path!())
        .then(crate::checkers::chromium)
}

/// Runs tests/a11y/check.mjs on `files`; one report per file.
fn check(chromium: &Path, files: &[PathBuf]) -> Vec<Value> {
    let out = Command::new("node")
        .arg(tooling_dir().join("check.mjs"))
        .args(files)
        .env("CHROMIUM", chromium)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "check.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    report.as_array().expect("one report per file").clone()
}

fn violations(report: &Value, mode: &str) -> Vec<String> {
    report[mode]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let nodes: Vec<&str> = v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["target"].as_str().unwrap())
                .collect();
            format!("{} ({}): {}", v["id"], v["help"], nodes.join(", "))
        })
        .collect()
}

/// The bundled week (five comparisons, one split) and a single comparison with an
/// editor's note, as written to the HTML part.
fn digests(dir: &Path) -> Vec<PathBuf> {
    let config = Config::load(&common::bundled_config()).unwrap();
    let bundled = load_dir(&config.content_dir).unwrap();
    let refs: Vec<_> = bundled.iter().collect();
    let noted = parse_comparison(Path::new("valid.md"), &fixture("valid.md")).unwrap();
    let unsub = "https://verdicts.example.com/unsubscribe?token=1.abc";
    let mut files = Vec::new();
    for (name, items) in [("bundled.html", refs), ("noted.html", vec![&noted])] {
        let digest = render_digest(
            &config.newsletter,
            &items,
            slot(),
            chrono_tz::Europe::London,
        )
        .unwrap();
        let path = dir.join(name);
        std::fs::write(&path, digest.html_for(unsub)).unwrap();
        files.push(path);
    }
    files
}

#[test]
fn digest_passes_axe_and_fits_a_phone_without_style() {
    let Some(chromium) = tooling() else { return };
    let dir = tempfile::tempdir().unwrap();
    let files = digests(dir.path());
    let reports = check(&chromium, &files);
    assert_eq!(reports.len(), files.len());
    for report in &reports {
        let file = report["file"].as_str().unwrap();
        for mode in ["light", "dark"] {
            let found = violations(report, mode);
            assert!(
                found.is_empty(),
                "{file} in {mode} mode:\n{}",
                found.join("\n")
            );
        }
        let phone = &report["phone_without_style"];
        let width = phone["scrollWidth"].as_u64().unwrap();
        assert!(
            width <= PHONE,
            "{file} without <style> is {width} px wide on a {PHONE} px phone; too wide: {}",
            phone["wide"]
        );
    }
}

/// The checks can fail: a digest in the old fixed-width, heading-less style is caught.
#[test]
fn the_browser_checks_catch_a_fixed_width_layout_and_a_hidden_data_table() {
    let Some(chromium) = tooling() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Old</title></head>
<body><main>
<table role="presentation" width="600" style="width: 600px;"><tr><td>
<p style="font-size: 22px; font-weight: 700;">Weekly AI Tool Verdicts</p>
<p style="color: #c8ccd4;">Monday 23 November 2026</p>
<a href="https://verdicts.example.com/a"></a>
</td></tr></table>
</main></body></html>"#,
    )
    .unwrap();
    let reports = check(&chromium, &[bad]);
    let found = violations(&reports[0], "light").join("\n");
    for rule in ["page-has-heading-one", "color-contrast", "link-name"] {
        assert!(found.contains(rule), "{rule} not reported in:\n{found}");
    }
    assert!(
        reports[0]["phone_without_style"]["scrollWidth"]
            .as_u64()
            .unwrap()
            > PHONE
    );
}
