//! Upstream clusters: endpoints with their keep-alive pools, the balancer
//! that picks one, the circuit breaker that ejects a failing one, active
//! health checks, and the retry loop that ties them together.

mod balance;
mod breaker;
mod health;
mod pool;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Sleep;

use crate::body::{Body, empty};
use crate::config::{RetryOn, UpstreamConfig};
use crate::metrics::{EndpointLabels, Metrics};

pub use balance::Balancer;
use breaker::Breaker;
pub use pool::PooledBody;
use pool::{Connector, Pool, Release, Sender};

/// Why a request could not be served by an upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every endpoint is unhealthy or has its circuit open.
    #[error("no healthy endpoint in upstream {0:?}")]
    NoHealthyEndpoint(String),
    /// No connection could be made.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// `host:port`
        endpoint: String,
        /// The cause.
        reason: String,
    },
    /// The connection failed after it was made (reset, protocol error).
    #[error("upstream {endpoint} failed: {reason}")]
    Protocol {
        /// `host:port`
        endpoint: String,
        /// The cause.
        reason: String,
    },
    /// No response head within the deadline.
    #[error("upstream {0:?} did not answer in time")]
    Timeout(String),
    /// The downstream request body broke or exceeded its limit while streaming.
    #[error("request body: {0}")]
    RequestBody(String),
}

/// One `host:port` of an upstream.
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    authority: Authority,
    /// `Host` sent over HTTP/1 when the request has none (the port only when
    /// it is not the scheme's default).
    host_header: HeaderValue,
    pool: Arc<Pool>,
    weight: u32,
    /// Active health verdict (true when health checks are off).
    healthy: AtomicBool,
    inflight: AtomicUsize,
    breaker: Breaker,
    healthy_gauge: Gauge,
    ejections: Counter,
}

impl Endpoint {
    fn available(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.breaker.allow(now)
    }

    /// Whether active health checks currently consider this endpoint healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
        self.healthy_gauge.set(i64::from(up));
    }
}

/// Counts a request in flight on an endpoint until dropped.
struct InFlight<'a>(&'a Endpoint);

