//! Deliverability checks on the issue that would go out. One recipient's copy is built exactly
//! as the sender builds it, parsed back, and held against what Gmail and Yahoo ask of bulk
//! senders. Each rule is a plain function from that sample to its findings.

use std::fmt;

use chrono::Utc;

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

/// The gate every send goes through: the findings on the digest, and the refusal when they
/// stop it (errors always, warnings unless `force`).
pub fn review(
    config: &Config,
    digest: &RenderedDigest,
    dkim: Option<&DkimSigner>,
    force: bool,
) -> (Vec<Finding>, Option<Refused>) {
    let findings = check_issue(config, digest, dkim);
    let refused = gate(&findings, force).err();
    (findings, refused)
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
    .with_dkim(dkim.cloned())
    .with_inbound(config.inbound.address.as_deref());
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
    findings.extend(local_base_url(&config.newsletter.base_url));
    findings.extend(dkim_alignment(
        config.newsletter.sender_domain(),
        config.dkim.as_ref(),
    ));
    findings.extend(dkim_signature(sample, config.dkim.as_ref()));
    // Only an operator who publishes the site with verdicts owns every page under base_url.
    if let Some(pages) = config
        .site_out_dir
        .as_ref()
        .and_then(|_| crate::site::current_page_paths(config))
    {
        findings.extend(site_links(&config.newsletter.base_url, sample, &pages));
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

mod rules;
mod sample;

pub use rules::*;
pub use sample::Sample;

#[cfg(test)]
mod tests {
    use super::rules::text_urls;
    use super::sample::scan_html;
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
    fn loopback_http_is_a_local_trial() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:8080/unsubscribe?t=1",
            "http://LOCALHOST",
            "http://[::1]:8080/x",
            "http://127.1.2.3/",
        ] {
            assert!(is_local_http(url), "{url}");
        }
        for url in [
            "https://127.0.0.1",
            "http://example.com",
            "http://localhost.example.com",
            "http://10.0.0.1:8080",
            "http://127.0.0.1.example.com",
        ] {
            assert!(!is_local_http(url), "{url}");
        }
        assert_eq!(local_base_url("http://127.0.0.1:8080").len(), 1);
        assert!(local_base_url("https://verdicts.example.com").is_empty());
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
