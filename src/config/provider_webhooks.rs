//! The `provider_webhooks:` section: which relays' event webhooks the web process accepts,
//! where each one's secret is read from, and the limits every webhook request meets.
//! A provider left out of the section has no endpoint (404).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProviderWebhooks {
    #[serde(default)]
    ses: Option<RawSes>,
    #[serde(default)]
    postmark: Option<RawPostmark>,
    #[serde(default)]
    mailgun: Option<RawMailgun>,
    #[serde(default)]
    sendgrid: Option<RawSendgrid>,
    #[serde(default)]
    generic: Option<RawGeneric>,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    per_ip_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSes {
    topic_arns: Vec<String>,
    #[serde(default = "default_cert_hosts")]
    cert_hosts: Vec<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn default_cert_hosts() -> Vec<String> {
    vec!["sns.*.amazonaws.com".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostmark {
    username: String,
    #[serde(default = "default_postmark_env")]
    password_env: String,
}

fn default_postmark_env() -> String {
    "VERDICTS_POSTMARK_WEBHOOK_PASSWORD".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailgun {
    #[serde(default = "default_mailgun_env")]
    signing_key_env: String,
}

fn default_mailgun_env() -> String {
    "VERDICTS_MAILGUN_SIGNING_KEY".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSendgrid {
    #[serde(default = "default_sendgrid_env")]
    public_key_env: String,
}

fn default_sendgrid_env() -> String {
    "VERDICTS_SENDGRID_PUBLIC_KEY".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneric {
    #[serde(default = "default_generic_env")]
    secret_env: String,
}

fn default_generic_env() -> String {
    "VERDICTS_WEBHOOK_SECRET".into()
}

/// Amazon SES through SNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SesConfig {
    /// The SNS topics whose messages are taken; any other topic is refused.
    pub topic_arns: Vec<String>,
    /// Host patterns the signing certificate (and a subscription's confirmation link) may
    /// come from; `*` stands for one DNS label.
    pub cert_hosts: Vec<String>,
    /// Certificates trusted, beside the public roots, when fetching the signing certificate.
    pub ca_file: Option<PathBuf>,
}

/// Postmark: HTTP basic auth in the webhook's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmarkConfig {
    pub username: String,
    pub password_env: String,
}

/// The validated `provider_webhooks:` section (no provider when it is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderWebhooksConfig {
    pub ses: Option<SesConfig>,
    pub postmark: Option<PostmarkConfig>,
    /// The environment variable holding Mailgun's webhook signing key.
    pub mailgun_key_env: Option<String>,
    /// The environment variable holding SendGrid's verification key (base64 DER).
    pub sendgrid_key_env: Option<String>,
    /// The environment variable holding the generic webhook's shared secret.
    pub generic_secret_env: Option<String>,
    /// How far a signed timestamp may be from now (either way) before the request is stale.
    pub max_age: Duration,
    /// The largest request body taken.
    pub max_body_bytes: usize,
    /// Requests per minute from one client address, over all providers.
    pub per_ip_per_minute: NonZeroU32,
}

impl Default for ProviderWebhooksConfig {
    fn default() -> Self {
        ProviderWebhooksConfig {
            ses: None,
            postmark: None,
            mailgun_key_env: None,
            sendgrid_key_env: None,
            generic_secret_env: None,
            max_age: Duration::from_secs(15 * 60),
            max_body_bytes: 64 * 1024,
            per_ip_per_minute: NonZeroU32::new(600).expect("not zero"),
        }
    }
}

impl ProviderWebhooksConfig {
    /// True when at least one provider has an endpoint.
    pub fn any(&self) -> bool {
        self.ses.is_some()
            || self.postmark.is_some()
            || self.mailgun_key_env.is_some()
            || self.sendgrid_key_env.is_some()
            || self.generic_secret_env.is_some()
    }

    /// `web_max_body` is `web.max_body_bytes`: the endpoint refuses a larger body before any
    /// webhook sees it, so it caps the default and an explicit value over it is an error.
    pub(super) fn from_raw(
        raw: RawProviderWebhooks,
        web_max_body: usize,
        resolve: impl Fn(&Path) -> PathBuf,
        invalid: impl Fn(&'static str, String) -> super::ConfigError,
    ) -> Result<Self, super::ConfigError> {
        let defaults = ProviderWebhooksConfig::default();
        let max_age = match &raw.max_age {
            Some(s) => {
                super::parse_duration(s).map_err(|e| invalid("provider_webhooks.max_age", e))?
            }
            None => defaults.max_age,
        };
        if max_age < Duration::from_secs(1) {
            return Err(invalid(
                "provider_webhooks.max_age",
                "must be at least one second".into(),
            ));
        }
        let max_body_bytes = match raw.max_body_bytes {
            None => defaults.max_body_bytes.min(web_max_body),
            Some(n) if n > web_max_body => {
                return Err(invalid(
                    "provider_webhooks.max_body_bytes",
                    format!(
                        "{n} is over web.max_body_bytes ({web_max_body}), which the endpoint \
                         refuses first: raise that too"
                    ),
                ))
            }
            Some(n) => n,
        };
        if raw.max_body_bytes.is_some() && max_body_bytes < 1024 {
            return Err(invalid(
                "provider_webhooks.max_body_bytes",
                format!("{max_body_bytes} is too small: a single event takes about a kilobyte"),
            ));
        }
        let per_ip_per_minute = match raw.per_ip_per_minute {
            None => defaults.per_ip_per_minute,
            Some(n) => NonZeroU32::new(n).ok_or_else(|| {
                invalid(
                    "provider_webhooks.per_ip_per_minute",
                    "must be at least 1".into(),
                )
            })?,
        };
        let env = |field: &'static str, name: String| {
            if name.trim().is_empty() {
                Err(invalid(field, "must name an environment variable".into()))
            } else {
                Ok(name)
            }
        };
        let ses = match raw.ses {
            None => None,
            Some(s) => {
                if s.topic_arns.is_empty() {
                    return Err(invalid(
                        "provider_webhooks.ses.topic_arns",
                        "must list at least one SNS topic ARN".into(),
                    ));
                }
                if let Some(bad) = s.topic_arns.iter().find(|a| !a.starts_with("arn:")) {
                    return Err(invalid(
                        "provider_webhooks.ses.topic_arns",
                        format!("`{bad}` is not an ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)"),
                    ));
                }
                if s.cert_hosts.is_empty() {
                    return Err(invalid(
                        "provider_webhooks.ses.cert_hosts",
                        "must list at least one host pattern".into(),
                    ));
                }
                if let Some(bad) = s.cert_hosts.iter().find(|h| !valid_host_pattern(h)) {
                    return Err(invalid(
                        "provider_webhooks.ses.cert_hosts",
                        format!(
                            "`{bad}` is not a host pattern (a host name whose labels may be `*`, \
                             such as sns.*.amazonaws.com)"
                        ),
                    ));
                }
                let ca_file = s.ca_file.as_deref().map(&resolve);
                if let Some(path) = &ca_file {
                    if !path.is_file() {
                        return Err(invalid(
                            "provider_webhooks.ses.ca_file",
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
                Some(SesConfig {
                    topic_arns: s.topic_arns,
                    cert_hosts: s
                        .cert_hosts
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    ca_file,
                })
            }
        };
        let postmark = match raw.postmark {
            None => None,
            Some(p) => {
                if p.username.is_empty() || p.username.contains(':') {
                    return Err(invalid(
                        "provider_webhooks.postmark.username",
                        "must be a non-empty name without `:`".into(),
                    ));
                }
                Some(PostmarkConfig {
                    username: p.username,
                    password_env: env("provider_webhooks.postmark.password_env", p.password_env)?,
                })
            }
        };
        Ok(ProviderWebhooksConfig {
            ses,
            postmark,
            mailgun_key_env: raw
                .mailgun
                .map(|m| {
                    env(
                        "provider_webhooks.mailgun.signing_key_env",
                        m.signing_key_env,
                    )
                })
                .transpose()?,
            sendgrid_key_env: raw
                .sendgrid
                .map(|s| {
                    env(
                        "provider_webhooks.sendgrid.public_key_env",
                        s.public_key_env,
                    )
                })
                .transpose()?,
            generic_secret_env: raw
                .generic
                .map(|g| env("provider_webhooks.generic.secret_env", g.secret_env))
                .transpose()?,
            max_age,
            max_body_bytes,
            per_ip_per_minute,
        })
    }
}

fn valid_host_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.split('.').all(|label| {
            label == "*"
                || (!label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        })
}

/// True when `host` matches `pattern` label by label, `*` matching any one label.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let (p, h): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
    p.len() == h.len()
        && p.iter()
            .zip(&h)
            .all(|(p, h)| !h.is_empty() && (*p == "*" || p.eq_ignore_ascii_case(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ProviderWebhooksConfig, String> {
        let raw: RawProviderWebhooks = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        ProviderWebhooksConfig::from_raw(
            raw,
            65536,
            |p| p.to_owned(),
            |field, reason| super::super::ConfigError::Invalid {
                path: "newsletter.yaml".into(),
                field,
                reason,
            },
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn host_patterns_match_one_label_per_star() {
        assert!(host_matches(
            "sns.*.amazonaws.com",
            "sns.eu-west-1.amazonaws.com"
        ));
        assert!(host_matches(
            "sns.*.amazonaws.com",
            "SNS.us-east-1.AmazonAWS.com"
        ));
        assert!(!host_matches("sns.*.amazonaws.com", "sns.amazonaws.com"));
        assert!(!host_matches(
            "sns.*.amazonaws.com",
            "sns.evil.example.amazonaws.com"
        ));
        assert!(!host_matches(
            "sns.*.amazonaws.com",
            "sns.x.amazonaws.com.evil.example"
        ));
        assert!(!host_matches("sns.*.amazonaws.com", "sns..amazonaws.com"));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert!(!parse("{}").unwrap().any());
        let c = parse("mailgun: {}\nmax_age: 5m").unwrap();
        assert_eq!(
            c.mailgun_key_env.as_deref(),
            Some("VERDICTS_MAILGUN_SIGNING_KEY")
        );
        assert_eq!(c.max_age, Duration::from_secs(300));
        let err = parse("ses: {topic_arns: []}").unwrap_err();
        assert!(err.contains("provider_webhooks.ses.topic_arns"), "{err}");
        let err = parse("ses: {topic_arns: [mytopic]}").unwrap_err();
        assert!(err.contains("is not an ARN"), "{err}");
        let err =
            parse("ses: {topic_arns: ['arn:aws:sns:eu-west-1:1:t'], cert_hosts: ['*.com/x']}")
                .unwrap_err();
        assert!(err.contains("cert_hosts"), "{err}");
        let err = parse("postmark: {username: 'a:b'}").unwrap_err();
        assert!(err.contains("postmark.username"), "{err}");
        let err = parse("max_age: soon").unwrap_err();
        assert!(err.contains("provider_webhooks.max_age"), "{err}");
        let err = parse("per_ip_per_minute: 0").unwrap_err();
        assert!(err.contains("per_ip_per_minute"), "{err}");
        let err = parse("max_body_bytes: 100000").unwrap_err();
        assert!(err.contains("web.max_body_bytes (65536)"), "{err}");
        let err = parse("sendgrid: {public_key_env: ''}").unwrap_err();
        assert!(err.contains("sendgrid.public_key_env"), "{err}");
        assert!(parse("zoho: {}").is_err());
    }
}
