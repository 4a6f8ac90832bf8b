//! One request's path through a frontend, in explicit phases:
//!
//! 1. **identify**: keep or mint `x-request-id`;
//! 2. **route**: first matching route, or 404/405;
//! 3. **admit**: body size limit (413);
//! 4. **forward**: rewrite path and headers, send over the upstream's pool
//!    with retries and a deadline (502/503/504 on failure);
//! 5. **respond**: strip hop-by-hop headers, pass upgrades through, compress;
//! 6. **log**: one access-log line and the metrics, when the response body ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::body::{Body, BoxError, boxed};
use crate::compress;
use crate::error::ProxyError;
use crate::frontend::FrontendRuntime;
use crate::route::RouteMatch;
use crate::upstream::{DeadlineTimer, Outbound, PooledBody, UpstreamError};

/// `x-request-id`
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A tunnel (after `101 Switching Protocols`) to be driven by its connection.
pub type Tunnel = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What the connection knows about its client.
pub struct ConnInfo {
    /// Its number on the listener.
    pub id: u64,
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's IP as an `x-forwarded-for` element, formatted once per
    /// connection rather than per request.
    pub client_ip: HeaderValue,
    /// Upgraded tunnels, handed to the connection task so they count against
    /// its limits and close with it.
    pub tunnels: std::sync::Mutex<Vec<Tunnel>>,
    /// Requests in flight and idle time, for the listener's timeouts.
    pub activity: crate::frontend::Activity,
    /// The upstream deadline timer its requests reuse.
    pub deadline_timer: DeadlineTimer,
}

impl ConnInfo {
    /// What a connection from `remote` knows.
    pub fn new(
        id: u64,
        remote: SocketAddr,
        tls: bool,
        activity: crate::frontend::Activity,
    ) -> ConnInfo {
        let client_ip = HeaderValue::try_from(remote.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            id,
            remote,
            tls,
            client_ip,
            tunnels: std::sync::Mutex::new(Vec::new()),
            activity,
            deadline_timer: DeadlineTimer::default(),
        }
    }
}

/// Handle one request on a frontend. Never fails: every problem becomes a
/// response. `conn` is the request's hold on its client connection, kept
/// until the response head is out.
///
/// The phases up to routing run when this is called; the future holds the
/// rest. Like the functions it awaits, it returns an `async` block rather
/// than being an `async fn`: hyper moves this future on every request, and
/// an `async fn` keeps each argument twice (as captured and as a local).
pub fn handle<C>(
    rt: Arc<FrontendRuntime>,
    conn: C,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Logged>, std::convert::Infallible>> + Send
where
    C: std::ops::Deref<Target = ConnInfo> + Send + 'static,
{
    let start = Instant::now();

    // identify
    let present = Present::scan(req.headers());
    let given = if present.request_id {
        req.headers().get(&X_REQUEST_ID)
    } else {
        None
    };
    let request_id = match given {
        Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
        _ => new_request_id(),
    };
    let method = req.method().clone();
    // The path is only copied when the access-log line will be written.
    let access_log =
        rt.access_log && tracing::enabled!(target: "transom::access", tracing::Level::INFO);
    let path = if access_log {
        req.uri().path().to_string()
    } else {
        String::new()
    };

    // admit: a permit is held until the response body ends
    let permit = rt
        .inflight
        .as_ref()
        .and_then(|sem| sem.clone().try_acquire_owned().ok());
    let overloaded = rt.inflight.is_some() && permit.is_none();

    async move {
        let mut trace = Trace::default();
        let result = if overloaded {
            Err(ProxyError::Overloaded)
        } else {
            forward(&rt, &conn, req, present, &request_id, &mut trace).await
        };
        let response = match result {
            Ok(resp) => resp,
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::debug!(request_id = ?request_id, error = %e, "gateway error");
                }
                e.into_response(&request_id).map(OutBody::Right)
            }
        };
        let log = AccessLog {
            rt,
            trace,
            method,
            path,
            status: response.status().as_u16(),
            start,
            request_id,
            access_log,
            _permit: permit,
        };
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            Logged {
                inner: body,
                bytes: 0,
                log: Some(Box::new(log)),
            },
        ))
    }
}

