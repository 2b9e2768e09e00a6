//! Postmark's webhooks, which Postmark does not sign: the proof is HTTP basic auth, set in
//! the webhook's URL (`https://user:password@…/webhooks/postmark`). Record types: `Bounce`
//! (by `Type`), `SpamComplaint` and `SubscriptionChange` (a suppression added by Postmark:
//! the reader's unsubscribe, a hard bounce or a complaint); others are acknowledged and
//! ignored. A retry carries the same `ID`, so it changes nothing.

use axum::http::{header, HeaderMap};
use base64::Engine;

use super::{same_secret, text, ProviderEvent, Refusal, Reported, Verified};

pub fn verify(
    username: &str,
    password: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Refusal> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        })
        .ok_or_else(|| Refusal::unauthorized("no basic auth"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(given)
        .map_err(|_| Refusal::unauthorized("basic auth that is not base64"))?;
    let expected = format!("{username}:{password}");
    if !same_secret(expected.as_bytes(), &decoded) {
        return Err(Refusal::unauthorized("wrong user name or password"));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::malformed(format!("the body is not JSON: {e}")))?;
    Ok(Verified {
        events: events(&value)?.into_iter().collect(),
        one_time: None,
    })
}

fn events(value: &serde_json::Value) -> Result<Option<ProviderEvent>, Refusal> {
    let record = text(value, "RecordType").unwrap_or_default();
    let recipient = text(value, "Email").or_else(|| text(value, "Recipient"));
    let message_id = text(value, "MessageID");
    let (reported, id) = match record.as_str() {
        "Bounce" => {
            let reported = match text(value, "Type").as_deref() {
                Some("HardBounce" | "BadEmailAddress" | "ManuallyDeactivated") => {
                    Reported::HardBounce
                }
                Some("SoftBounce" | "Transient" | "DnsError" | "Blocked") => Reported::SoftBounce,
                Some("SpamComplaint") => Reported::Complaint,
                Some("Unsubscribe") => Reported::Unsubscribe,
                // Auto-responders, challenge verifications and the like: nothing to record.
                _ => return Ok(None),
            };
            (reported, text(value, "ID"))
        }
        "SpamComplaint" => (Reported::Complaint, text(value, "ID")),
        "SubscriptionChange" => {
            if value.get("SuppressSending").and_then(|v| v.as_bool()) != Some(true) {
                // A reactivation: the reader comes back only through verdicts.
                return Ok(None);
            }
            let reported = match text(value, "SuppressionReason").as_deref() {
                Some("HardBounce") => Reported::HardBounce,
                Some("SpamComplaint") => Reported::Complaint,
                Some("ManualSuppression") => Reported::Unsubscribe,
                _ => return Ok(None),
            };
            // No event id: the message, recipient and time of the change name it.
            let id = format!(
                "change:{}:{}:{}",
                message_id.clone().unwrap_or_default(),
                recipient.clone().unwrap_or_default(),
                text(value, "ChangedAt").unwrap_or_default()
            );
            (reported, Some(id))
        }
        "Delivery" => (
            Reported::Delivered,
            Some(format!(
                "delivery:{}",
                message_id.clone().unwrap_or_default()
            )),
        ),
        _ => return Ok(None),
    };
    let Some(id) = id else {
        return Err(Refusal::malformed(format!(
            "a {record} record without an ID"
        )));
    };
    Ok(Some(ProviderEvent {
        id: format!("{record}:{id}"),
        reported,
        recipient,
        provider_message_id: message_id,
        evidence: value.to_string(),
        status: text(value, "Type").filter(|_| record == "Bounce"),
        diagnostic: text(value, "Description")
            .or_else(|| text(value, "Details"))
            .or_else(|| text(value, "SuppressionReason")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(header::AUTHORIZATION, format!("Basic {b}").parse().unwrap());
        h
    }

    #[test]
    fn basic_auth_is_the_proof() {
        let body = br#"{"RecordType":"Bounce","ID":42,"Type":"HardBounce","Email":"a@example.com","MessageID":"m-1"}"#;
        let v = verify("hooks", "pw", &auth("hooks", "pw"), body).unwrap();
        assert_eq!(v.events[0].reported, Reported::HardBounce);
        assert_eq!(v.events[0].id, "Bounce:42");
        assert!(verify("hooks", "pw", &auth("hooks", "pW"), body).is_err());
        assert!(verify("hooks", "pw", &HeaderMap::new(), body).is_err());
        let change = br#"{"RecordType":"SubscriptionChange","MessageID":"m-2","Recipient":"b@example.com","SuppressSending":true,"SuppressionReason":"ManualSuppression","ChangedAt":"2026-01-01T00:00:00Z"}"#;
        let v = verify("hooks", "pw", &auth("hooks", "pw"), change).unwrap();
        assert_eq!(v.events[0].reported, Reported::Unsubscribe);
        let auto =
            br#"{"RecordType":"Bounce","ID":43,"Type":"AutoResponder","Email":"a@example.com"}"#;
        assert!(verify("hooks", "pw", &auth("hooks", "pw"), auto)
            .unwrap()
            .events
            .is_empty());
    }
}
