//! The rules, one function each: a [`Sample`] in, findings out.

use super::sample::scan_html;
use super::*;

/// Rule `headers`: Message-ID, Date, List-Id and both List-Unsubscribe headers are present.
pub fn required_headers(sample: &Sample) -> Vec<Finding> {
    REQUIRED_HEADERS
        .iter()
        .filter(|h| sample.header(h).is_none_or(|v| v.trim().is_empty()))
        .map(|h| {
            Finding::error(
                "headers",
                format!("the message has no {h} header"),
                "bulk senders must send it (Gmail and Yahoo sender rules); verdicts always adds it, so this message was not built by verdicts' own message builder",
            )
        })
        .collect()
}

/// Rule `one-click`: List-Unsubscribe carries an https URI and List-Unsubscribe-Post says
/// `List-Unsubscribe=One-Click` (RFC 8058).
pub fn one_click(sample: &Sample) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(value) = sample.header("List-Unsubscribe") {
        let uris: Vec<&str> = value
            .split(',')
            .map(|u| u.trim().trim_start_matches('<').trim_end_matches('>'))
            .collect();
        if !uris
            .iter()
            .any(|u| u.starts_with("https://") || is_local_http(u))
        {
            out.push(Finding::error(
                "one-click",
                "List-Unsubscribe has no https URI; one-click unsubscribe (RFC 8058) requires one",
                "set newsletter.base_url to an https:// URL and serve the unsubscribe endpoint over TLS",
            ));
        } else if !uris.contains(&sample.unsubscribe_url.as_str()) {
            out.push(Finding::error(
                "one-click",
                "List-Unsubscribe does not carry the recipient's own unsubscribe link",
                "this is a bug in verdicts; please report it",
            ));
        }
    }
    if let Some(value) = sample.header("List-Unsubscribe-Post") {
        if value.trim() != "List-Unsubscribe=One-Click" {
            out.push(Finding::error(
                "one-click",
                format!("List-Unsubscribe-Post is `{value}`, not `List-Unsubscribe=One-Click`"),
                "RFC 8058 requires exactly that value",
            ));
        }
    }
    out
}

/// True for a plain-http URL on this machine (`http://127.0.0.1:8080/…`, `http://localhost…`,
/// `http://[::1]…`): a local trial's links, which only the operator's own browser opens.
pub fn is_local_http(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("http://") else {
        return false;
    };
    let host_end = if rest.starts_with('[') {
        rest.find(']').map_or(rest.len(), |i| i + 1)
    } else {
        rest.find([':', '/', '?', '#']).unwrap_or(rest.len())
    };
    let host = &rest[..host_end];
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Rule `local-base-url`: a loopback `http://` base_url is a local trial. Its links work
/// only on this machine, which is the point of a trial and wrong for any real reader, so it
/// is a warning (`--force` sends it) where another http URL is an error.
pub fn local_base_url(base_url: &str) -> Vec<Finding> {
    if !is_local_http(base_url) {
        return vec![];
    }
    vec![Finding::warning(
        "local-base-url",
        format!("newsletter.base_url is {base_url}, a loopback address: the links in this issue open only on this machine"),
        "fine for a local trial (pass --force to send it); set newsletter.base_url to the https:// address readers reach before sending to them",
    )]
}

/// Rules `text-part` and `html-part`: both alternatives exist and are not empty.
pub fn parts(sample: &Sample) -> Vec<Finding> {
    let mut out = Vec::new();
    if sample.text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        out.push(Finding::error(
            "text-part",
            "the message has no plain-text part",
            "send multipart/alternative with a text/plain part (templates/digest.txt): filters distrust HTML-only mail and text-only readers get nothing",
        ));
    }
    if sample.html.as_deref().is_none_or(|t| t.trim().is_empty()) {
        out.push(Finding::error(
            "html-part",
            "the message has no HTML part",
            "send multipart/alternative with a text/html part (templates/digest.html)",
        ));
    }
    out
}

