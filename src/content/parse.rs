//! Parsing one comparison file: front matter, reviews, tools and the note.

use super::*;

/// Parses and validates one comparison file; `path` is only used in messages.
pub fn parse_comparison(path: &Path, text: &str) -> Result<Comparison, Vec<ContentError>> {
    let err = |line: Option<usize>, field: Option<&str>, reason: String| ContentError {
        file: path.to_owned(),
        line,
        field: field.map(str::to_owned),
        reason,
    };
    let Some((front, first_line, body)) = split_front_matter(text) else {
        return Err(vec![err(
            Some(1),
            None,
            "no front matter: the file must start with a `---` line and the YAML must end with another `---` line".into(),
        )]);
    };
    let fm: FrontMatter = serde_yaml::from_str(front).map_err(|e| {
        let line = e.location().map(|l| l.line() + first_line - 1);
        // The parser's message carries its own "at line N column M"; we report the file's line.
        let msg = e.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        };
        vec![err(line, None, msg)]
    })?;

    let mut errors = Vec::new();
    let line = |key: &str, nth: usize| line_of(front, first_line, key, nth);

    for (field, value) in [
        ("title", &fm.title),
        ("slug", &fm.slug),
        ("category", &fm.category),
    ] {
        if value.trim().is_empty() {
            errors.push(err(line(field, 0), Some(field), "must not be empty".into()));
        }
    }
    // A control character in a subject line or heading is invisible in the editor but can
    // break a header or a layout; multi-line fields may hold line breaks and tabs only.
    let mut control = |field: String, key: &str, nth: usize, value: &str, multi_line: bool| {
        if let Some(c) = control_char(value, multi_line) {
            errors.push(err(
                line(key, nth),
                Some(&field),
                format!(
                    "contains the control character U+{:04X}{}; remove it",
                    c as u32,
                    if multi_line {
                        ""
                    } else {
                        " (this field is a single line of plain text)"
                    }
                ),
            ));
        }
    };
    for (field, value) in [
        ("title", &fm.title),
        ("slug", &fm.slug),
        ("published", &fm.published),
        ("category", &fm.category),
    ] {
        control(field.to_owned(), field, 0, value, false);
    }
    for (i, tool) in fm.tools.iter().enumerate() {
        for (key, value, multi_line) in [
            ("name", &tool.name, false),
            ("tagline", &tool.tagline, false),
            ("entry", &tool.entry, false),
            ("summary", &tool.summary, true),
        ] {
            control(format!("tools[{i}].{key}"), key, i, value, multi_line);
        }
        for lens in Lens::ALL {
            let key = lens.label().to_lowercase();
            control(
                format!("tools[{i}].reviews.{key}.take"),
                "take",
                usize::MAX,
                &tool.reviews.get(lens).take,
                true,
            );
        }
    }
    if !fm.slug.trim().is_empty() && !is_url_safe_slug(&fm.slug) {
        errors.push(err(
            line("slug", 0),
            Some("slug"),
            format!(
                "`{}` is not URL-safe: use lowercase letters, digits and single hyphens",
                fm.slug
            ),
        ));
    }
    if RESERVED_SLUGS.contains(&fm.slug.as_str()) {
        errors.push(err(
            line("slug", 0),
            Some("slug"),
            format!(
                "`{}` is taken by the site or the web endpoint (/{}/); choose another slug",
                fm.slug, fm.slug
            ),
        ));
    }
    let published = match DateTime::parse_from_rfc3339(fm.published.trim()) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(err(
                line("published", 0),
                Some("published"),
                format!(
                    "`{}` is not an RFC 3339 date with offset (e.g. 2026-11-16T10:30:00+00:00): {e}",
                    fm.published
                ),
            ));
            None
        }
    };
    if fm.tools.len() != 2 {
        errors.push(err(
            line("tools", 0),
            Some("tools"),
            format!(
                "a comparison has exactly two tools, this file has {}",
                fm.tools.len()
            ),
        ));
    }
    for (i, tool) in fm.tools.iter().enumerate() {
        for (key, value) in [
            ("name", &tool.name),
            ("tagline", &tool.tagline),
            ("entry", &tool.entry),
            ("summary", &tool.summary),
        ] {
            if value.trim().is_empty() {
                errors.push(err(
                    line(key, i),
                    Some(&format!("tools[{i}].{key}")),
                    "must not be empty".into(),
                ));
            }
        }
        for lens in Lens::ALL {
            if tool.reviews.get(lens).take.trim().is_empty() {
                let key = lens.label().to_lowercase();
                errors.push(err(
                    None,
                    Some(&format!("tools[{i}].reviews.{key}.take")),
                    "must not be empty".into(),
                ));
            }
        }
        if let Some(stated) = tool.panel_ship_percent {
            let actual = tool.ship_percent();
            if stated != actual {
                errors.push(err(
                    line(
                        "panel_ship_percent",
                        tools_before_with_percent(&fm.tools, i),
                    ),
                    Some(&format!("tools[{i}].panel_ship_percent")),
                    format!(
                        "states {stated}% but {} of 4 reviews of {} say ship, which is {actual}%",
                        tool.reviews.ships(),
                        tool.name
                    ),
                ));
            }
        }
    }
    if fm.tools.len() == 2 && fm.tools[0].name.trim() == fm.tools[1].name.trim() {
        errors.push(err(
            line("name", 1),
            Some("tools[1].name"),
            "both tools have the same name; a comparison needs two different tools".into(),
        ));
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let (note_html, note_text) = render_note(body);
    let tools: [Tool; 2] = fm.tools.try_into().expect("two tools checked above");
    Ok(Comparison {
        source: path.to_owned(),
        title: fm.title.trim().to_owned(),
        slug: fm.slug,
        published: published.expect("date checked above"),
        category: fm.category.trim().to_owned(),
        tools,
        note_html,
        note_text,
    })
}