// Not an `async fn`: see `handle`.
#[allow(clippy::manual_async_fn)]
fn forward<'a>(
    rt: &'a FrontendRuntime,
    conn: &'a ConnInfo,
    mut req: Request<Incoming>,
    mut present: Present,
    request_id: &'a HeaderValue,
    log: &'a mut Trace,
) -> impl Future<Output = Result<Response<OutBody>, ProxyError>> + Send + 'a {
    async move {
        // route
        // A clone of the header value shares its bytes: no copy.
        let host_header: Option<HeaderValue> = present
            .host
            .then(|| req.headers().get(header::HOST))
            .flatten()
            .filter(|h| h.to_str().is_ok())
            .cloned()
            .or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
        let host = host_header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(strip_port);
        let route = match rt
            .router
            .find(req.method(), host, req.uri().path(), req.headers())
        {
            RouteMatch::Found(r) => r,
            RouteMatch::MethodNotAllowed(m) => return Err(ProxyError::MethodNotAllowed(m)),
            RouteMatch::NotFound => return Err(ProxyError::NoRoute),
        };
        log.route = Some(route.index);

        // admit
        let max_body = rt.limits.max_request_body.bytes();
        if let Some(len) = present
            .content_length
            .then(|| req.headers().get(header::CONTENT_LENGTH))
            .flatten()
        {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ProxyError::BadRequest("invalid content-length".into()))?;
            if len > max_body {
                return Err(ProxyError::BodyTooLarge(max_body));
            }
        }

        // plugins: request phase
        let mut plugin_body = None;
        let mut held = crate::filter::Instances::default();
        if !route.chain.is_empty() {
            // Boxed: routes without plugins do not carry the phases' futures.
            let phase = route
                .chain
                .on_request(route.name.clone(), conn.remote.ip(), req, max_body);
            let (back, outcome) = Box::pin(phase).await?;
            req = back;
            match outcome {
                crate::filter::RequestOutcome::Respond(mut resp) => {
                    resp.headers_mut()
                        .insert(X_REQUEST_ID.clone(), request_id.clone());
                    return Ok(resp.map(OutBody::Right));
                }
                crate::filter::RequestOutcome::Forward(body, kept) => {
                    plugin_body = body;
                    held = kept;
                }
            }
            // Plugins may have changed the headers.
            present = Present::scan(req.headers());
        }

        // forward
        let upstream = route.upstream(req.headers()).clone();
        log.upstream = Some(upstream.clone());
        let encoding = route
            .compress
            .as_ref()
            .and_then(|c| compress::negotiate(c, req.headers()));
        let is_head = req.method() == http::Method::HEAD;
        let upgrade = present.upgrade && wants_upgrade(&req);
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let out = outbound(
            conn,
            route,
            req,
            present,
            host_header,
            request_id,
            plugin_body,
            upgrade,
            max_body,
            log,
        )?;
        let timeout = route
            .timeout
            .unwrap_or_else(|| upstream.config.request_timeout.get());
        let answer = upstream
            .send_reusing(out, timeout, &conn.deadline_timer)
            .await
            .map_err(|e| match e {
                UpstreamError::NoHealthyEndpoint(_) => ProxyError::Unavailable(e.to_string()),
                UpstreamError::Timeout(_) => ProxyError::Timeout(e.to_string()),
                UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => {
                    ProxyError::BadGateway(e.to_string())
                }
                UpstreamError::RequestBody(msg) => {
                    if msg.contains("length limit exceeded") {
                        ProxyError::BodyTooLarge(max_body)
                    } else {
                        ProxyError::BadRequest(format!("request body: {msg}"))
                    }
                }
            })?;
        log.endpoint = Some(answer.endpoint);
        let mut resp = answer.response;

        // respond
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(down) = on_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                let tunnel: Tunnel = Box::pin(async move {
                    let (Ok(down), Ok(up)) = (down.await, up.await) else {
                        return;
                    };
                    let mut down = hyper_util::rt::TokioIo::new(down);
                    let mut up = hyper_util::rt::TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                conn.tunnels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(tunnel);
            }
            let (mut parts, body) = resp.into_parts();
            parts
                .headers
                .insert(X_REQUEST_ID.clone(), request_id.clone());
            return Ok(Response::from_parts(parts, OutBody::Right(boxed(body))));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        parts.version = Version::HTTP_11;
        let compress = match (encoding, route.compress.as_ref()) {
            (Some(enc), Some(cfg)) if !is_head => Some((cfg, enc)),
            _ => None,
        };
        // plugins: response phase (when one runs, or request phases left
        // response headers to set)
        let respond = !route.chain.is_empty() && route.chain.responds(&held);
        if !respond && compress.is_none() {
            // The common case: the upstream's body goes out as it is, unboxed.
            return Ok(Response::from_parts(parts, OutBody::Left(body)));
        }
        let mut resp = Response::from_parts(parts, boxed(body));
        if respond {
            resp = Box::pin(route.chain.on_response(resp, max_body, held)).await?;
        }
        if let Some((cfg, enc)) = compress {
            resp = compress::apply(cfg, enc, resp);
        }
        Ok(resp.map(OutBody::Right))
    }
}

