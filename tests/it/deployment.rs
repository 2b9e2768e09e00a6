//! The documented deployment, checked without systemd: the unit may write every path the
//! daemon writes, systemd-analyze accepts it (when installed), the proxy examples pass
//! every public path, and what a wrong owner or a read-only site folder looks like.

use std::path::{Path, PathBuf};
use std::process::Command;

use predicates::prelude::*;
use verdicts::config::Config;

use crate::common::{TempSite, REPO};

/// `key=value` settings of a unit file, in order (a key may repeat).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn unit_text() -> String {
    std::fs::read_to_string(Path::new(REPO).join("contrib/verdicts.service")).unwrap()
}

#[test]
fn the_unit_may_write_every_path_the_daemon_writes() {
    let settings = unit_settings(&unit_text());
    assert_eq!(setting(&settings, "ProtectSystem"), ["strict"]);
    let writable: Vec<PathBuf> = setting(&settings, "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(PathBuf::from)
        .collect();
    let exec = setting(&settings, "ExecStart")[0];
    let words: Vec<&str> = exec.split_whitespace().collect();
    let config_path = words[words.iter().position(|w| *w == "--config").unwrap() + 1];
    // The bundled config, as the unit would load it.
    let text = std::fs::read_to_string(crate::common::bundled_config()).unwrap();
    let config = Config::parse(Path::new(config_path), &text).unwrap();
    let site = config
        .site_out_dir
        .clone()
        .expect("the bundled config builds the site");
    let daemon_writes = [
        // The database, its -wal and -shm, and the locks.
        config.state_dir.clone(),
        // The site, and the fresh copy written beside it before the swap.
        site.clone(),
        site.parent().unwrap().to_owned(),
    ];
    for path in &daemon_writes {
        let path = normalize(path);
        assert!(
            writable.iter().any(|w| path.starts_with(w)),
            "the daemon writes {} but ReadWritePaths is {writable:?}",
            path.display()
        );
    }
    // And nothing wider than needed: not the checkout with its config and content.
    let workdir = PathBuf::from(setting(&settings, "WorkingDirectory")[0]);
    assert!(!writable.contains(&workdir), "{writable:?}");
    assert!(normalize(&config.content_dir).starts_with(&workdir));
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        // Not a checker of its own: without systemd there is nothing to install it into.
        eprintln!("systemd-analyze is not installed; the unit's paths are checked above");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("verdicts.service");
    let bin = assert_cmd::cargo::cargo_bin("verdicts");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/local/bin/verdicts", &bin.to_string_lossy()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("Unknown key"), "{err}");
    assert!(!err.contains("verdicts.service:"), "{err}");
}

#[test]
fn the_proxy_examples_pass_every_public_path() {
    let page = std::fs::read_to_string(Path::new(REPO).join("docs/deployment.md")).unwrap();
    let block = |lang: &str| -> String {
        let start = page
            .find(&format!("```{lang}\n"))
            .unwrap_or_else(|| panic!("no {lang} block"));
        let rest = &page[start + lang.len() + 4..];
        rest[..rest.find("```").unwrap()].to_owned()
    };
    let caddy = block("caddyfile");
    assert!(
        caddy
            .lines()
            .any(|l| l.trim() == "reverse_proxy 127.0.0.1:8080"),
        "Caddy must proxy every path:\n{caddy}"
    );
    let nginx = block("nginx");
    assert!(
        nginx.contains("location / {") && !nginx.contains("location ="),
        "nginx must proxy every path:\n{nginx}"
    );
    // Every path the endpoint serves is named as public (or monitoring) on the page.
    for path in [
        "/unsubscribe",
        "/subscribe",
        "/confirm",
        "/healthz",
        "/issues/N/",
        "/feed.xml",
        "/<slug>/",
    ] {
        assert!(page.contains(&format!("`{path}")), "{path} is not listed");
    }
}

#[test]
fn the_daemon_refuses_to_start_when_it_cannot_build_the_site() {
    let site = TempSite::with_bundled_content();
    crate::common::seed_subscribers(&site, 1);
    // site.out_dir's parent is a file: nothing can be written beside the output folder.
    std::fs::write(site.path().join("blocked"), "a file").unwrap();
    site.edit_config(|c| format!("{c}site:\n  out_dir: blocked/site\n"));
    site.cmd()
        .arg("run")
        .timeout(std::time::Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("the site cannot be built"))
        .stderr(predicate::str::contains("ReadWritePaths"));
}

fn running_as_root() -> bool {
    verdicts::store::health::running_as_root()
}

#[test]
fn root_does_not_create_a_database_in_the_service_users_folder() {
    if !running_as_root() {
        return; // only root can run into this
    }
    let site = TempSite::with_bundled_content();
    let state = site.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    site.cmd()
        .args(["subscribers", "add", "ada@example.com"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refusing to create"))
        .stderr(predicate::str::contains("as root"))
        .stderr(predicate::str::contains("sudo -u"));
    assert!(!site.db_path().exists());
}

#[test]
fn a_database_another_user_owns_is_named_with_its_owner() {
    // Root made the database; the command runs as nobody, as after a plain `sudo verdicts init`.
    if !running_as_root() || Command::new("setpriv").arg("--version").output().is_err() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let site = TempSite::with_bundled_content();
    crate::common::seed_subscribers(&site, 1);
    for dir in [site.path().to_owned(), site.path().join("state")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(assert_cmd::cargo::cargo_bin("verdicts"))
        .args(["subscribers", "count"])
        .current_dir(site.path())
        .env("VERDICTS_CONFIG", site.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to root (uid 0)"), "{err}");
    assert!(err.contains("runs as nobody (uid 65534)"), "{err}");
    assert!(!err.contains("SQLITE_READONLY"), "{err}");
}
