//! Telling link scanners from readers, as far as a single request shows it: the method,
//! prefetch hints, the user agent and the client's network. Two more signs need the
//! database and are judged by the writer: a click too soon after the copy's delivery, and
//! a client that also followed the decoy link.

use std::net::IpAddr;

use axum::http::{HeaderMap, Method};

use crate::tracking::config::TrackingConfig;

/// Why a request is a machine's, or `None` when nothing says so.
pub fn judge(
    config: &TrackingConfig,
    method: &Method,
    headers: &HeaderMap,
    client: IpAddr,
) -> Option<&'static str> {
    if method == Method::HEAD {
        return Some("head");
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    if ["purpose", "sec-purpose", "x-purpose", "x-moz"]
        .iter()
        .any(|h| header(h).contains("prefetch") || header(h).contains("preview"))
    {
        return Some("prefetch");
    }
    let agent = header("user-agent");
    if agent.trim().is_empty() || config.scanner_agents.iter().any(|a| agent.contains(a)) {
        return Some("agent");
    }
    let client = client.to_canonical();
    if config.scanner_networks.iter().any(|n| n.contains(&client)) {
        return Some("network");
    }
    None
}

/// A browser as the counts know it: a keyed hash of its address and user agent, so unique
/// clickers can be counted without keeping either.
pub fn visitor(key: &crate::mail::token::TokenKey, client: IpAddr, headers: &HeaderMap) -> String {
    use hmac::Mac;
    let mut mac = key.keyed();
    mac.update(b"verdicts-visitor-v1\0");
    mac.update(client.to_canonical().to_string().as_bytes());
    mac.update(b"\0");
    mac.update(
        headers
            .get("user-agent")
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
    );
    data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn scanners_are_named_and_browsers_pass() {
        let c = TrackingConfig::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let firefox = headers(&[(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )]);
        assert_eq!(judge(&c, &Method::GET, &firefox, ip), None);
        assert_eq!(judge(&c, &Method::HEAD, &firefox, ip), Some("head"));
        let mut prefetch = firefox.clone();
        prefetch.insert("sec-purpose", "prefetch".parse().unwrap());
        assert_eq!(judge(&c, &Method::GET, &prefetch, ip), Some("prefetch"));
        let safelinks = headers(&[("user-agent", "Microsoft SafeLinks/1.0")]);
        assert_eq!(judge(&c, &Method::GET, &safelinks, ip), Some("agent"));
        assert_eq!(
            judge(&c, &Method::GET, &HeaderMap::new(), ip),
            Some("agent")
        );
        let eop: IpAddr = "40.107.1.2".parse().unwrap();
        assert_eq!(judge(&c, &Method::GET, &firefox, eop), Some("network"));
    }
}
