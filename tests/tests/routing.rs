//! Routing: prefix and exact paths, prefix strip, methods (405), hosts,
//! headers, split and canary, and the headers the gateway adds.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::Full;
use transom_tests::*;

async fn setup() -> (TestGateway, TestUpstream, TestUpstream) {
    let users = TestUpstream::start("users").await;
    let orders = TestUpstream::start("orders").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.users]
endpoints = ["{u}"]
[upstreams.orders]
endpoints = ["{o}"]

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
name = "users-ios"
match = {{ path_prefix = "/api/users", headers = {{ "x-app" = "ios" }} }}
strip_prefix = "/api"
upstream = "orders"

[[frontends.web.routes]]
name = "users"
match = {{ path_prefix = "/api/users", methods = ["GET", "POST"] }}
strip_prefix = "/api"
upstream = "users"

[[frontends.web.routes]]
name = "exact"
match = {{ path = "/exact" }}
upstream = "orders"

[[frontends.web.routes]]
name = "host"
match = {{ path_prefix = "/h", host = "*.example.com" }}
upstream = "orders"

[[frontends.web.routes]]
name = "canary"
match = {{ path_prefix = "/c" }}
upstream = "users"
canary = {{ header = "x-canary", value = "1", upstream = "orders" }}
"#,
        u = users.addr,
        o = orders.addr
    ))
    .await;
    (gw, users, orders)
}

#[tokio::test]
async fn prefix_match_and_strip() {
    let (gw, _u, _o) = setup().await;
    let addr = gw.addr("web").await;
    let r = get(addr, "/api/users/alice?x=1").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["upstream"], "users");
    assert_eq!(j["path"], "/users/alice");
    assert_eq!(j["query"], "x=1");
    // `/api/usersX` is not under the `/api/users` prefix.
    assert_eq!(get(addr, "/api/usersX").await.status, 404);
    assert_eq!(get(addr, "/exact").await.json()["upstream"], "orders");
    assert_eq!(get(addr, "/exact/more").await.status, 404);
}

#[tokio::test]
async fn unknown_path_is_404_with_json_error() {
    let (gw, _u, _o) = setup().await;
    let r = get(gw.addr("web").await, "/nowhere").await;
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"], "no route for this request");
    assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
}

#[tokio::test]
async fn method_mismatch_is_405_with_allow() {
    let (gw, users, _o) = setup().await;
    let addr = gw.addr("web").await;
    let r = send(
        &client(),
        request("DELETE", addr, "/api/users/1")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let before = users.requests();
    let r = send(
        &client(),
        request("POST", addr, "/api/users")
            .body(Full::new(Bytes::from("hi")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 2);
    assert_eq!(users.requests(), before + 1);
}

#[tokio::test]
async fn header_and_host_matching() {
    let (gw, _u, _o) = setup().await;
    let addr = gw.addr("web").await;
    let r = send(
        &client(),
        request("GET", addr, "/api/users/1")
            .header("x-app", "ios")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.json()["upstream"],
        "orders",
        "header match picks the first route"
    );
    let r = send(
        &client(),
        request("GET", addr, "/h/1")
            .header("host", "m.example.com:8080")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = send(
        &client(),
        request("GET", addr, "/h/1")
            .header("host", "example.org")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn canary_header_selects_the_canary_upstream() {
    let (gw, _u, _o) = setup().await;
    let addr = gw.addr("web").await;
    assert_eq!(get(addr, "/c").await.json()["upstream"], "users");
    let r = send(
        &client(),
        request("GET", addr, "/c")
            .header("x-canary", "1")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["upstream"], "orders");
}

#[tokio::test]
async fn forwarding_headers_and_request_id() {
    let (gw, _u, _o) = setup().await;
    let addr = gw.addr("web").await;
    let r = send(
        &client(),
        request("GET", addr, "/api/users/1")
            .header("x-request-id", "abc-123")
            .header("x-forwarded-for", "10.9.8.7")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(
        r.header("x-request-id"),
        Some("abc-123"),
        "id is sent back too"
    );
    assert_eq!(h["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], addr.to_string());
    assert!(
        h.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert!(h.get("te").is_none());
    // Without one, an id is minted and sent both ways.
    let r = get(addr, "/api/users/1").await;
    let minted = r.header("x-request-id").unwrap().to_string();
    assert_eq!(minted.len(), 32);
    assert_eq!(r.json()["headers"]["x-request-id"], minted.as_str());
}

#[tokio::test]
async fn weighted_split_spreads_by_weight() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.a]
endpoints = ["{}"]
[upstreams.b]
endpoints = ["{}"]
[frontends.web]
listen = "127.0.0.1:0"
[[frontends.web.routes]]
split = [{{ upstream = "a", weight = 80 }}, {{ upstream = "b", weight = 20 }}]
"#,
        a.addr, b.addr
    ))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    let mut to_a = 0;
    for _ in 0..400 {
        let r = send(
            &c,
            request("GET", addr, "/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        if r.json()["upstream"] == "a" {
            to_a += 1;
        }
    }
    // 80% of 400 = 320; allow generous randomness.
    assert!((280..=360).contains(&to_a), "a got {to_a} of 400");
}
