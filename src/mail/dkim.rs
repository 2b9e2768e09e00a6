//! DKIM signing (RFC 6376, Ed25519 per RFC 8463). The operator's private key is read once at
//! start into a [`DkimSigner`] that signs every recipient's copy, and that also knows the DNS
//! TXT record receivers will look the public key up in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;

use crate::config::{Config, DkimAlgorithm, DkimConfig};
use crate::error::UserError;
use crate::mail::dkim_sign::{self, SignatureSpec, SigningKey};

pub use crate::mail::dkim_sign::SIGNED_HEADERS;

/// RSA keys shorter than this are refused (RFC 8301 makes receivers ignore keys under
/// 1024 bits and asks signers for 2048; aws-lc-rs signs with 2048 to 8192).
const MIN_RSA_BITS: usize = 2048;

/// A DNS TXT string holds at most this many bytes; longer records are split.
const TXT_STRING_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("cannot read the DKIM key file {path} (dkim.key_file): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the DKIM key file {path} holds {found}, but dkim.algorithm is {expected}: {fix}")]
    WrongType {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
        fix: String,
    },
    #[error("the DKIM key file {path} is not a usable private key for dkim.algorithm {expected}: {reason}. {fix}")]
    Invalid {
        path: PathBuf,
        expected: &'static str,
        reason: String,
        fix: String,
    },
}

/// A loaded DKIM key with its domain and selector. Cheap to clone: the key is shared.
#[derive(Clone)]
pub struct DkimSigner {
    key: Arc<SigningKey>,
    /// The `h=` tag.
    header_list: Arc<str>,
    domain: String,
    selector: String,
    algorithm: DkimAlgorithm,
    public_key: String,
}

// Written by hand so the private key can never reach a log line.
impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The signer for `config.dkim`, or `None` when DKIM is off. A key problem is a user error
/// (exit 1) naming the file and how to fix it.
pub fn load(config: &Config) -> anyhow::Result<Option<DkimSigner>> {
    match &config.dkim {
        None => Ok(None),
        Some(d) => DkimSigner::load(d)
            .map(Some)
            .map_err(|e| UserError::new(e.to_string()).into()),
    }
}

impl DkimSigner {
    /// Reads and checks the private key named by the config.
    pub fn load(config: &DkimConfig) -> Result<DkimSigner, DkimError> {
        let text = std::fs::read_to_string(&config.key_file).map_err(|source| DkimError::Read {
            path: config.key_file.clone(),
            source,
        })?;
        let (key, public_key) = parse_key(&config.key_file, &text, config.algorithm)?;
        Ok(DkimSigner {
            key: Arc::new(key),
            header_list: dkim_sign::header_list().into(),
            domain: config.domain.clone(),
            selector: config.selector.clone(),
            algorithm: config.algorithm,
            public_key,
        })
    }

    fn spec(&self) -> SignatureSpec<'_> {
        SignatureSpec {
            key: &self.key,
            domain: &self.domain,
            selector: &self.selector,
            timestamp: chrono::Utc::now().timestamp(),
        }
    }

    /// The DKIM-Signature header line (relaxed/relaxed, with its CRLF) for a message with
    /// these header fields (raw, top to bottom) and body hash, covering [`SIGNED_HEADERS`]
    /// and over-signing the ones that must not be added to.
    pub fn signature_header(&self, fields: &[&str], body_hash: &[u8; 32]) -> String {
        dkim_sign::signature_header(&self.spec(), fields, &self.header_list, body_hash)
    }

    /// Signs a message from lettre's builder (mail other than the digest, such as signup
    /// confirmations) over those of the digest's signed headers it has, over-signing the
    /// same ones; the signature is added as its last header, which verifiers accept
    /// wherever it stands.
    pub fn sign(&self, message: &mut lettre::Message) {
        // lettre formats messages from `str` pieces, so this is never lossy.
        let raw = String::from_utf8_lossy(&message.formatted()).into_owned();
        let (fields, _) = dkim_sign::split_message(&raw);
        let present = |name: &&str| {
            fields.iter().any(|f| {
                f.split_once(':')
                    .is_some_and(|(n, _)| n.trim_end().eq_ignore_ascii_case(name))
            })
        };
        let names: Vec<&str> = SIGNED_HEADERS
            .iter()
            .chain(dkim_sign::OVERSIGNED_HEADERS.iter())
            .copied()
            .filter(present)
            .collect();
        let line = dkim_sign::sign_message(&self.spec(), &raw, &names.join(":"));
        let value = line
            .strip_prefix("DKIM-Signature: ")
            .unwrap_or(&line)
            .trim_end_matches("\r\n")
            .to_owned();
        message.headers_mut().insert_raw(
            lettre::message::header::HeaderValue::dangerous_new_pre_encoded(
                lettre::message::header::HeaderName::new_from_ascii_str("DKIM-Signature"),
                value.clone(),
                value,
            ),
        );
    }

    /// Signs a complete message built elsewhere, covering the headers named in `names` (an
    /// `h=` list, e.g. `From:To:Subject`); returns the message with the signature on top.
    pub fn sign_raw(&self, raw: &str, names: &str) -> String {
        dkim_sign::sign_message(&self.spec(), raw, names) + raw
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    pub fn algorithm(&self) -> DkimAlgorithm {
        self.algorithm
    }

    /// Where receivers look the key up: `<selector>._domainkey.<domain>`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record's value: `v=DKIM1; k=rsa; p=<base64 public key>`.
    pub fn txt_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            algorithm_name(self.algorithm),
            self.public_key
        )
    }

    /// The record as a zone-file line, split into DNS's 255-byte strings.
    pub fn zone_file_line(&self) -> String {
        let value = self.txt_record();
        let strings: Vec<String> = value
            .as_bytes()
            .chunks(TXT_STRING_MAX)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!("{}. 3600 IN TXT ( {} )", self.dns_name(), strings.join(" "))
    }
}

