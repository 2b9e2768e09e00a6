//! `verdicts lint` and `verdicts dkim-record`, and the deliverability checks that `preview`
//! and `send` run on the issue they are about to show or send.

use chrono::{DateTime, Utc};

use super::describe_slot;
use crate::config::{Config, DkimAlgorithm};
use crate::content;
use crate::deliverability::{self as lint, Finding};
use crate::digest::render::RenderedDigest;
use crate::error::user_error;
use crate::mail::dkim::{self, DkimSigner};

/// `verdicts lint`: checks the issue `preview` would show for the same moment. Exit 1 on any
/// error; warnings are printed but do not fail.
pub fn lint(config: &Config, at: DateTime<Utc>) -> anyhow::Result<()> {
    let dkim = dkim::load(config)?;
    let comparisons = content::load_dir(&config.content_dir)?;
    let plan = super::plan_preview(config, &comparisons, at)?;
    let digest = plan.digest(config)?;
    println!(
        "Checking the issue for {}: \"{}\" ({} comparison{}).",
        describe_slot(config, plan.slot),
        digest.subject,
        digest.comparison_count,
        if digest.comparison_count == 1 {
            ""
        } else {
            "s"
        }
    );
    // Not a finding (those can stop a send): sending without reading bounces is allowed,
    // only unwise.
    if config.inbound.address.is_none() {
        println!(
            "Inbound: off. Bounces and mailto unsubscribes go to {} and are never read: set inbound.address (docs/inbound.md).",
            config.newsletter.from.email
        );
    }
    super::webhooks::lint_note(config);
    let findings = lint::check_issue(config, &digest, dkim.as_ref());
    print_findings(config, dkim.as_ref(), &findings);

    let (errors, _) = lint::tally(&findings);
    if errors > 0 {
        return user_error(format!(
            "lint found {}; `verdicts send` refuses to send this issue until {} fixed",
            lint::summary(&findings),
            if errors == 1 { "it is" } else { "they are" }
        ));
    }
    Ok(())
}

/// `verdicts dkim-record`: the DNS TXT record receivers look the configured key up in.
pub fn dkim_record(config: &Config) -> anyhow::Result<()> {
    let Some(signer) = dkim::load(config)? else {
        return user_error(format!(
            "DKIM is not configured in {}. Add, with your own domain and selector:\n\n\
             dkim:\n  domain: {}\n  selector: verdicts1\n  key_file: dkim.pem   # openssl genrsa -out dkim.pem 2048\n\n\
             then run `verdicts dkim-record` again",
            config.path.display(),
            config.newsletter.sender_domain()
        ));
    };
    let key_file = &config.dkim.as_ref().expect("dkim is configured").key_file;
    println!(
        "DKIM key {} ({}, selector {}, domain {}).",
        key_file.display(),
        match signer.algorithm() {
            DkimAlgorithm::Rsa => "RSA",
            DkimAlgorithm::Ed25519 => "Ed25519",
        },
        signer.selector(),
        signer.domain()
    );
    println!("Publish this TXT record in the DNS of {}:", signer.domain());
    println!();
    println!("  Name:  {}", signer.dns_name());
    println!("  Type:  TXT");
    println!("  Value: {}", signer.txt_record());
    println!();
    println!("As a zone-file line (DNS strings hold 255 bytes; most DNS dashboards split the value for you):");
    println!();
    println!("  {}", signer.zone_file_line());
    println!();
    println!(
        "Check it once published: dig +short TXT {}",
        signer.dns_name()
    );
    if signer.algorithm() == DkimAlgorithm::Ed25519 {
        println!(
            "Note: some receivers still verify only RSA signatures; Ed25519 alone may count as unsigned there."
        );
    }
    Ok(())
}

/// Prints each finding and a one-line summary.
pub(super) fn print_findings(config: &Config, dkim: Option<&DkimSigner>, findings: &[Finding]) {
    match dkim {
        Some(s) => println!(
            "DKIM: signing as d={} s={} ({}).",
            s.domain(),
            s.selector(),
            match s.algorithm() {
                DkimAlgorithm::Rsa => "rsa-sha256",
                DkimAlgorithm::Ed25519 => "ed25519-sha256",
            }
        ),
        None => println!(
            "DKIM: off. Unless your SMTP relay signs for {}, Gmail and Yahoo will reject bulk mail: see `verdicts dkim-record`.",
            config.newsletter.sender_domain()
        ),
    }
    for f in findings {
        println!();
        println!("{f}");
    }
    if !findings.is_empty() {
        println!();
    }
    match lint::tally(findings) {
        (0, 0) => println!("Lint: no findings."),
        _ => println!("Lint: {}.", lint::summary(findings)),
    }
}

/// For `preview` and `send --dry-run`: prints the findings on the digest, and fails (exit 1)
/// when `send` would refuse it, so the exit status answers "would this go out?".
pub(super) fn check_preview(
    config: &Config,
    digest: &RenderedDigest,
    dkim: Option<&DkimSigner>,
    force: bool,
) -> anyhow::Result<()> {
    let (findings, refused) = lint::review(config, digest, dkim, force);
    print_findings(config, dkim, &findings);
    if refused.is_some() {
        let (errors, _) = lint::tally(&findings);
        return user_error(if errors > 0 {
            format!(
                "`verdicts send` would refuse this issue: {} (listed above)",
                lint::summary(&findings)
            )
        } else {
            format!(
                "`verdicts send` would refuse this issue without --force: {} (listed above)",
                lint::summary(&findings)
            )
        });
    }
    Ok(())
}
