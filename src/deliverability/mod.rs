//! Deliverability checks on the issue that would go out. One recipient's copy is built exactly
//! as the sender builds it, parsed back, and held against what Gmail and Yahoo ask of bulk
//! senders. Each rule is a plain function from that sample to its findings.

use std::fmt;

use chrono::Utc;
use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

use crate::config::{Config, DkimConfig};
use crate::digest::render::{RenderedDigest, GMAIL_CLIP_BYTES};
use crate::mail::dkim::{DkimSigner, SIGNED_HEADERS};
use crate::mail::message::{IssueMessages, Recipient};
use crate::mail::token::TokenKey;
use crate::store::IssueNumber;

/// HTML above this size draws a warning: one more comparison could tip it over Gmail's limit.
pub const CLIP_WARN_BYTES: usize = 90 * 1024;

/// Subjects longer than this are cut off in most inboxes.
pub const MAX_SUBJECT_CHARS: usize = 78;

/// The headers every copy must carry.
pub const REQUIRED_HEADERS: [&str; 5] = [
    "Message-ID",
    "Date",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// How many offending links or images a finding names before saying "and N more".
const EXAMPLES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Sent only with `--force`.
    Warning,
    /// Never sent.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem with the issue, and what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// A stable identifier, e.g. `html-size`.
    pub rule: &'static str,
    pub message: String,
    pub fix: String,
}

impl Finding {
    fn error(rule: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            rule,
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn warning(rule: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            rule,
            message: message.into(),
            fix: fix.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]: {}\n  fix: {}",
            self.severity, self.rule, self.message, self.fix
        )
    }
}

/// Why an issue was not sent.
#[derive(Debug, thiserror::Error)]
#[error("{}", refusal_message(*errors, *warnings))]
pub struct Refused {
    pub errors: usize,
    pub warnings: usize,
}

