//! A frontend's listener: accept (bounded by `max_connections`), TLS with
//! ALPN, HTTP/1.1 or HTTP/2 (prior knowledge in cleartext), idle and
//! header-read timeouts, and draining on stop.
//!
//! The timeouts are enforced by one sweep per listener and tick over its
//! open connections, not by a timer per connection and per request: a
//! request only stores the sweep count when it starts and ends (no clock
//! read, no timer), and a connection's task checks one flag when it wakes.
//!
//! The listener keeps its socket across reloads: each request reads the
//! current [`FrontendRuntime`] from an `ArcSwap`, so a reload changes routes
//! for connections that are already open.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::{FrontendConfig, Limits};
use crate::metrics::{FrontendLabels, Metrics};
use crate::proxy::{self, ConnInfo};
use crate::route::Router;
use crate::upstream::Upstream;

/// Everything a frontend needs to serve a request; immutable, swapped whole.
pub struct FrontendRuntime {
    /// Frontend name.
    pub name: Arc<str>,
    /// The config it was built from.
    pub config: FrontendConfig,
    /// Routes.
    pub router: Router,
    /// Limits.
    pub limits: Limits,
    /// TLS acceptor when the frontend terminates TLS.
    pub tls: Option<TlsAcceptor>,
    /// Counters for requests that matched no route.
    pub unmatched: [Counter; 5],
    /// Latency histogram.
    pub latency: Histogram,
    /// Open connections.
    pub open_connections: Gauge,
    /// Whether access-log lines are written.
    pub access_log: bool,
    /// Permits for requests in flight (`limits.max_concurrent_requests`).
    pub inflight: Option<Arc<tokio::sync::Semaphore>>,
}

impl FrontendRuntime {
    /// Build the runtime of frontend `name`.
    pub fn new(
        name: &str,
        config: &FrontendConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        metrics: &Metrics,
        access_log: bool,
        chains: Vec<crate::filter::Chain>,
    ) -> Result<FrontendRuntime, crate::tls::TlsError> {
        let tls = match &config.tls {
            Some(t) => Some(TlsAcceptor::from(crate::tls::server_config(
                &t.cert, &t.key,
            )?)),
            None => None,
        };
        let labels = FrontendLabels {
            frontend: name.to_string(),
        };
        Ok(FrontendRuntime {
            name: name.into(),
            config: config.clone(),
            router: Router::new(name, config, upstreams, metrics, chains),
            limits: config.limits.clone(),
            tls,
            unmatched: metrics.route_counters(name, "none"),
            latency: metrics.latency.get_or_create(&labels).clone(),
            open_connections: metrics.open_connections.get_or_create(&labels).clone(),
            access_log,
            inflight: None,
        })
    }
}

/// A bound, serving listener.
pub struct Listener {
    /// The address actually bound (differs from the config for port 0).
    pub local_addr: SocketAddr,
    /// The runtime requests are served with.
    runtime: Arc<ArcSwap<FrontendRuntime>>,
    conn_limit: Arc<Semaphore>,
    max_connections: std::sync::atomic::AtomicUsize,
    stop: watch::Sender<Option<Duration>>,
    done: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Bind `addr` and start serving with `runtime`.
    pub fn bind(addr: SocketAddr, runtime: FrontendRuntime) -> std::io::Result<Listener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let local_addr = listener.local_addr()?;
        let conn_limit = Arc::new(Semaphore::new(runtime.limits.max_connections));
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));
        let (stop, stop_rx) = watch::channel(None);
        let max = runtime.load().limits.max_connections;
        let done = tokio::spawn(accept_loop(
            listener,
            runtime.clone(),
            conn_limit.clone(),
            stop_rx,
        ));
        Ok(Listener {
            local_addr,
            runtime,
            conn_limit,
            max_connections: AtomicUsize::new(max),
            stop,
            done,
        })
    }

    /// Serve new requests (on new and open connections) with `runtime`.
    pub fn update(&self, runtime: FrontendRuntime) {
        let new = runtime.limits.max_connections;
        let old = self.max_connections.swap(new, Ordering::Relaxed);
        if new > old {
            self.conn_limit.add_permits(new - old);
        } else if new < old {
            // Take the surplus permits out of circulation as connections close.
            let sem = self.conn_limit.clone();
            let surplus = (old - new) as u32;
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(surplus).await {
                    p.forget();
                }
            });
        }
        self.runtime.store(Arc::new(runtime));
    }

    /// Stop accepting, let open requests finish for up to `grace`, then
    /// close what is left.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let _ = self.done.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    runtime: Arc<ArcSwap<FrontendRuntime>>,
    conn_limit: Arc<Semaphore>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let open = Arc::new(Open::default());
    let sweeper = tokio::spawn(sweep_loop(open.clone(), runtime.clone()));
    let mut conns = JoinSet::new();
    let grace = loop {
        let permit = tokio::select! {
            p = conn_limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break Duration::ZERO,
            },
            _ = stop.changed() => break stop.borrow().unwrap_or_default(),
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break stop.borrow().unwrap_or_default(),
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let current = runtime.load_full();
        let conn = open.register(remote, current.tls.is_some());
        let (rt, open) = (runtime.clone(), open.clone());
        conns.spawn(async move {
            let _permit = permit;
            let _registered = Registered(&open, conn.id);
            serve_connection(stream, conn, current, rt).await;
        });
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
    };
    drop(listener);
    open.close_all(CLOSE_GRACEFUL);
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = conns.len(), "grace period over: closing connections");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    sweeper.abort();
}

