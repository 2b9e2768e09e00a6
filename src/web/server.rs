//! The endpoint's listener, built to hold its ground on the open internet: a cap on
//! concurrent connections, a deadline for each request's headers (which is also how long a
//! kept-alive connection may wait for its next request), a deadline and a minimum rate for
//! each request's body however it trickles, an idle deadline for a connection that moves
//! no bytes at all, and a limit on request bodies.
//!
//! Slow clients count against the cap, and cannot hold it: when it is full, a new
//! connection takes the place of the one that has waited longest for its request to
//! arrive; only when every connection is busy being answered is the new one refused with a
//! `503`. So `/healthz`, one-click unsubscribe and signup stay
//! answerable while connections trickle. Errors accepting a connection (out of file
//! descriptors, say) are logged and waited out, never fatal.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::WebConfig;

/// How long a stopping server lets requests in progress finish.
const DRAIN: Duration = Duration::from_secs(5);
/// The pause after a failed accept (typically EMFILE), so the loop cannot spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "connection limit reached" warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How long a new connection waits for the slot of the connection it displaced.
const EVICT_WAIT: Duration = Duration::from_millis(500);
/// A body's first second is not held to the minimum rate.
const RATE_GRACE: Duration = Duration::from_secs(1);

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
    let registry = Arc::new(Registry::default());
    let (shutdown, shutting_down) = watch::channel(false);
    let mut refused: u64 = 0;
    let mut displaced_count: u64 = 0;
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
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) => {
                // Full: make room by closing the connection that has waited longest for
                // its request; refuse only when every connection is being answered.
                let displaced = registry.evict_slowest();
                if displaced {
                    displaced_count += 1;
                }
                if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    warn!(
                        max_connections = web.max_connections,
                        displaced = displaced_count,
                        refused,
                        "connection limit reached (web.max_connections); closing the slowest \
                         connections to make room, refusing when none is waiting"
                    );
                    warned = Some(Instant::now());
                }
                match displaced {
                    true => tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned())
                        .await
                        .map_err(drop)
                        .and_then(|p| p.map_err(drop)),
                    false => Err(()),
                }
            }
        };
        let Ok(permit) = permit else {
            refuse(stream);
            refused += 1;
            continue;
        };
        let app = app.clone();
        let limits = Limits {
            header_timeout: web.header_timeout,
            idle_timeout: web.idle_timeout,
            body_timeout: web.body_timeout,
            min_body_rate: web.min_body_rate,
        };
        let shutting_down = shutting_down.clone();
        let (id, track) = registry.add();
        let registry = registry.clone();
        tokio::spawn(async move {
            connection(stream, peer, app, limits, track, shutting_down).await;
            registry.remove(id);
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

/// The deadlines of one connection.
#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    body_timeout: Duration,
    min_body_rate: u64,
}

/// Serves one connection until it closes, its headers, its body or its silence run out of
/// time, it is displaced by a newer one (see [`Registry`]), or the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    track: Arc<Track>,
    mut shutting_down: watch::Receiver<bool>,
) {
    let Limits {
        header_timeout,
        idle_timeout,
        ..
    } = limits;
    let epoch = Instant::now();
    let last_io = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        epoch,
        last_io: last_io.clone(),
    });
    let service_track = track.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let track = service_track.clone();
        if hyper::body::Body::is_end_stream(req.body()) {
            track.busy();
        }
        let mut req = req.map(|body| {
            Body::new(Deadline::new(
                body,
                limits.body_timeout,
                limits.min_body_rate,
                track.clone(),
            ))
        });
        // The peer address, for handlers that need it (the signup limits per client IP).
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let response = app.clone().oneshot(req);
        async move {
            let response = response.await?;
            // Once the answer has gone out, the connection waits for its next request.
            Ok::<_, std::convert::Infallible>(
                response.map(|body| Body::new(Answered { inner: body, track })),
            )
        }
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
            _ = track.displaced.notified() => {
                debug!(%peer, "closing a slow connection to make room for a new one");
                return;
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

/// The connections being served, and since when each has been waiting for (the rest of)
/// its request, so that a full server can close the slowest to make room.
#[derive(Default)]
struct Registry {
    next: std::sync::atomic::AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Track>>>,
}

impl Registry {
    fn add(&self) -> (u64, Arc<Track>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let track = Arc::new(Track {
            epoch: Instant::now(),
            waiting_since: AtomicU64::new(0),
            displaced: Notify::new(),
        });
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, track.clone());
        (id, track)
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    /// Tells the connection that has waited longest for its request to close (a request
    /// that is on its way arrives within milliseconds, so the longest wait is the slowest
    /// client); false when every connection is busy being answered.
    fn evict_slowest(&self) -> bool {
        let mut conns = self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slowest = conns
            .iter()
            .filter_map(|(id, t)| t.waiting().map(|w| (w, *id)))
            .max();
        match slowest {
            Some((_, id)) => {
                if let Some(t) = conns.remove(&id) {
                    t.displaced.notify_one();
                }
                true
            }
            None => false,
        }
    }
}

/// One connection's state as the registry sees it.
struct Track {
    epoch: Instant,
    /// Milliseconds after `epoch` since when the connection has been waiting for its
    /// request's headers or body, or `BUSY` while a complete request is being answered.
    waiting_since: AtomicU64,
    displaced: Notify,
}

const BUSY: u64 = u64::MAX;

impl Track {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(BUSY - 1)
    }

    /// The request has arrived whole: the connection is being answered.
    fn busy(&self) {
        self.waiting_since.store(BUSY, Ordering::Relaxed);
    }

    /// The answer went out: the connection waits for its next request from now on.
    fn waiting(&self) -> Option<Duration> {
        let since = self.waiting_since.load(Ordering::Relaxed);
        (since != BUSY).then(|| Duration::from_millis(self.now().saturating_sub(since)))
    }

    fn wait_again(&self) {
        self.waiting_since.store(self.now(), Ordering::Relaxed);
    }
}

