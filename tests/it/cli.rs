//! `preview` and `check` run as an operator runs them.

use crate::common::{fixture, TempSite};
use predicates::prelude::*;

#[test]
fn preview_writes_the_three_files_for_the_bundled_week() {
    let site = TempSite::with_bundled_content();
    // Links as written, straight to the site (tracking.rs covers the tracked ones).
    site.edit_config(|c| c + "tracking:\n  clicks: off\n");
    let out = site.path().join("out");
    site.cmd()
        .args(["preview", "--at", "2026-11-23T09:00:00Z", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Subject:     Gemini 2.5 Flash Lite vs Meta Llama 4 Scout Fine-Tuning Toolkit + 4 more",
        ))
        .stdout(predicate::str::contains("Comparisons: 5"))
        .stdout(predicate::str::contains(
            "of Gmail's ~102 KB clipping limit",
        ));
    let html = std::fs::read_to_string(out.join("digest.html")).unwrap();
    let text = std::fs::read_to_string(out.join("digest.txt")).unwrap();
    let eml = std::fs::read(out.join("digest.eml")).unwrap();
    assert!(html.contains("Mistral 3 Small (22B)"));
    assert!(text.contains("SmolVLM 2.5"));
    assert!(html.contains("/unsubscribe?token=0."));
    // "View in browser" names the archive page the first issue will have, in every file.
    let eml_text = String::from_utf8_lossy(&eml);
    for (name, body) in [
        ("html", &html),
        ("text", &text),
        ("eml", &eml_text.to_string()),
    ] {
        assert!(
            body.contains("https://verdicts.example.com/issues/1/"),
            "{name}"
        );
        assert!(!body.contains("placeholder.invalid"), "{name}");
    }
    let parsed = mailparse::parse_mail(&eml).unwrap();
    assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
}

#[test]
fn preview_of_an_empty_week_falls_back_to_the_latest_week_with_content() {
    let site = TempSite::with_bundled_content();
    site.cmd()
        .args(["preview", "--at", "2027-02-01T12:00:00Z", "--out", "o"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "The issue for Monday 1 February 2027 09:00 GMT (2027-02-01T09:00:00Z) has no new comparisons",
        ))
        .stdout(predicate::str::contains(
            "Previewing the latest week that has content instead: the issue for Monday 23 November 2026",
        ))
        .stdout(predicate::str::contains("Comparisons: 5"));
    assert!(site.path().join("o/digest.html").exists());
}

#[test]
fn preview_at_a_midweek_moment_covers_the_previous_slot() {
    let site = TempSite::with_bundled_content();
    // Tuesday 17th: the slot at or before is Monday 16th 09:00, whose window is empty.
    site.cmd()
        .args(["preview", "--at", "2026-11-17T12:00:00Z", "--out", "o"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Monday 16 November 2026 09:00 GMT (2026-11-16T09:00:00Z) has no new comparisons",
        ));
}

#[test]
fn preview_rejects_a_bad_time() {
    let site = TempSite::with_bundled_content();
    site.cmd()
        .args(["preview", "--at", "next monday"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not an RFC 3339 time"));
}

#[test]
fn check_passes_on_bundled_content() {
    let site = TempSite::with_bundled_content();
    site.cmd()
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains("5 comparison files"));
}

#[test]
fn check_lists_every_broken_file_and_exits_1() {
    let site = TempSite::with_bundled_content();
    site.add_comparison("bad-date.md", &fixture("invalid/bad-date.md"));
    site.add_comparison("third-tool.md", &fixture("invalid/third-tool.md"));
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("2 problems in content files"))
        .stderr(predicate::str::contains("bad-date.md:4: field `published`"))
        .stderr(predicate::str::contains("third-tool.md"))
        .stderr(predicate::str::contains("exactly two tools"));
}

#[test]
fn preview_refuses_invalid_content() {
    let site = TempSite::with_bundled_content();
    site.add_comparison("unknown-field.md", &fixture("invalid/unknown-field.md"));
    site.cmd()
        .args(["preview", "--out", "o"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown field `rating`"));
    assert!(
        !site.path().join("o").exists(),
        "nothing written on invalid content"
    );
}

#[test]
fn bad_config_is_a_clear_error() {
    let site = TempSite::with_bundled_content();
    let cfg = std::fs::read_to_string(site.config_path()).unwrap();
    std::fs::write(
        site.config_path(),
        cfg.replace("timezone: Europe/London", "timezone: Mars/Olympus"),
    )
    .unwrap();
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("field `schedule.timezone`"))
        .stderr(predicate::str::contains("Mars/Olympus"));

    std::fs::write(site.config_path(), format!("{cfg}colour: blue\n")).unwrap();
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown field `colour`"));

    std::fs::write(
        site.config_path(),
        cfg.replace("cron: \"0 0 9 * * Mon\"", "cron: \"every monday\""),
    )
    .unwrap();
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("field `schedule.cron`"));

    // A send may lower its CPU priority, never raise it.
    std::fs::write(site.config_path(), format!("{cfg}nice: -5\n")).unwrap();
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("field `nice`"))
        .stderr(predicate::str::contains("-5 is out of range 0..=19"));
}

#[test]
fn missing_config_names_the_path() {
    let site = TempSite::with_bundled_content();
    site.cmd()
        .args(["--config", "nowhere.yaml", "check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "there is no config file nowhere.yaml",
        ));
}

#[test]
fn config_flag_overrides_the_environment() {
    let site = TempSite::with_bundled_content();
    let other = site.path().join("other.yaml");
    std::fs::copy(site.config_path(), &other).unwrap();
    site.cmd()
        .env("VERDICTS_CONFIG", "/nonexistent.yaml")
        .args(["--config"])
        .arg(&other)
        .arg("check")
        .assert()
        .success();
}
