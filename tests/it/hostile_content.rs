//! The content folder as a door: whoever can drop a file into `content/comparisons` (a
//! careless editor, a bad merge, a hostile pull request) must not be able to hang `check`,
//! exhaust memory, or get anything sent. Each case runs the real binary and asserts the
//! error names the file and the reason, that it comes back promptly, and that nothing was
//! sent or recorded.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::TempSite;
use predicates::prelude::*;

/// `verdicts check` must answer within this, whatever is in the folder.
const PROMPT: Duration = Duration::from_secs(20);

fn check_refuses(site: &TempSite, file: &str, reason: &str) {
    let started = Instant::now();
    site.cmd()
        .arg("check")
        .timeout(PROMPT)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(file))
        .stderr(predicate::str::contains(reason));
    assert!(started.elapsed() < PROMPT);
}

/// A send refused for the same file leaves no database, so nothing was recorded.
fn send_refuses(site: &TempSite, file: &str) {
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .timeout(PROMPT)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(file));
    assert!(!site.db_path().exists(), "a refused send created a ledger");
}

#[test]
fn a_fifo_named_like_a_comparison_is_refused_without_blocking() {
    let site = TempSite::with_bundled_content();
    let fifo = site.comparisons().join("trap.md");
    // mkfifo is in coreutils, on every machine that runs these tests.
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    check_refuses(&site, "trap.md", "not a regular file (a FIFO)");
    send_refuses(&site, "trap.md");
}

#[test]
fn a_link_to_dev_zero_is_refused_without_reading_it() {
    let site = TempSite::with_bundled_content();
    std::os::unix::fs::symlink("/dev/zero", site.comparisons().join("zero.md")).unwrap();
    check_refuses(&site, "zero.md", "not a regular file (a character device)");
    send_refuses(&site, "zero.md");
}

#[test]
fn an_oversized_file_is_refused_by_its_size() {
    let site = TempSite::with_bundled_content();
    // 200 MB of note, made sparse so the test costs no disk.
    let big = std::fs::File::create(site.comparisons().join("huge.md")).unwrap();
    big.set_len(200_000_000).unwrap();
    check_refuses(
        &site,
        "huge.md",
        "the file is 200.0 MB; a comparison file may be at most 1 MB",
    );
    send_refuses(&site, "huge.md");
}

#[test]
fn a_file_that_is_not_utf8_says_where() {
    let site = TempSite::with_bundled_content();
    std::fs::write(
        site.comparisons().join("latin1.md"),
        b"---\ntitle: Caf\xe9\n---\n",
    )
    .unwrap();
    check_refuses(
        &site,
        "latin1.md",
        "not UTF-8 text (invalid bytes at offset 14)",
    );
}

#[test]
fn a_folder_named_like_a_comparison_is_refused() {
    let site = TempSite::with_bundled_content();
    std::fs::create_dir(site.comparisons().join("drafts.md")).unwrap();
    check_refuses(&site, "drafts.md", "not a regular file (a folder)");
}
