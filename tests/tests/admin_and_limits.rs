//! The admin API, and the connection limits that keep a slow or idle client
//! from holding the gateway: header read timeout, idle timeout,
//! max_connections (also when changed by a reload).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transom_tests::*;

fn config(up: &TestUpstream, limits: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[upstreams.u]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}
limits = {{ {limits} }}

[[frontends.web.routes]]
name = "all"
upstream = "u"
"#,
        up.addr
    )
}

async fn plain(up: &TestUpstream, limits: &str) -> TestGateway {
    TestGateway::start(
        &config(up, limits).replace("tls = { cert = \"cert.pem\", key = \"key.pem\" }\n", ""),
    )
    .await
}

#[tokio::test]
async fn admin_serves_health_readiness_metrics_and_redacted_config() {
    let up = TestUpstream::start("u").await;
    let dir = TempDir::new();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    dir.write("cert.pem", &ck.cert.pem());
    dir.write("key.pem", &ck.signing_key.serialize_pem());
    let root = dir.write("transom.toml", &config(&up, "max_connections = 100"));
    let gw = TestGateway::start_in(dir, root).await.unwrap();
    let admin = gw.gw.admin_addr().unwrap();

    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let m = get(admin, "/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    for needle in [
        "transom_requests_total{frontend=\"web\",route=\"all\",class=\"2xx\"} 0",
        "transom_open_connections{frontend=\"web\"}",
        "transom_request_duration_seconds_bucket",
        &format!(
            "transom_upstream_endpoint_healthy{{upstream=\"u\",endpoint=\"{}\"}} 1",
            up.addr
        ),
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let c = get(admin, "/config").await.json();
    assert_eq!(c["frontends"]["web"]["tls"]["key"], "<redacted>");
    assert!(!c.to_string().contains("PRIVATE KEY"));
    assert_eq!(c["upstreams"]["u"]["endpoints"][0], up.addr.to_string());
    assert_eq!(c["frontends"]["web"]["limits"]["max_connections"], 100);
    assert_eq!(get(admin, "/nope").await.status, 404);
}

#[tokio::test]
async fn readiness_turns_off_while_draining() {
    let up = TestUpstream::start("u").await;
    let gw = plain(&up, "max_connections = 100").await;
    let admin = gw.gw.admin_addr().unwrap();
    let web = gw.addr("web").await;
    up.set_delay(600);
    let inflight = tokio::spawn(async move { get(web, "/slow").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gw2 = gw.gw.clone();
    let draining = tokio::spawn(async move { gw2.shutdown().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(admin, "/readyz").await.status,
        503,
        "not ready while draining"
    );
    draining.await.unwrap();
    assert_eq!(inflight.await.unwrap(), 200);
}

#[tokio::test]
async fn requests_are_counted_by_route_and_class() {
    let up = TestUpstream::start("u").await;
    let gw = plain(&up, "max_connections = 100").await;
    let addr = gw.addr("web").await;
    for _ in 0..3 {
        get(addr, "/ok").await;
    }
    up.fail_with(500);
    get(addr, "/bad").await;
    let text = get(gw.gw.admin_addr().unwrap(), "/metrics").await.text();
    assert!(
        text.contains("transom_requests_total{frontend=\"web\",route=\"all\",class=\"2xx\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("transom_requests_total{frontend=\"web\",route=\"all\",class=\"5xx\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn slow_header_sender_is_cut_off() {
    let up = TestUpstream::start("u").await;
    let gw = plain(&up, "header_read_timeout = \"300ms\"").await;
    let started = Instant::now();
    let (_, closed) = raw(
        gw.addr("web").await,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow",
        Duration::from_secs(3),
    )
    .await;
    assert!(closed, "connection still open after 3s");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let up = TestUpstream::start("u").await;
    let gw = plain(&up, "idle_timeout = \"300ms\"").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr("web").await)
        .await
        .unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    assert!(closed, "idle connection kept open");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(200) && idle < Duration::from_secs(2),
        "closed after {idle:?}"
    );
}

/// The header-read timeout runs from a request head's first byte: a
/// keep-alive connection idle for longer than it (but not for
/// `idle_timeout`) still serves its next request.
#[tokio::test]
async fn idle_keep_alive_connection_outlives_the_header_read_timeout() {
    let up = TestUpstream::start("u").await;
    let gw = plain(
        &up,
        "header_read_timeout = \"200ms\", idle_timeout = \"10s\"",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr("web").await)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    for _ in 0..2 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

async fn served_within(
    addr: std::net::SocketAddr,
    within: Duration,
) -> (tokio::net::TcpStream, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let ok = matches!(tokio::time::timeout(within, s.read(&mut buf)).await, Ok(Ok(n)) if n > 0);
    (s, ok)
}

#[tokio::test]
async fn max_connections_holds_further_clients_until_one_leaves() {
    let up = TestUpstream::start("u").await;
    let gw = plain(&up, "max_connections = 2").await;
    let addr = gw.addr("web").await;
    let (first, ok1) = served_within(addr, Duration::from_secs(2)).await;
    let (_second, ok2) = served_within(addr, Duration::from_secs(2)).await;
    assert!(ok1 && ok2);
    let third = tokio::spawn(async move { served_within(addr, Duration::from_secs(3)).await.1 });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "third connection served beyond the limit"
    );
    drop(first);
    assert!(
        third.await.unwrap(),
        "third connection served once a slot freed"
    );
}

#[tokio::test]
async fn raising_max_connections_by_reload_admits_waiting_clients() {
    let up = TestUpstream::start("u").await;
    let gw = plain(&up, "max_connections = 1").await;
    let addr = gw.addr("web").await;
    let (_first, ok) = served_within(addr, Duration::from_secs(2)).await;
    assert!(ok);
    let second = tokio::spawn(async move { served_within(addr, Duration::from_secs(3)).await.1 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished());
    let raised = config(&up, "max_connections = 5")
        .replace("tls = { cert = \"cert.pem\", key = \"key.pem\" }\n", "");
    assert!(gw.rewrite(&raised).await.unwrap());
    assert!(second.await.unwrap(), "admitted after the limit was raised");
}
