//! What a receiver gets: the JSON body and the headers that let it check, in a few lines,
//! that the newsletter sent it. The signature is HMAC-SHA256, keyed with the receiver's
//! secret, over the timestamp header's value, a full stop, and the body's exact bytes;
//! written `v1=` and lower-case hex (docs/api.md shows a receiver checking it).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The announcement's id: the same on every retry, for receivers to drop repeats.
pub const ID_HEADER: &str = "Verdicts-Event-Id";
pub const EVENT_HEADER: &str = "Verdicts-Event";
/// Unix seconds when this attempt was signed.
pub const TIMESTAMP_HEADER: &str = "Verdicts-Timestamp";
pub const SIGNATURE_HEADER: &str = "Verdicts-Signature";

/// The body: `{"id", "type", "created_at", "data"}`; `data` is stored as JSON text.
pub fn body(id: i64, event_type: &str, created_at: &str, data: &str) -> String {
    let data: serde_json::Value = serde_json::from_str(data).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": id.to_string(),
        "type": event_type,
        "created_at": created_at,
        "data": data,
    })
    .to_string()
}

/// `v1=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1={}",
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        let a = signature(b"secret", 1_700_000_000, b"{}");
        assert!(a.starts_with("v1=") && a.len() == 3 + 64);
        assert_ne!(a, signature(b"secret", 1_700_000_001, b"{}"));
        assert_ne!(a, signature(b"secret", 1_700_000_000, b"{ }"));
        assert_ne!(a, signature(b"other", 1_700_000_000, b"{}"));
    }
}