/// The sweep's period: a quarter of the shorter timeout, so that either is
/// enforced within a quarter of its length, between 10 ms and 1 s.
fn sweep_every(limits: &Limits) -> Duration {
    let shorter = limits
        .idle_timeout
        .get()
        .min(limits.header_read_timeout.get());
    (shorter / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn sweep_loop(open: Arc<Open>, runtime: Arc<ArcSwap<FrontendRuntime>>) {
    loop {
        let every = sweep_every(&runtime.load().limits);
        tokio::time::sleep(every).await;
        // Limits may have changed with a reload: the current ones apply.
        let rt = runtime.load();
        open.sweep(&rt.limits, sweep_every(&rt.limits));
    }
}

/// No close asked for.
const CLOSE_NONE: u8 = 0;
/// Finish the request in flight, then close (idle, or the listener stops).
const CLOSE_GRACEFUL: u8 = 1;
/// Close now (a request head took too long).
const CLOSE_NOW: u8 = 2;

/// A listener's open connections and the sweep count they measure time in.
#[derive(Default)]
struct Open {
    clock: Arc<AtomicU64>,
    next_id: AtomicU64,
    live: std::sync::Mutex<HashMap<u64, Arc<ConnInfo>>>,
}

impl Open {
    fn register(&self, remote: SocketAddr, tls: bool) -> Arc<ConnInfo> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnInfo::new(
            id,
            remote,
            tls,
            Activity::new(self.clock.clone()),
        ));
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, conn.clone());
        conn
    }

    fn close_all(&self, how: u8) {
        for c in self.live.lock().unwrap_or_else(|p| p.into_inner()).values() {
            c.activity.close(how);
        }
    }

    /// One tick: ask connections idle for `idle_timeout` to close, and close
    /// those whose request head has been arriving for `header_read_timeout`.
    fn sweep(&self, limits: &Limits, every: Duration) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let ticks = |d: Duration| (d.as_nanos().div_ceil(every.as_nanos().max(1))) as u64;
        let (idle, head) = (
            ticks(limits.idle_timeout.get()),
            ticks(limits.header_read_timeout.get()),
        );
        for c in self.live.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let a = &c.activity;
            if a.inflight.load(Ordering::Relaxed) > 0 {
                continue;
            }
            match a.head_since.load(Ordering::Relaxed) {
                0 => {
                    if now.saturating_sub(a.idle_since.load(Ordering::Relaxed)) >= idle {
                        a.close(CLOSE_GRACEFUL);
                    }
                }
                since => {
                    if !a.h2.load(Ordering::Relaxed) && now.saturating_sub(since - 1) >= head {
                        tracing::debug!(remote = %c.remote, "request head not received in time");
                        a.close(CLOSE_NOW);
                    }
                }
            }
        }
    }
}