fn algorithm_name(a: DkimAlgorithm) -> &'static str {
    match a {
        DkimAlgorithm::Rsa => "rsa",
        DkimAlgorithm::Ed25519 => "ed25519",
    }
}

fn generate_hint(path: &Path, a: DkimAlgorithm) -> String {
    match a {
        DkimAlgorithm::Rsa => format!(
            "Generate one with `openssl genrsa -out {} 2048`",
            path.display()
        ),
        DkimAlgorithm::Ed25519 => format!(
            "Generate one with `openssl genpkey -algorithm ed25519 -out {}`",
            path.display()
        ),
    }
}

/// Parses the key file: PKCS#8 or PKCS#1 PEM for RSA; PKCS#8 PEM or a base64 32-byte seed for
/// Ed25519. Returns the signing key and the base64 public key for the TXT record.
fn parse_key(
    path: &Path,
    text: &str,
    algorithm: DkimAlgorithm,
) -> Result<(SigningKey, String), DkimError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let expected = algorithm_name(algorithm);
    let invalid = |reason: String| DkimError::Invalid {
        path: path.to_owned(),
        expected,
        reason,
        fix: generate_hint(path, algorithm),
    };
    if text.contains("PUBLIC KEY-----") {
        return Err(invalid(
            "it holds a public key; key_file must name the private key (publish the public one in DNS)".into(),
        ));
    }
    if text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        return Err(invalid(format!(
            "it is encrypted with a passphrase; store it unencrypted with owner-only permissions (`openssl pkey -in {0} -out {0}.plain`)",
            path.display()
        )));
    }
    let wrong_type = |found: &'static str, other: DkimAlgorithm| DkimError::WrongType {
        path: path.to_owned(),
        found,
        expected,
        fix: format!(
            "set dkim.algorithm to {} or point key_file at {} key",
            algorithm_name(other),
            match algorithm {
                DkimAlgorithm::Rsa => "an RSA",
                DkimAlgorithm::Ed25519 => "an Ed25519",
            }
        ),
    };
    let rejected = |e: aws_lc_rs::error::KeyRejected| {
        invalid(match e.description_() {
            "TooSmall" => format!(
                "it is shorter than {MIN_RSA_BITS} bits; receivers distrust short RSA keys, use 2048"
            ),
            "TooLarge" => "it is longer than 8192 bits; use 2048".into(),
            other => format!("the key does not parse ({other})"),
        })
    };
    let key = if text.contains("-----BEGIN") {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::PrivateKeyDer;
        let der = PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| invalid(format!("it holds no PEM private key ({e})")))?;
        match (der, algorithm) {
            (PrivateKeyDer::Pkcs1(der), DkimAlgorithm::Rsa) => {
                SigningKey::rsa_from_pkcs1_der(der.secret_pkcs1_der()).map_err(rejected)?
            }
            (PrivateKeyDer::Pkcs1(_), DkimAlgorithm::Ed25519) => {
                return Err(wrong_type("an RSA key", DkimAlgorithm::Rsa))
            }
            (PrivateKeyDer::Pkcs8(der), DkimAlgorithm::Rsa) => {
                let der = der.secret_pkcs8_der();
                match SigningKey::rsa_from_pkcs8_der(der) {
                    Ok(key) => key,
                    Err(_) if SigningKey::ed25519_from_pkcs8_der(der).is_ok() => {
                        return Err(wrong_type("an Ed25519 key", DkimAlgorithm::Ed25519))
                    }
                    Err(e) => return Err(rejected(e)),
                }
            }
            (PrivateKeyDer::Pkcs8(der), DkimAlgorithm::Ed25519) => {
                let der = der.secret_pkcs8_der();
                match SigningKey::ed25519_from_pkcs8_der(der) {
                    Ok(key) => key,
                    Err(_) if SigningKey::rsa_from_pkcs8_der(der).is_ok() => {
                        return Err(wrong_type("an RSA key", DkimAlgorithm::Rsa))
                    }
                    Err(e) => return Err(invalid(format!("the key does not parse ({e})"))),
                }
            }
            _ => {
                return Err(invalid(
                    "it is an elliptic-curve (SEC1) key; DKIM signs with RSA or Ed25519".into(),
                ))
            }
        }
    } else if algorithm == DkimAlgorithm::Ed25519 {
        let seed: [u8; 32] = b64
            .decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("it is neither PKCS#8 PEM nor a base64 32-byte seed".into()))?;
        SigningKey::ed25519_from_seed(&seed).map_err(invalid)?
    } else {
        return Err(invalid("it holds no PEM private key".into()));
    };
    let public = b64.encode(key.public_key_for_dns());
    Ok((key, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_split_into_dns_strings() {
        let signer = DkimSigner {
            key: Arc::new(SigningKey::ed25519_from_seed(&[7u8; 32]).unwrap()),
            header_list: "From".into(),
            domain: "example.com".into(),
            selector: "s".into(),
            algorithm: DkimAlgorithm::Rsa,
            public_key: "A".repeat(400),
        };
        let line = signer.zone_file_line();
        assert!(line.starts_with("s._domainkey.example.com. 3600 IN TXT ( \"v=DKIM1; k=rsa; p=AAA"));
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2);
        assert!(strings.iter().all(|s| s.len() <= TXT_STRING_MAX));
        assert_eq!(strings.concat(), signer.txt_record());
        assert!(!format!("{signer:?}").contains("AAAA"));
    }
}
