//! The public static site, built from the same content files as the digest: one page per
//! comparison, the home and category listings, the archive of sent issues ("view in
//! browser"), Atom feeds and a sitemap. A build is written beside the output folder and
//! swapped in whole, so a visitor never sees half a site.

mod feed;
mod output;
mod pages;
pub mod serve;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::config::Config;
use crate::content::Comparison;
use crate::digest::render::RenderedDigest;
use crate::store::ledger::{self, IssueState};
use crate::store::IssueNumber;

pub use output::{remove_retired, OutputError};

/// Listing pages hold this many entries, which keeps each page well under 50 KB.
pub const PER_PAGE: usize = 30;

/// A sent (or sending) issue as the archive shows it.
#[derive(Debug, Clone)]
pub struct ArchivedIssue {
    pub number: IssueNumber,
    /// The slot the issue went out for; shown as its date.
    pub sent: DateTime<Utc>,
    pub subject: String,
    /// The comparisons it carried, in digest order.
    pub slugs: Vec<String>,
    /// The digest as stored by the ledger, unsubscribe links still placeholders.
    pub digest: RenderedDigest,
}

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("rendering a site page failed: {0}")]
    Template(#[from] askama::Error),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("reading the issue archive from the ledger failed: {0}")]
    Ledger(#[from] rusqlite::Error),
}

/// What a build wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub out_dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// The previous site, moved aside; delete it with [`remove_retired`] (it is no longer
    /// served, so that can happen in the background).
    pub retired: Option<PathBuf>,
}

/// One file of the site: its path under the output folder (`/`-separated) and its bytes.
#[derive(Debug, Clone)]
pub struct SiteFile {
    pub path: String,
    pub body: String,
}

/// Every issue a reader may have received (sending, paused or complete), oldest first.
/// Skipped slots never went out and have no page.
pub fn load_archive(conn: &Connection) -> Result<Vec<ArchivedIssue>, SiteError> {
    let mut archive = Vec::new();
    for issue in ledger::issues(conn)?.into_iter().rev() {
        if issue.state == IssueState::Skipped {
            continue;
        }
        let digest = RenderedDigest::from(ledger::stored_digest(conn, issue.number)?);
        archive.push(ArchivedIssue {
            number: issue.number,
            sent: issue.slot,
            subject: issue.subject,
            slugs: issue.slugs,
            digest,
        });
    }
    Ok(archive)
}

/// Renders every file of the site in memory.
pub fn render(
    config: &Config,
    comparisons: &[Comparison],
    issues: &[ArchivedIssue],
) -> Result<Vec<SiteFile>, SiteError> {
    pages::render_all(config, comparisons, issues)
}

/// Builds the site into `out_dir`: renders every page, writes them to a fresh folder beside
/// `out_dir` and swaps it in.
#[tracing::instrument(skip_all, fields(out = %out_dir.display(), comparisons = comparisons.len(), issues = issues.len()))]
pub fn build(
    config: &Config,
    comparisons: &[Comparison],
    issues: &[ArchivedIssue],
    out_dir: &Path,
) -> Result<BuildReport, SiteError> {
    let files = render(config, comparisons, issues)?;
    let (bytes, retired) = output::publish(out_dir, &files)?;
    tracing::debug!(files = files.len(), bytes, "site built");
    Ok(BuildReport {
        out_dir: out_dir.to_owned(),
        files: files.len(),
        bytes,
        retired,
    })
}

/// Where `verdicts site build` writes when neither `--out` nor `site.out_dir` says.
pub const DEFAULT_OUT_DIR: &str = "public";

/// Builds the site from what is on disk now: the content files and every issue in the
/// ledger (none when there is no database yet). Invalid content fails the build and leaves
/// the published site as it was.
pub fn build_current(config: &Config, out_dir: &Path) -> anyhow::Result<BuildReport> {
    let mut comparisons = crate::content::load_dir(&config.content_dir)?;
    let db = config.database_path();
    let issues = if db.exists() {
        let conn = crate::store::open(&db)?;
        // The subscribers' votes live in the database, so a rebuild shows them again.
        crate::tracking::community::apply(&conn, config, &mut comparisons)?;
        load_archive(&conn)?
    } else {
        Vec::new()
    };
    Ok(build(config, &comparisons, &issues, out_dir)?)
}

/// Rebuilds the site at `site.out_dir`, if one is configured, and deletes the previous copy.
/// Failures are logged, never returned: a send or the daemon carries on without the site.
pub fn rebuild_configured(config: &Config, why: &str) {
    let Some(out) = &config.site_out_dir else {
        return;
    };
    match build_current(config, out) {
        Ok(report) => {
            // Quiet on success: the CLI shows info logs, and a send's output is its report.
            tracing::debug!(reason = why, out = %out.display(), files = report.files, "site rebuilt");
            if let Some(old) = report.retired {
                if let Err(e) = remove_retired(&old) {
                    tracing::warn!("{e}");
                }
            }
        }
        Err(e) => tracing::error!(reason = why, out = %out.display(), "site not rebuilt: {e:#}"),
    }
}

/// What the content files look like on disk (name, size, modification time), to notice an
/// edit without reading them.
pub fn content_fingerprint(config: &Config) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let dir = crate::content::comparisons_dir(&config.content_dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// The URL paths (relative to `base_url`, without leading slash) a built site answers,
/// for checking a digest's links without building. Folders are listed with a trailing `/`
/// and also without it, as static hosts redirect one to the other.
pub fn page_paths(
    config: &Config,
    comparisons: &[Comparison],
    issues: &[ArchivedIssue],
) -> Result<BTreeSet<String>, SiteError> {
    let mut paths = BTreeSet::new();
    paths.insert(String::new());
    for f in render(config, comparisons, issues)? {
        match f.path.strip_suffix("index.html") {
            Some(dir) => {
                paths.insert(dir.to_owned());
                paths.insert(dir.trim_end_matches('/').to_owned());
            }
            None => {
                paths.insert(f.path);
            }
        }
    }
    Ok(paths)
}

/// The paths the site built from what is on disk now would have, or `None` when the content
/// does not load (the content checks report that) or the ledger cannot be read.
pub fn current_page_paths(config: &Config) -> Option<BTreeSet<String>> {
    let comparisons = crate::content::load_dir(&config.content_dir).ok()?;
    let db = config.database_path();
    let issues = if db.exists() {
        load_archive(&crate::store::open(&db).ok()?).ok()?
    } else {
        Vec::new()
    };
    page_paths(config, &comparisons, &issues).ok()
}

/// A URL-safe form of a category name ("Developer Tools" → "developer-tools").
pub fn category_slug(category: &str) -> String {
    let mut slug = String::with_capacity(category.len());
    for ch in category.chars().flat_map(char::to_lowercase) {
        if ch.is_ascii_alphanumeric() {
            slug.push(ch);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    if slug.is_empty() {
        slug.push_str("other");
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_slugs_are_url_safe() {
        assert_eq!(category_slug("Developer Tools"), "developer-tools");
        assert_eq!(category_slug("  AI / ML  "), "ai-ml");
        assert_eq!(category_slug("Vidéo"), "vid-o");
        assert_eq!(category_slug("✨"), "other");
    }
}
