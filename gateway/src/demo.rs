//! Demo backend services for `transom demo` and the BFF showcase
//! (`examples/bff/`): users, orders, products and recommendations, plain
//! hyper servers with realistic JSON so frontends have something to
//! aggregate and shape. Each has run-time knobs (latency, failure rate) so a
//! demo can show timeouts, retries and partial failure without editing code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::body::{Body, full};

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// User profiles: `/users`, `/users/{id}`.
    Users,
    /// Orders: `/orders?user=&limit=`, `/orders/{id}`.
    Orders,
    /// The catalogue: `/products?ids=`, `/products/{id}`.
    Products,
    /// Per-user suggestions: `/recommendations/{user}?limit=`.
    Recommendations,
}

impl Kind {
    /// The service's name, as used in paths, errors and `/health`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Users => "users",
            Kind::Orders => "orders",
            Kind::Products => "products",
            Kind::Recommendations => "recommendations",
        }
    }

    /// The kind named `s` (as [`Kind::name`] gives it).
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "users" => Some(Kind::Users),
            "orders" => Some(Kind::Orders),
            "products" => Some(Kind::Products),
            "recommendations" => Some(Kind::Recommendations),
            _ => None,
        }
    }
}

/// Latency and failure knobs of one running service, changeable at run time.
#[derive(Debug, Default)]
pub struct Knobs {
    latency_nanos: AtomicU64,
    /// The failure rate's `f64` bits (0 is 0.0).
    failure_bits: AtomicU64,
}

impl Knobs {
    /// Knobs delaying every data request by `latency` and failing a
    /// `failure_rate` share of them.
    pub fn new(latency: Duration, failure_rate: f64) -> Knobs {
        let k = Knobs::default();
        k.set_latency(latency);
        k.set_failure_rate(failure_rate);
        k
    }

    /// Delay every data request by `d`.
    pub fn set_latency(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Fail this share of data requests with 503; clamped to `0..=1`, NaN is 0.
    pub fn set_failure_rate(&self, r: f64) {
        let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        self.failure_bits.store(r.to_bits(), Ordering::Relaxed);
    }

    /// The current added latency.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    /// The current failure rate, in `0..=1`.
    pub fn failure_rate(&self) -> f64 {
        f64::from_bits(self.failure_bits.load(Ordering::Relaxed))
    }
}

/// A demo service instance: what it is and where it listens.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Which service.
    pub kind: Kind,
    /// Listen address.
    pub addr: &'static str,
}

/// The fixed addresses the demo config expects, one entry per instance.
pub const SERVICES: &[Service] = &[
    Service {
        kind: Kind::Users,
        addr: "127.0.0.1:7101",
    },
    Service {
        kind: Kind::Users,
        addr: "127.0.0.1:7102",
    },
    Service {
        kind: Kind::Orders,
        addr: "127.0.0.1:7201",
    },
    Service {
        kind: Kind::Products,
        addr: "127.0.0.1:7301",
    },
    Service {
        kind: Kind::Recommendations,
        addr: "127.0.0.1:7401",
    },
];

/// Start every entry of [`SERVICES`], each with its own knobs set from the
/// first entry of `knobs` for its kind (default: no latency, no failures).
/// Returns `(kind, bound address, knobs)` per instance, once all listen.
pub async fn start(
    knobs: &[(Kind, Duration, f64)],
) -> std::io::Result<Vec<(Kind, SocketAddr, Arc<Knobs>)>> {
    let mut out = Vec::with_capacity(SERVICES.len());
    for svc in SERVICES {
        let addr: SocketAddr = svc
            .addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let k = knobs
            .iter()
            .find(|(kind, _, _)| *kind == svc.kind)
            .map(|&(_, latency, rate)| Knobs::new(latency, rate))
            .unwrap_or_default();
        let k = Arc::new(k);
        let bound = spawn(svc.kind, addr, k.clone()).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("demo service {} on {addr}: {e}", svc.kind.name()),
            )
        })?;
        out.push((svc.kind, bound, k));
    }
    Ok(out)
}

/// Start one service on `addr` (port 0 for an ephemeral port); returns the
/// bound address. The task runs until the runtime stops.
pub async fn spawn(kind: Kind, addr: SocketAddr, knobs: Arc<Knobs>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        kind,
        instance: bound.to_string(),
        knobs,
    });
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors or similar: back off, don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&ctx, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// One running instance.
struct Ctx {
    kind: Kind,
    /// The bound address, reported as `served_by` / `x-served-by`.
    instance: String,
    knobs: Arc<Knobs>,
}

