//! The documentation, run against the binary, so the pages cannot drift from it.
//!
//! What is checked in `README.md` and `docs/*.md` (docs/testing.md says the same for
//! writers of the pages):
//!
//! - Every `verdicts …` line of a `sh` block, and every `$ verdicts …` line of a `console`
//!   block, parses with the real command line (`verdicts::cli::Cli`). Placeholders are not
//!   allowed: the pages show real values (a file name, an issue number), so no line is
//!   exempt.
//! - The `verdicts` lines of each `sh` block run in order in a fresh copy of the bundled
//!   config and content (with its own `state/`), and each must exit 0. `run` and `serve`
//!   are daemons and are only parsed (tests/it/daemon.rs runs them).
//! - Each `console` block is a transcript. Its `$ verdicts …` commands run in order and what
//!   each prints (stdout and stderr, in the order they come) must equal the lines shown
//!   under it. In a shown line, `…` stands for any text: that is how a page marks what
//!   changes between runs (a time, a rate). A command whose shown output has no `error:`
//!   line must exit 0, one with such a line must fail; `$ echo $?` shows the exact status
//!   of the command before it.
//!   `$ export NAME=VALUE` sets a variable for the commands after it (a `$(…)` value becomes a
//!   fixed test value). Other shell commands are not run.
//! - `<!-- docs-test: NAME -->` on the line above a `console` block names the setup it needs
//!   (see [`Setup`]). The blocks of one page with the same name share one copy and run in
//!   page order; a block without a name gets a fresh copy of the bundled files.
//! - Relative links between pages, and their `#anchors` (GitHub's heading ids), resolve.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{fixture, REPO, TEST_SECRET};
use crate::smtp::{Behaviour, TestSmtp};
use clap::Parser;

/// The slot of the bundled content, used by the setups that send before a transcript.
const AT: &str = "2026-11-23T09:00:00Z";

/// Pages that other branches add; the README links to them before they exist here.
const PAGES_ADDED_ELSEWHERE: &[&str] = &[];

// ---------------------------------------------------------------------------------------
// Reading the pages

/// A fenced code block of a page.
#[derive(Debug, Clone)]
struct Block {
    /// The page, relative to the repository (`docs/commands.md`).
    page: String,
    /// 1-based line number of the opening fence.
    line: usize,
    /// The info string: `sh`, `console`, `yaml`…
    lang: String,
    /// The name given by a `<!-- docs-test: NAME -->` comment just above the fence.
    setup: Option<String>,
    /// The block's lines, without the fence's indentation, each with its page line number.
    lines: Vec<(usize, String)>,
}

impl Block {
    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.page)
    }
}

/// Every documentation page: README.md, then docs/*.md in name order.
fn pages() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(Path::new(REPO).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(Path::new(REPO).join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

fn setup_marker(line: &str) -> Option<String> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    Some(inner.strip_prefix("docs-test:")?.trim().to_string())
}

/// The fenced blocks of one page.
fn blocks(page: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Block)> = None;
    let mut previous_text_line = "";
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let indent = raw.len() - raw.trim_start().len();
        let trimmed = raw.trim();
        match open.take() {
            None => {
                if let Some(lang) = trimmed.strip_prefix("```") {
                    open = Some((
                        indent,
                        Block {
                            page: page.to_string(),
                            line: n,
                            lang: lang.trim().to_string(),
                            setup: setup_marker(previous_text_line),
                            lines: Vec::new(),
                        },
                    ));
                } else if !trimmed.is_empty() {
                    previous_text_line = raw;
                }
            }
            Some((fence_indent, mut block)) => {
                if trimmed == "```" {
                    out.push(block);
                    previous_text_line = "";
                } else {
                    let cut = indent.min(fence_indent);
                    block.lines.push((n, raw[cut..].to_string()));
                    open = Some((fence_indent, block));
                }
            }
        }
    }
    assert!(open.is_none(), "{page}: a code block is never closed");
    out
}

/// A command line of a page: where it is, and its words after `verdicts`.
#[derive(Debug, Clone)]
struct Shown {
    at: String,
    words: Vec<String>,
}

