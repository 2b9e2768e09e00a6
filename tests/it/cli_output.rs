//! What the operator reads: the CLI output of `preview`, `issues` and `issues show`, held as
//! snapshots (insta) so a change to it is a reviewed change. Nothing volatile is printed by
//! these commands for a fixed `--at` and a scripted SMTP server, so no redaction is needed
//! beyond the temporary folder.

use std::time::Duration;

use crate::common::{seed_subscribers, TempSite, TestConfig};
use crate::smtp::{Behaviour, TestSmtp};

const AT: &str = "2026-11-23T09:00:00Z";

fn stdout(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.timeout(Duration::from_secs(120)).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn preview_output() {
    let site = TempSite::with_bundled_content();
    let out = stdout(site.cmd().args(["preview", "--at", AT]));
    insta::assert_snapshot!(out);
}

#[test]
fn issues_and_issues_show_after_a_send_with_failures() {
    let server = TestSmtp::start_with(
        Behaviour::default()
            .unknown("reader1@example.com")
            .temp_fail("reader2@example.com", 1),
    );
    let site = TempSite::with_bundled_content();
    site.configure(
        &TestConfig::default()
            .smtp_port(server.port())
            .smtp("retry_base", "50ms")
            .smtp("concurrency", 1),
    );
    seed_subscribers(&site, 4);
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    insta::assert_snapshot!("issues", stdout(site.cmd().arg("issues")));
    insta::assert_snapshot!(
        "issues_show",
        stdout(site.cmd().args(["issues", "show", "1"]))
    );
}
