//! The generic JSON webhook, for a relay without an endpoint of its own: the sender signs
//! `<timestamp>.<body>` with HMAC-SHA256 under a shared secret and sends
//! `X-Verdicts-Timestamp: <unix seconds>` and `X-Verdicts-Signature: v1=<hex>`. The body is
//! `{"events": [{"id", "type", "recipient", "message_id", "provider_message_id", "status",
//! "diagnostic"}]}`, `type` one of `hard_bounce`, `soft_bounce`, `complaint`,
//! `unsubscribe`, `delivered`, `deferred`.

use std::time::Duration;

use axum::http::HeaderMap;
use serde::Deserialize;

use super::{fresh, hmac_sha256, same_secret, ProviderEvent, Refusal, Reported, Verified};

pub const TIMESTAMP_HEADER: &str = "x-verdicts-timestamp";
pub const SIGNATURE_HEADER: &str = "x-verdicts-signature";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    events: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    provider_message_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    diagnostic: Option<String>,
}

/// The signature of a body sent at `timestamp`, as the header carries it.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mac = hmac_sha256(secret, &[timestamp.to_string().as_bytes(), b".", body]);
    format!("v1={}", data_encoding::HEXLOWER.encode(&mac))
}

pub fn verify(
    secret: &[u8],
    max_age: Duration,
    now: i64,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(given)) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER))
    else {
        return Err(Refusal::unauthorized(
            "unsigned: no X-Verdicts-Signature or X-Verdicts-Timestamp",
        ));
    };
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refusal::unauthorized("X-Verdicts-Timestamp is not a number"))?;
    let expected = signature(secret, timestamp, body);
    if !same_secret(expected.as_bytes(), given.trim().as_bytes()) {
        return Err(Refusal::unauthorized(
            "the signature does not match the body",
        ));
    }
    fresh(timestamp, now, max_age)?;
    let parsed: Body = serde_json::from_slice(body).map_err(|e| {
        Refusal::malformed(format!("the body is not the generic webhook's JSON: {e}"))
    })?;
    let mut events = Vec::with_capacity(parsed.events.len());
    for (n, value) in parsed.events.into_iter().enumerate() {
        let evidence = value.to_string();
        let e: Event = serde_json::from_value(value)
            .map_err(|err| Refusal::malformed(format!("events[{n}]: {err}")))?;
        let reported = match e.kind.as_str() {
            "hard_bounce" => Reported::HardBounce,
            "soft_bounce" => Reported::SoftBounce,
            "complaint" => Reported::Complaint,
            "unsubscribe" => Reported::Unsubscribe,
            "delivered" => Reported::Delivered,
            "deferred" => Reported::Deferred,
            other => {
                return Err(Refusal::malformed(format!(
                    "events[{n}].type: `{other}` is not one of hard_bounce, soft_bounce, \
                     complaint, unsubscribe, delivered, deferred"
                )))
            }
        };
        if e.id.trim().is_empty() {
            return Err(Refusal::malformed(format!("events[{n}].id is empty")));
        }
        events.push(ProviderEvent {
            id: e.id,
            reported,
            recipient: e.recipient,
            provider_message_id: e.provider_message_id,
            evidence: e.message_id.unwrap_or(evidence),
            status: e.status,
            diagnostic: e.diagnostic,
        });
    }
    Ok(Verified {
        events,
        one_time: Some(given.trim().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TIMESTAMP_HEADER, ts.to_string().parse().unwrap());
        h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        h
    }

    #[test]
    fn signed_bodies_verify_and_altered_ones_do_not() {
        let body = br#"{"events":[{"id":"e1","type":"hard_bounce","recipient":"a@example.com"}]}"#;
        let sig = signature(b"s3cret", 1000, body);
        let ok = verify(
            b"s3cret",
            Duration::from_secs(60),
            1010,
            &headers(1000, &sig),
            body,
        )
        .unwrap();
        assert_eq!(ok.events.len(), 1);
        assert_eq!(ok.events[0].reported, Reported::HardBounce);
        let altered = body
            .iter()
            .copied()
            .map(|b| if b == b'a' { b'b' } else { b })
            .collect::<Vec<_>>();
        assert!(verify(
            b"s3cret",
            Duration::from_secs(60),
            1010,
            &headers(1000, &sig),
            &altered
        )
        .is_err());
        assert!(verify(
            b"other",
            Duration::from_secs(60),
            1010,
            &headers(1000, &sig),
            body
        )
        .is_err());
        assert!(verify(
            b"s3cret",
            Duration::from_secs(60),
            2000,
            &headers(1000, &sig),
            body
        )
        .is_err());
        assert!(verify(
            b"s3cret",
            Duration::from_secs(60),
            1010,
            &HeaderMap::new(),
            body
        )
        .is_err());
    }
}
