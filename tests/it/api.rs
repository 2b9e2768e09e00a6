//! The JSON API as another system uses it: `verdicts serve` as a real process, keys made
//! with `verdicts keys create`, a real HTTP client, and the database looked at afterwards.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::common::{seed_subscribers, Process, TempSite};
use crate::smtp::TestSmtp;

/// A site whose endpoint binds a free port, with readers and an SMTP server.
fn api_site(smtp_port: u16) -> TempSite {
    let site = TempSite::with_bundled_content();
    site.write_config(smtp_port, "");
    site.edit_config(|t| t.replace("127.0.0.1:8080", "127.0.0.1:0"));
    site.cmd().arg("init").assert().success();
    site
}

/// Makes a key with `scopes` and returns it, as printed.
fn key(site: &TempSite, name: &str, scopes: &str) -> String {
    let out = site
        .cmd()
        .args(["keys", "create", name, "--scope", scopes])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    let key = out.lines().nth(1).unwrap().trim().to_owned();
    assert!(key.starts_with("vdk_"), "{out}");
    key
}

struct Api {
    port: u16,
    agent: ureq::Agent,
}

impl Api {
    fn new(port: u16) -> Api {
        Api {
            port,
            agent: crate::common::http(),
        }
    }

    /// Status and JSON body of one call (`key` `None`: no Authorization header).
    fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        req = req.header("Content-Type", "application/json");
        let resp = self
            .agent
            .run(req.body(body.unwrap_or("").to_owned()).unwrap())
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        (status, json)
    }
}

fn subscriber_count(site: &TempSite) -> i64 {
    site.db()
        .query_row("SELECT count(*) FROM subscribers", [], |r| r.get(0))
        .unwrap()
}

/// A representative call of every route, with a body where it needs one.
fn calls() -> Vec<(&'static str, String, Option<&'static str>, &'static str)> {
    vec![
        (
            "GET",
            "/api/v1/subscribers".into(),
            None,
            "subscribers:read",
        ),
        (
            "POST",
            "/api/v1/subscribers".into(),
            Some(r#"{"email":"new@example.org","double_opt_in":false}"#),
            "subscribers:write",
        ),
        (
            "GET",
            "/api/v1/subscribers/reader1@example.com".into(),
            None,
            "subscribers:read",
        ),
        (
            "PATCH",
            "/api/v1/subscribers/reader1@example.com".into(),
            Some(r#"{"name":"Renamed"}"#),
            "subscribers:write",
        ),
        (
            "POST",
            "/api/v1/subscribers/reader2@example.com/unsubscribe".into(),
            None,
            "subscribers:write",
        ),
        (
            "POST",
            "/api/v1/subscribers/reader2@example.com/resubscribe".into(),
            None,
            "subscribers:write",
        ),
        (
            "DELETE",
            "/api/v1/subscribers/reader3@example.com".into(),
            None,
            "subscribers:write",
        ),
        ("GET", "/api/v1/issues".into(), None, "issues:read"),
        ("GET", "/api/v1/issues/1".into(), None, "issues:read"),
        ("GET", "/api/v1/events".into(), None, "events:read"),
    ]
}

#[test]
fn every_route_needs_its_scope_and_a_revoked_key_is_refused_at_once() {
    let smtp = TestSmtp::start();
    let site = api_site(smtp.port());
    seed_subscribers(&site, 5);
    let scopes = [
        "subscribers:read",
        "subscribers:write",
        "issues:read",
        "events:read",
    ];
    let keys: Vec<(String, String)> = scopes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), key(&site, &format!("only-{i}"), s)))
        .collect();
    let all = key(&site, "all", &scopes.join(","));

    // Only hashes are stored: no column of any key row holds the key.
    let conn = site.db();
    let mut stmt = conn
        .prepare("SELECT name, prefix, hash, scopes FROM api_keys")
        .unwrap();
    let rows: Vec<(String, String, Vec<u8>, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 5);
    for (_, key) in keys.iter().chain([&("all".to_string(), all.clone())]) {
        for (name, prefix, hash, scopes) in &rows {
            assert_ne!(hash.as_slice(), key.as_bytes(), "{name}");
            assert!(!String::from_utf8_lossy(hash).contains(key.as_str()));
            assert!(!key.eq(prefix) && !key.eq(scopes) && !key.eq(name));
        }
    }

    let mut serve = Process::start(&site, &["serve"]);
    let api = Api::new(serve.web_port());
    for (method, path, body, scope) in calls() {
        let before = subscriber_count(&site);
        let (status, json) = api.call(method, &path, None, body);
        assert_eq!(status, 401, "{method} {path} without a key: {json}");
        assert_eq!(json["error"]["code"], "unauthorized");
        for (has, key) in &keys {
            let (status, json) = api.call(method, &path, Some(key), body);
            if has == scope {
                assert!(
                    ![401, 403, 500].contains(&status),
                    "{method} {path} with {has}: {status} {json}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} with only {has}: {json}");
                assert!(
                    json["error"]["message"].as_str().unwrap().contains(scope),
                    "{json}"
                );
            }
        }
        if method == "DELETE" {
            // Erasure with the right scope removes the reader; nothing else does.
            assert!(
                subscriber_count(&site) <= before,
                "{method} {path} added a row"
            );
        } else if method != "POST" || path != "/api/v1/subscribers" {
            assert_eq!(
                subscriber_count(&site),
                before,
                "{method} {path} added a row"
            );
        }
    }

    // Revoked while the server runs: the very next request is refused.
    let (status, _) = api.call("GET", "/api/v1/subscribers", Some(&all), None);
    assert_eq!(status, 200);
    site.cmd()
        .args(["keys", "revoke", "all"])
        .assert()
        .success();
    let (status, json) = api.call("GET", "/api/v1/subscribers", Some(&all), None);
    assert_eq!(status, 401, "{json}");
    let listed = site
        .cmd()
        .args(["keys", "list"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let listed = String::from_utf8(listed).unwrap();
    let line = listed.lines().find(|l| l.starts_with("all ")).unwrap();
    assert!(
        line.contains("revoked") && !line.contains("never"),
        "{listed}"
    );

    // A key that is nearly right (one character changed) is as wrong as any other.
    let (_, reader) = &keys[0];
    let mut near = reader.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _) = api.call("GET", "/api/v1/subscribers", Some(&near), None);
    assert_eq!(status, 401);
}