/// Rule `html-size`: Gmail clips HTML over ~102 KB, hiding the rest of the issue and the
/// unsubscribe link behind "[Message clipped]".
pub fn html_size(sample: &Sample) -> Vec<Finding> {
    let Some(html) = &sample.html else {
        return vec![];
    };
    let size = html.len();
    let kb = |b: usize| format!("{:.1} KB", b as f64 / 1024.0);
    let fix = "publish fewer comparisons in this issue (move some to next week's) or shorten the editor's notes; `verdicts preview` shows the size";
    if size > GMAIL_CLIP_BYTES {
        vec![Finding::error(
            "html-size",
            format!(
                "the HTML is {}, over Gmail's {} clipping limit: Gmail would hide the end of the issue, unsubscribe link included",
                kb(size),
                kb(GMAIL_CLIP_BYTES)
            ),
            fix,
        )]
    } else if size > CLIP_WARN_BYTES {
        vec![Finding::warning(
            "html-size",
            format!(
                "the HTML is {}, close to Gmail's {} clipping limit (warning above {})",
                kb(size),
                kb(GMAIL_CLIP_BYTES),
                kb(CLIP_WARN_BYTES)
            ),
            fix,
        )]
    } else {
        vec![]
    }
}

/// Rule `unsubscribe-visible`: the unsubscribe link is https and visible in both parts.
pub fn unsubscribe_visible(sample: &Sample) -> Vec<Finding> {
    let url = &sample.unsubscribe_url;
    let mut out = Vec::new();
    if !url.starts_with("https://") && !is_local_http(url) {
        out.push(Finding::error(
            "unsubscribe-visible",
            format!("the unsubscribe link {url} is not https; one-click unsubscribe needs https and browsers warn on http"),
            "set newsletter.base_url to an https:// URL",
        ));
    }
    if let Some(html) = &sample.html {
        let scan = scan_html(html);
        let visible = scan
            .anchors
            .iter()
            .any(|a| a.href == *url && !a.hidden && !a.text.trim().is_empty());
        if !visible {
            out.push(Finding::error(
                "unsubscribe-visible",
                "the HTML part has no visible link to the recipient's unsubscribe URL",
                "keep the footer's `<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>` in templates/digest.html, with text and not hidden",
            ));
        }
    }
    if let Some(text) = &sample.text {
        if !text.contains(url.as_str()) {
            out.push(Finding::error(
                "unsubscribe-visible",
                "the text part does not show the recipient's unsubscribe URL",
                "keep `{{ unsubscribe_url }}` in templates/digest.txt's footer",
            ));
        }
    }
    out
}

/// Rules `link-absolute` and `link-https`: every link and image source in either part is an
/// absolute https URL (mailto: links are fine).
pub fn links(sample: &Sample) -> Vec<Finding> {
    let mut urls: Vec<String> = Vec::new();
    if let Some(html) = &sample.html {
        let scan = scan_html(html);
        urls.extend(scan.anchors.into_iter().map(|a| a.href));
        urls.extend(scan.images.into_iter().map(|i| i.src));
    }
    if let Some(text) = &sample.text {
        urls.extend(text_urls(text).into_iter().map(str::to_owned));
    }
    let mut relative = Vec::new();
    let mut insecure = Vec::new();
    for u in urls {
        let lower = u.to_ascii_lowercase();
        if (lower.starts_with("https://") && u.len() > "https://".len())
            || lower.starts_with("mailto:")
            || is_local_http(&u)
        {
            continue;
        }
        let bucket = if lower.starts_with("http://") && u.len() > "http://".len() {
            &mut insecure
        } else {
            &mut relative
        };
        if !bucket.contains(&u) {
            bucket.push(u);
        }
    }
    let mut out = Vec::new();
    if !relative.is_empty() {
        out.push(Finding::error(
            "link-absolute",
            format!(
                "{} not an absolute https URL and will not work in a mail client: {}",
                count_is(relative.len(), "link is", "links are"),
                examples(&relative)
            ),
            "write full https:// URLs in editor's notes (e.g. https://verdicts.example.com/page, not /page)",
        ));
    }
    if !insecure.is_empty() {
        out.push(Finding::warning(
            "link-https",
            format!(
                "{} plain http: {}",
                count_is(insecure.len(), "link uses", "links use"),
                examples(&insecure)
            ),
            "use https:// URLs: set newsletter.base_url to https and fix the links in editor's notes",
        ));
    }
    out
}

