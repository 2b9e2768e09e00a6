//! The external checkers some tests hand their output to: verifiers independent of the code
//! under test. Each is detected once. Present, its tests run; absent, each of its tests is
//! skipped with one line on the terminal (past libtest's output capture) and recorded, and
//! `tests/summary.rs`, which cargo runs after this binary, names what was skipped and the
//! command that installs it. With `VERDICTS_TEST_REQUIRE_ALL=1` (set by `.ci/run`) a
//! missing checker fails its tests instead, so CI runs everything.
//!
//! `VERDICTS_TEST_HIDE=dkimpy,feedparser,…` hides checkers that are installed, to see the
//! suite as a machine without them would.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where skipped tests are recorded for the summary: `checker<TAB>test` lines, started
/// afresh by each run of the test binary.
pub const SKIP_LOG: &str = "skipped-tests.txt";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Checker {
    /// dkimpy with PyNaCl (Ed25519 signatures): verifies DKIM signatures.
    Dkim,
    /// Python's feedparser: parses the Atom feeds.
    Feedparser,
    /// Chromium driven by node (puppeteer-core) with axe-core: renders pages and checks
    /// accessibility.
    Browser,
    /// Dovecot: a real IMAP server for the inbound poller.
    Dovecot,
    /// The openssl command: signs SHA1withRSA (SNS SignatureVersion 1), which aws-lc-rs
    /// does not sign.
    Openssl,
    /// Schemathesis: a property-based tester driving the API from its OpenAPI document.
    Schemathesis,
}

pub const ALL: [Checker; 6] = [
    Checker::Dkim,
    Checker::Feedparser,
    Checker::Browser,
    Checker::Dovecot,
    Checker::Openssl,
    Checker::Schemathesis,
];

impl Checker {
    /// The name used in skip lines, the summary and `VERDICTS_TEST_HIDE`.
    pub fn name(self) -> &'static str {
        match self {
            Checker::Dkim => "dkimpy",
            Checker::Feedparser => "feedparser",
            Checker::Browser => "browser",
            Checker::Dovecot => "dovecot",
            Checker::Openssl => "openssl",
            Checker::Schemathesis => "schemathesis",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Checker::Dkim => "Python's dkimpy and PyNaCl (DKIM signatures, RSA and Ed25519)",
            Checker::Feedparser => "Python's feedparser (the Atom feeds)",
            Checker::Browser => {
                "Chromium, node and tests/a11y's npm packages (rendering and accessibility)"
            }
            Checker::Dovecot => "Dovecot's IMAP server (the inbound mailbox poller)",
            Checker::Openssl => "the openssl command (SNS signatures of SignatureVersion 1)",
            Checker::Schemathesis => "Python's schemathesis (the API against its OpenAPI document)",
        }
    }

    /// The one command that installs it (README.md, "Running the tests", says more).
    pub fn install(self) -> &'static str {
        match self {
            Checker::Dkim | Checker::Feedparser | Checker::Schemathesis => {
                "python3 -m venv tests/.venv && tests/.venv/bin/pip install -r tests/requirements.txt"
            }
            Checker::Browser => {
                "sudo apt-get install chromium nodejs npm && (cd tests/a11y && npm ci)"
            }
            Checker::Dovecot => "sudo apt-get install dovecot-imapd openssl",
            Checker::Openssl => "sudo apt-get install openssl",
        }
    }

    /// Why it is not usable here, or `None` when it is.
    fn probe(self) -> Option<String> {
        match self {
            Checker::Dkim => python_imports(&["dkim", "nacl"]),
            Checker::Feedparser => python_imports(&["feedparser"]),
            Checker::Schemathesis => python_imports(&["schemathesis"]),
            Checker::Browser => {
                let mut missing = Vec::new();
                if !chromium().exists() {
                    missing.push(format!("{} is not installed", chromium().display()));
                }
                if Command::new("node").arg("--version").output().is_err() {
                    missing.push("node is not installed".to_owned());
                }
                let modules = Path::new(crate::common::REPO).join("tests/a11y/node_modules");
                for module in ["axe-core", "puppeteer-core"] {
                    if !modules.join(module).exists() {
                        missing.push(format!("tests/a11y has no {module} (npm ci)"));
                    }
                }
                (!missing.is_empty()).then(|| missing.join(", "))
            }
            Checker::Dovecot => {
                let mut missing = Vec::new();
                if !Path::new(DOVECOT).exists() {
                    missing.push(format!("{DOVECOT} is not installed"));
                }
                if Command::new("openssl").arg("version").output().is_err() {
                    missing.push("openssl is not installed".to_owned());
                }
                (!missing.is_empty()).then(|| missing.join(", "))
            }
            Checker::Openssl => Command::new("openssl")
                .arg("version")
                .output()
                .is_err()
                .then(|| "openssl is not installed".to_owned()),
        }
    }
}

pub const DOVECOT: &str = "/usr/sbin/dovecot";

