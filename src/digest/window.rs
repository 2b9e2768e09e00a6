//! Which comparisons an issue holds, and what the digest says about each: the window
//! (previous cutoff, cutoff], the panel's pick, the lens-by-lens split and the take to quote.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};

use crate::content::{Comparison, Lens, Verdict};

/// How far back the very first issue looks.
pub const FIRST_ISSUE_LOOKBACK_DAYS: i64 = 7;

/// The publication window of one issue: strictly after `after`, at or before `cutoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub after: DateTime<Utc>,
    pub cutoff: DateTime<Utc>,
}

impl Window {
    /// The window of an issue whose cutoff is `cutoff`, given the previous issue's cutoff
    /// (`None` for the first issue, which looks back seven days).
    pub fn new(previous_cutoff: Option<DateTime<Utc>>, cutoff: DateTime<Utc>) -> Window {
        Window {
            after: previous_cutoff.unwrap_or(cutoff - Duration::days(FIRST_ISSUE_LOOKBACK_DAYS)),
            cutoff,
        }
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.after < t && t <= self.cutoff
    }
}

/// The comparisons for an issue: published inside `window` and never sent before.
/// Comparisons keep their order (by publication time).
pub fn select<'a>(
    comparisons: &'a [Comparison],
    window: &Window,
    already_sent: &HashSet<String>,
) -> Vec<&'a Comparison> {
    comparisons
        .iter()
        .filter(|c| window.contains(c.published_utc()) && !already_sent.contains(&c.slug))
        .collect()
}

/// The panel's overall recommendation for a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Index of the tool with the higher ship share.
    Tool(usize),
    Split,
}

/// Why a take is the one quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Highlight {
    /// A reviewer who voted against the rest of the panel on that tool.
    Dissent,
    /// The lens that split the two tools.
    Decisive,
    /// No dissent and no split: the first reviewer on the pick.
    Consensus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotedTake {
    pub kind: Highlight,
    pub lens: Lens,
    pub tool: usize,
    pub verdict: Verdict,
}

pub fn pick(c: &Comparison) -> Pick {
    let (a, b) = (c.tools[0].ship_percent(), c.tools[1].ship_percent());
    match a.cmp(&b) {
        std::cmp::Ordering::Greater => Pick::Tool(0),
        std::cmp::Ordering::Less => Pick::Tool(1),
        std::cmp::Ordering::Equal => Pick::Split,
    }
}