/// The longest extra delay `delay_ms` may ask for.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// The largest latency `PUT /_knobs` accepts.
const MAX_KNOB_LATENCY_MS: u64 = 60_000;

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let name = ctx.kind.name();
    let query = match parse_query(req.uri().query().unwrap_or("")) {
        Some(q) => q,
        None => return bad_request(ctx, "malformed query string"),
    };
    let segments: Option<Vec<String>> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let Some(segments) = segments else {
        return not_found(ctx);
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method();

    match segments.as_slice() {
        ["health"] => {
            return if method == Method::GET {
                reply(
                    ctx,
                    StatusCode::OK,
                    json!({"status": "ok", "service": name}),
                )
            } else {
                not_allowed(ctx, "GET")
            };
        }
        ["_knobs"] => {
            return if method == Method::PUT {
                set_knobs(ctx, &query)
            } else if method == Method::GET {
                knobs_json(ctx)
            } else {
                not_allowed(ctx, "GET, PUT")
            };
        }
        _ => {}
    }

    // Data requests: the demo knobs, then the route.
    let extra = match param(&query, "delay_ms") {
        None => Duration::ZERO,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms).min(MAX_DELAY),
            Err(_) => return bad_request(ctx, "delay_ms must be a whole number of milliseconds"),
        },
    };
    let forced = match param(&query, "fail") {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(_) => return bad_request(ctx, "fail must be 1 or 0"),
    };
    let delay = ctx.knobs.latency().saturating_add(extra);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let rate = ctx.knobs.failure_rate();
    if forced || (rate > 0.0 && fastrand::f64() < rate) {
        return reply(
            ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "injected failure", "service": name}),
        );
    }

    let route = match ctx.kind {
        Kind::Users => users_route(&segments),
        Kind::Orders => orders_route(&segments, &query),
        Kind::Products => products_route(&segments, &query),
        Kind::Recommendations => recommendations_route(&segments, &query),
    };
    match route {
        Route::NotFound => not_found(ctx),
        Route::BadRequest(msg) => bad_request(ctx, msg),
        Route::Found(_) if method != Method::GET => not_allowed(ctx, "GET"),
        Route::Found(None) => reply(
            ctx,
            StatusCode::NOT_FOUND,
            json!({"error": "not found", "service": name}),
        ),
        Route::Found(Some(body)) => reply(ctx, StatusCode::OK, body),
    }
}

/// What a data path resolved to.
enum Route {
    /// No such endpoint.
    NotFound,
    /// The endpoint exists; `None` when the item it names does not.
    Found(Option<Value>),
    /// Bad query parameter.
    BadRequest(&'static str),
}

fn users_route(segments: &[&str]) -> Route {
    match segments {
        ["users"] => Route::Found(Some(json!({ "users": *USERS }))),
        ["users", id] => Route::Found(USERS.iter().find(|u| u["id"] == *id).cloned()),
        _ => Route::NotFound,
    }
}

fn orders_route(segments: &[&str], query: &[(String, String)]) -> Route {
    match segments {
        ["orders"] => {
            let user = param(query, "user");
            let limit = match limit(query, 10, 100) {
                Ok(n) => n,
                Err(msg) => return Route::BadRequest(msg),
            };
            let mut rows: Vec<&OrderRow> = ORDERS
                .iter()
                .filter(|o| user.is_none_or(|u| o.user == u))
                .collect();
            newest_first(&mut rows);
            let orders: Vec<Value> = rows.into_iter().take(limit).map(order_json).collect();
            Route::Found(Some(json!({"user": user, "orders": orders})))
        }
        ["orders", id] => Route::Found(ORDERS.iter().find(|o| o.id == *id).map(order_json)),
        _ => Route::NotFound,
    }
}

fn products_route(segments: &[&str], query: &[(String, String)]) -> Route {
    match segments {
        ["products"] => {
            let products: Vec<Value> = match param(query, "ids") {
                None => PRODUCTS.iter().map(product_json).collect(),
                Some(ids) => ids
                    .split(',')
                    .map(str::trim)
                    .filter_map(product)
                    .map(product_json)
                    .collect(),
            };
            Route::Found(Some(json!({ "products": products })))
        }
        ["products", id] => Route::Found(product(id).map(product_json)),
        _ => Route::NotFound,
    }
}

fn recommendations_route(segments: &[&str], query: &[(String, String)]) -> Route {
    let user = match segments {
        ["recommendations"] => None,
        ["recommendations", user] => Some(*user),
        _ => return Route::NotFound,
    };
    let limit = match limit(query, 5, PRODUCTS.len()) {
        Ok(n) => n,
        Err(msg) => return Route::BadRequest(msg),
    };
    let (strategy, items) = match user.and_then(|u| personal(u, limit)) {
        Some(items) => ("personal", items),
        None => ("popular", popular(limit)),
    };
    Route::Found(Some(
        json!({"user": user, "strategy": strategy, "items": items}),
    ))
}

fn set_knobs(ctx: &Ctx, query: &[(String, String)]) -> Response<Body> {
    let mut latency = None;
    let mut rate = None;
    for (k, v) in query {
        match k.as_str() {
            "latency_ms" => match v.parse::<u64>() {
                Ok(ms) if ms <= MAX_KNOB_LATENCY_MS => latency = Some(Duration::from_millis(ms)),
                _ => return bad_request(ctx, "latency_ms must be a whole number from 0 to 60000"),
            },
            "failure_rate" => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => rate = Some(r),
                _ => return bad_request(ctx, "failure_rate must be a number from 0 to 1"),
            },
            _ => return bad_request(ctx, "unknown parameter: use latency_ms and failure_rate"),
        }
    }
    // Validate everything before changing anything.
    if let Some(d) = latency {
        ctx.knobs.set_latency(d);
    }
    if let Some(r) = rate {
        ctx.knobs.set_failure_rate(r);
    }
    knobs_json(ctx)
}

