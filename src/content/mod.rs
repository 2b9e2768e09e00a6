//! Comparison content files: YAML front matter (typed, strict) and an optional Markdown
//! editor's note. Every problem in every file is collected, each naming the file, the field,
//! the line where one is known, and what to fix.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;

mod parse;
pub use parse::*;

/// The four reviewer lenses of the panel, in the order the digest shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lens {
    Builder,
    Skeptic,
    Futurist,
    Business,
}

impl Lens {
    pub const ALL: [Lens; 4] = [Lens::Builder, Lens::Skeptic, Lens::Futurist, Lens::Business];

    pub fn label(self) -> &'static str {
        match self {
            Lens::Builder => "Builder",
            Lens::Skeptic => "Skeptic",
            Lens::Futurist => "Futurist",
            Lens::Business => "Business",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ship,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    pub verdict: Verdict,
    pub take: String,
}

/// One review per lens: the struct itself guarantees none is missing or doubled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reviews {
    pub builder: Review,
    pub skeptic: Review,
    pub futurist: Review,
    pub business: Review,
}

impl Reviews {
    pub fn get(&self, lens: Lens) -> &Review {
        match lens {
            Lens::Builder => &self.builder,
            Lens::Skeptic => &self.skeptic,
            Lens::Futurist => &self.futurist,
            Lens::Business => &self.business,
        }
    }

    pub fn ships(&self) -> usize {
        Lens::ALL
            .iter()
            .filter(|l| self.get(**l).verdict == Verdict::Ship)
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    pub tagline: String,
    pub entry: String,
    /// Absent means the community has not voted yet.
    #[serde(default)]
    pub community_votes: Option<u32>,
    /// Optional statement of the panel's ship share; checked against the verdicts.
    #[serde(default)]
    pub panel_ship_percent: Option<u8>,
    pub summary: String,
    pub reviews: Reviews,
    /// The subscribers' live vote (ship, total), filled in from the store once it has
    /// passed `tracking.min_votes`; never read from the file.
    #[serde(skip)]
    pub live_votes: Option<(u32, u32)>,
}

impl Tool {
    /// The share of this tool's reviews that say ship, in percent.
    pub fn ship_percent(&self) -> u8 {
        (self.reviews.ships() * 100 / Lens::ALL.len()) as u8
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    title: String,
    slug: String,
    published: String,
    category: String,
    tools: Vec<Tool>,
}

/// A validated comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub source: PathBuf,
    pub title: String,
    pub slug: String,
    pub published: DateTime<FixedOffset>,
    pub category: String,
    pub tools: [Tool; 2],
    /// The editor's note, rendered from Markdown (raw HTML in it is shown as text).
    pub note_html: Option<String>,
    /// The editor's note as plain text.
    pub note_text: Option<String>,
}

impl Comparison {
    pub fn published_utc(&self) -> DateTime<Utc> {
        self.published.with_timezone(&Utc)
    }
}

/// One problem in one content file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every problem found in a content directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContentErrors(pub Vec<ContentError>);

impl fmt::Display for ContentErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in content files:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// The folder under the content directory that holds comparisons.
pub fn comparisons_dir(content_dir: &Path) -> PathBuf {
    content_dir.join("comparisons")
}

/// Whether a file in the comparisons folder is a comparison: it ends in `.md`, in any letter
/// case (`broken.MD` is read, not silently passed over), and is not hidden.
fn is_comparison_file(path: &Path) -> bool {
    !is_hidden(path)
        && path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("md"))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The largest comparison file read: a page of front matter and a short note is a few KB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads one content file as UTF-8, refusing what is not a regular file (a FIFO would block
/// the read forever, a device such as a link to `/dev/zero` never ends) and anything over
/// [`MAX_FILE_BYTES`], without reading more than that.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        let what = file_kind(&meta.file_type());
        return Err(format!(
            "not a regular file ({what}); a comparison file must be a plain file"
        ));
    }
    let too_big = |size: u64| {
        format!(
            "the file is {:.1} MB; a comparison file may be at most {} MB",
            size as f64 / 1e6,
            MAX_FILE_BYTES / (1024 * 1024)
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        // It grew while being read.
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid bytes at offset {}); save the file as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// The files in `content_dir/comparisons` that [`load_dir`] passes over for their name
/// (not `.md`), hidden files (editor swap files, `.gitkeep`) aside, sorted.
pub fn skipped_files(content_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(comparisons_dir(content_dir)) else {
        return Vec::new();
    };
    let mut skipped: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !is_hidden(p) && !is_comparison_file(p))
        .collect();
    skipped.sort();
    skipped
}

/// Loads and validates every `*.md` file in `content_dir/comparisons`, sorted by
/// publication time. Any problem in any file fails the whole load, listing all problems.
pub fn load_dir(content_dir: &Path) -> Result<Vec<Comparison>, ContentErrors> {
    let dir = comparisons_dir(content_dir);
    let fail = |reason: String| {
        ContentErrors(vec![ContentError {
            file: dir.clone(),
            line: None,
            field: None,
            reason,
        }])
    };
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| fail(format!("cannot read the comparisons folder: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| fail(format!("cannot list the comparisons folder: {e}")))?
            .path();
        if is_comparison_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();

    let mut errors = Vec::new();
    let mut comparisons = Vec::new();
    for path in paths {
        match read_bounded(&path) {
            Err(reason) => errors.push(ContentError {
                file: path,
                line: None,
                field: None,
                reason,
            }),
            Ok(text) => match parse_comparison(&path, &text) {
                Ok(c) => comparisons.push(c),
                Err(mut es) => errors.append(&mut es),
            },
        }
    }

    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for c in &comparisons {
        if let Some(first) = seen.get(&c.slug) {
            errors.push(ContentError {
                file: c.source.clone(),
                line: None,
                field: Some("slug".into()),
                reason: format!(
                    "`{}` is already used by {}; slugs must be unique",
                    c.slug,
                    first.display()
                ),
            });
        } else {
            seen.insert(c.slug.clone(), c.source.clone());
        }
    }

    if errors.is_empty() {
        comparisons.sort_by(|a, b| {
            a.published_utc()
                .cmp(&b.published_utc())
                .then(a.slug.cmp(&b.slug))
        });
        Ok(comparisons)
    } else {
        Err(ContentErrors(errors))
    }
}

/// Splits `---` front matter from the body. Returns (front matter, first line number of
/// the front matter, body).
fn split_front_matter(text: &str) -> Option<(&str, usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))?;
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            let front = &rest[..offset];
            let body = &rest[offset + line.len()..];
            return Some((front, 2, body));
        }
        offset += line.len();
    }
    None
}