/// The browser the checks drive: `$CHROMIUM`, else Debian's.
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// The Python that runs the checkers: `$VERDICTS_TEST_PYTHON`, else the virtual
/// environment `tests/.venv` when it exists (the README's no-root recipe), else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("VERDICTS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(crate::common::REPO).join("tests/.venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn python_imports(modules: &[&str]) -> Option<String> {
    let mut missing = Vec::new();
    for module in modules {
        match Command::new(python())
            .args(["-c", &format!("import {module}")])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(_) => missing.push(format!("{} cannot import {module}", python().display())),
            Err(e) => return Some(format!("cannot run {}: {e}", python().display())),
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Which checkers are hidden by `VERDICTS_TEST_HIDE`.
fn hidden_by_env() -> Vec<Checker> {
    let hide = std::env::var("VERDICTS_TEST_HIDE").unwrap_or_default();
    ALL.into_iter()
        .filter(|c| hide.split(',').any(|h| h.trim() == c.name()))
        .collect()
}

/// Each checker and why it is missing (`None`: present), with `hidden` ones reported as
/// missing whatever is installed.
pub fn detect(hidden: &[Checker]) -> Vec<(Checker, Option<String>)> {
    ALL.into_iter()
        .map(|c| {
            let why = if hidden.contains(&c) {
                Some("hidden by VERDICTS_TEST_HIDE".to_owned())
            } else {
                c.probe()
            };
            (c, why)
        })
        .collect()
}

/// Detection for this run, once.
pub fn detected() -> &'static [(Checker, Option<String>)] {
    static DETECTED: OnceLock<Vec<(Checker, Option<String>)>> = OnceLock::new();
    DETECTED.get_or_init(|| detect(&hidden_by_env()))
}

/// True when every checker must be present (CI).
pub fn require_all() -> bool {
    std::env::var("VERDICTS_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// The skip record of this run, emptied at its first use.
fn skip_log() -> &'static std::sync::Mutex<Option<std::fs::File>> {
    static LOG: OnceLock<std::sync::Mutex<Option<std::fs::File>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(SKIP_LOG);
        std::sync::Mutex::new(std::fs::File::create(path).ok())
    })
}

/// Whether `test` can run: true when `checker` is present. When it is not, the test is
/// recorded as skipped and one line says so, or under `VERDICTS_TEST_REQUIRE_ALL=1` the
/// test fails.
pub fn available(checker: Checker, module: &str) -> bool {
    let _ = skip_log();
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name,
        _ => module,
    };
    let Some(why) = detected()
        .iter()
        .find(|(c, _)| *c == checker)
        .and_then(|(_, why)| why.clone())
    else {
        return true;
    };
    if require_all() {
        panic!(
            "{test} needs {} ({why}); VERDICTS_TEST_REQUIRE_ALL=1 makes that a failure. Install: {}",
            checker.what(),
            checker.install()
        );
    }
    // Written to the terminal directly: libtest captures println!/eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs {} ({why})",
        checker.name()
    );
    if let Some(file) = skip_log().lock().unwrap().as_mut() {
        let _ = writeln!(file, "{}\t{test}", checker.name());
    }
    false
}

/// Skips the rest of the test (returns) unless the checker is present.
#[macro_export]
macro_rules! require_checker {
    ($checker:expr) => {
        if !$crate::checkers::available($checker, module_path!()) {
            return;
        }
    };
    ($checker:expr, $ret:expr) => {
        if !$crate::checkers::available($checker, module_path!()) {
            return $ret;
        }
    };
}

/// The end-of-run summary for the missing checkers and the tests skipped for each (`skips`
/// holds `(checker name, test)`); `None` when nothing is missing.
pub fn summary(
    detected: &[(Checker, Option<String>)],
    skips: &[(String, String)],
) -> Option<String> {
    let missing: Vec<&(Checker, Option<String>)> =
        detected.iter().filter(|(_, why)| why.is_some()).collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = String::from("External checkers missing, so their tests were skipped:\n");
    for (checker, why) in missing {
        let tests: Vec<&str> = skips
            .iter()
            .filter(|(c, _)| c == checker.name())
            .map(|(_, t)| t.as_str())
            .collect();
        out.push_str(&format!(
            "  {}: {} ({})\n    skipped: {}\n    install: {}\n",
            checker.name(),
            checker.what(),
            why.as_deref().unwrap_or_default(),
            if tests.is_empty() {
                "its tests (none ran in this run)".to_owned()
            } else {
                format!(
                    "{} test{}: {}",
                    tests.len(),
                    if tests.len() == 1 { "" } else { "s" },
                    tests.join(", ")
                )
            },
            checker.install()
        ));
    }
    out.push_str("README.md (Running the tests) has the whole recipe; VERDICTS_TEST_REQUIRE_ALL=1 turns these skips into failures.\n");
    Some(out)
}

#[test]
fn each_hidden_checker_is_named_in_the_summary_with_its_install_command() {
    for hidden in ALL {
        let found = detect(&[hidden]);
        let (_, why) = found.iter().find(|(c, _)| *c == hidden).unwrap();
        assert_eq!(why.as_deref(), Some("hidden by VERDICTS_TEST_HIDE"));
        let skips = vec![(hidden.name().to_owned(), "it::some::test".to_owned())];
        let text = summary(&found, &skips).expect("a summary when a checker is missing");
        assert!(text.contains(&format!("  {}: ", hidden.name())), "{text}");
        assert!(text.contains(hidden.install()), "{text}");
        assert!(text.contains("1 test: it::some::test"), "{text}");
        // The checkers that are installed here are not named.
        for (other, why) in &found {
            if why.is_none() {
                assert!(!text.contains(&format!("  {}: ", other.name())), "{text}");
            }
        }
    }
    // Nothing hidden and everything installed: no summary at all.
    let all_present: Vec<(Checker, Option<String>)> = ALL.into_iter().map(|c| (c, None)).collect();
    assert_eq!(summary(&all_present, &[]), None);
}