/// Rule `text-links`: every web link of the HTML part is written out in the text part.
pub fn text_links(sample: &Sample) -> Vec<Finding> {
    let (Some(html), Some(text)) = (&sample.html, &sample.text) else {
        return vec![];
    };
    let mut missing: Vec<String> = Vec::new();
    for a in scan_html(html).anchors {
        let web = a.href.starts_with("https://") || a.href.starts_with("http://");
        if web && !text.contains(a.href.as_str()) && !missing.contains(&a.href) {
            missing.push(a.href);
        }
    }
    if missing.is_empty() {
        return vec![];
    }
    vec![Finding::warning(
        "text-links",
        format!(
            "{} of the HTML part missing from the text part: {}",
            count_is(missing.len(), "link is", "links are"),
            examples(&missing)
        ),
        "write every link out in templates/digest.txt so text-only readers can follow it",
    )]
}

/// Rule `image-alt`: every image has alt text (many clients block images by default).
pub fn image_alt(sample: &Sample) -> Vec<Finding> {
    let Some(html) = &sample.html else {
        return vec![];
    };
    let missing: Vec<String> = scan_html(html)
        .images
        .into_iter()
        .filter(|i| i.alt.as_deref().is_none_or(|a| a.trim().is_empty()))
        .map(|i| i.src)
        .collect();
    if missing.is_empty() {
        return vec![];
    }
    vec![Finding::warning(
        "image-alt",
        format!(
            "{} no alt text: {}",
            count_is(missing.len(), "image has", "images have"),
            examples(&missing)
        ),
        "describe each image in the editor's note: ![what the chart shows](https://…/chart.png)",
    )]
}

/// Rule `subject-length`: a subject exists and fits in an inbox line.
pub fn subject_length(sample: &Sample) -> Vec<Finding> {
    let subject = sample.header("Subject").unwrap_or("").trim();
    let chars = subject.chars().count();
    if chars == 0 {
        vec![Finding::error(
            "subject-length",
            "the message has no subject",
            "every issue needs a subject; it is built from the comparison titles",
        )]
    } else if chars > MAX_SUBJECT_CHARS {
        vec![Finding::warning(
            "subject-length",
            format!("the subject is {chars} characters, over {MAX_SUBJECT_CHARS}; inboxes will cut it off: \"{subject}\""),
            "shorten the lead comparison's title (the subject is \"<lead title> + N more\")",
        )]
    } else {
        vec![]
    }
}

/// Rule `dkim-alignment`: the DKIM domain is the From domain or shares it as a parent or
/// child, so the signature counts for DMARC (relaxed alignment).
pub fn dkim_alignment(from_domain: &str, dkim: Option<&DkimConfig>) -> Vec<Finding> {
    let Some(dkim) = dkim else {
        return vec![];
    };
    let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
    let d = dkim.domain.trim_end_matches('.').to_ascii_lowercase();
    let aligned = from == d || from.ends_with(&format!(".{d}")) || d.ends_with(&format!(".{from}"));
    if aligned {
        return vec![];
    }
    vec![Finding::error(
        "dkim-alignment",
        format!("From's domain {from} does not match the DKIM domain {d}: DMARC would fail, and Gmail and Yahoo reject or junk unaligned bulk mail"),
        format!("set dkim.domain to {from} (and publish its key with `verdicts dkim-record`), or send from an address at {d}"),
    )]
}