fn knobs_json(ctx: &Ctx) -> Response<Body> {
    let latency_ms = u64::try_from(ctx.knobs.latency().as_millis()).unwrap_or(u64::MAX);
    reply(
        ctx,
        StatusCode::OK,
        json!({
            "service": ctx.kind.name(),
            "latency_ms": latency_ms,
            "failure_rate": ctx.knobs.failure_rate(),
        }),
    )
}

/// A JSON response: `content-type`, `x-served-by` and, for object bodies, a
/// `served_by` field.
fn reply(ctx: &Ctx, status: StatusCode, mut body: Value) -> Response<Body> {
    if let Value::Object(map) = &mut body {
        map.insert("served_by".into(), Value::String(ctx.instance.clone()));
    }
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&ctx.instance) {
        headers.insert("x-served-by", v);
    }
    resp
}

fn not_found(ctx: &Ctx) -> Response<Body> {
    reply(
        ctx,
        StatusCode::NOT_FOUND,
        json!({"error": "not found", "service": ctx.kind.name()}),
    )
}

fn bad_request(ctx: &Ctx, msg: &str) -> Response<Body> {
    reply(
        ctx,
        StatusCode::BAD_REQUEST,
        json!({"error": msg, "service": ctx.kind.name()}),
    )
}

fn not_allowed(ctx: &Ctx, allow: &'static str) -> Response<Body> {
    let mut resp = reply(
        ctx,
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": "method not allowed", "service": ctx.kind.name()}),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `a=1&b=x%2Cy` as decoded pairs; `None` if an escape is malformed.
fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// The first value of `key`.
fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The `limit` parameter, `default` when absent, at most `max`.
fn limit(query: &[(String, String)], default: usize, max: usize) -> Result<usize, &'static str> {
    match param(query, "limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map(|n| n.min(max))
            .map_err(|_| "limit must be a whole number"),
    }
}

/// Decode `%XX` escapes and `+` (a space); `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------- the data

static USERS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    vec![
        json!({
            "id": "alice", "name": "Alice Martin", "email": "alice@example.com",
            "avatar_url": "https://img.example.com/avatars/alice.png",
            "tier": "gold", "joined": "2021-03-14", "locale": "fr-FR",
            "address": {"city": "Lyon", "country": "FR"},
            "preferences": {"newsletter": true, "theme": "dark"},
            "internal_notes": "VIP since 2023; refund approved once for a late parcel."
        }),
        json!({
            "id": "bob", "name": "Bob Okafor", "email": "bob@example.com",
            "avatar_url": "https://img.example.com/avatars/bob.png",
            "tier": "silver", "joined": "2022-07-01", "locale": "en-GB",
            "address": {"city": "Manchester", "country": "GB"},
            "preferences": {"newsletter": false, "theme": "light"},
            "internal_notes": "Prefers email over phone; check address before shipping."
        }),
        json!({
            "id": "carol", "name": "Carol Nguyen", "email": "carol@example.com",
            "avatar_url": "https://img.example.com/avatars/carol.png",
            "tier": "bronze", "joined": "2023-11-20", "locale": "en-US",
            "address": {"city": "Portland", "country": "US"},
            "preferences": {"newsletter": true, "theme": "system"},
            "internal_notes": "Opened a ticket about sizing; follow up in Q4."
        }),
        json!({
            "id": "dave", "name": "Dave Schmidt", "email": "dave@example.com",
            "avatar_url": "https://img.example.com/avatars/dave.png",
            "tier": "silver", "joined": "2022-02-09", "locale": "de-DE",
            "address": {"city": "Munich", "country": "DE"},
            "preferences": {"newsletter": false, "theme": "dark"},
            "internal_notes": "Chargeback in 2024, resolved; no further action."
        }),
        json!({
            "id": "erin", "name": "Erin Rossi", "email": "erin@example.com",
            "avatar_url": "https://img.example.com/avatars/erin.png",
            "tier": "gold", "joined": "2020-09-30", "locale": "it-IT",
            "address": {"city": "Turin", "country": "IT"},
            "preferences": {"newsletter": true, "theme": "light"},
            "internal_notes": "Wholesale enquiry forwarded to partner team."
        }),
        json!({
            "id": "frank", "name": "Frank Costa", "email": "frank@example.com",
            "avatar_url": "https://img.example.com/avatars/frank.png",
            "tier": "bronze", "joined": "2024-05-17", "locale": "pt-PT",
            "address": {"city": "Porto", "country": "PT"},
            "preferences": {"newsletter": false, "theme": "system"},
            "internal_notes": "New customer; first order had a damaged box."
        }),
    ]
});

