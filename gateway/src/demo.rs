//! The built-in demo: three small JSON services (users, orders, products)
//! on loopback, for `transom demo` and the README. They are plain hyper
//! servers with a `/health` endpoint, nothing gateway-specific.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::body::{Body, full};

/// A demo service: its name and where it listens.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// `users`, `orders` or `products`.
    pub name: &'static str,
    /// Listen address.
    pub addr: &'static str,
}

/// The services `examples/demo/transom.toml` expects.
pub const SERVICES: &[Service] = &[
    Service {
        name: "users",
        addr: "127.0.0.1:7101",
    },
    Service {
        name: "users",
        addr: "127.0.0.1:7102",
    },
    Service {
        name: "orders",
        addr: "127.0.0.1:7201",
    },
    Service {
        name: "products",
        addr: "127.0.0.1:7301",
    },
];

/// Start every demo service; returns when all are listening.
pub async fn start() -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for svc in SERVICES {
        let addr: SocketAddr = svc
            .addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("demo service {} on {addr}: {e}", svc.name),
            )
        })?;
        addrs.push(listener.local_addr()?);
        let name = svc.name;
        let instance = addr.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let instance = instance.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let instance = instance.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(name, &instance, req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
    Ok(addrs)
}

fn users() -> Value {
    json!([
        {"id": "alice", "name": "Alice Martin", "email": "alice@example.com", "tier": "gold", "joined": "2021-03-14"},
        {"id": "bob", "name": "Bob Okafor", "email": "bob@example.com", "tier": "silver", "joined": "2022-07-01"},
        {"id": "carol", "name": "Carol Nguyen", "email": "carol@example.com", "tier": "bronze", "joined": "2023-11-20"}
    ])
}

fn orders() -> Value {
    json!([
        {"id": "o-1001", "user": "alice", "items": [{"product": "p-1", "qty": 1}, {"product": "p-3", "qty": 2}], "total": 64.5, "status": "shipped"},
        {"id": "o-1002", "user": "alice", "items": [{"product": "p-2", "qty": 1}], "total": 129.0, "status": "processing"},
        {"id": "o-1003", "user": "bob", "items": [{"product": "p-3", "qty": 5}], "total": 42.5, "status": "delivered"}
    ])
}

fn products() -> Value {
    json!([
        {"id": "p-1", "name": "Trail Shoes", "price": 47.5, "stock": 12, "tags": ["outdoor", "footwear"]},
        {"id": "p-2", "name": "Rain Jacket", "price": 129.0, "stock": 3, "tags": ["outdoor"]},
        {"id": "p-3", "name": "Wool Socks", "price": 8.5, "stock": 240, "tags": ["footwear"]}
    ])
}

fn answer(service: &str, instance: &str, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/');
    let query = req.uri().query().unwrap_or("");
    let (collection, key, all) = match service {
        "users" => ("users", "id", users()),
        "orders" => ("orders", "id", orders()),
        _ => ("products", "id", products()),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let body = match segments.as_slice() {
        ["health"] => Some(json!({"status": "ok", "service": service})),
        [c] if *c == collection => {
            let items = all.as_array().cloned().unwrap_or_default();
            let filtered: Vec<Value> = match query.strip_prefix("user=") {
                Some(user) => items.into_iter().filter(|o| o["user"] == user).collect(),
                None => items,
            };
            Some(json!({ collection: filtered, "served_by": instance }))
        }
        [c, id] if *c == collection => all
            .as_array()
            .and_then(|items| items.iter().find(|i| i[key] == *id).cloned())
            .map(|mut item| {
                item["served_by"] = json!(instance);
                item
            }),
        _ => None,
    };
    let (status, body) = match body {
        Some(b) => (StatusCode::OK, b),
        None => (
            StatusCode::NOT_FOUND,
            json!({"error": "not found", "service": service}),
        ),
    };
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
