//! The `subscribers` commands as an operator uses them: each test gets its own config and
//! state folder, runs the real binary, and checks what the operator would see.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

/// A newsletter installation in a temporary folder.
struct Newsletter {
    dir: tempfile::TempDir,
}

impl Newsletter {
    fn new() -> Newsletter {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("content/comparisons")).expect("content dir");
        std::fs::write(
            dir.path().join("newsletter.yaml"),
            crate::common::config_yaml(2525, ""),
        )
        .expect("config");
        Newsletter { dir }
    }

    /// `verdicts subscribers ARGS…` against this installation, as a plain process.
    fn process(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_verdicts"));
        cmd.arg("--config")
            .arg(self.dir.path().join("newsletter.yaml"))
            .arg("subscribers")
            .args(args)
            .env_remove("VERDICTS_CONFIG")
            .env("RUST_LOG", "warn");
        cmd
    }

    /// `verdicts subscribers ARGS…`, ready for assertions.
    fn subscribers(&self, args: &[&str]) -> Command {
        Command::from_std(self.process(args))
    }

    /// Runs a command that must succeed and returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.subscribers(args).assert().success();
        String::from_utf8(out.get_output().stdout.clone()).expect("UTF-8 output")
    }

    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path.to_str().expect("UTF-8 path").to_owned()
    }

    fn database(&self) -> PathBuf {
        self.dir.path().join("state/verdicts.db")
    }

    /// The whole export, consent record included.
    fn export_all(&self) -> String {
        self.ok(&["export"])
    }

    /// The list part of the export (email, name, status), without the consent record's
    /// timestamps.
    fn export(&self) -> String {
        let all = self.export_all();
        let mut reader = csv::Reader::from_reader(all.as_bytes());
        let mut writer = csv::Writer::from_writer(Vec::new());
        let header = reader.headers().expect("header").clone();
        writer.write_record(header.iter().take(3)).expect("write");
        for record in reader.records() {
            let record = record.expect("valid export");
            writer
                .write_record(record.iter().take(3).collect::<Vec<_>>())
                .expect("write");
        }
        String::from_utf8(writer.into_inner().expect("flush")).expect("UTF-8")
    }
}

fn count_line(status: &str, n: u64) -> impl Predicate<str> {
    predicates::str::is_match(format!("(?m)^{status} +{n}$")).expect("regex")
}

#[test]
fn operator_adds_subscribers_and_counts_them() {
    let nl = Newsletter::new();
    assert!(nl
        .ok(&["add", "Ada@Example.com", "--name", "Ada Lovelace"])
        .contains("added Ada@Example.com"));
    nl.ok(&["add", "reader+ai@example.com"]);
    nl.ok(&["add", "\"quoted local\"@example.com"]);
    nl.ok(&["add", "leser@bücher.example"]);

    let list = nl.ok(&["list"]);
    for expected in [
        "Ada@Example.com",
        "Ada Lovelace",
        "reader+ai@example.com",
        "\"quoted local\"@example.com",
        "leser@bücher.example",
    ] {
        assert!(list.contains(expected), "{expected} missing from\n{list}");
    }
    nl.subscribers(&["count"])
        .assert()
        .success()
        .stdout(count_line("active", 4))
        .stdout(count_line("unsubscribed", 0))
        .stdout(count_line("bounced", 0))
        .stdout(count_line("total", 4));
}

#[test]
fn adding_a_listed_address_in_any_case_changes_nothing() {
    let nl = Newsletter::new();
    nl.ok(&["add", "Ada@Example.com", "--name", "Ada"]);
    nl.subscribers(&["add", "ada@example.COM", "--name", "Someone Else"])
        .assert()
        .success()
        .stdout(contains(
            "already listed as Ada@Example.com (active); nothing changed",
        ));
    assert_eq!(
        nl.export(),
        "email,name,status\nAda@Example.com,Ada,active\n"
    );
}