struct ProductRow {
    id: &'static str,
    name: &'static str,
    price: f64,
    stock: u32,
    description: &'static str,
    tags: &'static [&'static str],
    rating: f64,
}

const PRODUCTS: &[ProductRow] = &[
    ProductRow {
        id: "p-1",
        name: "Trail Shoes",
        price: 47.5,
        stock: 12,
        description: "Light trail runners with a grippy sole for wet rock and loose gravel.",
        tags: &["outdoor", "footwear"],
        rating: 4.6,
    },
    ProductRow {
        id: "p-2",
        name: "Rain Jacket",
        price: 129.0,
        stock: 3,
        description: "A packable three-layer shell that keeps a downpour out and lets sweat escape.",
        tags: &["outdoor", "clothing"],
        rating: 4.4,
    },
    ProductRow {
        id: "p-3",
        name: "Wool Socks",
        price: 8.5,
        stock: 240,
        description: "Cushioned merino socks that stay warm when damp and do not itch.",
        tags: &["footwear", "clothing"],
        rating: 4.8,
    },
    ProductRow {
        id: "p-4",
        name: "Hiking Poles",
        price: 39.0,
        stock: 27,
        description: "Collapsible aluminium poles with cork grips and quick-lock sections.",
        tags: &["outdoor", "gear"],
        rating: 4.3,
    },
    ProductRow {
        id: "p-5",
        name: "Insulated Bottle",
        price: 24.0,
        stock: 85,
        description: "A 750 ml steel bottle that keeps drinks cold for a day and hot for half of one.",
        tags: &["gear", "kitchen"],
        rating: 4.7,
    },
    ProductRow {
        id: "p-6",
        name: "Headlamp",
        price: 29.9,
        stock: 40,
        description: "A rechargeable 400-lumen headlamp with a red night mode.",
        tags: &["gear", "outdoor"],
        rating: 4.5,
    },
    ProductRow {
        id: "p-7",
        name: "Daypack 20L",
        price: 59.0,
        stock: 18,
        description: "A 20-litre daypack with a ventilated back panel and a hydration sleeve.",
        tags: &["bags", "outdoor"],
        rating: 4.2,
    },
    ProductRow {
        id: "p-8",
        name: "Merino Base Layer",
        price: 69.0,
        stock: 22,
        description: "A long-sleeve merino top for cold starts and long climbs.",
        tags: &["clothing"],
        rating: 4.6,
    },
    ProductRow {
        id: "p-9",
        name: "Camp Stove",
        price: 84.0,
        stock: 7,
        description: "A compact gas stove that boils a litre of water in three minutes.",
        tags: &["kitchen", "outdoor"],
        rating: 4.1,
    },
    ProductRow {
        id: "p-10",
        name: "Sun Hat",
        price: 19.5,
        stock: 64,
        description: "A wide-brimmed UPF 50 hat with a chin strap for windy ridges.",
        tags: &["clothing", "outdoor"],
        rating: 3.9,
    },
];

fn product(id: &str) -> Option<&'static ProductRow> {
    PRODUCTS.iter().find(|p| p.id == id)
}

fn product_json(p: &ProductRow) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "price": p.price,
        "currency": "EUR",
        "stock": p.stock,
        "image_url": format!("https://img.example.com/products/{}.jpg", p.id),
        "description": p.description,
        "tags": p.tags,
        "rating": p.rating,
    })
}

struct OrderRow {
    id: &'static str,
    user: &'static str,
    placed_at: &'static str,
    status: &'static str,
    items: &'static [(&'static str, u32)],
}

