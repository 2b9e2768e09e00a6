//! The traps of an operator's first day (issue 18): which slot each command means without
//! `--at`, a closed pipe, a changed secret, standard cron weekday numbers, the dry run's
//! folder, causes printed once, a missing config, interrupted issues, a local base_url.

use std::io::Read;
use std::process::Stdio;

use predicates::prelude::*;

use crate::common::{seed_subscribers, TempSite, TestConfig, TEST_SECRET};
use crate::smtp::TestSmtp;

/// Wednesday after the bundled week's slot (Monday 23 November 2026 09:00 London).
const WEDNESDAY: &str = "2026-11-25T12:00:00Z";
const NOV_23: &str = "Monday 23 November 2026 09:00 GMT (2026-11-23T09:00:00Z)";
const NOV_30: &str = "Monday 30 November 2026 09:00 GMT (2026-11-30T09:00:00Z)";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The "Next issue:" line a command printed.
fn next_issue_line(output: &std::process::Output) -> String {
    stdout(output)
        .lines()
        .find(|l| l.starts_with("Next issue: "))
        .unwrap_or_else(|| {
            panic!(
                "no `Next issue:` line in\n{}\n{}",
                stdout(output),
                stderr(output)
            )
        })
        .to_owned()
}

#[test]
fn every_command_chooses_the_same_slot_on_a_fixed_clock() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().smtp_port(server.port()));
    seed_subscribers(&site, 2);
    let run = |args: &[&str]| {
        site.cmd()
            .env("VERDICTS_NOW", WEDNESDAY)
            .args(args)
            .output()
            .unwrap()
    };
    // Before any send: the latest slot, whose issue has not gone out, for every command.
    let commands: [&[&str]; 5] = [
        &["preview", "--out", "p"],
        &["lint"],
        &["send", "--dry-run", "--out", "d"],
        &["send", "--test", "editor@example.com"],
        &["send", "--yes"],
    ];
    for args in commands {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let line = next_issue_line(&out);
        assert!(
            line.contains(NOV_23) && line.contains("the latest slot"),
            "{args:?}: {line}"
        );
    }
    // That last one sent it: the one test copy, then the two subscribers.
    assert_eq!(server.received().len(), 3);

    // Now every command means the next slot, and `send` waits for it.
    let expected = "issue 1 for the latest slot, Monday 23 November 2026";
    for args in commands {
        let out = run(args);
        let line = next_issue_line(&out);
        assert!(
            line.contains(NOV_30) && line.contains(expected),
            "{args:?}: {line}"
        );
    }
    let out = run(&["send", "--yes"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("Nothing to send until then"),
        "{}",
        stdout(&out)
    );
    // The week to come has no comparison yet: no test copy either.
    assert_eq!(server.received().len(), 3);
}