#[test]
fn invalid_addresses_and_names_are_refused_with_the_reason() {
    let nl = Newsletter::new();
    let long = format!("{}@example.com", "a".repeat(250));
    for (input, reason) in [
        ("", "the address is empty"),
        ("nobody", "`nobody` has no domain"),
        ("nobody@", "`nobody@` has no domain"),
        (
            "a@example.com\r\nBcc: b@example.com",
            "contains a control character",
        ),
        (long.as_str(), "longer than 254 characters"),
        (
            "two@@example.com",
            "`two@@example.com` is not a valid address",
        ),
    ] {
        nl.subscribers(&["add", input])
            .assert()
            .code(1)
            .stderr(contains("invalid email address").and(contains(reason)));
    }
    nl.subscribers(&["add", "ada@example.com", "--name", "Ada\nBcc: x"])
        .assert()
        .code(1)
        .stderr(contains("invalid name for ada@example.com").and(contains("control character")));
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("total", 0));
}

#[test]
fn unsubscribe_and_resubscribe_say_what_happened() {
    let nl = Newsletter::new();
    nl.ok(&["add", "Ada@Example.com"]);

    assert!(nl
        .ok(&["unsubscribe", "ada@example.com"])
        .contains("unsubscribed Ada@Example.com (was active)"));
    assert!(nl
        .ok(&["unsubscribe", "ADA@example.com"])
        .contains("Ada@Example.com is already unsubscribed; nothing changed"));
    assert!(nl
        .ok(&["list", "--status", "unsubscribed"])
        .contains("Ada@Example.com"));
    assert!(nl
        .ok(&["list", "--status", "active"])
        .contains("no active subscribers"));
    nl.subscribers(&["add", "ada@example.com"])
        .assert()
        .success()
        .stdout(contains(
            "(unsubscribed); nothing changed; use `subscribers resubscribe`",
        ));

    assert!(nl
        .ok(&["resubscribe", "ada@example.com"])
        .contains("resubscribed Ada@Example.com (was unsubscribed)"));
    assert!(nl
        .ok(&["resubscribe", "ada@example.com"])
        .contains("already active"));
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("active", 1));
}

#[test]
fn commands_on_an_unknown_address_fail_clearly() {
    let nl = Newsletter::new();
    nl.ok(&["add", "ada@example.com"]);
    for command in ["remove", "unsubscribe", "resubscribe"] {
        nl.subscribers(&[command, "ghost@example.com"])
            .assert()
            .code(1)
            .stderr(contains("no subscriber has the address ghost@example.com"));
    }
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("total", 1));
}

#[test]
fn remove_erases_the_person_entirely() {
    let nl = Newsletter::new();
    nl.ok(&["add", "ada@example.com", "--name", "Ada"]);
    nl.ok(&["unsubscribe", "ada@example.com"]);
    assert!(nl
        .ok(&["remove", "ADA@example.com"])
        .contains("removed ada@example.com"));
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("total", 0));
    // Erased, not unsubscribed: adding them again is a fresh, active subscription.
    assert!(nl.ok(&["add", "ada@example.com"]).contains("added"));
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("active", 1));
}

