//! The smaller holes: content files passed over for their name, links in an editor's note,
//! control characters in content fields, and spreadsheet formulas in exported CSV.

use predicates::prelude::*;

use crate::common::{fixture, TempSite};

const AT: &str = "2026-11-23T09:00:00Z";

#[test]
fn check_reads_upper_case_md_and_lists_what_it_skips() {
    let site = TempSite::new();
    site.add_comparison("good.md", &fixture("valid.md"));
    site.add_comparison("notes.txt", "not a comparison");
    site.add_comparison("draft.markdown", &fixture("valid.md"));
    site.add_comparison(".good.md.swp", "editor swap file");
    site.cmd().arg("check").assert().success().stdout(
        predicate::str::contains("1 comparison file in")
            .and(predicate::str::contains(
                "Skipped 2 files not ending in .md (not read as comparisons):",
            ))
            .and(predicate::str::contains("draft.markdown"))
            .and(predicate::str::contains("notes.txt"))
            .and(predicate::str::contains(".swp").not()),
    );
    // A broken file with the extension in capitals is read, and its problem reported.
    site.add_comparison("broken.MD", "no front matter here\n");
    site.cmd()
        .arg("check")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("broken.MD:1"));
}

#[test]
fn only_http_and_mailto_links_of_a_note_reach_the_digest() {
    let site = TempSite::new();
    // Links as written, straight to the site (tracking.rs covers the tracked ones).
    site.edit_config(|c| c + "tracking:\n  clicks: off\n");
    site.add_comparison(
        "links.md",
        &format!(
            "{}\n[one](javascript:alert(document.cookie)) [two](data:text/html;base64,PHNjcmlwdD4=) \
             [three](vbscript:msgbox) [four](JAVASCRIPT:alert(1)) \
             [kept](https://verdicts.example.com/methodology) [mail](mailto:editor@example.com)\n",
            fixture("valid.md").trim_end()
        ),
    );
    let out = site.path().join("out");
    site.cmd()
        .args(["preview", "--force", "--at", AT, "--out"])
        .arg(&out)
        .assert()
        .success();
    for file in ["digest.html", "digest.txt", "digest.eml"] {
        let text = std::fs::read_to_string(out.join(file))
            .unwrap()
            .to_lowercase();
        for bad in ["javascript:", "data:text", "vbscript:"] {
            assert!(!text.contains(bad), "{bad} reached {file}");
        }
    }
    let html = std::fs::read_to_string(out.join("digest.html")).unwrap();
    assert!(html.contains(r#"href="https://verdicts.example.com/methodology""#));
    assert!(html.contains(r#"href="mailto:editor@example.com""#));
}

#[test]
fn control_characters_in_a_content_field_are_refused_by_file_and_field() {
    let site = TempSite::new();
    site.add_comparison(
        "bell.md",
        &fixture("valid.md").replace(
            "title: Alpha Coder vs Beta Writer",
            "title: \"Alpha Coder\\a vs Beta Writer\"",
        ),
    );
    site.add_comparison(
        "escape.md",
        &fixture("valid.md")
            .replace("slug: alpha-coder-vs-beta-writer", "slug: escape")
            .replace(
                "tagline: A coding assistant for tests",
                "tagline: \"A coding \\e[31massistant\"",
            ),
    );
    site.cmd().arg("check").assert().code(1).stderr(
        predicate::str::contains("bell.md:2: field `title`: contains the control character U+0007")
            .and(predicate::str::contains(
                "escape.md:8: field `tools[0].tagline`: contains the control character U+001B",
            )),
    );
    site.cmd()
        .args(["send", "--at", AT, "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("U+0007"));
}

#[test]
fn exports_neutralise_formulas_and_import_reads_them_back() {
    let site = TempSite::new();
    std::fs::write(
        site.path().join("in.csv"),
        "email,name\n\
         ada@example.com,\"=HYPERLINK(\"\"http://evil.example\"\",\"\"click\"\")\"\n\
         grace@example.com,+1 555 0100\n\
         alan@example.com,@Alan\n\
         kate@example.com,-Kate\n\
         plain@example.com,O'Brien\n",
    )
    .unwrap();
    site.cmd()
        .args(["subscribers", "import", "in.csv"])
        .assert()
        .success();
    // A name that itself starts with a quote and a formula character.
    site.cmd()
        .args([
            "subscribers",
            "add",
            "quoted@example.com",
            "--name",
            "'=quoted",
        ])
        .assert()
        .success();
    let safe = site
        .cmd()
        .args(["subscribers", "export"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let safe = String::from_utf8(safe).unwrap();
    for line in safe.lines().skip(1) {
        let name = line.split(',').nth(1).unwrap_or("").trim_start_matches('"');
        assert!(
            !name.starts_with(['=', '+', '-', '@']),
            "a spreadsheet would run {line}"
        );
    }
    assert!(safe.contains("'=HYPERLINK"), "{safe}");
    assert!(safe.contains(",''=quoted,"), "{safe}");
    assert!(safe.contains("O'Brien"), "{safe}");
    site.cmd()
        .args(["subscribers", "list", "--format", "csv"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("\"'=HYPERLINK(")
                .and(predicate::str::contains(",'+1 555 0100,")),
        );

    let raw = site
        .cmd()
        .args(["subscribers", "export", "--keep-formulas"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8(raw).unwrap().contains(",\"=HYPERLINK("));

    // Export, then import into a new list: the names are exactly as they were.
    site.cmd()
        .args(["subscribers", "export", "--out", "out.csv"])
        .assert()
        .success();
    let copy = TempSite::new();
    std::fs::copy(site.path().join("out.csv"), copy.path().join("out.csv")).unwrap();
    copy.cmd()
        .args(["subscribers", "import", "out.csv"])
        .assert()
        .success();
    let names = |s: &TempSite| {
        s.cmd()
            .args(["subscribers", "list", "--format", "json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    let original: serde_json::Value = serde_json::from_slice(&names(&site)).unwrap();
    let imported: serde_json::Value = serde_json::from_slice(&names(&copy)).unwrap();
    let pick = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["email"].to_string(), s["name"].to_string()))
            .collect()
    };
    assert_eq!(pick(&original), pick(&imported));
    assert!(pick(&imported)
        .iter()
        .any(|(_, n)| n.contains("=HYPERLINK")));
    assert!(pick(&imported).iter().any(|(_, n)| n == "\"'=quoted\""));
}
