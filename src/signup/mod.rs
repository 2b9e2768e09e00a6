//! The public door to the list: who may ask for a confirmation mail and how often
//! ([`limits`]), which client a request comes from behind trusted proxies ([`client_ip`]),
//! and the worker that sends the queued confirmation mails ([`outbox`]). The HTTP handlers
//! are in `web::signup`; the SQL in `store::signup`.

pub mod form;
pub mod limits;
pub mod outbox;

use std::net::IpAddr;

/// The client a request comes from: the peer, unless the peer is a trusted proxy, in which
/// case the nearest `X-Forwarded-For` entry that is not itself a trusted proxy. Entries to
/// the left of that one were written by the client and prove nothing.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.contains(&ip.to_canonical());
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for entry in header.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            // A garbled entry: the hops before it cannot be trusted either.
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = [ip("10.0.0.1"), ip("10.0.0.2")];
        // Not a proxy: the header is the client's own invention.
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("198.51.100.1"), &proxy),
            ip("203.0.113.9")
        );
        // Through one proxy.
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("198.51.100.1"), &proxy),
            ip("198.51.100.1")
        );
        // A client that forges a first entry still gets its own address counted.
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                Some("1.2.3.4, 198.51.100.1, 10.0.0.2"),
                &proxy
            ),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, &proxy), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("garbage"), &proxy),
            ip("10.0.0.1")
        );
    }
}
