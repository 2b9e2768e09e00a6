//! One HTTPS GET, for SNS's signing certificate and a subscription's confirmation link:
//! rustls (on aws-lc-rs) with the public roots and the configured extra CA, hyper's HTTP/1
//! client over it, a deadline and a size cap. Only URLs whose host matches an allowed
//! pattern are fetched (checked by [`allowed`] before this is called).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use crate::config::provider_webhooks::host_matches;

/// The longest a fetch may take, connection to last byte.
const DEADLINE: Duration = Duration::from_secs(10);

/// The largest answer read (a certificate is a few kilobytes).
const MAX_ANSWER: usize = 64 * 1024;

/// A parsed `https://host[:port]/path` whose host matches one of `patterns`, or why not.
pub fn allowed(url: &str, patterns: &[String]) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("`{url}` is not https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{url}` carries credentials"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if !patterns.iter().any(|p| host_matches(p, host)) {
        return Err(format!(
            "the host {host} is not allowed (provider_webhooks.ses.cert_hosts)"
        ));
    }
    Ok(parsed)
}

/// The TLS client for fetches: the public roots and the certificates of `extra`.
pub fn tls_config(
    extra: &[rustls_pki_types::CertificateDer<'static>],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GETs `url` over TLS; the body of a 200 answer, or why there is none.
pub async fn get(tls: Arc<rustls::ClientConfig>, url: &url::Url) -> Result<Bytes, String> {
    tokio::time::timeout(DEADLINE, get_inner(tls, url))
        .await
        .map_err(|_| format!("{url}: no answer within {} s", DEADLINE.as_secs()))?
}

async fn get_inner(tls: Arc<rustls::ClientConfig>, url: &url::Url) -> Result<Bytes, String> {
    let host = url.host_str().ok_or("no host")?.to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let driver = tokio::spawn(conn);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "verdicts")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        return Err(format!("{url}: answered {status}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_on_allowed_hosts_are_fetched() {
        let sns = ["sns.*.amazonaws.com".to_owned()];
        assert!(allowed(
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
            &sns
        )
        .is_ok());
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.eu-west-1.amazonaws.com/x.pem",
            "https://user:pw@sns.eu-west-1.amazonaws.com/x.pem",
            "https://evil.example\\@sns.eu-west-1.amazonaws.com/x.pem",
        ] {
            assert!(allowed(bad, &sns).is_err(), "{bad}");
        }
    }
}
