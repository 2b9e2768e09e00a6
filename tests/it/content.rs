//! The content loader against fixture files: valid content loads, and each kind of broken
//! file is reported with its file, field and reason.

use crate::common::{fixture, TempSite};
use verdicts::content::{load_dir, Verdict};

fn errors_for(files: &[&str]) -> Vec<String> {
    let site = TempSite::new();
    for f in files {
        site.add_comparison(f.rsplit('/').next().unwrap(), &fixture(f));
    }
    match load_dir(&site.path().join("content")) {
        Ok(cs) => panic!("expected errors, loaded {} comparisons", cs.len()),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn single_error(file: &str) -> String {
    let errors = errors_for(&[file]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let name = file.rsplit('/').next().unwrap();
    assert!(
        errors[0].contains(name),
        "message should name the file: {}",
        errors[0]
    );
    errors[0].clone()
}

#[test]
fn bundled_content_loads_with_seed_facts() {
    let cs = load_dir(&std::path::Path::new(crate::common::BUNDLED).join("content")).unwrap();
    assert_eq!(cs.len(), 5);
    let percents: Vec<(u8, u8)> = cs
        .iter()
        .map(|c| (c.tools[0].ship_percent(), c.tools[1].ship_percent()))
        .collect();
    assert_eq!(
        percents,
        [(100, 75), (75, 100), (100, 75), (100, 100), (100, 75)]
    );
    assert!(cs.iter().all(|c| c.category == "Developer Tools"));
    assert!(cs
        .iter()
        .flat_map(|c| &c.tools)
        .all(|t| t.community_votes.is_none()));
    assert_eq!(cs[2].tools[1].entry, "Paid");
    assert_eq!(cs[0].tools[1].reviews.business.verdict, Verdict::Skip);
}

#[test]
fn valid_fixture_loads() {
    let site = TempSite::new();
    site.add_comparison("valid.md", &fixture("valid.md"));
    let cs = load_dir(&site.path().join("content")).unwrap();
    assert_eq!(cs[0].tools[1].community_votes, Some(1234));
    assert_eq!(cs[0].tools[1].ship_percent(), 75);
    assert!(cs[0]
        .note_html
        .as_deref()
        .unwrap()
        .contains("<em>editor's note</em>"));
}

#[test]
fn missing_field_is_named() {
    let e = single_error("invalid/missing-field.md");
    assert!(e.contains("missing field `entry`"), "{e}");
    assert!(e.contains("tools[1]"), "{e}");
}

#[test]
fn unknown_field_is_named() {
    let e = single_error("invalid/unknown-field.md");
    assert!(e.contains("unknown field `rating`"), "{e}");
    assert!(
        e.contains("unknown-field.md:6:"),
        "points at the `rating` line: {e}"
    );
}

#[test]
fn bad_date_is_explained() {
    let e = single_error("invalid/bad-date.md");
    assert!(e.contains("field `published`"), "{e}");
    assert!(e.contains("17/11/2026 noon"), "{e}");
    assert!(e.contains("RFC 3339"), "{e}");
    assert!(e.contains(":4:"), "{e}");
}

#[test]
fn third_tool_is_refused() {
    let e = single_error("invalid/third-tool.md");
    assert!(e.contains("field `tools`"), "{e}");
    assert!(e.contains("exactly two tools, this file has 3"), "{e}");
}

#[test]
fn percentage_must_agree_with_verdicts() {
    let e = single_error("invalid/percentage-disagrees.md");
    assert!(e.contains("tools[1].panel_ship_percent"), "{e}");
    assert!(
        e.contains("states 100% but 3 of 4 reviews of Beta Writer say ship, which is 75%"),
        "{e}"
    );
}

#[test]
fn broken_yaml_gives_a_line() {
    let e = single_error("invalid/broken-yaml.md");
    assert!(e.contains("broken-yaml.md:"), "{e}");
    assert!(e.chars().any(|c| c.is_ascii_digit()), "{e}");
}

#[test]
fn bad_verdict_lists_the_choices() {
    let e = single_error("invalid/bad-verdict.md");
    assert!(e.contains("maybe"), "{e}");
    assert!(e.contains("ship") && e.contains("skip"), "{e}");
}

#[test]
fn missing_front_matter_is_explained() {
    let e = single_error("invalid/no-front-matter.md");
    assert!(e.contains("no front matter"), "{e}");
}

#[test]
fn duplicate_slug_names_both_files() {
    let site = TempSite::new();
    site.add_comparison("a.md", &fixture("valid.md"));
    site.add_comparison("b.md", &fixture("valid.md"));
    let errors = load_dir(&site.path().join("content")).unwrap_err().0;
    assert_eq!(errors.len(), 1);
    let e = errors[0].to_string();
    assert!(e.contains("b.md") && e.contains("a.md"), "{e}");
    assert!(
        e.contains("`alpha-coder-vs-beta-writer` is already used"),
        "{e}"
    );
}

#[test]
fn all_bad_files_are_reported_together() {
    let errors = errors_for(&[
        "invalid/bad-date.md",
        "invalid/unknown-field.md",
        "valid.md",
    ]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("bad-date.md")));
    assert!(errors.iter().any(|e| e.contains("unknown-field.md")));
}
