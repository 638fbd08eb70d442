//! Serving the app on a socket: the accept loop, the timeouts a proxy needs so slow or idle
//! clients cannot hold connections (and memory) forever, and a bounded graceful shutdown.
//!
//! Each connection is in one of three phases: idle (between requests), reading a request
//! head (from its first byte until the head is complete), or busy (a request is being
//! handled, until its response body is done). An idle connection is closed after
//! `idle_timeout`, a head that takes longer than `header_timeout` closes its connection
//! (a client trickling a byte a second is gone in seconds), and a request body has
//! `body_timeout` to arrive (see `json.rs`: 408). On shutdown the listener closes, idle
//! connections close at once, requests in flight get `shutdown_timeout` to finish; then
//! open streams end with an error event and the server returns.

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// The server's timeouts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// From a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress.
    pub idle_timeout: Duration,
    /// How long requests in flight may run after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// After the drain time, how long open streams get to send their error event.
const FINAL_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` completes, then drains (see the module
/// comment). `close_streams` is called when the drain time is over.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    close_streams: impl FnOnce(),
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if open.load(Ordering::SeqCst) >= limits.max_connections => {
                    tracing::debug!(limit = limits.max_connections, "too many connections; closing a new one");
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = Open::enter(&open);
                    let app = app.clone();
                    let stop = stop_rx.clone();
                    tokio::spawn(async move {
                        connection(stream, peer, app, limits, stop).await;
                        drop(guard);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    stop_tx.send_replace(true);
    let in_flight = open.load(Ordering::SeqCst);
    tracing::info!(
        connections = in_flight,
        drain_s = limits.shutdown_timeout.as_secs_f64(),
        "draining"
    );
    if !wait_until_closed(&open, limits.shutdown_timeout).await {
        tracing::warn!(
            connections = open.load(Ordering::SeqCst),
            "the drain time is over; ending open streams"
        );
        close_streams();
        wait_until_closed(&open, FINAL_GRACE).await;
    }
}

/// Waits until no connection is open, at most `limit`; true if none is.
async fn wait_until_closed(open: &AtomicUsize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while open.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Counts an open connection until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn enter(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a connection is, for its timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle(Instant),
    Head(Instant),
    Busy,
}

#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// Requests in progress (HTTP/2 runs several at once).
    busy: AtomicUsize,
    /// An HTTP/2 connection: frames arrive between requests, so only idleness counts.
    http2: std::sync::atomic::AtomicBool,
    /// Wakes the connection's task when the phase changes.
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            busy: AtomicUsize::new(0),
            http2: std::sync::atomic::AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn set(&self, phase: Phase) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle HTTP/1 connection starts reading a request head.
    fn read(&self, first: &[u8]) {
        if let Ok(mut p) = self.phase.lock()
            && let Phase::Idle(_) = *p
        {
            if first.starts_with(b"PRI * HTTP/2") {
                self.http2.store(true, Ordering::Relaxed);
            }
            if !self.http2.load(Ordering::Relaxed) {
                *p = Phase::Head(Instant::now());
                self.changed.notify_one();
            }
        }
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.set(Phase::Busy);
        Busy(self.clone())
    }

    /// When the connection should be closed for a timeout, if no request starts first.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match *self.phase.lock().ok()? {
            Phase::Idle(since) => Some(since + limits.idle_timeout),
            Phase::Head(since) => Some(since + limits.header_timeout),
            Phase::Busy => None,
        }
    }
}

/// A request in progress on a connection, until its response body is done or dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.set(Phase::Idle(Instant::now()));
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that reports reads to its connection's `Activity`.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves one connection until it ends, times out, or (after a shutdown signal) finishes
/// its requests.
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let on_request = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = on_request.request_started();
        let app = app.clone();
        async move {
            let mut request = request.map(Body::new);
            // The client's address, for endpoints open to loopback only.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let response = app.oneshot(request).await?;
            Ok::<_, std::convert::Infallible>(response.map(|inner| Tracked { inner, _busy: busy }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(64 * 1024);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = activity.deadline(&limits);
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            // The phase changed: look at the deadline again.
            () = activity.changed.notified() => {}
            () = timer => {
                if activity.deadline(&limits).is_some_and(|at| Instant::now() >= at) {
                    tracing::debug!("closing a connection that timed out (idle or slow request head)");
                    return;
                }
            }
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
