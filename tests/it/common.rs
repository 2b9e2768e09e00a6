//! Helpers shared by the integration tests: temporary newsletters with their own config,
//! content and state folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The bundled config and content as shipped (`config/newsletter.yaml`, `content/`). The
/// tests read this pristine copy, never the live files an operator edits; `.ci/run`
/// checks that the two agree.
pub const BUNDLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundled");

/// The pristine bundled config file (see [`BUNDLED`]).
pub fn bundled_config() -> PathBuf {
    Path::new(BUNDLED).join("config/newsletter.yaml")
}

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
        let src = Path::new(BUNDLED).join("content/comparisons");
        for entry in std::fs::read_dir(src).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, site.comparisons().join(p.file_name().unwrap())).unwrap();
        }
        site
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The site's state database.
    pub fn db_path(&self) -> PathBuf {
        self.path().join("state/verdicts.db")
    }

    /// A connection to the site's state database, for looking at what a command did.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db_path()).unwrap()
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

    /// Writes a config built with [`TestConfig`].
    pub fn configure(&self, config: &TestConfig) {
        std::fs::write(self.config_path(), config.to_yaml()).unwrap();
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

/// A test newsletter's config, built field by field: the defaults are the bundled config's
/// shape with SMTP on port 2525 and the web endpoint on any free port.
#[derive(Debug, Clone)]
pub struct TestConfig {
    smtp_port: u16,
    web_listen: String,
    cron: String,
    timezone: String,
    base_url: String,
    smtp: Vec<(String, String)>,
    schedule: Vec<(String, String)>,
    sections: Vec<String>,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            smtp_port: 2525,
            web_listen: "127.0.0.1:0".into(),
            cron: "0 0 9 * * Mon".into(),
            timezone: "Europe/London".into(),
            base_url: "https://verdicts.example.com".into(),
            smtp: Vec::new(),
            schedule: Vec::new(),
            sections: Vec::new(),
        }
    }
}

impl TestConfig {
    pub fn smtp_port(mut self, port: u16) -> Self {
        self.smtp_port = port;
        self
    }

    /// Sets `smtp.<key>` (concurrency, retry_base, max_attempts, timeout, …).
    pub fn smtp(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.smtp.push((key.into(), value.to_string()));
        self
    }

    /// A fixed endpoint address instead of any free port.
    pub fn web_listen(mut self, listen: &str) -> Self {
        self.web_listen = listen.into();
        self
    }

    pub fn schedule(mut self, cron: &str, timezone: &str) -> Self {
        self.cron = cron.into();
        self.timezone = timezone.into();
        self
    }

    /// Sets `schedule.<key>` (catch_up, on_empty).
    pub fn schedule_key(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.schedule.push((key.into(), value.to_string()));
        self
    }

    pub fn base_url(mut self, url: &str) -> Self {
        self.base_url = url.into();
        self
    }

    /// A whole top-level section in YAML (`dkim:`, …), for features with their own block.
    pub fn section(mut self, yaml: &str) -> Self {
        self.sections.push(yaml.trim_end().to_owned());
        self
    }

    pub fn to_yaml(&self) -> String {
        let lines = |pairs: &[(String, String)]| -> String {
            pairs
                .iter()
                .map(|(k, v)| format!("  {k}: {}\n", quote(v)))
                .collect()
        };
        let mut yaml = format!(
            r#"newsletter:
  name: Weekly AI Tool Verdicts
  from: "Weekly AI Tool Verdicts <verdicts@example.com>"
  base_url: {base_url}
  postal_address: "1 Example Street, London"
content_dir: content
state_dir: state
schedule:
  cron: "{cron}"
  timezone: {timezone}
{schedule}smtp:
  host: 127.0.0.1
  port: {port}
  tls: none
{smtp}web:
  listen: {web}
secret_env: VERDICTS_SECRET
"#,
            base_url = self.base_url,
            cron = self.cron,
            timezone = self.timezone,
            schedule = lines(&self.schedule),
            port = self.smtp_port,
            smtp = lines(&self.smtp),
            web = self.web_listen,
        );
        for section in &self.sections {
            yaml.push_str(section);
            yaml.push('\n');
        }
        yaml
    }
}