impl<'a> InFlight<'a> {
    fn new(ep: &'a Endpoint) -> Self {
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(ep)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named cluster of endpoints and the client that talks to them.
pub struct Upstream {
    /// Name from the config.
    pub name: String,
    /// The config it was built from (compared on reload to keep state).
    pub config: UpstreamConfig,
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
    connector: Connector,
    scheme: Scheme,
}

/// What one proxied request needs from the upstream layer.
pub struct Outbound {
    /// Method.
    pub method: Method,
    /// Path and query to send.
    pub path_and_query: PathAndQuery,
    /// Headers to send (hop-by-hop already removed).
    pub headers: HeaderMap,
    /// Body; `None` means empty, which also makes the request replayable.
    pub body: Option<Body>,
}

/// A response and the endpoint that produced it.
pub struct Answer {
    /// The upstream's response.
    pub response: Response<PooledBody>,
    /// `host:port` of the endpoint.
    pub endpoint: Arc<str>,
}

impl Upstream {
    /// Build an upstream (no I/O happens here), and start its health checks.
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        metrics: &Metrics,
    ) -> Result<Arc<Upstream>, crate::tls::TlsError> {
        let (tls, scheme) = match &config.tls {
            Some(t) => (Some(crate::tls::client_config(&t.ca)?), Scheme::HTTPS),
            None => (None, Scheme::HTTP),
        };
        // An invalid configured name falls back to the endpoint's host.
        let server_name = config
            .tls
            .as_ref()
            .and_then(|t| t.server_name.clone())
            .and_then(|n| rustls::pki_types::ServerName::try_from(n).ok());
        let connector = Connector::new(config, tls, server_name);
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };

        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|spec| {
                // Validated on load; an address that fails here is skipped.
                let authority: Authority = spec.address().parse().ok()?;
                let host_header = match authority.port_u16() {
                    Some(p) if p != default_port => HeaderValue::from_str(authority.as_str()),
                    _ => HeaderValue::from_str(authority.host()),
                }
                .ok()?;
                let labels = EndpointLabels {
                    upstream: name.to_string(),
                    endpoint: spec.address().to_string(),
                };
                let healthy_gauge = metrics.endpoint_healthy.get_or_create(&labels).clone();
                healthy_gauge.set(1);
                Some(Endpoint {
                    address: spec.address().into(),
                    authority,
                    host_header,
                    pool: Arc::default(),
                    weight: spec.weight(),
                    healthy: AtomicBool::new(true),
                    inflight: AtomicUsize::new(0),
                    breaker: Breaker::new(&config.circuit_breaker),
                    healthy_gauge,
                    ejections: metrics.endpoint_ejections.get_or_create(&labels).clone(),
                })
            })
            .collect::<Vec<_>>();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let upstream = Arc::new(Upstream {
            name: name.to_string(),
            config: config.clone(),
            balancer: Balancer::new(config.balance, &weights),
            endpoints,
            connector,
            scheme,
        });
        if let Some(hc) = &config.health {
            health::spawn(Arc::downgrade(&upstream), hc.clone());
        }
        spawn_reaper(Arc::downgrade(&upstream));
        Ok(upstream)
    }

    /// The endpoints, for the admin API and tests.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    fn uri(&self, ep: &Endpoint, pq: &PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(ep.authority.clone());
        parts.path_and_query = Some(pq.clone());
        Uri::from_parts(parts).unwrap_or_default()
    }

    /// Send a request: pick an endpoint, retry what may be retried, and give
    /// up after `timeout` with [`UpstreamError::Timeout`].
    pub async fn send(&self, out: Outbound, timeout: Duration) -> Result<Answer, UpstreamError> {
        self.send_reusing(out, timeout, &DeadlineTimer::default())
            .await
    }

    /// [`send`](Self::send), timed by a client connection's reusable timer.
    ///
    /// An `async` block rather than an `async fn`: the block uses `out` in
    /// place, where an `async fn` would keep its argument and a local copy
    /// of it in the future, which the proxy moves on every request.
    #[allow(clippy::manual_async_fn)]
    pub fn send_reusing<'a>(
        &'a self,
        mut out: Outbound,
        timeout: Duration,
        timer: &'a DeadlineTimer,
    ) -> impl Future<Output = Result<Answer, UpstreamError>> + Send + 'a {
        async move {
            let started = Instant::now();
            let mut sleep = timer.take(started + timeout);
            let idempotent = matches!(
                out.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            );
            let replayable = idempotent && out.body.is_none();
            let max_attempts = if replayable {
                1 + self.config.retries.attempts as usize
            } else {
                1
            };
            // A connect failure leaves the request unsent, in our hands; only the
            // other retry kinds need a copy kept before it is handed over.
            let retry_after_send = self
                .config
                .retries
                .on
                .iter()
                .any(|k| *k != RetryOn::ConnectFailure);
            let mut tried: [usize; 4] = [usize::MAX; 4];
            let mut last_err = None;
            let answer = 'sent: {
                for attempt in 0..max_attempts {
                    let now = if attempt == 0 {
                        started
                    } else {
                        Instant::now()
                    };
                    let Some(idx) =
                        self.balancer
                            .pick(&self.endpoints, &tried[..attempt.min(4)], now)
                    else {
                        break 'sent Err(last_err.unwrap_or_else(|| {
                            UpstreamError::NoHealthyEndpoint(self.name.clone())
                        }));
                    };
                    if attempt < tried.len() {
                        tried[attempt] = idx;
                    }
                    let ep = &self.endpoints[idx];
                    let last = attempt + 1 == max_attempts;
                    let message = Message {
                        method: &out.method,
                        path_and_query: &out.path_and_query,
                        headers: &mut out.headers,
                        body: &mut out.body,
                        keep_copy: !last && retry_after_send,
                    };
                    let _inflight = InFlight::new(ep);
                    let result = Before {
                        fut: self.exchange(ep, now, message),
                        timer: sleep.as_mut(),
                    }
                    .await;
                    match result {
                        None => {
                            self.failure(ep);
                            break 'sent Err(UpstreamError::Timeout(self.name.clone()));
                        }
                        Some(Ok(resp)) => {
                            let status = resp.status();
                            let retry_on = match status {
                                StatusCode::BAD_GATEWAY => Some(RetryOn::Status502),
                                StatusCode::SERVICE_UNAVAILABLE => Some(RetryOn::Status503),
                                StatusCode::GATEWAY_TIMEOUT => Some(RetryOn::Status504),
                                _ => None,
                            };
                            if let Some(kind) = retry_on {
                                self.failure(ep);
                                if !last && self.config.retries.on.contains(&kind) {
                                    continue;
                                }
                            } else {
                                ep.breaker.success();
                            }
                            break 'sent Ok(Answer {
                                response: resp,
                                endpoint: ep.address.clone(),
                            });
                        }
                        Some(Err(ExchangeError::Connect(e))) => {
                            self.failure(ep);
                            let err = UpstreamError::Connect {
                                endpoint: ep.address.to_string(),
                                reason: error_chain(&e),
                            };
                            if last || !self.config.retries.on.contains(&RetryOn::ConnectFailure) {
                                break 'sent Err(err);
                            }
                            tracing::debug!(upstream = %self.name, endpoint = %ep.address, error = %err, "retrying");
                            last_err = Some(err);
                        }
                        Some(Err(ExchangeError::Send(e))) => {
                            if let Some(body_err) = body_error(&e) {
                                break 'sent Err(UpstreamError::RequestBody(body_err));
                            }
                            self.failure(ep);
                            let err = UpstreamError::Protocol {
                                endpoint: ep.address.to_string(),
                                reason: error_chain(&e),
                            };
                            if last || !self.config.retries.on.contains(&RetryOn::Reset) {
                                break 'sent Err(err);
                            }
                            tracing::debug!(upstream = %self.name, endpoint = %ep.address, error = %err, "retrying");
                            last_err = Some(err);
                        }
                    }
                }
                Err(last_err.unwrap_or_else(|| UpstreamError::NoHealthyEndpoint(self.name.clone())))
            };
            // A request dropped half-way drops its timer: the next makes one.
            timer.put(sleep);
            answer
        }
    }

    /// One exchange with `ep`: get a connection, send, await the response
    /// head. Headers and body are taken only once a connection is there, so
    /// a connect failure leaves them for the next attempt.
    async fn exchange(
        &self,
        ep: &Endpoint,
        now: Instant,
        msg: Message<'_>,
    ) -> Result<Response<PooledBody>, ExchangeError> {
        let mut conn = ep
            .pool
            .checkout(&self.connector, &ep.authority, now)
            .await
            .map_err(ExchangeError::Connect)?;
        let headers = if msg.keep_copy {
            msg.headers.clone()
        } else {
            std::mem::take(msg.headers)
        };
        let mut req = self.request(ep, &conn.sender, msg.method, msg.path_and_query, headers);
        *req.body_mut() = msg.body.take().unwrap_or_else(empty);
        loop {
            // The send's result and error end in this block, so that the
            // future does not keep room for them across the checkout below.
            req = match conn.sender.send(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let release = match conn.sender {
                        Sender::Http1(tx) if parts.status != StatusCode::SWITCHING_PROTOCOLS => {
                            Some(Release::new(ep.pool.clone(), tx, &self.connector))
                        }
                        _ => None,
                    };
                    return Ok(Response::from_parts(parts, PooledBody::new(body, release)));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection was closed while idle.
                    // Like hyper-util's client, try again on another one.
                    Some(unsent) if conn.reused => unsent,
                    _ => return Err(ExchangeError::Send(e.into_error())),
                },
            };
            tracing::trace!(endpoint = %ep.address, "stale pooled connection");
            conn = ep
                .pool
                .checkout(&self.connector, &ep.authority, Instant::now())
                .await
                .map_err(ExchangeError::Connect)?;
        }
    }

    /// The request as sent to `ep` over `sender`: origin-form with a `Host`
    /// header over HTTP/1, absolute-form over HTTP/2.
    fn request(
        &self,
        ep: &Endpoint,
        sender: &Sender,
        method: &Method,
        path_and_query: &PathAndQuery,
        mut headers: HeaderMap,
    ) -> Request<Body> {
        let mut req = Request::new(empty());
        *req.method_mut() = method.clone();
        *req.version_mut() = Version::HTTP_11;
        if sender.is_http1() {
            *req.uri_mut() = if method == Method::CONNECT {
                Uri::from(ep.authority.clone())
            } else {
                Uri::from(path_and_query.clone())
            };
            if !headers.contains_key(header::HOST) {
                headers.insert(header::HOST, ep.host_header.clone());
            }
        } else {
            *req.uri_mut() = self.uri(ep, path_and_query);
        }
        *req.headers_mut() = headers;
        req
    }

    /// An active health probe: `GET path` answered with a 2xx.
    async fn probe(&self, ep: &Endpoint, path: &PathAndQuery) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("transom-health"),
        );
        let msg = Message {
            method: &Method::GET,
            path_and_query: path,
            headers: &mut headers,
            body: &mut None,
            keep_copy: false,
        };
        match self.exchange(ep, Instant::now(), msg).await {
            Ok(resp) => resp.status().is_success(),
            Err(_) => false,
        }
    }

    fn failure(&self, ep: &Endpoint) {
        if ep.breaker.failure(Instant::now()) {
            ep.ejections.inc();
            tracing::warn!(upstream = %self.name, endpoint = %ep.address, "circuit opened: endpoint ejected");
        }
    }
}