/// The 1-based line in `front` (starting at `first_line`) of the `nth` line whose key is
/// `key`, for pointing at fields that parsed but failed a rule.
fn line_of(front: &str, first_line: usize, key: &str, nth: usize) -> Option<usize> {
    front
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            t.strip_prefix(key).is_some_and(|r| r.starts_with(':'))
        })
        .nth(nth)
        .map(|(i, _)| i + first_line)
}

/// Paths of the public site and the web endpoint that a comparison page would collide with.
pub const RESERVED_SLUGS: [&str; 8] = [
    "issues",
    "category",
    "page",
    "unsubscribe",
    "subscribe",
    "confirm",
    "healthz",
    "feed",
];

fn is_url_safe_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 120
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_split_handles_crlf_and_bom() {
        let t = "\u{feff}---\r\ntitle: x\r\n---\r\nbody\r\n";
        let (front, first, body) = split_front_matter(t).unwrap();
        assert_eq!(front, "title: x\r\n");
        assert_eq!(first, 2);
        assert_eq!(body, "body\r\n");
    }

    #[test]
    fn note_links_survive_only_for_http_and_mailto() {
        let (html, text) = render_note(
            "[a](javascript:alert(1)) [b](data:text/html,x) [c](vbscript:x) [d](/relative) \
             [e](JavaScript:alert(2)) [f](https://ok.example/) [g](mailto:ed@example.com)",
        );
        let (html, text) = (html.unwrap(), text.unwrap());
        for bad in ["javascript:", "JavaScript:", "data:", "vbscript:"] {
            assert!(!html.contains(bad), "{bad} in {html}");
            assert!(!text.contains(bad), "{bad} in {text}");
        }
        assert!(html.contains(r#"href="https://ok.example/""#), "{html}");
        assert!(html.contains(r#"href="mailto:ed@example.com""#), "{html}");
        assert!(text.contains("<https://ok.example/>"), "{text}");
        // Left for lint's link-absolute rule to name.
        assert!(html.contains(r#"href="/relative""#), "{html}");
    }

    #[test]
    fn control_characters_are_found_where_they_do_not_belong() {
        assert_eq!(control_char("Title\u{7}", false), Some('\u{7}'));
        assert_eq!(control_char("two\nlines", false), Some('\n'));
        assert_eq!(control_char("block scalar\n", false), None);
        assert_eq!(control_char("para one\n\npara two\n", true), None);
        assert_eq!(control_char("esc \u{1b}[31m", true), Some('\u{1b}'));
    }

    #[test]
    fn note_keeps_links_in_text_and_neutralises_html() {
        let (html, text) = render_note("See [the docs](https://example.com/d) <b>now</b>.");
        let html = html.unwrap();
        assert!(html.contains("href=\"https://example.com/d\""));
        assert!(html.contains("&lt;b&gt;"), "{html}");
        assert_eq!(
            text.unwrap(),
            "See the docs <https://example.com/d> <b>now</b>."
        );
    }

    #[test]
    fn slugs_must_be_url_safe() {
        assert!(is_url_safe_slug("gemini-vs-llama-4"));
        for bad in ["", "Upper", "a b", "a--b", "-a", "a/b", "ünï"] {
            assert!(!is_url_safe_slug(bad), "{bad}");
        }
    }
}
