//! Runs after the integration tests (cargo runs test targets in name order: `it`, then
//! this): names the external checkers that are missing, the tests skipped for each, and
//! the command that installs it. Under `VERDICTS_TEST_REQUIRE_ALL=1` a missing checker
//! fails the run. See tests/it/checkers.rs.

mod common {
    pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
}

#[path = "it/checkers.rs"]
#[allow(unused_macros)]
mod checkers;

use std::process::ExitCode;

fn main() -> ExitCode {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(checkers::SKIP_LOG);
    let skips: Vec<(String, String)> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(c, t)| (c.to_owned(), t.to_owned()))
        .collect();
    let detected = checkers::detected();
    match checkers::summary(detected, &skips) {
        None => {
            let names: Vec<&str> = checkers::ALL.iter().map(|c| c.name()).collect();
            println!(
                "External checkers: all present ({}); no test was skipped for want of one.",
                names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Some(text) => {
            println!("{text}");
            if checkers::require_all() {
                eprintln!("error: VERDICTS_TEST_REQUIRE_ALL=1 and checkers are missing (above)");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