/// The dissenting take if a reviewer voted against the majority on a tool, else the take of
/// the lens that separated the tools, else the panel's first take on the pick.
pub fn quoted_take(c: &Comparison) -> QuotedTake {
    for lens in Lens::ALL {
        for (i, tool) in c.tools.iter().enumerate() {
            let ships = tool.reviews.ships();
            let verdict = tool.reviews.get(lens).verdict;
            let majority = match ships {
                3 | 4 => Some(Verdict::Ship),
                0 | 1 => Some(Verdict::Skip),
                _ => None,
            };
            if majority.is_some_and(|m| m != verdict) {
                return QuotedTake {
                    kind: Highlight::Dissent,
                    lens,
                    tool: i,
                    verdict,
                };
            }
        }
    }
    let favoured = match pick(c) {
        Pick::Tool(i) => i,
        Pick::Split => 0,
    };
    for lens in Lens::ALL {
        let a = c.tools[0].reviews.get(lens).verdict;
        let b = c.tools[1].reviews.get(lens).verdict;
        if a != b {
            return QuotedTake {
                kind: Highlight::Decisive,
                lens,
                tool: favoured,
                verdict: c.tools[favoured].reviews.get(lens).verdict,
            };
        }
    }
    QuotedTake {
        kind: Highlight::Consensus,
        lens: Lens::Builder,
        tool: favoured,
        verdict: c.tools[favoured].reviews.builder.verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::parse_comparison;
    use std::path::Path;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn comparison(slug: &str, published: &str, a: [&str; 4], b: [&str; 4]) -> Comparison {
        let tool = |name: &str, v: [&str; 4]| {
            format!(
                "  - name: {name}\n    tagline: t\n    entry: Free\n    summary: s\n    reviews:\n{}",
                ["builder", "skeptic", "futurist", "business"]
                    .iter()
                    .zip(v)
                    .map(|(l, v)| format!("      {l}:\n        verdict: {v}\n        take: {l} says {v}\n"))
                    .collect::<String>()
            )
        };
        let text = format!(
            "---\ntitle: A vs B\nslug: {slug}\npublished: {published}\ncategory: C\ntools:\n{}{}---\n",
            tool("A", a),
            tool("B", b)
        );
        parse_comparison(Path::new("x.md"), &text).unwrap()
    }

    const SHIP4: [&str; 4] = ["ship"; 4];

    #[test]
    fn window_excludes_previous_cutoff_and_includes_its_own() {
        let cutoff = utc("2026-11-23T09:00:00Z");
        let prev = utc("2026-11-16T09:00:00Z");
        let cs = vec![
            comparison("at-prev", "2026-11-16T09:00:00Z", SHIP4, SHIP4),
            comparison("just-after", "2026-11-16T09:00:01Z", SHIP4, SHIP4),
            comparison("at-cutoff", "2026-11-23T09:00:00Z", SHIP4, SHIP4),
            comparison("future", "2026-11-23T09:00:01Z", SHIP4, SHIP4),
        ];
        let w = Window::new(Some(prev), cutoff);
        let got: Vec<_> = select(&cs, &w, &HashSet::new())
            .iter()
            .map(|c| c.slug.as_str())
            .collect();
        assert_eq!(got, ["just-after", "at-cutoff"]);
    }

    #[test]
    fn offsets_are_compared_as_instants() {
        // 10:00+02:00 is 08:00Z, before a 09:00Z cutoff; 04:30-05:00 is 09:30Z, after it.
        let cs = vec![
            comparison("berlin", "2026-11-23T10:00:00+02:00", SHIP4, SHIP4),
            comparison("new-york", "2026-11-23T04:30:00-05:00", SHIP4, SHIP4),
        ];
        let w = Window::new(None, utc("2026-11-23T09:00:00Z"));
        let got: Vec<_> = select(&cs, &w, &HashSet::new())
            .iter()
            .map(|c| c.slug.as_str())
            .collect();
        assert_eq!(got, ["berlin"]);
    }

    #[test]
    fn first_issue_looks_back_seven_days_and_sent_slugs_are_skipped() {
        let cs = vec![
            comparison("too-old", "2026-11-16T08:59:59Z", SHIP4, SHIP4),
            comparison("in", "2026-11-16T09:00:01Z", SHIP4, SHIP4),
            comparison("sent", "2026-11-18T09:00:00Z", SHIP4, SHIP4),
        ];
        let w = Window::new(None, utc("2026-11-23T09:00:00Z"));
        let sent = HashSet::from(["sent".to_string()]);
        let got: Vec<_> = select(&cs, &w, &sent)
            .iter()
            .map(|c| c.slug.as_str())
            .collect();
        assert_eq!(got, ["in"]);
    }

    #[test]
    fn pick_and_quoted_take() {
        let c = comparison(
            "x",
            "2026-11-16T10:00:00Z",
            SHIP4,
            ["ship", "ship", "ship", "skip"],
        );
        assert_eq!(pick(&c), Pick::Tool(0));
        let q = quoted_take(&c);
        assert_eq!(
            (q.kind, q.lens, q.tool),
            (Highlight::Dissent, Lens::Business, 1)
        );

        let c = comparison(
            "y",
            "2026-11-16T10:00:00Z",
            ["ship", "ship", "skip", "skip"],
            ["skip", "ship", "ship", "skip"],
        );
        assert_eq!(pick(&c), Pick::Split);
        let q = quoted_take(&c);
        assert_eq!((q.kind, q.lens), (Highlight::Decisive, Lens::Builder));

        let c = comparison("z", "2026-11-16T10:00:00Z", SHIP4, SHIP4);
        assert_eq!(quoted_take(&c).kind, Highlight::Consensus);
    }
}