#[test]
fn list_formats_for_people_spreadsheets_and_scripts() {
    let nl = Newsletter::new();
    nl.ok(&["add", "ada@example.com", "--name", "Lovelace, Ada"]);
    nl.ok(&["add", "bob@example.com"]);
    nl.ok(&["unsubscribe", "bob@example.com"]);

    let table = nl.ok(&["list"]);
    let mut lines = table.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("EMAIL")),
        "{table}"
    );
    assert!(
        table.contains("ada@example.com  Lovelace, Ada  active"),
        "{table}"
    );

    let csv = nl.ok(&["list", "--format", "csv"]);
    assert!(csv.starts_with("email,name,status,source,created_at,updated_at,unsubscribed_at\n"));
    assert!(
        csv.contains("ada@example.com,\"Lovelace, Ada\",active,cli,"),
        "{csv}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&nl.ok(&["list", "--format", "json"])).expect("valid JSON");
    let people = json.as_array().expect("an array");
    assert_eq!(people.len(), 2);
    assert_eq!(people[0]["name"], "Lovelace, Ada");
    assert_eq!(people[1]["status"], "unsubscribed");
    assert!(people[1]["unsubscribed_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let only: serde_json::Value =
        serde_json::from_str(&nl.ok(&["list", "--status", "unsubscribed", "--format", "json"]))
            .expect("valid JSON");
    assert_eq!(only.as_array().map(Vec::len), Some(1));
    let none: serde_json::Value =
        serde_json::from_str(&nl.ok(&["list", "--status", "bounced", "--format", "json"]))
            .expect("valid JSON");
    assert_eq!(none, serde_json::json!([]));

    nl.subscribers(&["list", "--status", "paused"])
        .assert()
        .code(2)
        .stderr(contains("active").and(contains("unsubscribed")));
}

const ONE_BAD_ROW: &str = "email,name\n\
    ada@example.com,Ada\n\
    bob@example.com,Bob\n\
    not-an-address,Nobody\n\
    cy@example.com,Cy\n\
    di@example.com,Di\n";

#[test]
fn import_with_one_bad_row_imports_nothing() {
    let nl = Newsletter::new();
    nl.ok(&["add", "existing@example.com"]);
    let before = nl.export();
    let file = nl.file("subscribers.csv", ONE_BAD_ROW);

    nl.subscribers(&["import", &file])
        .assert()
        .code(1)
        .stderr(contains("line 4: `not-an-address` has no domain"))
        .stderr(contains("nothing was imported: 1 of 5 rows in"))
        .stderr(contains("pass --skip-invalid to import the other 4"));

    assert_eq!(nl.export(), before);
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("total", 1));
}

#[test]
fn import_with_skip_invalid_imports_the_good_rows() {
    let nl = Newsletter::new();
    let file = nl.file("subscribers.csv", ONE_BAD_ROW);
    nl.subscribers(&["import", &file, "--skip-invalid"])
        .assert()
        .success()
        .stdout(contains("4 added, 0 updated, 0 unchanged, 1 rejected"))
        .stderr(contains("line 4: `not-an-address` has no domain"));
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("active", 4));
}

#[test]
fn import_lists_every_bad_row_with_its_line_and_reason() {
    let nl = Newsletter::new();
    let file = nl.file(
        "messy.csv",
        "email,name,status\n\
         ok@example.com,Ok,active\n\
         ,Nameless,\n\
         bad@,Bad,\n\
         ctl@example.com,\"Evil\nBcc: x\",\n\
         paused@example.com,,paused\n\
         OK@example.com,Again,\n\
         few@example.com\n",
    );
    nl.subscribers(&["import", &file])
        .assert()
        .code(1)
        .stderr(contains("line 3: the email is empty"))
        .stderr(contains("line 4: `bad@` has no domain"))
        .stderr(contains(
            "line 5: name `Evil\\nBcc: x` contains a control character",
        ))
        .stderr(contains(
            "line 7: status `paused` is not one of active, pending, unsubscribed, bounced",
        ))
        .stderr(contains(
            "line 8: `OK@example.com` is a duplicate of line 2",
        ))
        .stderr(contains("line 9: has 1 field but the header has 3"))
        .stderr(contains("6 of 7 rows"));
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("total", 0));
}

#[test]
fn import_refuses_unknown_columns_naming_them() {
    let nl = Newsletter::new();
    let file = nl.file("crm.csv", "email,phone,Name,fax\na@example.com,1,A,2\n");
    nl.subscribers(&["import", &file])
        .assert()
        .code(1)
        .stderr(contains("`phone`, `fax` are not among them"));
    let missing = nl.file("missing.csv", "nope.csv");
    nl.subscribers(&["import", &format!("{missing}-absent")])
        .assert()
        .code(1)
        .stderr(contains("cannot read").and(contains("missing.csv-absent")));
}