/// The request as it goes upstream: the route's path, hop-by-hop headers
/// out, `Host`, `x-forwarded-*` and `x-request-id` in, and the body (the
/// plugins' or the client's, bounded and counted). A plain function, so
/// that what it builds from does not take room in the request's future.
#[allow(clippy::too_many_arguments)]
fn outbound(
    conn: &ConnInfo,
    route: &crate::route::Route,
    mut req: Request<Incoming>,
    present: Present,
    host_header: Option<HeaderValue>,
    request_id: &HeaderValue,
    plugin_body: Option<Bytes>,
    upgrade: bool,
    max_body: u64,
    log: &mut Trace,
) -> Result<Outbound, ProxyError> {
    let path = route.forward_path(req.uri().path());
    let path_and_query = match req.uri().path_and_query() {
        // Unchanged path: share the parsed one.
        Some(pq) if path.len() == pq.path().len() => pq.clone(),
        _ => {
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            pq.parse()
                .map_err(|_| ProxyError::BadRequest("invalid path".into()))?
        }
    };

    let mut headers = std::mem::take(req.headers_mut());
    let upgrade_proto = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    if present.hop_by_hop {
        strip_hop_by_hop(&mut headers);
    }
    // Room for what is added below, grown once.
    headers.reserve(4);
    if let Some(proto) = upgrade_proto {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    if present.expect {
        headers.remove(header::EXPECT);
    }
    if let Some(h) = host_header {
        if !present.host {
            headers.insert(header::HOST, h.clone());
        }
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Occupied(mut prev) => {
            if let Ok(p) = prev.get().to_str() {
                let xff = format!("{p}, {}", conn.client_ip.to_str().unwrap_or_default());
                if let Ok(v) = HeaderValue::try_from(xff) {
                    prev.insert(v);
                }
            } else {
                prev.insert(conn.client_ip.clone());
            }
        }
        header::Entry::Vacant(slot) => {
            slot.insert(conn.client_ip.clone());
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());

    let (parts, incoming) = req.into_parts();
    let body = if let Some(bytes) = plugin_body {
        (!bytes.is_empty()).then(|| crate::body::full(bytes))
    } else if http_body::Body::is_end_stream(&incoming) {
        None
    } else {
        let counter = Arc::new(AtomicU64::new(0));
        log.bytes_in = Some(counter.clone());
        Some(boxed(Counted {
            inner: http_body_util::Limited::new(incoming, max_body as usize),
            counter,
        }))
    };
    Ok(Outbound {
        method: parts.method,
        path_and_query,
        headers,
        body,
    })
}

/// A response body on its way out: the upstream's, straight from its pool
/// (`Left`), or boxed (`Right`: answers of the gateway and of plugins,
/// bodies that plugins or compression changed).
type OutBody = http_body_util::Either<PooledBody, Body>;

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one scan of the names is cheaper than the
    // nine hashed removals below.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop() {
        headers.remove(name);
    }
}

