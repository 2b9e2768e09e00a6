//! Amazon SES notifications through SNS. SNS signs each message (SignatureVersion 1:
//! SHA1withRSA, 2: SHA256withRSA) over its fields in a fixed order, with a certificate it
//! names by URL; the certificate is fetched only over HTTPS from a host matching
//! `provider_webhooks.ses.cert_hosts`, and only messages of the configured topics are
//! taken. A SubscriptionConfirmation is answered by visiting its SubscribeURL (same host
//! rule); a Notification carries SES's `Bounce` (Permanent, Transient, Undetermined),
//! `Complaint` or `Delivery` as JSON in `Message`. The SNS MessageId makes a retry a
//! duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256,
};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use x509_cert::der::{DecodePem, Encode};

use super::{fetch, fresh, text, ProviderEvent, Refusal, Reported, Verified};
use crate::config::provider_webhooks::SesConfig;

/// What an SNS request came to.
#[derive(Debug)]
pub enum Outcome {
    /// A notification's events, to apply.
    Events(Verified),
    /// A subscription to this topic was confirmed.
    Confirmed(String),
    /// Verified, and nothing to do (an unsubscribe confirmation, another SES event type).
    Nothing(String),
}

/// Why an SNS request was not handled.
#[derive(Debug)]
pub enum SesError {
    Refused(Refusal),
    /// The certificate or the confirmation link could not be fetched: SNS retries.
    Upstream(String),
}

impl From<Refusal> for SesError {
    fn from(r: Refusal) -> Self {
        SesError::Refused(r)
    }
}