#[test]
fn a_slot_with_an_issue_shows_the_stored_issue() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().smtp_port(server.port()));
    seed_subscribers(&site, 1);
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .assert()
        .success();
    for args in [
        &["lint", "--at", "2026-11-23T09:00:00Z"][..],
        &["preview", "--at", "2026-11-23T09:00:00Z"],
        // `--at now` is the slot at or before now: the same one on this clock.
        &["preview", "--at", "now"],
    ] {
        let out = site
            .cmd()
            .env("VERDICTS_NOW", WEDNESDAY)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(!text.contains("has no new comparisons"), "{args:?}: {text}");
        assert!(!text.contains("instead"), "{args:?}: {text}");
        assert!(text.contains(NOV_23), "{args:?}: {text}");
        assert!(
            text.contains("(5 comparisons)") || text.contains("Comparisons: 5"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn help_texts_describe_the_same_default() {
    let site = TempSite::new();
    for args in [
        &["preview", "--help"][..],
        &["lint", "--help"],
        &["send", "--help"],
    ] {
        let out = site.cmd().args(args).output().unwrap();
        let help = stdout(&out)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            help.contains("[default: the next issue: the latest slot until its issue is sent, then the next slot]"),
            "{args:?}: {help}"
        );
        assert!(!help.contains("[default: now]"), "{args:?}");
    }
}

/// Runs a command whose standard output is a pipe already closed by its reader.
fn with_closed_stdout(site: &TempSite, args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
        .args(args)
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .env("VERDICTS_SECRET", TEST_SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `head -1` that has read its line: the read end closes before the command writes.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn a_closed_stdout_ends_quietly_with_exit_0() {
    let site = TempSite::with_bundled_content();
    seed_subscribers(&site, 3);
    for args in [
        &["preview", "--at", "2026-11-23T09:00:00Z"][..],
        &["check"],
        &["issues"],
        &["subscribers", "list"],
        &["subscribers", "count"],
        &["lint", "--at", "2026-11-23T09:00:00Z"],
        &["send", "--dry-run", "--at", "2026-11-23T09:00:00Z"],
    ] {
        let (code, err) = with_closed_stdout(&site, args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
fn a_changed_secret_is_refused_and_a_listed_previous_one_rotates() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().smtp_port(server.port()));
    seed_subscribers(&site, 1);
    let run = |secret: &str, old: Option<&str>, args: &[&str]| {
        let mut cmd = site.cmd();
        cmd.env("VERDICTS_SECRET", secret).args(args);
        match old {
            Some(old) => cmd.env("VERDICTS_SECRET_OLD", old),
            None => cmd.env_remove("VERDICTS_SECRET_OLD"),
        };
        cmd.output().unwrap()
    };
    let dry_run = ["send", "--dry-run", "--at", "2026-11-23T09:00:00Z"];
    // The first send records the secret's fingerprint.
    let sent = run(
        TEST_SECRET,
        None,
        &["send", "--at", "2026-11-23T09:00:00Z", "--yes"],
    );
    assert!(sent.status.success(), "{}", stderr(&sent));
    let new = "a-brand-new-secret-0123456789abcdef";
    let refused = run(new, None, &dry_run);
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(err.contains("VERDICTS_SECRET is not the secret"), "{err}");
    assert!(err.contains("previous_secret_envs"), "{err}");
    assert!(!err.contains(new) && !err.contains(TEST_SECRET), "{err}");
    let refused = run(
        new,
        None,
        &["send", "--at", "2026-11-23T09:00:00Z", "--yes"],
    );
    assert_eq!(refused.status.code(), Some(1));

    // A rotation: the old secret listed as a previous one; the next send records the new.
    site.edit_config(|c| format!("{c}previous_secret_envs: [VERDICTS_SECRET_OLD]\n"));
    assert!(run(new, Some(TEST_SECRET), &dry_run).status.success());
    let week2 = std::fs::read_to_string(
        site.comparisons()
            .join("gemini-2-5-flash-lite-vs-ml-intern.md"),
    )
    .unwrap()
    .replace("slug: gemini-2-5-flash-lite-vs-ml-intern", "slug: week-two")
    .replace(
        "published: 2026-11-18T09:15:00-05:00",
        "published: 2026-11-25T09:15:00-05:00",
    );
    site.add_comparison("week-two.md", &week2);
    let sent = run(
        new,
        Some(TEST_SECRET),
        &["send", "--force", "--at", "2026-11-30T09:00:00Z", "--yes"],
    );
    assert!(sent.status.success(), "{}{}", stdout(&sent), stderr(&sent));
    // From now on the new secret is the one; the old one alone is refused.
    site.edit_config(|c| c.replace("previous_secret_envs: [VERDICTS_SECRET_OLD]\n", ""));
    assert!(run(new, None, &dry_run).status.success());
    assert_eq!(run(TEST_SECRET, None, &dry_run).status.code(), Some(1));
}

#[test]
fn five_field_cron_uses_standard_weekday_numbers_and_check_shows_three_slots() {
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().schedule("0 9 * * 1", "UTC"));
    site.cmd()
        .env("VERDICTS_NOW", "2026-12-05T12:00:00Z")
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains("Next slots of `0 9 * * 1` (UTC):"))
        .stdout(predicate::str::contains(
            "  Monday 7 December 2026 09:00 UTC",
        ))
        .stdout(predicate::str::contains(
            "  Monday 14 December 2026 09:00 UTC",
        ))
        .stdout(predicate::str::contains(
            "  Monday 21 December 2026 09:00 UTC",
        ))
        .stdout(predicate::str::contains("Sunday").not());
    site.configure(&TestConfig::default().schedule("0 9 * * 0", "UTC"));
    site.cmd()
        .env("VERDICTS_NOW", "2026-12-05T12:00:00Z")
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "  Sunday 6 December 2026 09:00 UTC",
        ));
    // The six-field form counts weekdays from 1 = Sunday: a number there is refused.
    site.configure(&TestConfig::default().schedule("0 0 9 * * 1", "UTC"));
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("day names"));
}

