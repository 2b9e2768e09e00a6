//! Helpers shared by the integration tests: temporary newsletters with their own config,
//! content and state folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A throwaway newsletter folder: `config.yaml`, `content/comparisons/`, `state/`.
pub struct TempSite {
    pub dir: tempfile::TempDir,
}

impl TempSite {
    /// A site whose content is the given files (name, text) and whose config uses `smtp_port`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("content/comparisons")).unwrap();
        let site = TempSite { dir };
        site.write_config(2525, "");
        site
    }

    /// A site holding the bundled comparisons.
    pub fn with_bundled_content() -> Self {
        let site = Self::new();
        let src = Path::new(REPO).join("content/comparisons");
        for entry in std::fs::read_dir(src).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, site.comparisons().join(p.file_name().unwrap())).unwrap();
        }
        site
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.yaml")
    }

    pub fn comparisons(&self) -> PathBuf {
        self.path().join("content/comparisons")
    }

    pub fn add_comparison(&self, name: &str, text: &str) {
        std::fs::write(self.comparisons().join(name), text).unwrap();
    }

    /// Writes the config with the given SMTP port and extra YAML appended to `smtp:`.
    pub fn write_config(&self, smtp_port: u16, smtp_extra: &str) {
        std::fs::write(self.config_path(), config_yaml(smtp_port, smtp_extra)).unwrap();
    }

    /// Rewrites the config file through `edit` (e.g. to change a `newsletter:` field or
    /// append a `dkim:` section).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        std::fs::write(self.config_path(), edit(text)).unwrap();
    }

    /// The `verdicts` binary, run against this site's config.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("verdicts").unwrap();
        cmd.current_dir(self.path())
            .env("VERDICTS_CONFIG", self.config_path())
            .env("VERDICTS_SECRET", TEST_SECRET)
            .env_remove("RUST_LOG");
        cmd
    }
}

impl TempSite {
    /// Starts `verdicts ARG` (a daemon: `run` or `serve`) against this site, output discarded.
    pub fn spawn(&self, arg: &str) -> Child {
        Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
            .arg(arg)
            .current_dir(self.path())
            .env("VERDICTS_CONFIG", self.config_path())
            .env("VERDICTS_SECRET", TEST_SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// An HTTP client that returns error statuses instead of failing on them.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Waits (up to 30 s) until the web endpoint on `port` answers.
pub fn wait_for_http(port: u16) {
    let started = Instant::now();
    while http()
        .get(&format!("http://127.0.0.1:{port}/healthz"))
        .call()
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "endpoint never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub const TEST_SECRET: &str = "test-secret-0123456789abcdef";

pub fn config_yaml(smtp_port: u16, smtp_extra: &str) -> String {
    format!(
        r#"newsletter:
  name: Weekly AI Tool Verdicts
  from: "Weekly AI Tool Verdicts <verdicts@example.com>"
  base_url: https://verdicts.example.com
  postal_address: "1 Example Street, London"
content_dir: content
state_dir: state
schedule:
  cron: "0 0 9 * * Mon"
  timezone: Europe/London
smtp:
  host: 127.0.0.1
  port: {smtp_port}
  tls: none
{smtp_extra}
web:
  listen: 127.0.0.1:8080
secret_env: VERDICTS_SECRET
"#
    )
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join("tests/fixtures").join(name)).unwrap()
}