/// A YAML scalar: quoted when it would not read back as the same plain string.
fn quote(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
    {
        v.to_owned()
    } else {
        format!("{v:?}")
    }
}

/// The test config with SMTP on `smtp_port` and extra `smtp:` lines (`"  key: value"`), for
/// tests that write their config in one go.
pub fn config_yaml(smtp_port: u16, smtp_extra: &str) -> String {
    let mut config = TestConfig::default()
        .smtp_port(smtp_port)
        .web_listen("127.0.0.1:8080");
    for line in smtp_extra.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.trim().split_once(':').expect("`key: value`");
        config = config.smtp(key.trim(), value.trim());
    }
    config.to_yaml()
}

/// Adds `n` active subscribers (reader{i}@example.com, "Reader {i}") with one import.
pub fn seed_subscribers(site: &TempSite, n: usize) {
    let mut csv = String::from("email,name,status\n");
    for i in 0..n {
        csv.push_str(&format!("reader{i}@example.com,Reader {i},active\n"));
    }
    let file = site.path().join("seed-subscribers.csv");
    std::fs::write(&file, csv).unwrap();
    site.cmd()
        .args(["subscribers", "import"])
        .arg(&file)
        .assert()
        .success();
}

/// A long-running `verdicts` process (`run`, `serve`), its stderr collected as it comes so
/// a test can wait for a log line, e.g. the endpoint's bound port.
pub struct Process {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    pub fn start(site: &TempSite, args: &[&str]) -> Process {
        Self::start_with_env(site, args, &[])
    }

    /// The CPU priority (nice) of each of the process's threads, from `/proc`.
    pub fn thread_nice_values(&self) -> Vec<i32> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&tasks)
            .unwrap_or_else(|e| panic!("{tasks}: {e}"))
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .map(|stat| nice_of(&stat))
            .collect()
    }

    /// The same, with extra environment variables (secrets named in the config).
    pub fn start_with_env(site: &TempSite, args: &[&str], env: &[(&str, &str)]) -> Process {
        use std::io::BufRead;
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("verdicts"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(site.path())
            .env("VERDICTS_CONFIG", site.config_path())
            .env("VERDICTS_SECRET", TEST_SECRET)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Process {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&mut self, needle: &str, limit: std::time::Duration) -> String {
        let started = std::time::Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "exited ({status}) before logging `{needle}`:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < limit,
                "no `{needle}` in the log within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The port the web endpoint bound (`web.listen: 127.0.0.1:0` picks a free one, so no
    /// two tests can race for a port).
    pub fn web_port(&mut self) -> u16 {
        let line = self.wait_for_log("web endpoint listening", std::time::Duration::from_secs(30));
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no addr= in `{line}`"));
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// SIGKILL, and wait for it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit; returns its exit code and everything it logged.
    pub fn wait_exit(mut self, limit: std::time::Duration) -> (Option<i32>, String) {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return (status.code(), self.log());
            }
            if started.elapsed() > limit {
                self.child.kill().unwrap();
                panic!("process did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join("tests/fixtures").join(name)).unwrap()
}

/// A delivery's stored state (an integer since migration 15) by name, for assertions.
pub fn state_at(row: &rusqlite::Row, i: usize) -> rusqlite::Result<String> {
    Ok(verdicts::store::ledger::state_name(row.get(i)?).to_owned())
}

/// The stored code of a delivery state named as the ledger names it.
pub fn state_code(name: &str) -> i64 {
    verdicts::store::ledger::STATE_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no delivery state {name}")) as i64
}

/// The nice value in a `/proc/.../stat` line: after the command name in parentheses, state
/// is field 3 and nice field 19.
fn nice_of(stat: &str) -> i32 {
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[16].parse().unwrap()
}

/// This test process's own CPU priority (nice).
pub fn own_nice() -> i32 {
    nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap())
}