/// Rule `dkim-signature`: with DKIM on, the message is signed for the configured domain and
/// selector, and `h=` covers every header in [`SIGNED_HEADERS`].
pub fn dkim_signature(sample: &Sample, dkim: Option<&DkimConfig>) -> Vec<Finding> {
    let Some(dkim) = dkim else {
        return vec![];
    };
    let Some(value) = sample.header("DKIM-Signature") else {
        return vec![Finding::error(
            "dkim-signature",
            "DKIM is configured but the message is not signed",
            "this is a bug in verdicts (the signer was not passed to the message builder); please report it",
        )];
    };
    let tags = dkim_tags(value);
    let tag = |name: &str| {
        tags.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let mut out = Vec::new();
    if !tag("d").eq_ignore_ascii_case(&dkim.domain) || tag("s") != dkim.selector {
        out.push(Finding::error(
            "dkim-signature",
            format!(
                "the signature is for d={} s={}, not the configured d={} s={}",
                tag("d"),
                tag("s"),
                dkim.domain,
                dkim.selector
            ),
            "this is a bug in verdicts; please report it",
        ));
    }
    let signed: Vec<String> = tag("h")
        .split(':')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let unsigned: Vec<&str> = SIGNED_HEADERS
        .iter()
        .copied()
        .filter(|h| !signed.contains(&h.to_ascii_lowercase()))
        .collect();
    if !unsigned.is_empty() {
        out.push(Finding::error(
            "dkim-signature",
            format!(
                "the DKIM signature does not cover {}; Gmail and Yahoo honour one-click unsubscribe only when both List-Unsubscribe headers are signed",
                unsigned.join(", ")
            ),
            "sign with verdicts' own signer (src/dkim.rs), which covers them",
        ));
    }
    out
}

/// The `tag=value` pairs of a DKIM-Signature header, whitespace removed.
fn dkim_tags(value: &str) -> Vec<(String, String)> {
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

fn count_is(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn examples(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(EXAMPLES).map(String::as_str).collect();
    let mut s = shown.join(", ");
    if items.len() > EXAMPLES {
        s.push_str(&format!(" and {} more", items.len() - EXAMPLES));
    }
    s
}

/// The http(s) URLs written out in plain text.
pub(super) fn text_urls(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = ["https://", "http://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\''))
            .unwrap_or(tail.len());
        out.push(tail[..end].trim_end_matches(['.', ',', ')', ';', ':', '!', '?']));
        rest = &tail[end..];
    }
    out
}

/// Endpoints served by `verdicts run`/`serve` under `base_url`, not pages of the site.
const ENDPOINTS: [&str; 8] = [
    "unsubscribe",
    "subscribe",
    "confirm",
    "healthz",
    // Votes, tracked links, the open pixel and the report (`web::tracking`).
    "vote",
    "c",
    "o",
    "report",
];

/// Rule `site-links`: every link to a page under `base_url` leads to a page the site has
/// (`pages`: the site's paths, as [`crate::site::page_paths`] lists them). A renamed slug
/// or a missing page would leave readers on a 404. The issue's own archive page
/// (`issues/N/`) is made when the issue is created, so it always counts as present.
pub fn site_links(
    base_url: &str,
    sample: &Sample,
    pages: &std::collections::BTreeSet<String>,
) -> Vec<Finding> {
    let mut urls: Vec<String> = Vec::new();
    if let Some(html) = &sample.html {
        urls.extend(scan_html(html).anchors.into_iter().map(|a| a.href));
    }
    if let Some(text) = &sample.text {
        urls.extend(text_urls(text).into_iter().map(str::to_owned));
    }
    let mut missing: Vec<String> = Vec::new();
    for url in urls {
        let Some(rest) = url.strip_prefix(base_url) else {
            continue;
        };
        if !(rest.is_empty()
            || rest.starts_with('/')
            || rest.starts_with('?')
            || rest.starts_with('#'))
        {
            continue;
        }
        let path = rest
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .trim_start_matches('/');
        let first = path.split('/').next().unwrap_or_default();
        let own_issue_page = path
            .strip_prefix("issues/")
            .map(|n| n.trim_end_matches('/'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        // A page is linked as `slug/` (its folder) or `slug` (which the server redirects).
        let page = path.trim_end_matches('/');
        if ENDPOINTS.contains(&first) || own_issue_page || pages.contains(page) {
            continue;
        }
        if !missing.contains(&url) {
            missing.push(url);
        }
    }
    if missing.is_empty() {
        return vec![];
    }
    vec![Finding::error(
        "site-links",
        format!(
            "{} to a page the site does not have: {}",
            count_is(missing.len(), "link goes", "links go"),
            examples(&missing)
        ),
        "fix the link (a renamed slug?) or add the page; `verdicts site build` lists what the site holds",
    )]
}