/// The first control character in `value` (line breaks and tabs allowed when `multi_line`;
/// a trailing line break, as YAML block scalars end, is allowed in any field).
pub(super) fn control_char(value: &str, multi_line: bool) -> Option<char> {
    let value = value.strip_suffix('\n').unwrap_or(value);
    value
        .chars()
        .find(|&c| c.is_control() && !(multi_line && matches!(c, '\n' | '\t' | '\r')))
}

/// The index among `panel_ship_percent:` lines that belongs to tool `i`.
pub(super) fn tools_before_with_percent(tools: &[Tool], i: usize) -> usize {
    tools[..i]
        .iter()
        .filter(|t| t.panel_ship_percent.is_some())
        .count()
}

/// The link schemes a note may use: a reader's mail client should never be handed a
/// `javascript:`, `data:` or `vbscript:` link. (Relative links are left for `verdicts lint`
/// to refuse by name, so the editor learns of them instead of losing them silently.)
pub(super) const NOTE_URL_SCHEMES: [&str; 3] = ["http", "https", "mailto"];

pub(super) fn has_allowed_scheme(url: &str) -> bool {
    match url.split_once(':') {
        // A colon after a slash, `?` or `#` is not a scheme's.
        Some((scheme, _)) if !scheme.contains(['/', '?', '#']) => NOTE_URL_SCHEMES
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme)),
        _ => true,
    }
}

/// The note's HTML cut down to an allow-list (ammonia's tags and attributes for text, and
/// links only to http(s) and mailto URLs, or relative ones), whatever the Markdown renderer
/// produced.
pub(super) fn sanitize_note(html: &str) -> String {
    ammonia::Builder::default()
        .url_schemes(NOTE_URL_SCHEMES.into_iter().collect())
        .url_relative(ammonia::UrlRelative::PassThrough)
        .link_rel(None)
        .clean(html)
        .to_string()
}

/// Renders the Markdown note to HTML (raw HTML neutralised) and to plain text.
pub(super) fn render_note(body: &str) -> (Option<String>, Option<String>) {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let body = body.trim();
    if body.is_empty() {
        return (None, None);
    }
    let events: Vec<Event<'_>> = Parser::new(body)
        .map(|e| match e {
            Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
            other => other,
        })
        .collect();
    let mut markup = String::new();
    pulldown_cmark::html::push_html(&mut markup, events.iter().cloned());
    let html = sanitize_note(&markup);

    let mut text = String::new();
    let mut links: Vec<String> = Vec::new();
    for e in events {
        match e {
            Event::Text(s) | Event::Code(s) => text.push_str(&s),
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            Event::Start(Tag::Link { dest_url, .. }) => links.push(dest_url.to_string()),
            Event::End(TagEnd::Link) => {
                if let Some(url) = links.pop().filter(|u| has_allowed_scheme(u)) {
                    text.push_str(&format!(" <{url}>"));
                }
            }
            Event::End(TagEnd::Paragraph) => text.push_str("\n\n"),
            Event::End(TagEnd::Item) => text.push('\n'),
            Event::Start(Tag::Item) => text.push_str("- "),
            _ => {}
        }
    }
    (Some(html), Some(text.trim().to_owned()))
}
