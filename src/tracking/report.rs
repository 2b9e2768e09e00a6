//! `verdicts report`: the newsletter's health on one self-contained HTML page. Inline SVG
//! only (no script, no external asset), colours that hold in dark mode, and every chart
//! with a text alternative and its figures in a table for screen readers.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::config::Config;
use crate::store::events;
use crate::store::ledger;
use crate::store::tracking as store;

/// Issues shown in the funnel and the clicks chart.
const LAST_ISSUES: usize = 8;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart: one row per label, bars scaled to the largest value.
fn bars(title: &str, rows: &[(String, u64, String)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let row_h = 26;
    let h = rows.len() * row_h + 8;
    let mut svg = format!(
        "<svg role=\"img\" aria-labelledby=\"t-{id}\" viewBox=\"0 0 640 {h}\" width=\"100%\" \
         preserveAspectRatio=\"xMinYMin meet\"><title id=\"t-{id}\">{title}</title>",
        id = title_id(title),
        title = esc(title)
    );
    for (i, (label, value, note)) in rows.iter().enumerate() {
        let y = i * row_h + 4;
        let w = (*value as f64 / max as f64 * 330.0).round().max(1.0);
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{ty}\" class=\"lbl\">{label}</text>\
             <rect x=\"230\" y=\"{y}\" width=\"{w}\" height=\"18\" rx=\"3\" class=\"bar\"/>\
             <text x=\"{tx}\" y=\"{ty}\" class=\"val\">{note}</text>",
            ty = y + 14,
            label = esc(&shorten(label, 34)),
            tx = 236.0 + w,
            note = esc(note),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn title_id(title: &str) -> String {
    title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The list size over time as a line, with the weekly movement as a table.
fn list_chart(weeks: &[store::ListWeek]) -> String {
    if weeks.is_empty() {
        return "<p>No subscriber has joined yet.</p>".into();
    }
    let max = weeks.iter().map(|w| w.active).max().unwrap_or(0).max(1) as f64;
    let (w, h) = (640.0, 200.0);
    let step = if weeks.len() > 1 {
        (w - 80.0) / (weeks.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = weeks
        .iter()
        .enumerate()
        .map(|(i, wk)| {
            format!(
                "{:.1},{:.1}",
                60.0 + i as f64 * step,
                h - 30.0 - wk.active as f64 / max * (h - 60.0)
            )
        })
        .collect();
    let mut svg = format!(
        "<svg role=\"img\" aria-labelledby=\"t-list\" viewBox=\"0 0 {w} {h}\" width=\"100%\">\
         <title id=\"t-list\">Active subscribers at the end of each week, from {} to {}: {} to {}</title>\
         <line x1=\"60\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"axis\"/>\
         <text x=\"0\" y=\"34\" class=\"lbl\">{max}</text><text x=\"0\" y=\"{b}\" class=\"lbl\">0</text>\
         <polyline points=\"{}\" class=\"line\" fill=\"none\"/>",
        weeks[0].week,
        weeks[weeks.len() - 1].week,
        weeks[0].active,
        weeks[weeks.len() - 1].active,
        points.join(" "),
        b = h - 30.0,
        r = w - 20.0,
        max = max as u64,
    );
    for (i, wk) in weeks.iter().enumerate() {
        let (x, y) = points[i].split_once(',').unwrap_or(("0", "0"));
        let _ = write!(svg, "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" class=\"dot\"/>");
        if i == 0 || i + 1 == weeks.len() || weeks.len() <= 8 {
            let _ = write!(
                svg,
                "<text x=\"{x}\" y=\"{}\" class=\"lbl\" text-anchor=\"middle\">{}</text>",
                h - 10.0,
                &wk.week[5..]
            );
        }
    }
    svg.push_str("</svg>");
    let mut table = String::from(
        "<table><caption>The list, week by week</caption><thead><tr><th scope=\"col\">Week of</th>\
         <th scope=\"col\">Active</th><th scope=\"col\">Signups</th><th scope=\"col\">Unsubscribes</th>\
         <th scope=\"col\">Bounces</th><th scope=\"col\">Complaints</th></tr></thead><tbody>",
    );
    for wk in weeks {
        let _ = write!(
            table,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            wk.week, wk.active, wk.signups, wk.unsubscribes, wk.bounces, wk.complaints
        );
    }
    table.push_str("</tbody></table>");
    format!("{svg}{table}")
}

/// The whole report page.
pub fn render(config: &Config, conn: &Connection, now: DateTime<Utc>) -> anyhow::Result<String> {
    let mut body = String::new();
    let weeks = store::list_weeks(conn)?;
    body.push_str("<section aria-labelledby=\"h-list\"><h2 id=\"h-list\">List size</h2>");
    body.push_str(&list_chart(&weeks));
    body.push_str("</section>");

    let issues: Vec<_> = ledger::issues(conn)?
        .into_iter()
        .filter(|i| i.state != ledger::IssueState::Skipped)
        .take(LAST_ISSUES)
        .collect();
    body.push_str("<section aria-labelledby=\"h-funnel\"><h2 id=\"h-funnel\">Per issue</h2>");
    if issues.is_empty() {
        body.push_str("<p>No issue has been sent yet.</p>");
    }
    for issue in &issues {
        let c = ledger::delivery_counts(conn, issue.number)?;
        let e = events::issue_events(conn, issue.number)?;
        let f = store::issue_figures(conn, issue.number)?;
        let recipients = c.sent + c.failed + c.pending + c.sending + c.skipped;
        let ctr = if e.delivered > 0 {
            100.0 * f.human_clickers as f64 / e.delivered as f64
        } else {
            0.0
        };
        let title = format!("Issue {}: {}", issue.number, issue.subject);
        let _ = write!(
            body,
            "<h3>{}</h3><p class=\"sub\">{} · click-through {ctr:.1}% · {} machine click{} filtered · {} vote{}{}</p>",
            esc(&title),
            issue.slot.format("%A %-d %B %Y"),
            f.machine_clicks,
            if f.machine_clicks == 1 { "" } else { "s" },
            f.votes,
            if f.votes == 1 { "" } else { "s" },
            if config.tracking.opens {
                format!(" · {} opens (machine opens likely)", f.opens)
            } else {
                String::new()
            }
        );
        let rows = vec![
            ("Recipients".to_string(), recipients, recipients.to_string()),
            (
                "Delivered".to_string(),
                e.delivered,
                e.delivered.to_string(),
            ),
            (
                "Human clickers".to_string(),
                f.human_clickers,
                f.human_clickers.to_string(),
            ),
            (
                "Unsubscribes and complaints".to_string(),
                e.unsubscribes() + e.complaints,
                (e.unsubscribes() + e.complaints).to_string(),
            ),
        ];
        body.push_str(&bars(&format!("Funnel of issue {}", issue.number), &rows));
        if !f.per_comparison.is_empty() {
            let rows: Vec<_> = f
                .per_comparison
                .iter()
                .map(|(slug, n)| (slug.clone(), *n, format!("{n}")))
                .collect();
            body.push_str(&bars(
                &format!("Human clickers per comparison, issue {}", issue.number),
                &rows,
            ));
        }
    }
    body.push_str("</section>");

    body.push_str("<section aria-labelledby=\"h-votes\"><h2 id=\"h-votes\">Readers and panel</h2>");
    let comparisons = crate::content::load_dir(&config.content_dir).unwrap_or_default();
    let votes = store::votes_by_comparison(conn)?;
    if votes.is_empty() {
        body.push_str("<p>No reader has voted yet.</p>");
    } else {
        body.push_str(
            "<table><caption>Community vote next to the panel's verdict (ship share)</caption>\
             <thead><tr><th scope=\"col\">Tool</th><th scope=\"col\">Panel</th>\
             <th scope=\"col\">Readers</th><th scope=\"col\">Votes</th><th scope=\"col\">Agree?</th></tr></thead><tbody>",
        );
        for (slug, tallies) in &votes {
            let c = comparisons.iter().find(|c| &c.slug == slug);
            for (i, t) in tallies.iter().enumerate() {
                if t.total == 0 {
                    continue;
                }
                let (name, panel) = match c {
                    Some(c) => (c.tools[i].name.clone(), Some(c.tools[i].ship_percent())),
                    None => (format!("{slug} (tool {})", i + 1), None),
                };
                let readers = t.ship_percent();
                let agree = match panel {
                    Some(p) if (i64::from(p) - i64::from(readers)).abs() >= 30 => {
                        "<strong>disagree</strong>"
                    }
                    Some(_) => "agree",
                    None => "—",
                };
                let _ = write!(
                    body,
                    "<tr><th scope=\"row\">{}</th><td>{}</td><td>{readers}% ship</td><td>{}</td><td>{agree}</td></tr>",
                    esc(&name),
                    panel.map_or("—".into(), |p| format!("{p}% ship")),
                    t.total
                );
            }
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section>");

    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"color-scheme\" content=\"light dark\">\
<title>{name}: report</title><style>\
body{{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330;line-height:1.5}}\
main{{max-width:60rem;margin:0 auto;padding:1.5rem}}h1{{margin:0 0 .25rem}}.sub{{color:#4a5263;margin:.25rem 0 .75rem}}\
section{{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}}\
table{{border-collapse:collapse;width:100%;margin:.75rem 0;font-size:.95rem}}caption{{text-align:left;font-weight:700;padding:.25rem 0}}\
th,td{{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e3e6ec}}\
svg text{{font-size:13px;fill:#1d2330}}.bar{{fill:#3c46a8}}.line{{stroke:#3c46a8;stroke-width:2.5}}.dot{{fill:#3c46a8}}.axis{{stroke:#8a92a3}}\
@media (prefers-color-scheme: dark){{body{{background:#15171c;color:#e6e8ee}}section{{background:#20232b;border-color:#363b47}}\
.sub{{color:#b4bac6}}th,td{{border-color:#363b47}}svg text{{fill:#e6e8ee}}.bar,.dot{{fill:#a9b2ff}}.line{{stroke:#a9b2ff}}}}\
</style></head><body><main><h1>{name}</h1><p class=\"sub\">Report of {now}. Clicks by link scanners, prefetchers and early or decoy-following clients are left out.</p>\
{body}</main></body></html>\n",
        name = esc(&config.newsletter.name),
        now = now.format("%Y-%m-%d %H:%M UTC"),
    ))
}