#[test]
fn import_never_reactivates_the_unsubscribed_unless_asked_twice() {
    let nl = Newsletter::new();
    nl.ok(&["add", "gone@example.com", "--name", "Gone"]);
    nl.ok(&["unsubscribe", "gone@example.com"]);
    let file = nl.file(
        "again.csv",
        "email,name,status\nGONE@example.com,Gone Again,active\n",
    );
    let no_status = nl.file("plain.csv", "email\ngone@example.com\n");

    // A row saying active is not enough on its own…
    nl.subscribers(&["import", &file])
        .assert()
        .success()
        .stdout(contains("0 added, 1 updated, 0 unchanged, 0 rejected"))
        .stdout(contains("pass --resubscribe to reactivate them"));
    // …and --resubscribe without an explicit `active` is not enough either.
    nl.subscribers(&["import", &no_status, "--resubscribe"])
        .assert()
        .success()
        .stdout(contains("0 added, 0 updated, 1 unchanged, 0 rejected"));
    assert_eq!(
        nl.export(),
        "email,name,status\ngone@example.com,Gone Again,unsubscribed\n"
    );

    nl.subscribers(&["import", &file, "--resubscribe"])
        .assert()
        .success()
        .stdout(contains("0 added, 1 updated, 0 unchanged, 0 rejected"));
    assert_eq!(
        nl.export(),
        "email,name,status\ngone@example.com,Gone Again,active\n"
    );
}

#[test]
fn import_reads_spreadsheet_exports_with_bom_crlf_and_quoted_commas() {
    let nl = Newsletter::new();
    let file = nl.file(
        "excel.csv",
        b"\xEF\xBB\xBFname,email\r\n\
          \"Lovelace, Ada\",ada@example.com\r\n\
          \"Hopper, Grace \"\"Amazing\"\"\",grace@example.com\r\n\
          Plain,plain@example.com\r\n",
    );
    nl.subscribers(&["import", &file])
        .assert()
        .success()
        .stdout(contains("3 added, 0 updated, 0 unchanged, 0 rejected"));
    assert_eq!(
        nl.export(),
        "email,name,status\n\
         ada@example.com,\"Lovelace, Ada\",active\n\
         grace@example.com,\"Hopper, Grace \"\"Amazing\"\"\",active\n\
         plain@example.com,Plain,active\n"
    );
}

#[test]
fn dry_run_reports_the_same_summary_and_changes_nothing() {
    let nl = Newsletter::new();
    nl.ok(&["add", "ada@example.com"]);
    let file = nl.file(
        "new.csv",
        "email,name\nada@example.com,Ada\nbob@example.com,Bob\n",
    );
    nl.subscribers(&["import", &file, "--dry-run"])
        .assert()
        .success()
        .stdout(contains(
            "1 added, 1 updated, 0 unchanged, 0 rejected (nothing was changed)",
        ));
    assert_eq!(nl.export(), "email,name,status\nada@example.com,,active\n");

    let bad = nl.file("bad.csv", ONE_BAD_ROW);
    nl.subscribers(&["import", &bad, "--dry-run"])
        .assert()
        .code(1)
        .stderr(contains("the import would change nothing"));
}