/// Which headers that matter to forwarding a request carries, found in one
/// pass over its names: cheaper than a hashed lookup for each.
#[derive(Default, Clone, Copy)]
struct Present {
    request_id: bool,
    host: bool,
    content_length: bool,
    upgrade: bool,
    expect: bool,
    hop_by_hop: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut p = Present::default();
        for name in headers.keys() {
            match name.as_str() {
                "host" => p.host = true,
                "x-request-id" => p.request_id = true,
                "content-length" => p.content_length = true,
                "expect" => p.expect = true,
                "upgrade" => {
                    p.upgrade = true;
                    p.hop_by_hop = true;
                }
                _ if is_hop_by_hop(name) => p.hop_by_hop = true,
                _ => {}
            }
        }
        p
    }
}

fn hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// 16 random bytes as hex, like a UUID without dashes: two random words,
/// written a byte (two digits) at a time into a stack buffer.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bytes = [
        fastrand::u64(..).to_be_bytes(),
        fastrand::u64(..).to_be_bytes(),
    ];
    for (pair, b) in id.chunks_exact_mut(2).zip(bytes.iter().flatten()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// What forwarding learnt about a request, for the access log.
#[derive(Default)]
struct Trace {
    /// Index of the matched route in the frontend's router.
    route: Option<usize>,
    upstream: Option<Arc<crate::upstream::Upstream>>,
    endpoint: Option<Arc<str>>,
    bytes_in: Option<Arc<AtomicU64>>,
}

/// What the access log and metrics need once the response body ends. The
/// frontend runtime is kept whole: its counters, histogram and route names
/// are read from it at the end instead of being cloned per request.
struct AccessLog {
    rt: Arc<FrontendRuntime>,
    trace: Trace,
    method: http::Method,
    path: String,
    status: u16,
    start: Instant,
    request_id: HeaderValue,
    access_log: bool,
    /// The frontend's in-flight permit, released when the response ends.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl AccessLog {
    fn finish(&self, bytes_out: u64) {
        let route = self.trace.route.and_then(|i| self.rt.router.route(i));
        let counters = route.map_or(&self.rt.unmatched, |r| &r.counters);
        let class = usize::from((self.status / 100).clamp(1, 5)) - 1;
        counters[class].inc();
        let elapsed = self.start.elapsed();
        self.rt.latency.observe(elapsed.as_secs_f64());
        if self.access_log {
            let trace = &self.trace;
            tracing::info!(
                target: "transom::access",
                frontend = %self.rt.name,
                route = %route.map_or("-", |r| &*r.name),
                upstream = %trace.upstream.as_ref().map_or("-", |u| u.name.as_str()),
                endpoint = %trace.endpoint.as_deref().unwrap_or("-"),
                method = %self.method,
                path = %self.path,
                status = self.status,
                bytes_in = trace.bytes_in.as_ref().map_or(0, |c| c.load(Ordering::Relaxed)),
                bytes_out,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = %self.request_id.to_str().unwrap_or("-"),
            );
        }
    }
}

pin_project! {
    /// The response body as sent downstream: counts bytes and logs the
    /// request when it ends (or is dropped half-way).
    pub struct Logged {
        #[pin]
        inner: OutBody,
        bytes: u64,
        log: Option<Box<AccessLog>>,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(log) = this.log.take() {
                log.finish(*this.bytes);
            }
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(log) = this.log.take() {
                    log.finish(*this.bytes);
                }
            }
            Poll::Pending => {}
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

pin_project! {
    /// A request body that counts the bytes it passes on.
    struct Counted<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
    }
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res
            && let Some(d) = frame.data_ref()
        {
            this.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn one_scan_finds_the_headers_forwarding_needs() {
        for name in hop_by_hop() {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(!is_hop_by_hop(&header::HOST));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-request-id", HeaderValue::from_static("1"));
        let p = Present::scan(&h);
        assert!(p.host && p.request_id);
        assert!(!p.content_length && !p.upgrade && !p.expect && !p.hop_by_hop);
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let p = Present::scan(&h);
        assert!(p.hop_by_hop && p.expect && p.content_length && !p.upgrade);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(Present::scan(&h).upgrade);
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap_or_default();
        assert_eq!(s.len(), 32);
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