/// Signing certificates already fetched (their public keys, by URL), and how to fetch more.
pub struct CertCache {
    tls: Option<Arc<rustls::ClientConfig>>,
    keys: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

/// The most certificates kept; SNS uses one per region at a time.
const MAX_CACHED: usize = 32;

impl CertCache {
    pub fn new(config: Option<&SesConfig>) -> anyhow::Result<Self> {
        let tls = match config {
            None => None,
            Some(c) => {
                let extra = match &c.ca_file {
                    None => Vec::new(),
                    Some(path) => rustls_pki_types::CertificateDer::pem_file_iter(path)
                        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| {
                            crate::error::UserError::new(format!(
                                "{} (provider_webhooks.ses.ca_file): {e}",
                                path.display()
                            ))
                        })?,
                };
                Some(fetch::tls_config(&extra)?)
            }
        };
        Ok(CertCache {
            tls,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// The public key (DER SubjectPublicKeyInfo) of the certificate at `url`.
    async fn key(&self, url: &url::Url) -> Result<Arc<Vec<u8>>, SesError> {
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(url.as_str())
            .cloned();
        if let Some(key) = cached {
            return Ok(key);
        }
        let tls = self
            .tls
            .clone()
            .ok_or_else(|| SesError::Upstream("SES is not configured".into()))?;
        let pem = fetch::get(tls, url).await.map_err(SesError::Upstream)?;
        let cert = x509_cert::Certificate::from_pem(&pem).map_err(|e| {
            Refusal::unauthorized(format!("{url} does not hold a PEM certificate: {e}"))
        })?;
        let validity = cert.tbs_certificate().validity();
        let now = std::time::SystemTime::now();
        if now < validity.not_before.to_system_time() || now > validity.not_after.to_system_time() {
            return Err(Refusal::unauthorized(format!(
                "the signing certificate at {url} is not valid now"
            ))
            .into());
        }
        let key = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| Refusal::unauthorized(format!("{url}: {e}")))?;
        let key = Arc::new(key);
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() >= MAX_CACHED {
            keys.clear();
        }
        keys.insert(url.as_str().to_owned(), key.clone());
        Ok(key)
    }
}

/// The fields SNS signs, in order, for each message type (absent optional ones left out).
fn signed_fields(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Notification" => Some(&[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]),
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => Some(&[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]),
        _ => None,
    }
}

/// The text SNS signs for `message`: each present field's name and value on lines of their
/// own.
pub fn string_to_sign(message: &Value) -> Option<String> {
    let kind = message.get("Type")?.as_str()?;
    let mut out = String::new();
    for field in signed_fields(kind)? {
        match message.get(*field).and_then(Value::as_str) {
            Some(value) => {
                out.push_str(field);
                out.push('\n');
                out.push_str(value);
                out.push('\n');
            }
            None if *field == "Subject" => {}
            None => return None,
        }
    }
    Some(out)
}

pub async fn verify(
    config: &SesConfig,
    certs: &CertCache,
    max_age: Duration,
    body: &[u8],
) -> Result<Outcome, SesError> {
    let message: Value = serde_json::from_slice(body)
        .map_err(|_| Refusal::unauthorized("unsigned: the body is not an SNS message"))?;
    let field = |name: &str| message.get(name).and_then(Value::as_str);
    let kind = field("Type").unwrap_or_default();
    let topic = field("TopicArn").unwrap_or_default();
    if !config.topic_arns.iter().any(|t| t == topic) {
        return Err(Refusal::unauthorized(format!(
            "the topic `{topic}` is not in provider_webhooks.ses.topic_arns"
        ))
        .into());
    }
    let algorithm = match field("SignatureVersion") {
        Some("1") => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        Some("2") => &RSA_PKCS1_2048_8192_SHA256,
        Some(v) => {
            return Err(Refusal::unauthorized(format!("unknown SignatureVersion `{v}`")).into())
        }
        None => return Err(Refusal::unauthorized("unsigned: no SignatureVersion").into()),
    };
    let (Some(signature), Some(cert_url)) = (field("Signature"), field("SigningCertURL")) else {
        return Err(Refusal::unauthorized("unsigned: no Signature or SigningCertURL").into());
    };
    let cert_url = fetch::allowed(cert_url, &config.cert_hosts).map_err(Refusal::unauthorized)?;
    if !cert_url.path().ends_with(".pem") {
        return Err(Refusal::unauthorized("the SigningCertURL is not a .pem file").into());
    }
    let signed = string_to_sign(&message).ok_or_else(|| {
        Refusal::unauthorized(format!("a `{kind}` message without the fields SNS signs"))
    })?;
    let sent = field("Timestamp")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(|| Refusal::unauthorized("no valid Timestamp"))?;
    fresh(sent.timestamp(), chrono::Utc::now().timestamp(), max_age)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Refusal::unauthorized("the signature is not base64"))?;
    let key = certs.key(&cert_url).await?;
    let key = ParsedPublicKey::new(algorithm, key.as_slice())
        .map_err(|_| Refusal::unauthorized("the signing certificate's key is not RSA"))?;
    key.verify_sig(signed.as_bytes(), &signature)
        .map_err(|_| Refusal::unauthorized("the signature does not match the message"))?;
    match kind {
        "SubscriptionConfirmation" => {
            let url = field("SubscribeURL").unwrap_or_default();
            let url = fetch::allowed(url, &config.cert_hosts).map_err(Refusal::unauthorized)?;
            let tls = certs
                .tls
                .clone()
                .ok_or_else(|| SesError::Upstream("SES is not configured".into()))?;
            fetch::get(tls, &url).await.map_err(SesError::Upstream)?;
            Ok(Outcome::Confirmed(topic.to_owned()))
        }
        "UnsubscribeConfirmation" => Ok(Outcome::Nothing(format!(
            "unsubscribe confirmation for {topic}"
        ))),
        _ => {
            let id = field("MessageId").unwrap_or_default();
            let inner: Value = serde_json::from_str(field("Message").unwrap_or_default())
                .map_err(|e| Refusal::malformed(format!("Message is not SES's JSON: {e}")))?;
            let events = notification_events(id, &inner);
            if events.is_empty() {
                return Ok(Outcome::Nothing(format!("SNS message {id}")));
            }
            Ok(Outcome::Events(Verified {
                events,
                one_time: None,
            }))
        }
    }
}