#[test]
fn export_then_import_into_a_fresh_install_reproduces_the_list() {
    let source = Newsletter::new();
    let file = source.file(
        "seed.csv",
        "email,name,status\n\
         Ada@Example.com,\"Lovelace, Ada\",active\n\
         reader+ai@example.com,,unsubscribed\n\
         \"\"\"quoted local\"\"@example.com\",Quote \"\"Q\"\" Person,bounced\n\
         leser@bücher.example,Jürgen,active\n",
    );
    source.ok(&["import", &file]);
    source.ok(&["add", "late@example.com", "--name", "Late"]);
    source.ok(&["unsubscribe", "late@example.com"]);
    let exported = source.export_all();
    assert_eq!(exported.lines().count(), 6, "{exported}");

    let out = source.dir.path().join("backup.csv");
    let out = out.to_str().expect("UTF-8 path");
    assert!(source
        .ok(&["export", "--out", out])
        .contains("exported 5 subscribers"));
    assert_eq!(std::fs::read_to_string(out).expect("backup"), exported);

    let fresh = Newsletter::new();
    fresh
        .subscribers(&["import", out])
        .assert()
        .success()
        .stdout(contains("5 added, 0 updated, 0 unchanged, 0 rejected"));
    assert_eq!(fresh.export_all(), exported);
}

/// True while some process holds the database's write lock.
fn write_lock_is_held(database: &Path) -> bool {
    let conn = rusqlite::Connection::open(database).expect("open database");
    conn.busy_timeout(Duration::ZERO).expect("no waiting");
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_err()
}

#[test]
fn a_large_import_and_cli_adds_at_the_same_time_both_succeed() {
    let nl = Newsletter::new();
    // The database exists before the import starts (a first import builds its own aside).
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_verdicts"))
        .arg("--config")
        .arg(nl.dir.path().join("newsletter.yaml"))
        .arg("init")
        .env_remove("VERDICTS_CONFIG")
        .status()
        .expect("run init");
    assert!(init.success());
    let rows = |range: std::ops::Range<u32>| -> String {
        range
            .map(|i| format!("reader{i}@example.com,Reader {i},active\n"))
            .collect()
    };

    // The import reads from a pipe, so it is still inside its transaction, holding the
    // write lock, while the adds start.
    let mut import = nl
        .process(&["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start import");
    let mut feed = import.stdin.take().expect("import stdin");
    write!(feed, "email,name,status\n{}", rows(0..10_000)).expect("feed import");
    feed.flush().expect("feed import");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !write_lock_is_held(&nl.database()) {
        assert!(
            Instant::now() < deadline,
            "the import never took the write lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let adds: Vec<_> = (0..20)
        .map(|i| {
            nl.process(&["add", &format!("walk-in{i}@example.com")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start add")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    feed.write_all(rows(10_000..20_000).as_bytes())
        .expect("feed import");
    drop(feed);

    let import = succeeded(import);
    assert!(String::from_utf8_lossy(&import.stdout).contains("20000 added"));
    for add in adds {
        succeeded(add);
    }
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("total", 20_020));
}

/// Waits for a command started with `spawn` and asserts it exited 0 (showing its stderr).
fn succeeded(child: std::process::Child) -> std::process::Output {
    let out = child.wait_with_output().expect("the command finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn many_commands_opening_a_fresh_database_at_once_all_succeed() {
    let nl = Newsletter::new();
    let children: Vec<_> = (0..8)
        .map(|i| {
            nl.process(&["add", &format!("r{i}@example.com")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start add")
        })
        .collect();
    for child in children {
        succeeded(child);
    }
    nl.subscribers(&["count"])
        .assert()
        .stdout(count_line("total", 8));
}

#[test]
fn a_database_from_a_newer_verdicts_is_refused() {
    let nl = Newsletter::new();
    nl.ok(&["add", "ada@example.com"]);
    let conn = rusqlite::Connection::open(nl.database()).expect("open database");
    conn.pragma_update(None, "user_version", 99)
        .expect("set version");
    drop(conn);

    let known = verdicts::store::MIGRATIONS.len();
    nl.subscribers(&["count"])
        .assert()
        .failure()
        .stderr(contains(nl.database().display().to_string()))
        .stderr(contains("schema version 99"))
        .stderr(contains(format!("versions up to {known}")));
}