fn refusal_message(errors: usize, warnings: usize) -> String {
    if errors > 0 {
        format!(
            "refusing to send: the deliverability checks found {} (listed above); fix {} and try again (--force overrides warnings, never errors)",
            plural(errors, "error"),
            if errors == 1 { "it" } else { "them" }
        )
    } else {
        format!(
            "refusing to send: the deliverability checks found {} (listed above); fix {} or pass --force to send anyway",
            plural(warnings, "warning"),
            if warnings == 1 { "it" } else { "them" }
        )
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// Counts of errors and warnings.
pub fn tally(findings: &[Finding]) -> (usize, usize) {
    let errors = findings.iter().filter(|f| f.is_error()).count();
    (errors, findings.len() - errors)
}

/// "2 errors, 1 warning", or "no findings".
pub fn summary(findings: &[Finding]) -> String {
    match tally(findings) {
        (0, 0) => "no findings".into(),
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    }
}

/// Whether an issue with these findings may go out: errors always stop it, warnings stop it
/// unless `force`.
pub fn gate(findings: &[Finding], force: bool) -> Result<(), Refused> {
    let (errors, warnings) = tally(findings);
    if errors > 0 || (warnings > 0 && !force) {
        Err(Refused { errors, warnings })
    } else {
        Ok(())
    }
}

/// Checks the issue whose digest is `digest`, as it would be sent with this config. Pass the
/// signer loaded from `config.dkim` (see [`crate::mail::dkim::load`]); when DKIM is configured and
/// `dkim` is `None`, the unsigned sample is reported as an error.
pub fn check_issue(
    config: &Config,
    digest: &RenderedDigest,
    dkim: Option<&DkimSigner>,
) -> Vec<Finding> {
    // The token only fills the link; any key gives a link of the real shape and length.
    let messages = IssueMessages::new(
        &config.newsletter,
        IssueNumber(0),
        Utc::now(),
        digest,
        TokenKey::new(b"lint-only-key-never-used-for-sending"),
    )
    .with_dkim(dkim.cloned());
    let sample = Recipient::sample();
    let url = messages.unsubscribe_url(&sample);
    let raw = match messages.build(&sample) {
        Ok(m) => m.formatted(),
        Err(e) => {
            return vec![Finding::error(
                "message",
                format!("the message cannot be built: {e}"),
                "check newsletter.from and the subject for characters a mail header cannot hold",
            )]
        }
    };
    match Sample::parse(&raw, &url) {
        Ok(sample) => check_sample(config, &sample),
        Err(e) => vec![Finding::error(
            "message",
            format!("the built message does not parse as MIME: {e}"),
            "this is a bug in verdicts; please report it with the output of `verdicts preview`",
        )],
    }
}

/// Runs every rule on a sample; errors first, then warnings, each in rule order.
pub fn check_sample(config: &Config, sample: &Sample) -> Vec<Finding> {
    let mut findings = Vec::new();
    findings.extend(required_headers(sample));
    findings.extend(one_click(sample));
    findings.extend(parts(sample));
    findings.extend(html_size(sample));
    findings.extend(unsubscribe_visible(sample));
    findings.extend(links(sample));
    findings.extend(text_links(sample));
    findings.extend(image_alt(sample));
    findings.extend(subject_length(sample));
    findings.extend(dkim_alignment(
        config.newsletter.sender_domain(),
        config.dkim.as_ref(),
    ));
    findings.extend(dkim_signature(sample, config.dkim.as_ref()));
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

/// One recipient's copy, parsed back from the bytes that would go on the wire.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Every header, unfolded and decoded, in order.
    pub headers: Vec<(String, String)>,
    /// The decoded text/plain part.
    pub text: Option<String>,
    /// The decoded text/html part.
    pub html: Option<String>,
    /// The recipient's unsubscribe URL, as the body and List-Unsubscribe should carry it.
    pub unsubscribe_url: String,
}

impl Sample {
    pub fn parse(raw: &[u8], unsubscribe_url: &str) -> Result<Sample, mailparse::MailParseError> {
        let mail = mailparse::parse_mail(raw)?;
        let headers = mail
            .headers
            .iter()
            .map(|h| (h.get_key(), h.get_value()))
            .collect();
        let mut sample = Sample {
            headers,
            text: None,
            html: None,
            unsubscribe_url: unsubscribe_url.to_owned(),
        };
        sample.collect_parts(&mail)?;
        Ok(sample)
    }

    fn collect_parts(
        &mut self,
        part: &mailparse::ParsedMail<'_>,
    ) -> Result<(), mailparse::MailParseError> {
        if part.subparts.is_empty() {
            let slot = match part.ctype.mimetype.as_str() {
                "text/plain" => &mut self.text,
                "text/html" => &mut self.html,
                _ => return Ok(()),
            };
            if slot.is_none() {
                *slot = Some(part.get_body()?);
            }
        }
        for sub in &part.subparts {
            self.collect_parts(sub)?;
        }
        Ok(())
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

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
        if !uris.iter().any(|u| u.starts_with("https://")) {
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
    if !url.starts_with("https://") {
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
fn text_urls(text: &str) -> Vec<&str> {
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

#[derive(Debug, Default)]
struct Anchor {
    href: String,
    text: String,
    hidden: bool,
}

#[derive(Debug)]
struct Image {
    src: String,
    alt: Option<String>,
}

/// The links and images of an HTML document.
#[derive(Debug, Default)]
struct HtmlScan {
    anchors: Vec<Anchor>,
    images: Vec<Image>,
    open_anchor: Option<Anchor>,
}

fn is_hidden(style: &str) -> bool {
    let s: String = style
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    s.contains("display:none") || s.contains("visibility:hidden") || s.contains("font-size:0")
}

impl TokenSink for HtmlScan {
    type Handle = ();

    fn process_token(&mut self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::TagToken(tag) => {
                let attr = |name: &str| {
                    tag.attrs
                        .iter()
                        .find(|a| &*a.name.local == name)
                        .map(|a| a.value.to_string())
                };
                match (tag.kind, &*tag.name) {
                    (TagKind::StartTag, "a") => {
                        if let Some(done) = self.open_anchor.take() {
                            self.anchors.push(done);
                        }
                        if let Some(href) = attr("href") {
                            self.open_anchor = Some(Anchor {
                                href: href.trim().to_owned(),
                                text: String::new(),
                                hidden: attr("style").is_some_and(|s| is_hidden(&s)),
                            });
                        }
                    }
                    (TagKind::EndTag, "a") => {
                        if let Some(done) = self.open_anchor.take() {
                            self.anchors.push(done);
                        }
                    }
                    (TagKind::StartTag, "img") => {
                        let alt = attr("alt");
                        if let (Some(a), Some(alt)) = (&mut self.open_anchor, &alt) {
                            a.text.push_str(alt);
                        }
                        self.images.push(Image {
                            src: attr("src").unwrap_or_default().trim().to_owned(),
                            alt,
                        });
                    }
                    (TagKind::StartTag, "style" | "script") => {
                        return TokenSinkResult::RawData(RawKind::Rawtext)
                    }
                    _ => {}
                }
            }
            Token::CharacterTokens(t) => {
                if let Some(a) = &mut self.open_anchor {
                    a.text.push_str(&t);
                }
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }

    fn end(&mut self) {
        if let Some(done) = self.open_anchor.take() {
            self.anchors.push(done);
        }
    }
}

fn scan_html(html: &str) -> HtmlScan {
    let mut queue = BufferQueue::default();
    queue.push_back(StrTendril::from_slice(html));
    let mut tokenizer = Tokenizer::new(HtmlScan::default(), TokenizerOpts::default());
    let _ = tokenizer.feed(&mut queue);
    tokenizer.end();
    tokenizer.sink
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_scan_finds_links_images_and_hidden_anchors() {
        let scan = scan_html(
            r#"<style>a > b { color: red }</style><p><a href="https://x.test/a?b=1&amp;c=2">A <b>bold</b> link</a>
            <a href="https://x.test/u" style="display: none">Unsubscribe</a>
            <a href="https://x.test/i"><img src="https://x.test/i.png" alt="Logo"></a><img src="/rel.png"></p>"#,
        );
        assert_eq!(scan.anchors.len(), 3);
        assert_eq!(scan.anchors[0].href, "https://x.test/a?b=1&c=2");
        assert_eq!(scan.anchors[0].text, "A bold link");
        assert!(scan.anchors[1].hidden);
        assert_eq!(scan.anchors[2].text, "Logo");
        assert_eq!(scan.images.len(), 2);
        assert_eq!(scan.images[1].alt, None);
    }

    #[test]
    fn text_urls_stop_at_brackets_and_trailing_punctuation() {
        let text = "See <https://a.test/x>, then https://b.test/y. And http://c.test/z\n";
        assert_eq!(
            text_urls(text),
            ["https://a.test/x", "https://b.test/y", "http://c.test/z"]
        );
    }

    #[test]
    fn gate_refuses_errors_always_and_warnings_without_force() {
        let w = Finding::warning("x", "m", "f");
        let e = Finding::error("y", "m", "f");
        assert!(gate(&[], false).is_ok());
        assert!(gate(std::slice::from_ref(&w), false).is_err());
        assert!(gate(std::slice::from_ref(&w), true).is_ok());
        assert!(gate(&[w.clone(), e.clone()], true).is_err());
        assert_eq!(summary(&[w, e]), "1 error, 1 warning");
    }

    #[test]
    fn alignment_accepts_parent_and_child_domains() {
        let cfg = |d: &str| DkimConfig {
            domain: d.into(),
            selector: "s".into(),
            key_file: "k".into(),
            algorithm: Default::default(),
        };
        assert!(dkim_alignment("example.com", Some(&cfg("example.com"))).is_empty());
        assert!(dkim_alignment("news.example.com", Some(&cfg("example.com"))).is_empty());
        assert!(dkim_alignment("example.com", Some(&cfg("mail.example.com"))).is_empty());
        assert_eq!(
            dkim_alignment("example.com", Some(&cfg("example.org"))).len(),
            1
        );
        assert_eq!(
            dkim_alignment("badexample.com", Some(&cfg("example.com"))).len(),
            1
        );
        assert!(dkim_alignment("example.com", None).is_empty());
    }
}
