//! Mailgun's webhooks: a JSON body `{"signature": {"timestamp", "token", "signature"},
//! "event-data": {…}}` where `signature` is the hex HMAC-SHA256 of timestamp and token under
//! the account's webhook signing key. A token is taken once and the timestamp must be
//! fresh. Events: `failed` (severity `permanent` or `temporary`), `complained`,
//! `unsubscribed`, `delivered`; others are acknowledged and ignored.

use std::time::Duration;

use serde::Deserialize;

use super::{fresh, hmac_sha256, same_secret, text, ProviderEvent, Refusal, Reported, Verified};

#[derive(Deserialize)]
struct Body {
    signature: Signature,
    #[serde(rename = "event-data")]
    event_data: serde_json::Value,
}

#[derive(Deserialize)]
struct Signature {
    timestamp: String,
    token: String,
    signature: String,
}

/// The hex signature Mailgun sends for `timestamp` and `token`.
pub fn signature(key: &[u8], timestamp: &str, token: &str) -> String {
    data_encoding::HEXLOWER.encode(&hmac_sha256(key, &[timestamp.as_bytes(), token.as_bytes()]))
}

pub fn verify(key: &[u8], max_age: Duration, now: i64, body: &[u8]) -> Result<Verified, Refusal> {
    let parsed: Body = serde_json::from_slice(body).map_err(|_| {
        Refusal::unauthorized("unsigned: the body is not Mailgun's JSON with a `signature` object")
    })?;
    let s = &parsed.signature;
    let expected = signature(key, &s.timestamp, &s.token);
    if !same_secret(
        expected.as_bytes(),
        s.signature.trim().to_ascii_lowercase().as_bytes(),
    ) {
        return Err(Refusal::unauthorized(
            "the signature does not match the key",
        ));
    }
    let timestamp: i64 = s
        .timestamp
        .trim()
        .parse()
        .map_err(|_| Refusal::unauthorized("the signed timestamp is not a number"))?;
    fresh(timestamp, now, max_age)?;
    // Mailgun signs only the timestamp and token: the event data is taken on the word of
    // whoever holds a fresh, unused token, which only Mailgun can make.
    let data = &parsed.event_data;
    let event = text(data, "event").unwrap_or_default();
    let reported = match event.as_str() {
        "failed" => match text(data, "severity").as_deref() {
            Some("permanent") => Reported::HardBounce,
            _ => Reported::SoftBounce,
        },
        "complained" => Reported::Complaint,
        "unsubscribed" => Reported::Unsubscribe,
        "delivered" => Reported::Delivered,
        _ => {
            return Ok(Verified {
                events: Vec::new(),
                one_time: Some(s.token.clone()),
            })
        }
    };
    let Some(id) = text(data, "id") else {
        return Err(Refusal::malformed("event-data has no id"));
    };
    let status = data.get("delivery-status");
    let message_id = data
        .get("message")
        .and_then(|m| m.get("headers"))
        .and_then(|h| text(h, "message-id"));
    let diagnostic = status
        .and_then(|st| {
            text(st, "message")
                .filter(|m| !m.is_empty())
                .or_else(|| text(st, "description"))
        })
        .or_else(|| text(data, "reason"));
    Ok(Verified {
        events: vec![ProviderEvent {
            id,
            reported,
            recipient: text(data, "recipient"),
            provider_message_id: message_id,
            evidence: data.to_string(),
            status: status.and_then(|st| text(st, "code")),
            diagnostic,
        }],
        one_time: Some(s.token.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_and_a_wrong_key_or_stale_one_does_not() {
        // The key, timestamp and token of Mailgun's documented example.
        let key = b"key-3ax6xnjp29jd6fds4gc373sgvjxteol0";
        let sig = signature(
            key,
            "1529006854",
            "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
        );
        assert_eq!(sig.len(), 64);
        let body = format!(
            r#"{{"signature":{{"timestamp":"1529006854","token":"a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0","signature":"{sig}"}},
               "event-data":{{"event":"failed","severity":"permanent","id":"G9Bn5sl1TC6nu79C8C0bwg","recipient":"alice@example.com"}}}}"#
        );
        let v = verify(key, Duration::from_secs(300), 1529006900, body.as_bytes()).unwrap();
        assert_eq!(v.events[0].reported, Reported::HardBounce);
        assert!(verify(
            b"other",
            Duration::from_secs(300),
            1529006900,
            body.as_bytes()
        )
        .is_err());
        assert!(verify(key, Duration::from_secs(300), 1529009900, body.as_bytes()).is_err());
    }
}