/// Takes a connection off its listener's list when its task ends.
struct Registered<'a>(&'a Open, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_connection(
    stream: TcpStream,
    conn: Arc<ConnInfo>,
    rt: Arc<FrontendRuntime>,
    runtime: Arc<ArcSwap<FrontendRuntime>>,
) {
    rt.open_connections.inc();
    let _open = OpenGuard(rt.open_connections.clone());
    match rt.tls.clone() {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(rt.limits.header_read_timeout.get(), acceptor.accept(stream))
                    .await;
            match handshake {
                Ok(Ok(tls)) => {
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve_http(tls, conn, h2, &rt, runtime).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(remote = %conn.remote, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(remote = %conn.remote, "TLS handshake timed out"),
            }
        }
        None => serve_http(stream, conn, false, &rt, runtime).await,
    }
}

async fn serve_http<IO>(
    io: IO,
    conn: Arc<ConnInfo>,
    h2_only: bool,
    rt: &FrontendRuntime,
    runtime: Arc<ArcSwap<FrontendRuntime>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &rt.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Enforced by the listener's sweep (from the head's first byte, not
        // from the end of the previous response), without a timer per request.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.bytes() as usize)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.bytes() as u32)
        .max_concurrent_streams(256);
    let builder = if h2_only {
        builder.http2_only()
    } else {
        builder
    };

    if h2_only {
        conn.activity.h2.store(true, Ordering::Relaxed);
    }
    let service = {
        let conn = conn.clone();
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let rt = runtime.load_full();
            let busy = Busy::new(conn.clone(), req.version() == http::Version::HTTP_2);
            proxy::handle(rt, busy, req)
        })
    };
    let io = Watched {
        io,
        conn: conn.clone(),
        first: true,
    };
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut closing = false;
    let activity = &conn.activity;
    let res = std::future::poll_fn(|cx| {
        activity.waker.register(cx.waker());
        match activity.closing.load(Ordering::Acquire) {
            CLOSE_NOW => return Poll::Ready(Ok(())),
            CLOSE_GRACEFUL if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            _ => {}
        }
        served.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = res {
        tracing::debug!(remote = %conn.remote, error = %e, "connection ended with an error");
    }
    run_tunnels(&conn).await;
}

/// Drive the tunnels of upgraded requests until both sides close. They run
/// in the connection's task: they hold its connection slot, and the
/// listener's drain aborts them after the grace period.
async fn run_tunnels(conn: &ConnInfo) {
    let tunnels = std::mem::take(&mut *conn.tunnels.lock().unwrap_or_else(|p| p.into_inner()));
    if !tunnels.is_empty() {
        futures_util::future::join_all(tunnels).await;
    }
}

/// What a connection's requests and its listener's sweep share. Times are
/// in sweeps of the listener (its `clock`).
pub struct Activity {
    clock: Arc<AtomicU64>,
    inflight: AtomicUsize,
    /// When the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// One more than the sweep in which bytes of a request head started to
    /// arrive on an idle HTTP/1 connection; 0 when none is arriving.
    head_since: AtomicU64,
    /// HTTP/2: no request heads to time (streams are not idle reads).
    h2: AtomicBool,
    /// A `CLOSE_*` asked for by the sweep or the listener.
    closing: AtomicU8,
    /// The connection's task, woken when a close is asked for.
    waker: AtomicWaker,
}

impl Activity {
    fn new(clock: Arc<AtomicU64>) -> Activity {
        let now = clock.load(Ordering::Relaxed);
        Activity {
            clock,
            inflight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            closing: AtomicU8::new(CLOSE_NONE),
            waker: AtomicWaker::new(),
        }
    }

    /// Ask the connection to close; a graceful close never downgrades a
    /// close now.
    fn close(&self, how: u8) {
        if self.closing.fetch_max(how, Ordering::AcqRel) < how {
            self.waker.wake();
        }
    }

    /// Bytes came in: on an idle HTTP/1 connection, a request head starts.
    fn read(&self, bytes: &[u8], first: bool) {
        if first && bytes.starts_with(b"PRI * HTTP/2.0") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.inflight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            self.head_since
                .store(self.clock.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }
}

/// A request in flight on its connection (a guard: a request whose future
/// is dropped half-way also ends), and the request's way to the
/// connection's [`ConnInfo`].
struct Busy(Arc<ConnInfo>);

impl Busy {
    fn new(conn: Arc<ConnInfo>, h2: bool) -> Busy {
        let a = &conn.activity;
        if h2 {
            a.h2.store(true, Ordering::Relaxed);
        }
        a.inflight.fetch_add(1, Ordering::Relaxed);
        a.head_since.store(0, Ordering::Relaxed);
        Busy(conn)
    }
}

impl std::ops::Deref for Busy {
    type Target = ConnInfo;

    fn deref(&self) -> &ConnInfo {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0.activity;
        a.idle_since
            .store(a.clock.load(Ordering::Relaxed), Ordering::Relaxed);
        a.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client's stream, noting when request bytes arrive.
struct Watched<IO> {
    io: IO,
    conn: Arc<ConnInfo>,
    first: bool,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                self.conn.activity.read(read, self.first);
                self.first = false;
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