/// The request body was not complete within `web.body_timeout`, or arrived slower than
/// `web.min_body_rate`.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly (web.body_timeout, web.min_body_rate)")]
pub struct BodyTooSlow;

/// True when `error` (or one of its causes) is [`BodyTooSlow`].
pub fn is_too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(err) = e {
        if err.is::<BodyTooSlow>() {
            return true;
        }
        e = err.source();
    }
    false
}

/// A request body held to a total deadline and a minimum rate: whatever the handler does
/// with it, it ends in [`BodyTooSlow`] once either runs out.
struct Deadline {
    inner: hyper::body::Incoming,
    started: tokio::time::Instant,
    total: Duration,
    min_rate: u64,
    received: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
    track: Arc<Track>,
    ended: bool,
}

impl Deadline {
    fn new(
        inner: hyper::body::Incoming,
        total: Duration,
        min_rate: u64,
        track: Arc<Track>,
    ) -> Self {
        let started = tokio::time::Instant::now();
        Deadline {
            inner,
            started,
            total,
            min_rate,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(started + total)),
            track,
            ended: false,
        }
    }

    /// When the body has run out of time with what it has sent so far.
    fn due(&self) -> tokio::time::Instant {
        let total = self.started + self.total;
        if self.min_rate == 0 {
            return total;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        total.min(self.started + RATE_GRACE + earned)
    }
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                self.ended = true;
                self.track.busy();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let due = self.due();
                if tokio::time::Instant::now() >= due {
                    self.ended = true;
                    return Poll::Ready(Some(Err(BodyTooSlow.into())));
                }
                self.timer.as_mut().reset(due);
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.ended = true;
                    return Poll::Ready(Some(Err(BodyTooSlow.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its connection as waiting again once it has gone out.
struct Answered {
    inner: Body,
    track: Arc<Track>,
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.track.wait_again();
    }
}

impl hyper::body::Body for Answered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