/// Every `verdicts` command line of the `sh` and `console` blocks.
fn shown_commands(blocks: &[Block]) -> Vec<Shown> {
    let mut out = Vec::new();
    for b in blocks {
        for (n, line) in &b.lines {
            let command = match b.lang.as_str() {
                "sh" => line.trim_start(),
                "console" => match line.strip_prefix("$ ") {
                    Some(c) => c,
                    None => continue,
                },
                _ => continue,
            };
            let words = shell_words(command).unwrap_or_else(|e| panic!("{}: {e}", b.at(*n)));
            if words.first().map(String::as_str) == Some("verdicts") {
                out.push(Shown {
                    at: b.at(*n),
                    words: words[1..].to_vec(),
                });
            }
        }
    }
    out
}

/// Splits a shell command line into words, as a POSIX shell would for the simple commands
/// the pages show: quotes, backslashes, and a `#` comment. It stops at the first operator
/// (`|`, `;`, `&`, `>`, `<`): what follows is another command or a redirection.
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' if word.is_none() => break,
            '|' | ';' | '&' | '>' | '<' => break,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed ' in `{line}`")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            w.push(chars.next().unwrap())
                        }
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed \" in `{line}`")),
                    }
                }
            }
            '\\' => {
                if let Some(c) = chars.next() {
                    word.get_or_insert_with(String::new).push(c);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

/// Parses each shown command with the binary's own clap definition; returns the failures.
fn parse_failures(shown: &[Shown]) -> Vec<String> {
    shown
        .iter()
        .filter_map(|s| {
            let argv = std::iter::once("verdicts".to_string()).chain(s.words.iter().cloned());
            match verdicts::cli::Cli::try_parse_from(argv) {
                Ok(_) => None,
                Err(e) => Some(format!(
                    "{}: `verdicts {}` does not parse:\n{}",
                    s.at,
                    s.words.join(" "),
                    e.render()
                )),
            }
        })
        .collect()
}

fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|(p, t)| blocks(p, t)).collect()
}

// ---------------------------------------------------------------------------------------
// A copy of the bundled newsletter to run commands in

/// The bundled `config/` and `content/` copied into a temporary folder, with `state/` and
/// `out/` inside it; commands run there with the default `--config`, as in the checkout.
struct Sandbox {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    /// The SMTP server the config points at, when the setup started one.
    server: Option<TestSmtp>,
    /// `verdicts serve`, when the setup started it (the API's pages call it with curl).
    served: Option<std::process::Child>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.served.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Sandbox {
    fn bundled() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::copy(
            crate::common::bundled_config(),
            dir.path().join("config/newsletter.yaml"),
        )
        .unwrap();
        let comparisons = dir.path().join("content/comparisons");
        std::fs::create_dir_all(&comparisons).unwrap();
        for entry in
            std::fs::read_dir(Path::new(crate::common::BUNDLED).join("content/comparisons"))
                .unwrap()
        {
            let p = entry.unwrap().path();
            std::fs::copy(&p, comparisons.join(p.file_name().unwrap())).unwrap();
        }
        Sandbox {
            dir,
            env: BTreeMap::new(),
            server: None,
            served: None,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config_path(&self) -> PathBuf {
        self.path().join("config/newsletter.yaml")
    }

    fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        std::fs::write(self.config_path(), edit(text)).unwrap();
    }

    fn add_comparison(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("content/comparisons").join(name), text).unwrap();
    }

    /// Starts an SMTP server and points the config's `smtp.port` at it.
    fn serve_smtp(&mut self, behaviour: Behaviour) {
        let server = TestSmtp::start_with(behaviour);
        let port = server.port();
        self.edit_config(|text| {
            assert_eq!(text.matches("\n  port: 2525\n").count(), 1, "smtp.port");
            text.replace("\n  port: 2525\n", &format!("\n  port: {port}\n"))
        });
        self.server = Some(server);
    }

    fn subscribers(&self, n: usize) {
        let mut csv = String::from("email,name,status\n");
        for i in 0..n {
            csv.push_str(&format!("reader{i}@example.com,Reader {i},active\n"));
        }
        std::fs::write(self.path().join("readers.csv"), csv).unwrap();
        let out = self.run(&["subscribers", "import", "readers.csv"]);
        assert!(out.status.success(), "{}", show(&out));
    }