const ORDERS: &[OrderRow] = &[
    OrderRow {
        id: "o-1001",
        user: "alice",
        placed_at: "2026-10-02T09:14:00Z",
        status: "shipped",
        items: &[("p-1", 1), ("p-3", 2)],
    },
    OrderRow {
        id: "o-1002",
        user: "alice",
        placed_at: "2026-09-18T17:40:00Z",
        status: "delivered",
        items: &[("p-2", 1)],
    },
    OrderRow {
        id: "o-1003",
        user: "bob",
        placed_at: "2026-09-29T12:05:00Z",
        status: "delivered",
        items: &[("p-3", 5)],
    },
    OrderRow {
        id: "o-1004",
        user: "carol",
        placed_at: "2026-10-01T08:30:00Z",
        status: "processing",
        items: &[("p-7", 1), ("p-5", 1)],
    },
    OrderRow {
        id: "o-1005",
        user: "alice",
        placed_at: "2026-08-30T19:22:00Z",
        status: "delivered",
        items: &[("p-6", 1)],
    },
    OrderRow {
        id: "o-1006",
        user: "dave",
        placed_at: "2026-09-25T10:10:00Z",
        status: "shipped",
        items: &[("p-9", 1)],
    },
    OrderRow {
        id: "o-1007",
        user: "erin",
        placed_at: "2026-10-03T07:55:00Z",
        status: "processing",
        items: &[("p-8", 2)],
    },
    OrderRow {
        id: "o-1008",
        user: "bob",
        placed_at: "2026-08-12T15:45:00Z",
        status: "cancelled",
        items: &[("p-10", 1)],
    },
    OrderRow {
        id: "o-1009",
        user: "alice",
        placed_at: "2026-07-21T11:00:00Z",
        status: "delivered",
        items: &[("p-3", 3)],
    },
    OrderRow {
        id: "o-1010",
        user: "frank",
        placed_at: "2026-09-09T13:37:00Z",
        status: "delivered",
        items: &[("p-6", 1), ("p-4", 2)],
    },
    OrderRow {
        id: "o-1011",
        user: "carol",
        placed_at: "2026-09-14T16:20:00Z",
        status: "delivered",
        items: &[("p-1", 1)],
    },
    OrderRow {
        id: "o-1012",
        user: "dave",
        placed_at: "2026-10-04T06:48:00Z",
        status: "processing",
        items: &[("p-2", 1), ("p-8", 1)],
    },
];

/// Sort by `placed_at` (RFC 3339 in UTC sorts as text), newest first.
fn newest_first(rows: &mut [&OrderRow]) {
    rows.sort_by(|a, b| b.placed_at.cmp(a.placed_at).then(a.id.cmp(b.id)));
}

fn order_json(o: &OrderRow) -> Value {
    let total: f64 = o
        .items
        .iter()
        .map(|&(id, qty)| product(id).map_or(0.0, |p| p.price * f64::from(qty)))
        .sum();
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|&(id, qty)| json!({"product_id": id, "qty": qty}))
        .collect();
    json!({
        "id": o.id,
        "user": o.user,
        "placed_at": o.placed_at,
        "status": o.status,
        "total": round2(total),
        "currency": "EUR",
        "product_id": o.items.first().map(|&(id, _)| id),
        "items": items,
    })
}

/// Suggestions for a known user: products they have not bought, scored by a
/// per-user hash plus a bonus when they share a tag with something bought.
/// `None` for an unknown user or one who has bought everything.
fn personal(user: &str, limit: usize) -> Option<Vec<Value>> {
    if !USERS.iter().any(|u| u["id"] == user) {
        return None;
    }
    let mut orders: Vec<&OrderRow> = ORDERS.iter().filter(|o| o.user == user).collect();
    newest_first(&mut orders);
    let mut bought: Vec<&ProductRow> = Vec::new();
    for &(id, _) in orders.iter().flat_map(|o| o.items) {
        if let Some(p) = product(id)
            && !bought.iter().any(|b| b.id == p.id)
        {
            bought.push(p);
        }
    }
    let mut scored: Vec<(f64, &ProductRow, String)> = PRODUCTS
        .iter()
        .filter(|c| !bought.iter().any(|b| b.id == c.id))
        .map(|c| {
            let base = 0.5 + (fnv1a(&[user, "/", c.id]) % 40) as f64 / 100.0;
            let related = bought
                .iter()
                .find(|b| b.tags.iter().any(|t| c.tags.contains(t)));
            match related {
                Some(b) => (
                    round2(base + 0.08),
                    c,
                    format!("bought together with {}", b.name),
                ),
                None => (round2(base), c, format!("popular in {}", c.tags[0])),
            }
        })
        .collect();
    if scored.is_empty() {
        return None;
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(b.1.id)));
    Some(
        scored
            .into_iter()
            .take(limit)
            .map(|(score, p, reason)| {
                json!({"product_id": p.id, "title": p.name, "score": score, "reason": reason})
            })
            .collect(),
    )
}

