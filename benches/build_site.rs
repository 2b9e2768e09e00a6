//! Site build time for a large newsletter: 1,000 comparisons (the bundled five, renamed and
//! spread over eight categories and four years) and 200 sent issues, rendered and written to
//! a fresh folder, then swapped in (the time until the new site is live). Target: under 2 s.
//! Run with `cargo bench --bench build_site`.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Duration as Days;
use verdicts::config::Config;
use verdicts::content::{load_dir, Comparison};
use verdicts::digest::render::render_issue;
use verdicts::site::{self, ArchivedIssue};
use verdicts::store::IssueNumber;

const COMPARISONS: usize = 1_000;
const ISSUES: usize = 200;
const CATEGORIES: [&str; 8] = [
    "Developer Tools",
    "Writing",
    "Image Generation",
    "Speech",
    "Agents",
    "Data Analysis",
    "Video",
    "Search",
];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("config/newsletter.yaml")).expect("bundled config");
    let bundled = load_dir(&config.content_dir).expect("bundled content");
    let start = "2023-01-02T10:00:00+00:00"
        .parse::<chrono::DateTime<chrono::FixedOffset>>()
        .expect("date");

    let comparisons: Vec<Comparison> = (0..COMPARISONS)
        .map(|i| {
            let mut c = bundled[i % bundled.len()].clone();
            c.slug = format!("{}-{i}", c.slug);
            c.title = format!("{} ({i})", c.title);
            c.category = CATEGORIES[i % CATEGORIES.len()].to_owned();
            c.published = start + Days::hours(i as i64 * 35);
            c
        })
        .collect();
    let issues: Vec<ArchivedIssue> = comparisons
        .chunks(COMPARISONS / ISSUES)
        .take(ISSUES)
        .enumerate()
        .map(|(n, chunk)| {
            let refs: Vec<&Comparison> = chunk.iter().collect();
            let sent = chunk[chunk.len() - 1].published_utc() + Days::hours(1);
            let digest = render_issue(&config, &refs, sent).expect("render");
            ArchivedIssue {
                number: IssueNumber(n as i64 + 1),
                sent,
                subject: digest.subject.clone(),
                slugs: chunk.iter().map(|c| c.slug.clone()).collect(),
                digest,
            }
        })
        .collect();

    let t = Instant::now();
    let files = site::render(&config, &comparisons, &issues).expect("render");
    println!(
        "rendering alone: {:.2?} for {} files",
        t.elapsed(),
        files.len()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("public");
    let mut times: Vec<Duration> = Vec::new();
    let mut cleanup: Vec<Duration> = Vec::new();
    let mut report = None;
    for _ in 0..5 {
        let t = Instant::now();
        let built = site::build(&config, &comparisons, &issues, &out).expect("build");
        times.push(t.elapsed());
        if let Some(old) = &built.retired {
            let t = Instant::now();
            site::remove_retired(old).expect("remove the previous site");
            cleanup.push(t.elapsed());
        }
        report = Some(built);
    }
    times.sort();
    cleanup.sort();
    let report = report.expect("built");
    println!(
        "site build, {COMPARISONS} comparisons and {ISSUES} issues: {} files, {:.1} MB",
        report.files,
        report.bytes as f64 / 1e6
    );
    println!(
        "time: best {:.2?}, median {:.2?}, worst {:.2?} over {} builds (target < 2 s)",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times.len(),
    );
    if !cleanup.is_empty() {
        println!(
            "then deleting the previous site (after the swap, off the build's path): median {:.2?}",
            cleanup[cleanup.len() / 2]
        );
    }
}
