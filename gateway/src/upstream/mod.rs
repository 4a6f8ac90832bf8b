//! Upstream clusters: endpoints with their keep-alive pools, the balancer
//! that picks one, the circuit breaker that ejects a failing one, active
//! health checks, and the retry loop that ties them together.

mod balance;
mod breaker;
mod health;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::body::{Body, empty};
use crate::config::{Protocol, RetryOn, UpstreamConfig};
use crate::metrics::{EndpointLabels, Metrics};

pub use balance::Balancer;
use breaker::Breaker;

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

type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// One `host:port` of an upstream.
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    authority: Authority,
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
    client: HttpClient,
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
    pub response: Response<Incoming>,
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout.get()));
        http.set_nodelay(true);
        let (tls, scheme) = match &config.tls {
            Some(t) => (crate::tls::client_config(&t.ca)?, Scheme::HTTPS),
            None => (
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
                Scheme::HTTP,
            ),
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match config.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(name) => match rustls::pki_types::ServerName::try_from(name) {
                Ok(sn) => builder
                    .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn)),
                Err(_) => builder,
            },
            None => builder,
        };
        let connector = match config.protocol {
            Protocol::Http1 => builder.enable_http1().wrap_connector(http),
            Protocol::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool.idle_timeout.get())
            .pool_max_idle_per_host(config.pool.max_idle_per_endpoint);
        if config.protocol == Protocol::Http2 {
            client.http2_only(true);
        }
        let client = client.build(connector);

        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|spec| {
                // Validated on load; an address that fails here is skipped.
                let authority: Authority = spec.address().parse().ok()?;
                let labels = EndpointLabels {
                    upstream: name.to_string(),
                    endpoint: spec.address().to_string(),
                };
                let healthy_gauge = metrics.endpoint_healthy.get_or_create(&labels).clone();
                healthy_gauge.set(1);
                Some(Endpoint {
                    address: spec.address().into(),
                    authority,
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
            client,
            scheme,
        });
        if let Some(hc) = &config.health {
            health::spawn(Arc::downgrade(&upstream), hc.clone());
        }
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
    /// up at `deadline` with [`UpstreamError::Timeout`].
    pub async fn send(&self, out: Outbound, timeout: Duration) -> Result<Answer, UpstreamError> {
        let started = Instant::now();
        let deadline = started + timeout;
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
        let Outbound {
            method,
            path_and_query,
            mut headers,
            mut body,
        } = out;
        let mut tried: [usize; 4] = [usize::MAX; 4];
        let mut last_err = None;
        for attempt in 0..max_attempts {
            let now = Instant::now();
            let Some(idx) = self
                .balancer
                .pick(&self.endpoints, &tried[..attempt.min(4)], now)
            else {
                return Err(
                    last_err.unwrap_or_else(|| UpstreamError::NoHealthyEndpoint(self.name.clone()))
                );
            };
            if attempt < tried.len() {
                tried[attempt] = idx;
            }
            let ep = &self.endpoints[idx];
            let mut req = Request::new(body.take().unwrap_or_else(empty));
            *req.method_mut() = method.clone();
            *req.uri_mut() = self.uri(ep, &path_and_query);
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = if attempt + 1 < max_attempts {
                headers.clone()
            } else {
                // Last attempt: no copy needed.
                std::mem::take(&mut headers)
            };
            let _inflight = InFlight::new(ep);
            let remaining = deadline.saturating_duration_since(now);
            let result = tokio::time::timeout(remaining, self.client.request(req)).await;
            let last = attempt + 1 == max_attempts;
            match result {
                Err(_) => {
                    self.failure(ep);
                    return Err(UpstreamError::Timeout(self.name.clone()));
                }
                Ok(Ok(resp)) => {
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
                    return Ok(Answer {
                        response: resp,
                        endpoint: ep.address.clone(),
                    });
                }
                Ok(Err(e)) => {
                    if let Some(body_err) = body_error(&e) {
                        return Err(UpstreamError::RequestBody(body_err));
                    }
                    self.failure(ep);
                    let (kind, err) = if e.is_connect() {
                        (
                            RetryOn::ConnectFailure,
                            UpstreamError::Connect {
                                endpoint: ep.address.to_string(),
                                reason: error_chain(&e),
                            },
                        )
                    } else {
                        (
                            RetryOn::Reset,
                            UpstreamError::Protocol {
                                endpoint: ep.address.to_string(),
                                reason: error_chain(&e),
                            },
                        )
                    };
                    if last || !self.config.retries.on.contains(&kind) {
                        return Err(err);
                    }
                    tracing::debug!(upstream = %self.name, endpoint = %ep.address, error = %err, "retrying");
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| UpstreamError::NoHealthyEndpoint(self.name.clone())))
    }

    fn failure(&self, ep: &Endpoint) {
        if ep.breaker.failure(Instant::now()) {
            ep.ejections.inc();
            tracing::warn!(upstream = %self.name, endpoint = %ep.address, "circuit opened: endpoint ejected");
        }
    }
}

/// The body error behind a client error, if the request body was the cause
/// (it exceeded its limit or the client went away).
fn body_error(e: &hyper_util::client::legacy::Error) -> Option<String> {
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