/// The best-rated products, for anyone.
fn popular(limit: usize) -> Vec<Value> {
    let mut all: Vec<&ProductRow> = PRODUCTS.iter().collect();
    all.sort_by(|a, b| b.rating.total_cmp(&a.rating).then(a.id.cmp(b.id)));
    all.into_iter()
        .take(limit)
        .map(|p| {
            json!({
                "product_id": p.id,
                "title": p.name,
                "score": round2(p.rating / 5.0),
                "reason": "popular right now",
            })
        })
        .collect()
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::time::Instant;

    type TestClient = Client<HttpConnector, Full<Bytes>>;

    fn client() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    async fn start_one(kind: Kind, latency_ms: u64, rate: f64) -> (SocketAddr, Arc<Knobs>) {
        let knobs = Arc::new(Knobs::new(Duration::from_millis(latency_ms), rate));
        let addr = spawn(kind, "127.0.0.1:0".parse().unwrap(), knobs.clone())
            .await
            .unwrap();
        (addr, knobs)
    }

    async fn call(
        c: &TestClient,
        method: Method,
        addr: SocketAddr,
        path: &str,
    ) -> (StatusCode, HeaderMap, Value) {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        (status, headers, body)
    }

    async fn get(c: &TestClient, addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Value) {
        call(c, Method::GET, addr, path).await
    }

    #[test]
    fn kinds_and_services() {
        for k in [
            Kind::Users,
            Kind::Orders,
            Kind::Products,
            Kind::Recommendations,
        ] {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        assert_eq!(Kind::parse("nope"), None);
        assert_eq!(SERVICES.len(), 5);
        assert!(
            SERVICES
                .iter()
                .any(|s| s.kind == Kind::Recommendations && s.addr == "127.0.0.1:7401")
        );
    }

    #[test]
    fn knobs_clamp() {
        let k = Knobs::new(Duration::from_millis(5), 3.0);
        assert_eq!(k.failure_rate(), 1.0);
        assert_eq!(k.latency(), Duration::from_millis(5));
        k.set_failure_rate(-1.0);
        assert_eq!(k.failure_rate(), 0.0);
        k.set_failure_rate(f64::NAN);
        assert_eq!(k.failure_rate(), 0.0);
        assert_eq!(Knobs::default().failure_rate(), 0.0);
    }

    #[tokio::test]
    async fn health_is_never_delayed_or_failed() {
        let (addr, _) = start_one(Kind::Orders, 2_000, 1.0).await;
        let c = client();
        let t = Instant::now();
        let (status, headers, body) = get(&c, addr, "/health").await;
        assert!(t.elapsed() < Duration::from_millis(1_500));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["service"], "orders");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers["x-served-by"], addr.to_string().as_str());
    }

    #[tokio::test]
    async fn users_found_and_not_found() {
        let (addr, _) = start_one(Kind::Users, 0, 0.0).await;
        let c = client();
        let (status, headers, body) = get(&c, addr, "/users/alice").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], "alice");
        assert_eq!(body["address"]["city"], "Lyon");
        assert_eq!(body["preferences"]["theme"], "dark");
        assert!(body["internal_notes"].is_string());
        assert!(body["avatar_url"].is_string());
        assert_eq!(body["served_by"], addr.to_string());
        assert_eq!(headers["x-served-by"], addr.to_string().as_str());

        let (status, _, body) = get(&c, addr, "/users/zed").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not found");
        assert_eq!(body["service"], "users");

        let (status, _, body) = get(&c, addr, "/users/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["users"].as_array().unwrap().len(), 6);

        let (status, _, body) = get(&c, addr, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not found");

        let (status, headers, _) = call(&c, Method::POST, addr, "/users").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET");
    }

    #[tokio::test]
    async fn orders_by_user_newest_first_with_limit() {
        let (addr, _) = start_one(Kind::Orders, 0, 0.0).await;
        let c = client();
        let (status, _, body) = get(&c, addr, "/orders?user=alice&limit=3").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["user"], "alice");
        let orders = body["orders"].as_array().unwrap();
        let ids: Vec<&str> = orders.iter().map(|o| o["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["o-1001", "o-1002", "o-1005"]);
        for o in orders {
            assert_eq!(o["user"], "alice");
            assert_eq!(o["product_id"], o["items"][0]["product_id"]);
            assert_eq!(o["currency"], "EUR");
        }
        assert_eq!(orders[0]["total"], 64.5);

        let (_, _, body) = get(&c, addr, "/orders").await;
        assert_eq!(body["user"], Value::Null);
        let orders = body["orders"].as_array().unwrap();
        assert_eq!(orders.len(), 10);
        let dates: Vec<&str> = orders
            .iter()
            .map(|o| o["placed_at"].as_str().unwrap())
            .collect();
        assert!(dates.windows(2).all(|w| w[0] >= w[1]));

        let (status, _, body) = get(&c, addr, "/orders/o-1003").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["user"], "bob");
        let (status, _, _) = get(&c, addr, "/orders/o-9999").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = get(&c, addr, "/orders?limit=ten").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, _, body) = get(&c, addr, "/orders?user=nobody").await;
        assert_eq!(body["orders"].as_array().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn products_by_ids_in_order() {
        let (addr, _) = start_one(Kind::Products, 0, 0.0).await;
        let c = client();
        let (status, _, body) = get(&c, addr, "/products?ids=p-3,nope,p-1").await;
        assert_eq!(status, StatusCode::OK);
        let ids: Vec<&str> = body["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["p-3", "p-1"]);

        let (_, _, body) = get(&c, addr, "/products?ids=p-10%2Cp-2").await;
        assert_eq!(body["products"][0]["id"], "p-10");
        assert_eq!(body["products"][1]["id"], "p-2");

        let (_, _, body) = get(&c, addr, "/products").await;
        let all = body["products"].as_array().unwrap();
        assert_eq!(all.len(), 10);
        for key in [
            "name",
            "price",
            "currency",
            "stock",
            "image_url",
            "description",
            "tags",
            "rating",
        ] {
            assert!(all.iter().all(|p| !p[key].is_null()), "{key}");
        }

        let (status, _, body) = get(&c, addr, "/products/p-2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "Rain Jacket");
        let (status, _, _) = get(&c, addr, "/products/p-99").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn recommendations_are_deterministic() {
        let (a, _) = start_one(Kind::Recommendations, 0, 0.0).await;
        let (b, _) = start_one(Kind::Recommendations, 0, 0.0).await;
        let c = client();
        let (status, _, first) = get(&c, a, "/recommendations/alice").await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, second) = get(&c, b, "/recommendations/alice").await;
        assert_eq!(first["items"], second["items"]);
        assert_eq!(first["user"], "alice");
        assert_eq!(first["strategy"], "personal");
        let items = first["items"].as_array().unwrap();
        assert_eq!(items.len(), 5);
        let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]));
        // Nothing alice already bought.
        for i in items {
            assert!(!["p-1", "p-2", "p-3", "p-6"].contains(&i["product_id"].as_str().unwrap()));
            assert!(i["title"].is_string());
            assert!(i["reason"].is_string());
        }

        let (_, _, two) = get(&c, a, "/recommendations/bob?limit=2").await;
        assert_eq!(two["items"].as_array().unwrap().len(), 2);

        let (status, _, anon) = get(&c, a, "/recommendations/stranger").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(anon["strategy"], "popular");
        assert_eq!(anon["items"].as_array().unwrap().len(), 5);
        assert_eq!(anon["items"][0]["product_id"], "p-3");
    }

    #[tokio::test]
    async fn latency_knob_and_runtime_change() {
        let (addr, knobs) = start_one(Kind::Products, 150, 0.0).await;
        let c = client();
        let t = Instant::now();
        let (status, _, _) = get(&c, addr, "/products/p-1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(t.elapsed() >= Duration::from_millis(150));

        let (status, _, body) = call(
            &c,
            Method::PUT,
            addr,
            "/_knobs?latency_ms=0&failure_rate=0.25",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["latency_ms"], 0);
        assert_eq!(body["failure_rate"], 0.25);
        assert_eq!(knobs.latency(), Duration::ZERO);
        assert_eq!(knobs.failure_rate(), 0.25);

        let (status, _, body) = call(&c, Method::PUT, addr, "/_knobs?latency_ms=300").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["latency_ms"], 300);
        assert_eq!(body["failure_rate"], 0.25);

        for bad in [
            "/_knobs?latency_ms=fast",
            "/_knobs?failure_rate=2",
            "/_knobs?failure_rate=0.1&latency_ms=-1",
            "/_knobs?speed=1",
        ] {
            let (status, _, _) = call(&c, Method::PUT, addr, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }
        // Nothing changed by a rejected request.
        assert_eq!(knobs.latency(), Duration::from_millis(300));
        assert_eq!(knobs.failure_rate(), 0.25);

        let (status, headers, _) = call(&c, Method::POST, addr, "/_knobs").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET, PUT");
    }

    #[tokio::test]
    async fn failure_rate_one_always_fails_zero_never() {
        let (addr, knobs) = start_one(Kind::Users, 0, 1.0).await;
        let c = client();
        for _ in 0..20 {
            let (status, headers, body) = get(&c, addr, "/users/alice").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body["error"], "injected failure");
            assert_eq!(body["service"], "users");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        }
        knobs.set_failure_rate(0.0);
        for _ in 0..50 {
            let (status, _, _) = get(&c, addr, "/users/alice").await;
            assert_eq!(status, StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn fail_and_delay_query_parameters() {
        let (addr, _) = start_one(Kind::Orders, 0, 0.0).await;
        let c = client();
        let (status, _, body) = get(&c, addr, "/orders?user=bob&fail=1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "injected failure");

        let t = Instant::now();
        let (status, _, body) = get(&c, addr, "/orders?user=bob&delay_ms=150").await;
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["orders"].as_array().unwrap().len(), 2);

        let (status, _, _) = get(&c, addr, "/orders?delay_ms=soon").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = get(&c, addr, "/orders?fail=maybe").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = get(&c, addr, "/orders?fail=0").await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Where a pinned plugin comes from and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// `NAME@VERSION`.
    pub id: String,
    /// The built file.
    pub from: std::path::PathBuf,
    /// The plugin directory file it is copied to.
    pub to: std::path::PathBuf,
}

/// Copy the plugins the frontends of an example pin (`examples/bff/`) into
/// their plugin directories as `NAME@VERSION.wasm`, from the `plugins/`
/// workspace at `sources`, built into `built` (`*.wasm` named after their
/// crates). A crate deploys as its package name and version, or as
/// `[package.metadata.transom] plugin = "NAME"` (an older major version kept
/// in its own crate).
///
/// The example's files are read as plain TOML, not validated: until the
/// plugins are in place, validation would refuse the pins.
pub fn install_plugins(
    example_root: &std::path::Path,
    sources: &std::path::Path,
    built: &std::path::Path,
) -> Result<Vec<Install>, String> {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    let read_toml = |path: &Path| -> Result<toml::Table, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.parse::<toml::Table>()
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let str_at = |t: &toml::Table, path: &[&str]| -> Option<String> {
        let mut v: &toml::Value = t.get(path[0])?;
        for k in &path[1..] {
            v = v.get(k)?;
        }
        v.as_str().map(str::to_string)
    };

    // what each crate deploys as
    let mut crates: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    let entries = std::fs::read_dir(sources)
        .map_err(|e| format!("cannot read {}: {e}", sources.display()))?;
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let t = read_toml(&manifest)?;
        let (Some(package), Some(version)) = (
            str_at(&t, &["package", "name"]),
            str_at(&t, &["package", "version"]),
        ) else {
            continue;
        };
        let plugin = str_at(&t, &["package", "metadata", "transom", "plugin"])
            .unwrap_or_else(|| package.clone());
        let file = built.join(format!("{}.wasm", package.replace('-', "_")));
        crates.insert((plugin, version), file);
    }

    // the root file and its includes
    let root = example_root.join("transom.toml");
    let mut files = vec![root.clone()];
    let root_table = read_toml(&root)?;
    if let Some(includes) = root_table.get("include").and_then(|i| i.as_array()) {
        for pattern in includes.iter().filter_map(|p| p.as_str()) {
            let full = example_root.join(pattern).to_string_lossy().into_owned();
            let mut matched: Vec<PathBuf> = glob::glob(&full)
                .map_err(|e| format!("include {pattern:?}: {e}"))?
                .filter_map(Result::ok)
                .collect();
            matched.sort();
            files.extend(matched);
        }
    }
    let default_dir = str_at(&root_table, &["plugins", "dir"]).map(|d| example_root.join(d));

    let mut installs = Vec::new();
    for file in files {
        let t = read_toml(&file)?;
        let here = file.parent().unwrap_or(example_root);
        let Some(frontends) = t.get("frontends").and_then(|f| f.as_table()) else {
            continue;
        };
        for (name, fe) in frontends {
            let dir = fe
                .get("plugins")
                .and_then(|p| p.get("dir"))
                .and_then(|d| d.as_str())
                .map(|d| here.join(d))
                .or_else(|| default_dir.clone());
            let routes = fe.get("routes").and_then(|r| r.as_array());
            for route in routes.into_iter().flatten() {
                let pins = route.get("plugins").and_then(|p| p.as_array());
                for pin in pins.into_iter().flatten() {
                    let (Some(plugin), Some(version)) = (
                        pin.get("name").and_then(|n| n.as_str()),
                        pin.get("version").and_then(|v| v.as_str()),
                    ) else {
                        continue;
                    };
                    let id = format!("{plugin}@{version}");
                    let dir = dir.clone().ok_or_else(|| {
                        format!("frontend {name} pins {id} but has no plugin directory")
                    })?;
                    let from = crates
                        .get(&(plugin.to_string(), version.to_string()))
                        .ok_or_else(|| {
                            format!(
                                "frontend {name} pins {id}, but no crate in {} builds it",
                                sources.display()
                            )
                        })?
                        .clone();
                    let to = dir.join(format!("{id}.wasm"));
                    if !installs.iter().any(|i: &Install| i.to == to) {
                        installs.push(Install { id, from, to });
                    }
                }
            }
        }
    }
    for i in &installs {
        if let Some(dir) = i.to.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        // Copied under a temporary name, then renamed: a running gateway
        // never sees half a file.
        let tmp = i.to.with_extension("wasm.partial");
        std::fs::copy(&i.from, &tmp)
            .map_err(|e| format!("cannot copy {}: {e}", i.from.display()))?;
        std::fs::rename(&tmp, &i.to)
            .map_err(|e| format!("cannot install {}: {e}", i.to.display()))?;
    }
    Ok(installs)
}
