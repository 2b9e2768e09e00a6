//! SendGrid's signed Event Webhook: an ECDSA P-256 signature over the timestamp header's
//! value followed by the raw body, sent in `X-Twilio-Email-Event-Webhook-Signature`
//! (base64 DER) with `X-Twilio-Email-Event-Webhook-Timestamp`, checked with the
//! verification key from SendGrid's settings (base64 DER SubjectPublicKeyInfo). The body is
//! a JSON array of events; `bounce` (type `bounce` or `blocked`), `dropped`, `deferred`,
//! `spamreport`, `unsubscribe` and `group_unsubscribe` are taken, `delivered` noted, the
//! rest (opens, clicks) ignored. Each event's `sg_event_id` makes a retry a duplicate.

use std::time::Duration;

use aws_lc_rs::signature::{ParsedPublicKey, ECDSA_P256_SHA256_ASN1};
use axum::http::HeaderMap;
use base64::Engine;

use super::{fresh, text, ProviderEvent, Refusal, Reported, Verified};

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// The verification key as SendGrid shows it (base64 of a DER SubjectPublicKeyInfo),
/// checked to be a P-256 key; returns the DER.
pub fn parse_public_key(base64_der: &str) -> Result<Vec<u8>, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64_der.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &der)
        .map_err(|e| format!("not an ECDSA P-256 public key: {e}"))?;
    Ok(der)
}

pub fn verify(
    public_key: &[u8],
    max_age: Duration,
    now: i64,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER))
    else {
        return Err(Refusal::unauthorized(
            "unsigned: no X-Twilio-Email-Event-Webhook-Signature or -Timestamp",
        ));
    };
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Refusal::unauthorized("the signature is not base64"))?;
    let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
        .map_err(|_| Refusal::unauthorized("the verification key is unusable"))?;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify_sig(&signed, &sig)
        .map_err(|_| Refusal::unauthorized("the signature does not match the body"))?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refusal::unauthorized("the signed timestamp is not a number"))?;
    fresh(ts, now, max_age)?;
    let batch: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| Refusal::malformed(format!("the body is not a JSON array of events: {e}")))?;
    let mut events = Vec::new();
    for (n, e) in batch.iter().enumerate() {
        let kind = text(e, "event").unwrap_or_default();
        let reason = text(e, "reason");
        let reported = match kind.as_str() {
            "bounce" => match text(e, "type").as_deref() {
                Some("blocked") => Reported::SoftBounce,
                _ => Reported::HardBounce,
            },
            "dropped" => match reason.as_deref() {
                Some("Bounced Address" | "Invalid" | "Invalid SMTPAPI header") => {
                    Reported::HardBounce
                }
                Some("Spam Reporting Address") => Reported::Complaint,
                Some("Unsubscribed Address") => Reported::Unsubscribe,
                _ => continue,
            },
            "deferred" => Reported::Deferred,
            "delivered" => Reported::Delivered,
            "spamreport" => Reported::Complaint,
            "unsubscribe" | "group_unsubscribe" => Reported::Unsubscribe,
            _ => continue,
        };
        let Some(id) = text(e, "sg_event_id") else {
            return Err(Refusal::malformed(format!("event {n} has no sg_event_id")));
        };
        events.push(ProviderEvent {
            id,
            reported,
            recipient: text(e, "email"),
            // sg_message_id is the X-Message-Id SendGrid answered with, plus a suffix.
            provider_message_id: text(e, "sg_message_id")
                .map(|m| m.split('.').next().unwrap_or_default().to_owned()),
            evidence: e.to_string(),
            status: text(e, "status"),
            diagnostic: reason,
        });
    }
    Ok(Verified {
        events,
        one_time: Some(signature.trim().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    #[test]
    fn a_signed_batch_verifies_and_an_altered_one_does_not() {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let der = pair.public_key().as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let key = parse_public_key(&b64).unwrap();
        let body = br#"[{"email":"a@example.com","event":"bounce","type":"bounce","sg_event_id":"e1","status":"5.0.0","reason":"550 unknown"}]"#;
        let mut signed = b"1700000000".to_vec();
        signed.extend_from_slice(body);
        let sig = pair.sign(&SystemRandom::new(), &signed).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            SIGNATURE_HEADER,
            base64::engine::general_purpose::STANDARD
                .encode(sig.as_ref())
                .parse()
                .unwrap(),
        );
        h.insert(TIMESTAMP_HEADER, "1700000000".parse().unwrap());
        let window = Duration::from_secs(300);
        let v = verify(&key, window, 1_700_000_010, &h, body).unwrap();
        assert_eq!(v.events[0].reported, Reported::HardBounce);
        let altered = String::from_utf8_lossy(body).replace("a@example", "b@example");
        assert!(verify(&key, window, 1_700_000_010, &h, altered.as_bytes()).is_err());
        assert!(verify(&key, window, 1_700_009_999, &h, body).is_err());
        assert!(parse_public_key("bm90IGEga2V5").is_err());
    }

    #[test]
    fn dropped_and_unsubscribe_events_map_by_their_reason() {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let key = pair.public_key().as_der().unwrap().as_ref().to_vec();
        let body = br#"[
            {"email":"a@example.com","event":"dropped","reason":"Bounced Address","sg_event_id":"d1"},
            {"email":"b@example.com","event":"dropped","reason":"Unsubscribed Address","sg_event_id":"d2"},
            {"email":"c@example.com","event":"dropped","reason":"Spam Reporting Address","sg_event_id":"d3"},
            {"email":"d@example.com","event":"unsubscribe","sg_event_id":"u1"},
            {"email":"e@example.com","event":"group_unsubscribe","sg_event_id":"u2"},
            {"email":"f@example.com","event":"bounce","type":"blocked","sg_event_id":"b1"},
            {"email":"g@example.com","event":"click","sg_event_id":"c1"}
        ]"#;
        let mut signed = b"1700000000".to_vec();
        signed.extend_from_slice(body);
        let sig = pair.sign(&SystemRandom::new(), &signed).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            SIGNATURE_HEADER,
            base64::engine::general_purpose::STANDARD
                .encode(sig.as_ref())
                .parse()
                .unwrap(),
        );
        h.insert(TIMESTAMP_HEADER, "1700000000".parse().unwrap());
        let v = verify(&key, Duration::from_secs(300), 1_700_000_000, &h, body).unwrap();
        let kinds: Vec<Reported> = v.events.iter().map(|e| e.reported).collect();
        assert_eq!(
            kinds,
            [
                Reported::HardBounce,
                Reported::Unsubscribe,
                Reported::Complaint,
                Reported::Unsubscribe,
                Reported::Unsubscribe,
                Reported::SoftBounce,
            ]
        );
    }
}