/// A timer for the upstream deadlines of one client connection's requests.
///
/// A new timer is put into the runtime's timer wheel and taken out again
/// for every request; one that is still registered and moves to a later
/// deadline only updates its expiry (the wheel files it anew if the old one
/// comes first). An HTTP/1 connection serves its requests one at a time, so
/// one timer serves them all; concurrent HTTP/2 requests that find it in use
/// make their own.
#[derive(Default)]
pub struct DeadlineTimer(Mutex<Option<Pin<Box<Sleep>>>>);

impl DeadlineTimer {
    /// The timer, set to `deadline`.
    fn take(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline.into());
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline.into())),
        }
    }

    /// Keep the timer for the next request. It stays registered until its
    /// deadline passes or it is reset.
    fn put(&self, sleep: Pin<Box<Sleep>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(sleep);
    }
}

pin_project_lite::pin_project! {
    /// `fut`'s output, or `None` if `timer` fires first. Like
    /// `tokio::time::Timeout`, it polls the future before the timer.
    struct Before<'t, F> {
        #[pin]
        fut: F,
        timer: Pin<&'t mut Sleep>,
    }
}

impl<F: Future> Future for Before<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        this.timer.as_mut().poll(cx).map(|()| None)
    }
}

/// The parts of a request an exchange may consume.
struct Message<'a> {
    method: &'a Method,
    path_and_query: &'a PathAndQuery,
    headers: &'a mut HeaderMap,
    body: &'a mut Option<Body>,
    /// Send a copy of the headers, keeping them for a retry.
    keep_copy: bool,
}

/// How an exchange failed.
enum ExchangeError {
    /// No connection: nothing was sent.
    Connect(pool::ConnectError),
    /// The request was (at least partly) sent.
    Send(hyper::Error),
}

/// Drop each endpoint's connections that stayed idle past the idle timeout,
/// even when no request comes to check them out.
fn spawn_reaper(upstream: Weak<Upstream>) {
    let Some(up) = upstream.upgrade() else { return };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let timeout = up.connector.idle_timeout();
    drop(up);
    rt.spawn(async move {
        let mut ticker = tokio::time::interval(timeout.max(Duration::from_millis(90)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(up) = upstream.upgrade() else { return };
            for ep in &up.endpoints {
                ep.pool.reap(timeout);
            }
        }
    });
}

/// The body error behind a send error, if the request body was the cause
/// (it exceeded its limit or the client went away).
fn body_error(e: &hyper::Error) -> Option<String> {
    if e.is_user() {
        return Some(error_chain(e));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return Some(error_chain(h));
        }
        if s.is::<http_body_util::LengthLimitError>() {
            return Some(s.to_string());
        }
        source = s.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
