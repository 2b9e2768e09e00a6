//! The `inbound` section of the config file: the address bounces and mailto unsubscribes
//! come back to, and the list-hygiene thresholds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::config::TlsMode;
use crate::mail::address::SubscriberEmail;
use crate::store::events::Hygiene;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    hygiene: Option<RawHygiene>,
    #[serde(default)]
    imap: Option<RawImap>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImap {
    host: String,
    port: u16,
    tls: TlsMode,
    username: String,
    #[serde(default = "default_imap_password_env")]
    password_env: String,
    #[serde(default = "default_folder")]
    folder: String,
    #[serde(default = "default_processed_folder")]
    processed_folder: String,
    #[serde(default = "default_poll")]
    poll: String,
    /// Certificates (PEM) to trust besides the public roots: a private CA or the server's
    /// own self-signed certificate.
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn default_imap_password_env() -> String {
    "VERDICTS_IMAP_PASSWORD".into()
}
fn default_folder() -> String {
    "INBOX".into()
}
fn default_processed_folder() -> String {
    "Processed".into()
}
fn default_poll() -> String {
    "5m".into()
}

/// A mailbox at a provider where bounces land, polled by the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: String,
    /// The variable holding the password (never the password itself).
    pub password_env: String,
    /// Where new messages are read.
    pub folder: String,
    /// Where a message goes once its result is committed.
    pub processed_folder: String,
    pub poll: Duration,
    /// Certificates trusted besides the public roots for `tls`/`starttls`, read from
    /// `ca_file` when the config is loaded.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHygiene {
    #[serde(default = "default_hard_bounces")]
    hard_bounces: u32,
    #[serde(default = "default_soft_bounce_issues")]
    soft_bounce_issues: u32,
}

fn default_hard_bounces() -> u32 {
    Hygiene::default().hard_bounces
}
fn default_soft_bounce_issues() -> u32 {
    Hygiene::default().soft_bounce_issues
}

/// The validated section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundConfig {
    /// `bounces@example.com`: envelope sender and mailto unsubscribe get signed `+` tags on it.
    /// Without it, the envelope sender is the From address and nothing reads replies.
    pub address: Option<String>,
    pub hygiene: Hygiene,
    pub imap: Option<ImapConfig>,
}

impl RawInbound {
    /// Validates the section; errors name the field (under `inbound.`) and the reason.
    /// `resolve` turns a path from the file into one relative to the file's folder.
    pub fn validate(
        self,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<InboundConfig, (&'static str, String)> {
        let address = match self.address {
            None => None,
            Some(a) => {
                let email =
                    SubscriberEmail::parse(&a).map_err(|e| ("inbound.address", e.to_string()))?;
                let a = email.as_str().to_string();
                if !a.contains('@') {
                    return Err(("inbound.address", format!("`{a}` has no domain")));
                }
                Some(a)
            }
        };
        let hygiene = match self.hygiene {
            None => Hygiene::default(),
            Some(h) => {
                if h.hard_bounces == 0 {
                    return Err(("inbound.hygiene.hard_bounces", "must be at least 1".into()));
                }
                if h.soft_bounce_issues == 0 {
                    return Err((
                        "inbound.hygiene.soft_bounce_issues",
                        "must be at least 1".into(),
                    ));
                }
                Hygiene {
                    hard_bounces: h.hard_bounces,
                    soft_bounce_issues: h.soft_bounce_issues,
                }
            }
        };
        let imap = match self.imap {
            None => None,
            Some(i) => {
                if i.host.trim().is_empty() {
                    return Err(("inbound.imap.host", "must not be empty".into()));
                }
                if i.folder == i.processed_folder {
                    return Err((
                        "inbound.imap.processed_folder",
                        format!("must differ from the folder read (`{}`)", i.folder),
                    ));
                }
                let poll = humantime::parse_duration(i.poll.trim()).map_err(|e| {
                    (
                        "inbound.imap.poll",
                        format!("`{}` is not a duration like 30s or 5m: {e}", i.poll),
                    )
                })?;
                if poll.is_zero() {
                    return Err(("inbound.imap.poll", "must be longer than 0s".into()));
                }
                Some(ImapConfig {
                    host: i.host,
                    port: i.port,
                    tls: i.tls,
                    username: i.username,
                    password_env: i.password_env,
                    folder: i.folder,
                    processed_folder: i.processed_folder,
                    poll,
                    extra_roots: match i.ca_file {
                        None => vec![],
                        Some(file) => read_roots(&resolve(&file))
                            .map_err(|reason| ("inbound.imap.ca_file", reason))?,
                    },
                })
            }
        };
        Ok(InboundConfig {
            address,
            hygiene,
            imap,
        })
    }
}

/// The certificates of a PEM file: at least one, or why not (naming the file).
pub(crate) fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| format!("{shown}: not a usable certificate: {e}"))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> Result<InboundConfig, (&'static str, String)> {
        serde_yaml::from_str::<RawInbound>(yaml)
            .expect("parses")
            .validate(|p| Path::new("/srv/news").join(p))
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = validate("address: Bounces@Example.com\n").unwrap();
        assert_eq!(c.address.as_deref(), Some("Bounces@Example.com"));
        assert_eq!(c.hygiene, Hygiene::default());
        assert_eq!(c.imap, None);
        let c = validate(
            "hygiene: {hard_bounces: 2}\nimap: {host: imap.example.com, port: 993, tls: tls, username: b}\n",
        )
        .unwrap();
        assert_eq!(c.address, None);
        assert_eq!(c.hygiene.hard_bounces, 2);
        assert_eq!(c.hygiene.soft_bounce_issues, 3);
        let imap = c.imap.unwrap();
        assert_eq!(
            (imap.folder.as_str(), imap.processed_folder.as_str()),
            ("INBOX", "Processed")
        );
        assert_eq!(imap.poll, Duration::from_secs(300));
        assert_eq!(imap.password_env, "VERDICTS_IMAP_PASSWORD");
        assert!(imap.extra_roots.is_empty());
    }

    #[test]
    fn a_ca_file_is_read_relative_to_the_config_and_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "imap: {host: h, port: 993, tls: tls, username: b, ca_file: ca.pem}\n";
        let validate_in = || {
            serde_yaml::from_str::<RawInbound>(yaml)
                .unwrap()
                .validate(|p| dir.path().join(p))
        };
        let (field, reason) = validate_in().unwrap_err();
        assert_eq!(field, "inbound.imap.ca_file");
        assert!(reason.contains("ca.pem"), "{reason}");
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        let (_, reason) = validate_in().unwrap_err();
        assert!(
            reason.ends_with("ca.pem holds no PEM certificate"),
            "{reason}"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (yaml, field) in [
            ("address: not-an-address\n", "inbound.address"),
            (
                "hygiene: {hard_bounces: 0}\n",
                "inbound.hygiene.hard_bounces",
            ),
            (
                "hygiene: {soft_bounce_issues: 0}\n",
                "inbound.hygiene.soft_bounce_issues",
            ),
            (
                "imap: {host: h, port: 1, tls: none, username: u, poll: soon}\n",
                "inbound.imap.poll",
            ),
            (
                "imap: {host: h, port: 1, tls: none, username: u, processed_folder: INBOX}\n",
                "inbound.imap.processed_folder",
            ),
        ] {
            assert_eq!(validate(yaml).unwrap_err().0, field, "{yaml}");
        }
        assert!(serde_yaml::from_str::<RawInbound>("adress: b@example.com\n").is_err());
    }
}