    /// The binary, run here as an operator would: the default `--config`, and no
    /// variables from the test's own environment but those the setup or page exported.
    fn command(&self, words: &[impl AsRef<std::ffi::OsStr>]) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("verdicts"));
        cmd.current_dir(self.path())
            .args(words)
            .env_remove("VERDICTS_CONFIG")
            .env_remove("VERDICTS_SECRET")
            .env_remove("VERDICTS_SMTP_PASSWORD")
            .env_remove("RUST_LOG")
            .envs(&self.env)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, words: &[impl AsRef<std::ffi::OsStr>]) -> Output {
        assert_cmd::Command::from_std(self.command(words))
            .timeout(Duration::from_secs(120))
            .output()
            .unwrap()
    }

    /// Runs a shell line (a page's `curl` call) here, with only the variables the setup or
    /// page exported besides PATH. Returns the exit code and what it printed.
    fn run_shell(&self, line: &str) -> (Option<i32>, String) {
        let out = std::process::Command::new("sh")
            .args(["-c", line])
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    }

    /// Runs the binary with stdout and stderr going to one file, so the lines come in the
    /// order a terminal shows them. Returns the exit code and the text.
    fn run_as_on_a_terminal(&self, words: &[String]) -> (Option<i32>, String) {
        let mut file = tempfile::tempfile().unwrap();
        let mut cmd = self.command(words);
        cmd.stdout(file.try_clone().unwrap())
            .stderr(file.try_clone().unwrap());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("`verdicts {}` still running after 120 s", words.join(" "));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        (status.code(), text)
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The setups a `console` block can name with `<!-- docs-test: NAME -->`.
enum Setup {
    /// The bundled config and content, nothing else (also the default).
    Bundled,
    /// Bundled, plus two broken files from tests/fixtures/invalid/.
    BrokenContent,
    /// Bundled, with DKIM on: the test RSA key as `config/dkim.pem`, selector `verdicts1`.
    Dkim,
    /// `Dkim`, plus comparisons with a relative link and an image without alt text.
    LintProblems,
    /// Bundled, `VERDICTS_SECRET` set, 20 subscribers.
    Subscribers20,
    /// `Subscribers20`, with an SMTP server that accepts everything.
    Send20,
    /// 200 subscribers and a server that knows neither reader2 nor reader5 and rejects
    /// reader8's message as spam; the bundled week is already sent.
    Failures,
    /// Bundled, with an SMTP server that accepts everything (the README's tour).
    Tour,
    /// Bundled, with `subscribers.csv`: five rows, the third of which is not an address.
    Import,
    /// `Send20` with the bundled week sent, an API key with every scope in
    /// `$VERDICTS_API_KEY`, and `verdicts serve` answering at `$VERDICTS_API` (docs/api.md).
    Api,
}

impl Setup {
    fn named(name: &str) -> Option<Setup> {
        Some(match name {
            "bundled" => Setup::Bundled,
            "broken-content" => Setup::BrokenContent,
            "dkim" => Setup::Dkim,
            "lint-problems" => Setup::LintProblems,
            "dry-run" => Setup::Subscribers20,
            "send" => Setup::Send20,
            "failures" => Setup::Failures,
            "tour" => Setup::Tour,
            "import" => Setup::Import,
            "api" => Setup::Api,
            _ => return None,
        })
    }

    fn build(&self) -> Sandbox {
        let mut s = Sandbox::bundled();
        match self {
            Setup::Bundled => {}
            Setup::BrokenContent => {
                s.add_comparison("bad-date.md", &fixture("invalid/bad-date.md"));
                s.add_comparison("third-tool.md", &fixture("invalid/third-tool.md"));
            }
            Setup::Dkim | Setup::LintProblems => {
                std::fs::copy(
                    Path::new(REPO).join("tests/fixtures/dkim/rsa2048.pem"),
                    s.path().join("config/dkim.pem"),
                )
                .unwrap();
                s.edit_config(|text| {
                    text + "\ndkim:\n  domain: example.com\n  selector: verdicts1\n  key_file: dkim.pem\n"
                });
                if let Setup::LintProblems = self {
                    s.add_comparison("relative-link.md", &fixture("lint/relative-link.md"));
                    s.add_comparison(
                        "image-without-alt.md",
                        &fixture("lint/image-without-alt.md"),
                    );
                }
            }
            Setup::Subscribers20 | Setup::Send20 => {
                s.env.insert("VERDICTS_SECRET".into(), TEST_SECRET.into());
                s.subscribers(20);
                if let Setup::Send20 = self {
                    s.serve_smtp(Behaviour::default());
                }
            }
            Setup::Failures => {
                s.env.insert("VERDICTS_SECRET".into(), TEST_SECRET.into());
                s.subscribers(200);
                s.serve_smtp(
                    Behaviour::default()
                        .unknown("reader2@example.com")
                        .unknown("reader5@example.com")
                        .reject("reader8@example.com"),
                );
                let out = s.run(&["send", "--at", AT, "--yes"]);
                assert!(out.status.success(), "{}", show(&out));
            }
            Setup::Tour => s.serve_smtp(Behaviour::default()),
            Setup::Api => {
                s.env.insert("VERDICTS_SECRET".into(), TEST_SECRET.into());
                s.subscribers(20);
                s.serve_smtp(Behaviour::default());
                let out = s.run(&["send", "--at", AT, "--yes"]);
                assert!(out.status.success(), "{}", show(&out));
                let out = s.run(&[
                    "keys",
                    "create",
                    "crm",
                    "--scope",
                    "subscribers:read,subscribers:write,issues:read,events:read",
                ]);
                assert!(out.status.success(), "{}", show(&out));
                let key = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .nth(1)
                    .unwrap()
                    .to_owned();
                s.env.insert("VERDICTS_API_KEY".into(), key);
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                s.edit_config(|t| t.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")));
                let child = s
                    .command(&["serve"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                s.served = Some(child);
                crate::common::wait_for_http(port);
                s.env
                    .insert("VERDICTS_API".into(), format!("http://127.0.0.1:{port}"));
            }
            Setup::Import => std::fs::write(
                s.path().join("subscribers.csv"),
                "email,name,status\n\
                 ada@example.com,\"Lovelace, Ada\",active\n\
                 grace@example.com,,unsubscribed\n\
                 not-an-address,,\n\
                 alan@example.com,Alan Turing,\n\
                 katherine@example.com,Katherine Johnson,active\n",
            )
            .unwrap(),
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// Transcripts

/// One `$ …` line of a console block and the lines shown under it.
struct Step {
    line: usize,
    command: String,
    expected: Vec<String>,
}

fn steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (n, line) in &block.lines {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                line: *n,
                command: command.to_string(),
                expected: Vec::new(),
            });
        } else {
            let Some(step) = steps.last_mut() else {
                panic!("{}: output before the first `$ ` command", block.at(*n));
            };
            step.expected.push(line.clone());
        }
    }
    steps
}

/// Whether a printed line matches a shown one, where `…` in the shown line stands for any
/// text.
fn line_matches(shown: &str, actual: &str) -> bool {
    let (shown, actual) = (shown.trim_end(), actual.trim_end());
    let parts: Vec<&str> = shown.split('…').collect();
    if parts.len() == 1 {
        return shown == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..];
    if !rest.ends_with(last) {
        return false;
    }
    rest = &rest[..rest.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

fn without_trailing_blanks(mut lines: Vec<String>) -> Vec<String> {
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// Runs one console block's steps in `sandbox`; returns what did not match.
fn replay(block: &Block, sandbox: &mut Sandbox) -> Vec<String> {
    let mut failures = Vec::new();
    let mut last_status: Option<i32> = None;
    for step in steps(block) {
        let at = block.at(step.line);
        let words = shell_words(&step.command).unwrap();
        match words.first().map(String::as_str) {
            Some("verdicts") | Some("curl") => {}
            Some("echo") if words.get(1).map(String::as_str) == Some("$?") => {
                let shown = step.expected.join("\n");
                let status = last_status.map(|s| s.to_string()).unwrap_or_default();
                if shown.trim() != status {
                    failures.push(format!("{at}: the page shows exit {shown}, got {status}"));
                }
                continue;
            }
            Some("export") => {
                for assignment in &words[1..] {
                    let (name, value) = assignment.split_once('=').unwrap_or((assignment, ""));
                    // A generated value (`$(openssl rand -hex 32)`) becomes a fixed one.
                    let value = if step.command.contains("$(") {
                        TEST_SECRET.to_string()
                    } else {
                        value.to_string()
                    };
                    sandbox.env.insert(name.to_string(), value);
                }
                continue;
            }
            _ => {
                eprintln!("{at}: not a verdicts command, not run: {}", step.command);
                continue;
            }
        }
        let (code, text) = if words[0] == "curl" {
            sandbox.run_shell(&step.command)
        } else {
            sandbox.run_as_on_a_terminal(&words[1..])
        };
        last_status = code;
        let printed = without_trailing_blanks(text.lines().map(str::to_string).collect());
        let shown = without_trailing_blanks(step.expected.clone());
        let same = printed.len() == shown.len()
            && shown.iter().zip(&printed).all(|(s, p)| line_matches(s, p));
        if !same {
            let first = shown
                .iter()
                .zip(&printed)
                .position(|(s, p)| !line_matches(s, p))
                .unwrap_or(shown.len().min(printed.len()));
            failures.push(format!(
                "{at}: `{}` printed something else than the page shows, from output line {}.\n--- the page\n{}\n--- the binary\n{}\n",
                step.command,
                first + 1,
                shown.join("\n"),
                printed.join("\n")
            ));
        }
        let shows_error = shown.iter().any(|l| l.starts_with("error:"));
        if shows_error == (code == Some(0)) {
            failures.push(format!(
                "{at}: `{}` exited {:?}, but the page shows {}",
                step.command,
                code,
                if shows_error { "an error" } else { "no error" }
            ));
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------
// Links

/// GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens.
fn heading_id(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The ids of a page's headings (outside code blocks), with GitHub's `-1`, `-2` suffixes
/// for repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let base = heading_id(line.trim_start_matches('#'));
        let repeats = seen.entry(base.clone()).or_insert(0);
        *repeats += 1;
        let repeats = *repeats - 1;
        ids.push(if repeats == 0 {
            base
        } else {
            format!("{base}-{repeats}")
        });
    }
    ids
}

/// `(target, line)` of every Markdown link `](target)` outside code blocks.
fn links(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push((rest[..end].to_string(), i + 1));
            rest = &rest[end..];
        }
    }
    out
}

fn broken_links() -> Vec<String> {
    let pages = pages();
    let mut failures = Vec::new();
    for (page, text) in &pages {
        for (target, line) in links(text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let dir = Path::new(page).parent().unwrap();
            let path = if file.is_empty() {
                PathBuf::from(page)
            } else {
                normalize(&dir.join(file))
            };
            let name = path.to_string_lossy().into_owned();
            if !Path::new(REPO).join(&path).exists() {
                if !PAGES_ADDED_ELSEWHERE.contains(&name.as_str()) {
                    failures.push(format!("{page}:{line}: `{target}`: no file {name}"));
                }
                continue;
            }
            if let Some(anchor) = anchor {
                let Some((_, target_text)) = pages.iter().find(|(p, _)| *p == name) else {
                    failures.push(format!(
                        "{page}:{line}: `{target}`: an anchor into {name}, which is not a page"
                    ));
                    continue;
                };
                if !anchors(target_text).iter().any(|a| a == anchor) {
                    failures.push(format!(
                        "{page}:{line}: `{target}`: {name} has no heading with the id `{anchor}`"
                    ));
                }
            }
        }
    }
    failures
}

/// `docs/../README.md` → `README.md`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn every_command_shown_parses_with_the_real_command_line() {
    let shown = shown_commands(&all_blocks());
    assert!(
        shown.len() > 30,
        "only {} commands found in the pages: is the extraction broken?",
        shown.len()
    );
    let failures = parse_failures(&shown);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_flag_or_command_that_does_not_exist_is_caught() {
    let page = "Intro.\n\n```sh\nverdicts preview --colour blue   # no such flag\n```\n\n\
                ```console\n$ verdicts publish\nPublished.\n$ verdicts check\n```\n";
    let shown = shown_commands(&blocks("made-up.md", page));
    assert_eq!(shown.len(), 3);
    let failures = parse_failures(&shown);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures[0].starts_with("made-up.md:4: `verdicts preview --colour blue`"));
    assert!(failures[0].contains("--colour"));
    assert!(failures[1].starts_with("made-up.md:8: `verdicts publish`"));
}

#[test]
fn shell_lines_are_split_as_a_shell_would() {
    assert_eq!(
        shell_words(r#"verdicts subscribers add ada@example.com --name "Ada Lovelace"  # hi"#)
            .unwrap(),
        [
            "verdicts",
            "subscribers",
            "add",
            "ada@example.com",
            "--name",
            "Ada Lovelace"
        ]
    );
    assert_eq!(
        shell_words("verdicts subscribers export | head -3").unwrap(),
        ["verdicts", "subscribers", "export"]
    );
    assert_eq!(
        shell_words(r#"verdicts x 'a b' c\ d "e\"f""#).unwrap(),
        ["verdicts", "x", "a b", "c d", "e\"f"]
    );
    assert!(shell_words("verdicts 'open").is_err());
}

#[test]
fn an_ellipsis_in_shown_output_stands_for_any_text() {
    assert!(line_matches("in … s (… msgs/s).", "in 0.1 s (563 msgs/s)."));
    assert!(line_matches("Next slot: …", "Next slot: Monday"));
    assert!(!line_matches("in … s (… msgs/s).", "in 0.1 s (563 msgs/s)"));
    assert!(!line_matches("Comparisons: 5", "Comparisons: 6"));
    assert!(line_matches("a … b … c", "a x b y b c"));
    assert!(!line_matches("ab…ba", "aba"));
}

#[test]
fn links_between_pages_resolve() {
    assert_eq!(
        heading_id("`verdicts preview [--at T] [--out DIR] [--force]`"),
        "verdicts-preview---at-t---out-dir---force"
    );
    assert_eq!(
        anchors("# A\n## Step\n```\n# not a heading\n```\n## Step\n"),
        ["a", "step", "step-1"]
    );
    let failures = broken_links();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The `verdicts` lines of every `sh` block, run in order in a fresh bundled copy.
#[test]
fn the_commands_of_every_sh_block_run() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for block in all_blocks().iter().filter(|b| b.lang == "sh") {
        let shown = shown_commands(std::slice::from_ref(block));
        if shown.is_empty() {
            continue;
        }
        let mut sandbox = Sandbox::bundled();
        sandbox
            .env
            .insert("VERDICTS_SECRET".into(), TEST_SECRET.into());
        for s in shown {
            if matches!(s.words.first().map(String::as_str), Some("run" | "serve")) {
                continue;
            }
            let out = sandbox.run(&s.words);
            ran += 1;
            if !out.status.success() {
                failures.push(format!(
                    "{}: `verdicts {}` failed\n{}",
                    s.at,
                    s.words.join(" "),
                    show(&out)
                ));
            }
        }
    }
    assert!(ran > 10, "only {ran} commands run");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every `console` block, replayed against the binary in the setup it names.
#[test]
fn every_console_transcript_prints_what_the_page_shows() {
    let blocks: Vec<Block> = all_blocks()
        .into_iter()
        .filter(|b| b.lang == "console")
        .collect();
    assert!(blocks.len() >= 10, "only {} transcripts", blocks.len());
    let mut failures = Vec::new();
    // Blocks of one page naming the same setup share a sandbox, in page order.
    let mut shared: BTreeMap<(String, String), Sandbox> = BTreeMap::new();
    for block in &blocks {
        let mut fresh;
        let sandbox = match &block.setup {
            None => {
                fresh = Setup::Bundled.build();
                &mut fresh
            }
            Some(name) => {
                let Some(setup) = Setup::named(name) else {
                    failures.push(format!(
                        "{}: unknown setup `{name}` (see `Setup` in tests/it/docs.rs)",
                        block.at(block.line)
                    ));
                    continue;
                };
                shared
                    .entry((block.page.clone(), name.clone()))
                    .or_insert_with(|| setup.build())
            }
        };
        failures.extend(replay(block, sandbox));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
