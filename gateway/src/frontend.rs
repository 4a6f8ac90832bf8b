//! A frontend's listener: accept (bounded by `max_connections`), TLS with
//! ALPN, HTTP/1.1 or HTTP/2 (prior knowledge in cleartext), idle and
//! header-read timeouts, and draining on stop.
//!
//! The listener keeps its socket across reloads: each request reads the
//! current [`FrontendRuntime`] from an `ArcSwap`, so a reload changes routes
//! for connections that are already open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncWrite};
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
        let rt = runtime.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            serve_connection(stream, remote, rt, stop).await;
        });
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
    };
    drop(listener);
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = conns.len(), "grace period over: closing connections");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
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
    remote: SocketAddr,
    runtime: Arc<ArcSwap<FrontendRuntime>>,
    stop: watch::Receiver<Option<Duration>>,
) {
    let rt = runtime.load_full();
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
                    serve_http(tls, remote, true, h2, &rt, runtime, stop).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        }
        None => serve_http(stream, remote, false, false, &rt, runtime, stop).await,
    }
}

async fn serve_http<IO>(
    io: IO,
    remote: SocketAddr,
    tls: bool,
    h2_only: bool,
    rt: &FrontendRuntime,
    runtime: Arc<ArcSwap<FrontendRuntime>>,
    mut stop: watch::Receiver<Option<Duration>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &rt.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
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

    let conn = Arc::new(ConnInfo::new(remote, tls));
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        let conn = conn.clone();
        service_fn(move |req| {
            let rt = runtime.load_full();
            let conn = conn.clone();
            let activity = activity.clone();
            async move {
                activity.begin();
                let resp = proxy::handle(rt, conn, req).await;
                activity.end();
                resp
            }
        })
    };
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(served);
    let idle = limits.idle_timeout.get();
    let tick = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut closing = false;
    loop {
        tokio::select! {
            res = served.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop.changed(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick), if !closing => {
                if activity.idle_for() >= idle {
                    closing = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
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

/// Requests in flight on a connection and when the last one ended.
struct Activity {
    inflight: AtomicUsize,
    last: AtomicU64,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            inflight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}