/// The events of one SES notification (`notificationType`, or `eventType` for an event
/// publishing configuration set): one per recipient.
pub fn notification_events(sns_id: &str, n: &Value) -> Vec<ProviderEvent> {
    let kind = text(n, "notificationType")
        .or_else(|| text(n, "eventType"))
        .unwrap_or_default();
    let mail = n.get("mail").cloned().unwrap_or(Value::Null);
    let ses_id = text(&mail, "messageId");
    // Our Message-ID, wherever SES quotes it: the original headers (when the identity
    // includes them) or the common ones.
    let evidence = mail.to_string();
    let each = |list: Option<&Value>, field: &str| -> Vec<Value> {
        list.and_then(|l| l.get(field))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut push = |recipient: Option<String>,
                    reported: Reported,
                    status: Option<String>,
                    diagnostic: Option<String>| {
        let who = recipient.clone().unwrap_or_default();
        out.push(ProviderEvent {
            id: format!("{sns_id}:{who}"),
            reported,
            recipient,
            provider_message_id: ses_id.clone(),
            evidence: evidence.clone(),
            status,
            diagnostic,
        });
    };
    match kind.as_str() {
        "Bounce" => {
            let bounce = n.get("bounce");
            let reported = match bounce.and_then(|b| text(b, "bounceType")).as_deref() {
                Some("Permanent") => Reported::HardBounce,
                _ => Reported::SoftBounce,
            };
            for r in each(bounce, "bouncedRecipients") {
                push(
                    text(&r, "emailAddress"),
                    reported,
                    text(&r, "status"),
                    text(&r, "diagnosticCode")
                        .or_else(|| bounce.and_then(|b| text(b, "bounceSubType"))),
                );
            }
        }
        "Complaint" => {
            let complaint = n.get("complaint");
            let note = complaint
                .and_then(|c| text(c, "complaintFeedbackType"))
                .map(|t| format!("{t} report"));
            for r in each(complaint, "complainedRecipients") {
                push(
                    text(&r, "emailAddress"),
                    Reported::Complaint,
                    None,
                    note.clone(),
                );
            }
        }
        "Delivery" => {
            let recipients = n
                .get("delivery")
                .and_then(|d| d.get("recipients"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for r in recipients {
                push(
                    r.as_str().map(str::to_owned),
                    Reported::Delivered,
                    None,
                    None,
                );
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_to_sign_follows_the_documented_order() {
        let m = serde_json::json!({
            "Type": "Notification", "MessageId": "m1", "TopicArn": "arn:aws:sns:x:1:t",
            "Message": "hello", "Timestamp": "2026-01-01T00:00:00.000Z",
            "SignatureVersion": "1", "Signature": "x", "SigningCertURL": "https://x/y.pem"
        });
        assert_eq!(
            string_to_sign(&m).unwrap(),
            "Message\nhello\nMessageId\nm1\nTimestamp\n2026-01-01T00:00:00.000Z\nTopicArn\narn:aws:sns:x:1:t\nType\nNotification\n"
        );
        let mut with_subject = m.clone();
        with_subject["Subject"] = "s".into();
        assert!(string_to_sign(&with_subject)
            .unwrap()
            .contains("MessageId\nm1\nSubject\ns\nTimestamp"));
    }

    #[test]
    fn a_permanent_bounce_is_hard_for_each_recipient() {
        let n = serde_json::json!({
            "notificationType": "Bounce",
            "bounce": {"bounceType": "Permanent", "bouncedRecipients": [
                {"emailAddress": "a@example.com", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 unknown"},
                {"emailAddress": "b@example.com"}
            ]},
            "mail": {"messageId": "0100-abc", "commonHeaders": {"messageId": "<x@example.com>"}}
        });
        let events = notification_events("sns-1", &n);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].reported, Reported::HardBounce);
        assert_eq!(events[0].id, "sns-1:a@example.com");
        assert_eq!(events[1].provider_message_id.as_deref(), Some("0100-abc"));
        let mut transient = n.clone();
        transient["bounce"]["bounceType"] = "Transient".into();
        assert!(notification_events("sns-2", &transient)
            .iter()
            .all(|e| e.reported == Reported::SoftBounce));
        let published = serde_json::json!({
            "eventType": "Complaint",
            "complaint": {"complaintFeedbackType": "abuse",
                          "complainedRecipients": [{"emailAddress": "c@example.com"}]},
            "mail": {"messageId": "0100-def"}
        });
        let events = notification_events("sns-3", &published);
        assert_eq!(events[0].reported, Reported::Complaint);
        assert_eq!(events[0].diagnostic.as_deref(), Some("abuse report"));
    }
}