#[test]
fn wrong_keys_from_one_address_are_rate_limited() {
    let smtp = TestSmtp::start();
    let site = api_site(smtp.port());
    let good = key(&site, "reader", "subscribers:read");
    let mut serve = Process::start(&site, &["serve"]);
    let api = Api::new(serve.web_port());
    let mut statuses = Vec::new();
    for i in 0..25 {
        let (status, _) = api.call(
            "GET",
            "/api/v1/subscribers",
            Some(&format!("vdk_000000000000_{i}")),
            None,
        );
        statuses.push(status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // While limited, even the right key is refused: guessing gains nothing.
    let (status, json) = api.call("GET", "/api/v1/subscribers", Some(&good), None);
    assert_eq!(status, 429, "{json}");
}

#[test]
fn another_system_adds_reads_changes_and_removes_readers() {
    let smtp = TestSmtp::start();
    let site = api_site(smtp.port());
    seed_subscribers(&site, 250);
    let k = key(
        &site,
        "crm",
        "subscribers:read,subscribers:write,events:read",
    );
    let mut serve = Process::start(&site, &["serve"]);
    let api = Api::new(serve.web_port());

    // Confirmed by the operator's own system: active at once, consent recorded as `api`.
    let (status, s) = api.call(
        "POST",
        "/api/v1/subscribers",
        Some(&k),
        Some(r#"{"email":"Ticked@Example.org","name":"Tick","double_opt_in":false}"#),
    );
    assert_eq!(status, 201, "{s}");
    assert_eq!(
        (s["status"].as_str(), s["source"].as_str()),
        (Some("active"), Some("api"))
    );
    let source: String = site
        .db()
        .query_row(
            "SELECT source FROM subscribers WHERE email_norm = 'ticked@example.org'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(source, "api");
    // The same address again changes nothing.
    let (status, e) = api.call(
        "POST",
        "/api/v1/subscribers",
        Some(&k),
        Some(r#"{"email":"ticked@example.org","double_opt_in":false}"#),
    );
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (409, Some("email")),
        "{e}"
    );

    // Double opt-in: pending, and the confirmation mail goes out.
    let (status, s) = api.call(
        "POST",
        "/api/v1/subscribers",
        Some(&k),
        Some(r#"{"email":"asks@example.org"}"#),
    );
    assert_eq!(
        (status, s["status"].as_str()),
        (202, Some("pending")),
        "{s}"
    );
    let started = std::time::Instant::now();
    while !smtp
        .received()
        .iter()
        .any(|m| m.rcpt == ["asks@example.org"])
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no confirmation mail"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Validation errors name the field and change nothing.
    let before = subscriber_count(&site);
    for (body, field) in [
        (r#"{"email":"not an address"}"#, "email"),
        (r#"{"name":"No address"}"#, "email"),
        (
            r#"{"email":"x@example.org","double_opt_in":"no"}"#,
            "double_opt_in",
        ),
        (r#"{"email":"x@example.org","nickname":"x"}"#, "nickname"),
        (r#"{"email":"x@example.org","name":17}"#, "name"),
        ("[1,2]", "body"),
        ("{", "body"),
    ] {
        let (status, e) = api.call("POST", "/api/v1/subscribers", Some(&k), Some(body));
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {e}"
        );
    }
    for (query, field) in [
        ("status=gone", "status"),
        ("limit=0", "limit"),
        ("after=x", "after"),
        ("page=2", "page"),
    ] {
        let (status, e) = api.call(
            "GET",
            &format!("/api/v1/subscribers?{query}"),
            Some(&k),
            None,
        );
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{query}: {e}"
        );
    }
    assert_eq!(subscriber_count(&site), before);

    // Read one, rename, unsubscribe, resubscribe.
    let (status, s) = api.call(
        "GET",
        "/api/v1/subscribers/READER7@example.com",
        Some(&k),
        None,
    );
    assert_eq!((status, s["name"].as_str()), (200, Some("Reader 7")), "{s}");
    let (status, s) = api.call(
        "PATCH",
        "/api/v1/subscribers/reader7@example.com",
        Some(&k),
        Some(r#"{"name":"Seven"}"#),
    );
    assert_eq!((status, s["name"].as_str()), (200, Some("Seven")), "{s}");
    let (status, s) = api.call(
        "POST",
        "/api/v1/subscribers/reader7@example.com/unsubscribe",
        Some(&k),
        None,
    );
    assert_eq!(
        (status, s["status"].as_str()),
        (200, Some("unsubscribed")),
        "{s}"
    );
    let (_, feed) = api.call("GET", "/api/v1/events", Some(&k), None);
    let last = feed["data"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        (
            last["email"].as_str(),
            last["kind"].as_str(),
            last["channel"].as_str()
        ),
        (
            Some("reader7@example.com"),
            Some("unsubscribe"),
            Some("api")
        ),
        "{feed}"
    );
    let (_, later) = api.call(
        "GET",
        &format!("/api/v1/events?after={}", feed["next"].as_str().unwrap()),
        Some(&k),
        None,
    );
    assert_eq!(later["data"].as_array().unwrap().len(), 0, "{later}");
    let (status, s) = api.call(
        "POST",
        "/api/v1/subscribers/reader7@example.com/resubscribe",
        Some(&k),
        None,
    );
    assert_eq!((status, s["status"].as_str()), (200, Some("active")), "{s}");
    let (status, _) = api.call(
        "GET",
        "/api/v1/subscribers/nobody@example.com",
        Some(&k),
        None,
    );
    assert_eq!(status, 404);

    // Erasure: 204, the reader is gone, and adding the address again is refused.
    let (status, _) = api.call(
        "DELETE",
        "/api/v1/subscribers/reader8@example.com",
        Some(&k),
        None,
    );
    assert_eq!(status, 204);
    let (status, _) = api.call(
        "GET",
        "/api/v1/subscribers/reader8@example.com",
        Some(&k),
        None,
    );
    assert_eq!(status, 404);
    let (status, e) = api.call(
        "POST",
        "/api/v1/subscribers",
        Some(&k),
        Some(r#"{"email":"reader8@example.com","double_opt_in":false}"#),
    );
    assert_eq!(
        (
            status,
            e["error"]["code"].as_str(),
            e["error"]["field"].as_str()
        ),
        (409, Some("erased"), Some("email")),
        "{e}"
    );
    let (status, _) = api.call(
        "DELETE",
        "/api/v1/subscribers/reader8@example.com",
        Some(&k),
        None,
    );
    assert_eq!(status, 404);

    // Walking the list by cursor sees every active reader once.
    let mut seen = HashSet::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/subscribers?status=active&limit=100&after={a}"),
            None => "/api/v1/subscribers?status=active&limit=100".into(),
        };
        let (status, page) = api.call("GET", &path, Some(&k), None);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for s in page["data"].as_array().unwrap() {
            assert_eq!(s["status"], "active");
            assert!(seen.insert(s["email"].as_str().unwrap().to_owned()));
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250, "250 seeded, one added active, one erased");
    assert_eq!(pages, 3);
}

#[test]
fn issues_are_listed_with_their_figures() {
    let smtp = TestSmtp::start();
    let site = api_site(smtp.port());
    seed_subscribers(&site, 3);
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let k = key(&site, "dash", "issues:read");
    let mut serve = Process::start(&site, &["serve"]);
    let api = Api::new(serve.web_port());
    let (status, list) = api.call("GET", "/api/v1/issues", Some(&k), None);
    assert_eq!(status, 200, "{list}");
    let issues = list["data"].as_array().unwrap();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0]["state"], "complete");
    let (status, one) = api.call("GET", "/api/v1/issues/1", Some(&k), None);
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["figures"]["sent"], 3);
    assert_eq!(one["figures"]["recipients"], 3);
    assert_eq!(one["figures"]["failed"], 0);
    let (status, _) = api.call("GET", "/api/v1/issues/2", Some(&k), None);
    assert_eq!(status, 404);
    let (status, e) = api.call("GET", "/api/v1/issues/first", Some(&k), None);
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("number"))
    );
}

/// The (method, path) pairs of the OpenAPI document in the repository.
fn documented() -> (Value, BTreeSet<(String, String)>) {
    let text =
        std::fs::read_to_string(format!("{}/docs/openapi.json", crate::common::REPO)).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if method != "parameters" {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    (doc, ops)
}

#[test]
fn the_openapi_document_and_the_router_list_the_same_operations() {
    let (doc, documented) = documented();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = verdicts::api::routes();
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.json and the router's table (src/api/mod.rs) differ"
    );
    // Each operation states the scope the router asks for.
    for r in &routes {
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        match r.scope {
            Some(scope) => {
                assert_eq!(op["x-scope"], scope.as_str(), "{} {}", r.method, r.path);
                assert!(op["responses"]["401"].is_object() && op["responses"]["403"].is_object());
            }
            None => assert!(op["x-scope"].is_null()),
        }
    }
    // And the server hands out exactly that document.
    let smtp = TestSmtp::start();
    let site = api_site(smtp.port());
    let mut serve = Process::start(&site, &["serve"]);
    let api = Api::new(serve.web_port());
    let (status, served_doc) = api.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!((status, served_doc), (200, doc));
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_schema() {
    require_checker!(crate::checkers::Checker::Schemathesis);
    let smtp = TestSmtp::start();
    let site = api_site(smtp.port());
    seed_subscribers(&site, 20);
    site.cmd()
        .args(["send", "--at", "2026-11-23T09:00:00Z", "--yes"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let k = key(
        &site,
        "schemathesis",
        "subscribers:read,subscribers:write,issues:read,events:read",
    );
    let mut serve = Process::start(&site, &["serve"]);
    let port = serve.web_port();
    let out = std::process::Command::new(crate::checkers::python())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/docs/openapi.json", crate::common::REPO))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--header", &format!("Authorization: Bearer {k}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "25", "--no-color"])
        .current_dir(site.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        serve.log()
    );
    assert!(!serve.log().contains("panicked"), "{}", serve.log());
}
