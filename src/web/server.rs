//! The endpoint's listener, built to hold its ground on the open internet: a cap on
//! concurrent connections (a connection over the cap is closed at once, before anything is
//! read), a deadline for each request's headers (which is also how long a kept-alive
//! connection may wait for its next request), an idle deadline for a connection that moves
//! no bytes at all, and a limit on request bodies. Errors accepting a connection (out of
//! file descriptors, say) are logged and waited out, never fatal.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::WebConfig;

/// How long a stopping server lets requests in progress finish.
const DRAIN: Duration = Duration::from_secs(5);
/// The pause after a failed accept (typically EMFILE), so the loop cannot spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "connection limit reached" warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Listens on `addr` (`web.listen`).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (web.listen): {e}"))
}

/// Serves `app` on `addr` with the limits of `web` until `stop` resolves.
pub async fn serve(
    addr: SocketAddr,
    web: &WebConfig,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(bind(addr).await?, web, app, stop).await
}

/// Serves `app` on a bound listener with the limits of `web` until `stop` resolves.
pub async fn serve_on(
    listener: TcpListener,
    web: &WebConfig,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    info!(
        %addr,
        max_connections = web.max_connections,
        header_timeout = ?web.header_timeout,
        idle_timeout = ?web.idle_timeout,
        max_body_bytes = web.max_body_bytes,
        "web endpoint listening"
    );
    let app = limit_bodies(app, web.max_body_bytes);
    let slots = Arc::new(Semaphore::new(web.max_connections));
    let (shutdown, shutting_down) = watch::channel(false);
    let mut refused: u64 = 0;
    let mut warned: Option<Instant> = None;
    let mut stop = pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "cannot accept a connection; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(stream);
            refused += 1;
            if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                warn!(
                    max_connections = web.max_connections,
                    refused,
                    "connection limit reached (web.max_connections); refusing new connections"
                );
                warned = Some(Instant::now());
            }
            continue;
        };
        let app = app.clone();
        let limits = (web.header_timeout, web.idle_timeout);
        let shutting_down = shutting_down.clone();
        tokio::spawn(async move {
            connection(stream, peer, app, limits, shutting_down).await;
            debug!(%peer, "connection closed");
            drop(permit);
        });
    }
    // Let the requests in progress finish; idle connections close at once.
    let _ = shutdown.send(true);
    let all = u32::try_from(web.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, slots.acquire_many(all)).await;
    Ok(())
}

/// Closes a connection over the cap without reading from it: a fixed 503 if the socket
/// takes it at once, then the close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 5\r\n\r\n",
    );
}

/// A request whose declared body is over the limit is answered 413 before it is read; a
/// body without a declared length is cut off at the limit by the extractors.
fn limit_bodies(app: Router, max: usize) -> Router {
    app.layer(middleware::from_fn(
        move |req: Request, next: Next| async move {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
            }
            next.run(req).await
        },
    ))
    .layer(DefaultBodyLimit::max(max))
}

/// Serves one connection until it closes, its headers or its silence run out of time, or
/// the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    (header_timeout, idle_timeout): (Duration, Duration),
    mut shutting_down: watch::Receiver<bool>,
) {
    let epoch = Instant::now();
    let last_io = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        epoch,
        last_io: last_io.clone(),
    });
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        // The peer address, for handlers that need it (the signup limits per client IP).
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut draining = false;
    loop {
        let quiet_since = epoch + Duration::from_millis(last_io.load(Ordering::Relaxed));
        let idle_deadline = tokio::time::Instant::from_std(quiet_since + idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last_io.load(Ordering::Relaxed)));
                if quiet >= idle_timeout {
                    debug!(?quiet, "closing an idle connection (web.idle_timeout)");
                    return;
                }
            }
            changed = shutting_down.changed(), if !draining => {
                if changed.is_err() || *shutting_down.borrow() {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// A socket that records when it last moved a byte, for the idle deadline.
struct Watched {
    inner: TcpStream,
    epoch: Instant,
    last_io: Arc<AtomicU64>,
}

impl Watched {
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io.store(now, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
