//! Keep-alive connections to one endpoint, on hyper's low-level client
//! connections (`hyper::client::conn`).
//!
//! This replaces hyper-util's legacy `Client`, which profiles showed costing
//! about a fifth of the gateway's user-space CPU per request: a pool keyed
//! by a SipHashed `(scheme, authority)` map, large futures moved around, a
//! boxed response future and a task spawned per request to put the
//! connection back. Each endpoint already is its own pool key here, so the
//! pool is a LIFO stack of idle HTTP/1 connections (the most recently used
//! one is the least likely to have been closed by the upstream), or one
//! shared HTTP/2 connection.
//!
//! An HTTP/1 connection returns to the pool when its response body ends
//! ([`PooledBody`]); one whose body is dropped half-way, or that upgraded,
//! is closed. Connections idle longer than the idle timeout are dropped on
//! checkout and by a reaper task.
//!
//! Like the legacy client, a request that could not even be written on a
//! pooled connection (the upstream closed it while idle) is sent again on
//! another one: see [`Upstream::send`](super::Upstream::send).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::Either;
use http::uri::Authority;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::Body;
use crate::config::{Protocol, UpstreamConfig};

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Name resolution failed or gave no address.
    #[error("cannot resolve {0}")]
    Resolve(String, #[source] std::io::Error),
    /// TCP connect failed.
    #[error("tcp connect error")]
    Tcp(#[source] std::io::Error),
    /// TCP connect did not finish within the connect timeout.
    #[error("tcp connect timed out")]
    Timeout,
    /// The endpoint's host is no valid TLS server name.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// TLS handshake failed.
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    /// HTTP handshake failed.
    #[error("HTTP handshake failed")]
    Http(#[source] hyper::Error),
}

/// How connections to the endpoints of one upstream are made.
pub(super) struct Connector {
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
    connect_timeout: Duration,
    protocol: Protocol,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Connector {
    pub(super) fn new(
        config: &UpstreamConfig,
        tls: Option<rustls::ClientConfig>,
        server_name: Option<ServerName<'static>>,
    ) -> Connector {
        let tls = tls.map(|mut cfg| {
            cfg.alpn_protocols = vec![match config.protocol {
                Protocol::Http1 => b"http/1.1".to_vec(),
                Protocol::Http2 => b"h2".to_vec(),
            }];
            (TlsConnector::from(Arc::new(cfg)), server_name)
        });
        Connector {
            tls,
            connect_timeout: config.connect_timeout.get(),
            protocol: config.protocol,
            idle_timeout: config.pool.idle_timeout.get(),
            max_idle: config.pool.max_idle_per_endpoint,
        }
    }

    pub(super) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    async fn tcp(&self, authority: &Authority) -> Result<TcpStream, ConnectError> {
        let connect = async {
            let host = authority.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let port = authority.port_u16().unwrap_or(80);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ConnectError::Resolve(authority.to_string(), e))?
                .collect();
            let mut last =
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the endpoint");
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(ConnectError::Tcp(last))
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// A new connection to `authority`, driven by its own task.
    ///
    /// Boxed: the resolve, TCP, TLS and handshake futures take kilobytes,
    /// and every request's future would otherwise carry (and move) them,
    /// although most requests find a pooled connection.
    fn connect<'a>(
        &'a self,
        authority: &'a Authority,
    ) -> Pin<Box<dyn Future<Output = Result<Sender, ConnectError>> + Send + 'a>> {
        Box::pin(self.connect_new(authority))
    }

    async fn connect_new(&self, authority: &Authority) -> Result<Sender, ConnectError> {
        let tcp = self.tcp(authority).await?;
        match &self.tls {
            None => self.handshake(TokioIo::new(tcp)).await,
            Some((tls, fixed)) => {
                let name = match fixed {
                    Some(n) => n.clone(),
                    None => {
                        let host = authority.host();
                        let host = host
                            .strip_prefix('[')
                            .and_then(|h| h.strip_suffix(']'))
                            .unwrap_or(host);
                        ServerName::try_from(host.to_string())
                            .map_err(|_| ConnectError::ServerName(host.to_string()))?
                    }
                };
                let stream = tls.connect(name, tcp).await.map_err(ConnectError::Tls)?;
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn handshake<IO>(&self, io: IO) -> Result<Sender, ConnectError>
    where
        IO: Read + Write + Unpin + Send + 'static,
    {
        match self.protocol {
            Protocol::Http1 => {
                let (tx, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(ConnectError::Http)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                Ok(Sender::Http1(tx))
            }
            Protocol::Http2 => {
                let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(ConnectError::Http)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                Ok(Sender::Http2(tx))
            }
        }
    }
}

/// The sending half of one upstream connection.
pub(super) enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    pub(super) fn is_http1(&self) -> bool {
        matches!(self, Sender::Http1(_))
    }

    /// Send `req`. When it was not sent at all (the connection closed while
    /// idle), it comes back in the error.
    ///
    /// Either protocol's future, not an `async fn` awaiting one of them: that
    /// would keep the request beside the future that holds it.
    pub(super) fn send(
        &mut self,
        req: http::Request<Body>,
    ) -> impl Future<
        Output = Result<
            http::Response<Incoming>,
            hyper::client::conn::TrySendError<http::Request<Body>>,
        >,
    > + Send
    + use<'_> {
        match self {
            Sender::Http1(tx) => Either::Left(tx.try_send_request(req)),
            Sender::Http2(tx) => Either::Right(tx.try_send_request(req)),
        }
    }
}

/// A connection handed out by [`Pool::checkout`].
pub(super) struct Checkout {
    pub(super) sender: Sender,
    /// True when it was used before (and may have gone stale).
    pub(super) reused: bool,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// The connections to one endpoint.
#[derive(Default)]
pub(super) struct Pool {
    /// HTTP/1: idle connections, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// HTTP/2: the one connection all requests share; the async lock makes
    /// concurrent first requests wait for one handshake instead of racing.
    shared: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection ready to send on: a pooled one if there is one, else a
    /// new one.
    pub(super) async fn checkout(
        &self,
        connector: &Connector,
        authority: &Authority,
        now: Instant,
    ) -> Result<Checkout, ConnectError> {
        // Connecting (TCP, TLS, handshake) is a large future and the rare
        // path: boxed, it does not grow every request's future.
        if connector.protocol == Protocol::Http2 {
            return Box::pin(self.checkout_shared(connector, authority)).await;
        }
        loop {
            let Some(Idle { mut tx, since }) = self.idle().pop() else {
                break;
            };
            if tx.is_closed() || now.saturating_duration_since(since) >= connector.idle_timeout {
                continue;
            }
            // Returned as soon as its response body ended, a connection may
            // not have gone back to waiting for the next request yet.
            if tx.is_ready() || tx.ready().await.is_ok() {
                return Ok(Checkout {
                    sender: Sender::Http1(tx),
                    reused: true,
                });
            }
        }
        Ok(Checkout {
            sender: Box::pin(connector.connect(authority)).await?,
            reused: false,
        })
    }

    async fn checkout_shared(
        &self,
        connector: &Connector,
        authority: &Authority,
    ) -> Result<Checkout, ConnectError> {
        let mut shared = self.shared.lock().await;
        if let Some(tx) = shared.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(Checkout {
                sender: Sender::Http2(tx.clone()),
                reused: true,
            });
        }
        *shared = None;
        let sender = connector.connect(authority).await?;
        if let Sender::Http2(tx) = &sender {
            *shared = Some(tx.clone());
        }
        Ok(Checkout {
            sender,
            reused: false,
        })
    }

    /// Keep an HTTP/1 connection whose exchange finished, if there is room.
    fn put(&self, tx: http1::SendRequest<Body>, max_idle: usize) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < max_idle {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Drop connections idle for `timeout` or more (they close).
    pub(super) fn reap(&self, timeout: Duration) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.idle();
            // Oldest first: the expired ones are a prefix.
            let n = idle.partition_point(|c| now.saturating_duration_since(c.since) >= timeout);
            idle.drain(..n).collect()
        };
        drop(expired);
    }
}

/// Gives an HTTP/1 connection back to its pool when the response ends.
pub(super) struct Release {
    pool: Arc<Pool>,
    tx: http1::SendRequest<Body>,
    max_idle: usize,
}

impl Release {
    pub(super) fn new(
        pool: Arc<Pool>,
        tx: http1::SendRequest<Body>,
        connector: &Connector,
    ) -> Self {
        Release {
            pool,
            tx,
            max_idle: connector.max_idle,
        }
    }

    fn release(self) {
        self.pool.put(self.tx, self.max_idle);
    }
}

pin_project! {
    /// An upstream response body; its HTTP/1 connection goes back to the
    /// pool when the body has been read to its end.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        release: Option<Release>,
    }
}

impl PooledBody {
    pub(super) fn new(inner: Incoming, release: Option<Release>) -> Self {
        let mut body = PooledBody { inner, release };
        if http_body::Body::is_end_stream(&body.inner)
            && let Some(r) = body.release.take()
        {
            r.release();
        }
        body
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        let ended = match &res {
            Poll::Ready(None) => true,
            // Servers stop polling once `is_end_stream` says so after the
            // last frame: that is the end too.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            // A broken exchange leaves the connection in an unknown state.
            Poll::Ready(Some(Err(_))) => {
                *this.release = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(r) = this.release.take() {
            r.release();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
