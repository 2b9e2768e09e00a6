//! The public door to the list: who may ask for a confirmation mail and how often
//! ([`limits`]), which client a request comes from behind trusted proxies ([`client_ip`]),
//! and the worker that sends the queued confirmation mails ([`outbox`]). The HTTP handlers
//! are in `web::signup`; the SQL in `store::signup`.

pub mod form;
pub mod limits;
pub mod outbox;

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::signup::ProxyHeader;

/// The client a request comes from: the peer, unless the peer is a trusted proxy, in which
/// case the nearest hop of the forwarding chain that is not itself a trusted proxy. `lines`
/// are every line of the forwarding header, in the order received: a proxy may append a
/// line of its own instead of extending the client's, so all of them count, and entries
/// are read from the right. Entries to the left of the first untrusted hop were written by
/// the client and prove nothing.
pub fn client_ip<'a>(
    peer: IpAddr,
    header: ProxyHeader,
    lines: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<Option<IpAddr>> = lines
        .into_iter()
        .flat_map(split_list)
        .map(|entry| match header {
            ProxyHeader::XForwardedFor => parse_node(entry),
            ProxyHeader::Forwarded => forwarded_for(entry),
        })
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = entry else {
            // A garbled or hidden entry: the hops before it cannot be trusted either, so
            // the request counts against the last hop we know.
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

/// The key a client is counted under: its address, or for IPv6 its network of
/// `ipv6_prefix` bits (one site usually holds a whole /64 and can rotate within it).
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, ipv6_prefix.min(128))
            .map(|n| IpAddr::V6(n.network()))
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The elements of a comma-separated header line, commas inside quotes kept.
fn split_list(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(line[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(line[start..].trim());
    out
}

/// An address as a forwarding header writes it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` node of one RFC 7239 `Forwarded` element (`unknown` and obfuscated
/// identifiers are no address).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(peer: &str, lines: &[&str], trusted: &[IpNet]) -> IpAddr {
        client_ip(
            ip(peer),
            ProxyHeader::XForwardedFor,
            lines.iter().copied(),
            trusted,
        )
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: Vec<IpNet> = vec![
            "10.0.0.1/32".parse().unwrap(),
            "10.0.0.2/32".parse().unwrap(),
        ];
        // Not a proxy: the header is the client's own invention.
        assert_eq!(
            xff("203.0.113.9", &["198.51.100.1"], &proxy),
            ip("203.0.113.9")
        );
        // Through one proxy.
        assert_eq!(
            xff("10.0.0.1", &["198.51.100.1"], &proxy),
            ip("198.51.100.1")
        );
        // A client that forges a first entry still gets its own address counted.
        assert_eq!(
            xff("10.0.0.1", &["1.2.3.4, 198.51.100.1, 10.0.0.2"], &proxy),
            ip("198.51.100.1")
        );
        assert_eq!(xff("10.0.0.1", &[], &proxy), ip("10.0.0.1"));
        assert_eq!(xff("10.0.0.1", &["garbage"], &proxy), ip("10.0.0.1"));
    }

    #[test]
    fn a_proxy_that_appends_its_own_line_is_read_from_the_last_line() {
        let proxy: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // HAProxy's `option forwardfor` adds a second header line; the client wrote the first.
        assert_eq!(
            xff("10.0.0.1", &["1.2.3.4", "198.51.100.7"], &proxy),
            ip("198.51.100.7")
        );
        assert_eq!(
            xff(
                "10.0.0.1",
                &["1.2.3.4, 5.6.7.8", "198.51.100.7, 10.0.0.9"],
                &proxy
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            xff("10.0.0.1", &["[2001:db8::7]:4711"], &proxy),
            ip("2001:db8::7")
        );
        assert_eq!(xff("10.0.0.1", &["192.0.2.5:80"], &proxy), ip("192.0.2.5"));
    }

    #[test]
    fn rfc_7239_forwarded_is_read_the_same_way() {
        let proxy: Vec<IpNet> = vec!["10.0.0.1/32".parse().unwrap()];
        let fwd = |lines: &[&str]| {
            client_ip(
                ip("10.0.0.1"),
                ProxyHeader::Forwarded,
                lines.iter().copied(),
                &proxy,
            )
        };
        assert_eq!(
            fwd(&[
                "for=1.2.3.4",
                "for=\"[2001:db8:cafe::17]:4711\";proto=https"
            ]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd(&["for=1.2.3.4, For=192.0.2.60;proto=http;by=10.0.0.1"]),
            ip("192.0.2.60")
        );
        // Hidden or unknown nodes count against the proxy itself.
        assert_eq!(fwd(&["for=1.2.3.4, for=_hidden"]), ip("10.0.0.1"));
        assert_eq!(fwd(&["for=unknown"]), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2:bbbb::9"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2:bbbb::9"), 128),
            ip("2001:db8:1:2:bbbb::9")
        );
        assert_eq!(limit_key(ip("::ffff:192.0.2.1"), 64), ip("192.0.2.1"));
        assert_eq!(limit_key(ip("192.0.2.1"), 64), ip("192.0.2.1"));
    }
}