#[test]
fn the_dry_run_replaces_its_previous_files_and_counts_in_words() {
    let site = TempSite::with_bundled_content();
    seed_subscribers(&site, 2);
    let dry = || {
        site.cmd()
            .args([
                "send",
                "--dry-run",
                "--at",
                "2026-11-23T09:00:00Z",
                "--out",
                "d",
            ])
            .output()
            .unwrap()
    };
    let first = dry();
    assert!(
        stdout(&first).contains("Wrote 2 messages"),
        "{}",
        stdout(&first)
    );
    site.cmd()
        .args(["subscribers", "remove", "reader1@example.com"])
        .assert()
        .success();
    let second = dry();
    let text = stdout(&second);
    assert!(text.contains("Wrote 1 message ("), "{text}");
    assert!(
        text.contains("Removed 2 messages from the previous dry run"),
        "{text}"
    );
    let files: Vec<_> = std::fs::read_dir(site.path().join("d")).unwrap().collect();
    assert_eq!(files.len(), 1);
    // A folder holding anything else is refused, and left alone.
    std::fs::write(site.path().join("d/notes.txt"), "mine").unwrap();
    let refused = dry();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("notes.txt"),
        "{}",
        stderr(&refused)
    );
    assert!(site.path().join("d/notes.txt").exists());
}

#[test]
fn a_missing_config_names_the_folder_and_the_ways_to_name_it() {
    let site = TempSite::new();
    let out = site
        .cmd()
        .env_remove("VERDICTS_CONFIG")
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let folder = site
        .path()
        .join("config")
        .canonicalize()
        .unwrap_or(site.path().join("config"));
    assert!(err.contains("config/newsletter.yaml"), "{err}");
    assert!(err.contains("looked in"), "{err}");
    assert!(
        err.contains(&*folder.to_string_lossy())
            || err.contains(&*site.path().join("config").to_string_lossy()),
        "{err}"
    );
    assert!(
        err.contains("--config") && err.contains("VERDICTS_CONFIG"),
        "{err}"
    );
    assert!(err.contains("relative to the current folder"), "{err}");
}

#[test]
fn each_cause_is_printed_once() {
    let site = TempSite::with_bundled_content();
    let out = site
        .cmd()
        .args(["subscribers", "import", "no-such-file.csv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    let out = site
        .cmd()
        .arg("--config")
        .arg(site.path().join("nowhere.yaml"))
        .arg("check")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.matches("os error").count() <= 1, "{err}");
}

#[test]
fn an_interrupted_issue_shows_as_interrupted_with_untried_counts() {
    let server = TestSmtp::start();
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().smtp_port(server.port()));
    seed_subscribers(&site, 4);
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .assert()
        .success();
    // What Ctrl-C leaves: the issue still `sending`, one delivery in flight, two never tried.
    site.db()
        .execute_batch(
            "UPDATE issues SET state = 'sending', completed_at = NULL;
             UPDATE deliveries SET state = 0, attempts = 0 WHERE subscriber_id IN (3, 4);
             UPDATE deliveries SET state = 2 WHERE subscriber_id = 2;",
        )
        .unwrap();
    site.cmd()
        .arg("issues")
        .assert()
        .success()
        .stdout(predicate::str::contains("interrupted"))
        .stdout(predicate::str::contains(" sending ").not());
    site.cmd()
        .args(["issues", "show", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("State:       interrupted"))
        .stdout(predicate::str::contains("2 pending (2 not yet tried)"));
    // Resuming reports the rest as sent, none of it as "retrying".
    let out = site
        .cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("retrying 0"), "{}", stdout(&out));
}

#[test]
fn a_loopback_base_url_is_a_local_trial_with_a_warning() {
    let site = TempSite::with_bundled_content();
    site.configure(&TestConfig::default().base_url("http://127.0.0.1:8080"));
    let out = site
        .cmd()
        .args(["preview", "--at", "2026-11-23T09:00:00Z"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("warning[local-base-url]"), "{text}");
    assert!(!text.contains("error["), "{text}");
    assert!(text.contains("Lint: 1 warning."), "{text}");
    seed_subscribers(&site, 1);
    site.cmd()
        .args([
            "send",
            "--dry-run",
            "--force",
            "--at",
            "2026-11-23T09:00:00Z",
        ])
        .assert()
        .success();
    let eml = std::fs::read_dir(site.path().join("out/dry-run"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let raw = std::fs::read_to_string(eml).unwrap();
    assert!(raw.contains("http://127.0.0.1:8080/unsubscribe"), "{raw}");
}
