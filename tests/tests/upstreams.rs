//! Upstream behaviour: balancing policies, ejection of a killed endpoint with
//! retries that hide it, active health checks, and the circuit breaker.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use transom_tests::*;

fn gw_toml(upstream_body: &str) -> String {
    format!(
        r#"
[upstreams.u]
{upstream_body}

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
upstream = "u"
"#
    )
}

async fn hit(
    c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: std::net::SocketAddr,
    path: &str,
) -> Reply {
    send(
        c,
        request("GET", addr, path)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn round_robin_follows_weights_exactly() {
    let ups = [
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    ];
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = [{{ address = "{}", weight = 1 }}, {{ address = "{}", weight = 2 }}, {{ address = "{}", weight = 3 }}]
balance = "round_robin""#,
        ups[0].addr, ups[1].addr, ups[2].addr
    )))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    for _ in 0..600 {
        assert_eq!(hit(&c, addr, "/").await.status, 200);
    }
    let counts: Vec<usize> = ups.iter().map(|u| u.requests()).collect();
    assert_eq!(counts, vec![100, 200, 300]);
}

#[tokio::test]
async fn random_spreads_by_weight() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = [{{ address = "{}", weight = 1 }}, {{ address = "{}", weight = 3 }}]
balance = "random""#,
        a.addr, b.addr
    )))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    for _ in 0..400 {
        hit(&c, addr, "/").await;
    }
    // Expect 300 on b; the bound is loose enough to never flake (> 6 sigma).
    assert!(
        (240..=360).contains(&b.requests()),
        "b got {}",
        b.requests()
    );
    assert_eq!(a.requests() + b.requests(), 400);
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.set_delay(300);
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = ["{}", "{}"]
balance = "least_request""#,
        slow.addr, fast.addr
    )))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            hit(&c, addr, "/").await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Round robin would give each 20; the slow one holds requests in flight
    // and so is chosen rarely.
    assert!(fast.requests() >= 30, "fast got {} of 40", fast.requests());
}

#[tokio::test]
async fn killed_endpoint_is_ejected_and_retries_hide_it() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = ["{}", "{}"]
retries = {{ attempts = 2, on = ["connect-failure", "reset"] }}
circuit_breaker = {{ consecutive_failures = 1, open_for = "30s" }}"#,
        a.addr, b.addr
    )))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    for i in 0..200 {
        if i == 50 {
            b.kill();
        }
        let r = hit(&c, addr, "/").await;
        assert_eq!(r.status, 200, "request {i} failed: {}", r.text());
    }
    // b served about half of the first 50, then nothing.
    assert!(
        (20..=30).contains(&b.requests()),
        "b served {}",
        b.requests()
    );
    assert_eq!(a.requests() + b.requests(), 200);
    let metrics = gw.gw.metrics().encode();
    let line = format!(
        "transom_upstream_endpoint_ejections_total{{upstream=\"u\",endpoint=\"{}\"}} 1",
        b.addr
    );
    assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
}

#[tokio::test]
async fn active_health_check_takes_endpoint_out_and_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = ["{}", "{}"]
health = {{ path = "/health", interval = "50ms", timeout = "200ms", unhealthy_after = 2, healthy_after = 2 }}"#,
        a.addr, b.addr
    )))
    .await;
    let addr = gw.addr("web").await;
    let up = gw.gw.upstream("u").await.unwrap();
    let healthy = |i: usize| up.endpoints()[i].is_healthy();

    b.set_healthy(false);
    assert!(eventually(Duration::from_secs(3), || async { !healthy(1) }).await);
    let c = client();
    for _ in 0..20 {
        assert_eq!(hit(&c, addr, "/").await.json()["upstream"], "a");
    }
    let gauge = format!(
        "transom_upstream_endpoint_healthy{{upstream=\"u\",endpoint=\"{}\"}} 0",
        b.addr
    );
    assert!(gw.gw.metrics().encode().contains(&gauge));

    b.set_healthy(true);
    assert!(eventually(Duration::from_secs(3), || async { healthy(1) }).await);
    let mut saw_b = false;
    for _ in 0..10 {
        saw_b |= hit(&c, addr, "/").await.json()["upstream"] == "b";
    }
    assert!(saw_b, "b is back in rotation");
}

#[tokio::test]
async fn circuit_opens_after_failures_then_half_opens() {
    let a = TestUpstream::start("a").await;
    a.fail_with(503);
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = ["{}"]
retries = {{ attempts = 0 }}
circuit_breaker = {{ consecutive_failures = 3, open_for = "300ms" }}"#,
        a.addr
    )))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    for _ in 0..3 {
        let r = hit(&c, addr, "/").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.text(),
            "failing on purpose",
            "the upstream's own 503 is passed on"
        );
    }
    let served = a.requests();
    let r = hit(&c, addr, "/").await;
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no healthy endpoint")
    );
    assert_eq!(
        a.requests(),
        served,
        "an open circuit sends nothing upstream"
    );

    a.fail_with(0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    // Half-open: one probe goes through, succeeds, and closes the circuit.
    assert_eq!(hit(&c, addr, "/").await.status, 200);
    for _ in 0..5 {
        assert_eq!(hit(&c, addr, "/").await.status, 200);
    }
}

#[tokio::test]
async fn failed_half_open_probe_reopens() {
    let a = TestUpstream::start("a").await;
    a.fail_with(502);
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = ["{}"]
retries = {{ attempts = 0 }}
circuit_breaker = {{ consecutive_failures = 2, open_for = "200ms" }}"#,
        a.addr
    )))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    hit(&c, addr, "/").await;
    hit(&c, addr, "/").await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = a.requests();
    assert_eq!(
        hit(&c, addr, "/").await.text(),
        "failing on purpose",
        "probe reaches the upstream"
    );
    assert_eq!(a.requests(), before + 1);
    let r = hit(&c, addr, "/").await;
    assert!(
        r.text().contains("no healthy endpoint"),
        "re-opened: {}",
        r.text()
    );
}

#[tokio::test]
async fn concurrent_load_over_pooled_connections() {
    let a = TestUpstream::start("a").await;
    let gw = TestGateway::start(&gw_toml(&format!(r#"endpoints = ["{}"]"#, a.addr))).await;
    let addr = gw.addr("web").await;
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..50 {
                if hit(&c, addr, "/").await.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 800);
}

/// An HTTP/1.1 upstream that answers each request with keep-alive, then
/// silently closes the connection 50 ms later, as an upstream with a short
/// idle timeout does. Returns its address and a counter of connections.
async fn closing_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropping the socket closes it: the pooled connection is stale.
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn a_stale_pooled_connection_is_replaced_without_an_error() {
    let (addr, conns) = closing_upstream().await;
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = ["{addr}"]
retries = {{ attempts = 0 }}"#
    )))
    .await;
    let front = gw.addr("web").await;
    let c = client();
    for i in 0..5 {
        let r = hit(&c, front, "/").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        5,
        "each request needed a new connection"
    );
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", &ck.cert.pem());
    let mut server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![ck.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap(),
    )
    .unwrap();
    server_cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let alpn = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body =
                            format!("tls {:?} {:?} {}", req.version(), alpn, req.uri().path());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    for (protocol, want) in [("http1", "HTTP/1.1"), ("http2", "HTTP/2.0")] {
        let toml = gw_toml(&format!(
            r#"endpoints = ["localhost:{}"]
protocol = "{protocol}"
tls = {{ ca = "{}" }}"#,
            up.port(),
            ca.display()
        ));
        let gw = TestGateway::start(&toml).await;
        let r = get(gw.addr("web").await, "/secure").await;
        assert_eq!(r.status, 200, "{protocol}: {}", r.text());
        assert!(
            r.text().starts_with(&format!("tls {want}")),
            "{protocol}: {}",
            r.text()
        );
        assert!(r.text().ends_with("/secure"));
    }
    // A certificate the gateway does not trust is a 502, not a success.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let wrong = dir.write("wrong.pem", &other.cert.pem());
    let gw = TestGateway::start(&gw_toml(&format!(
        r#"endpoints = ["localhost:{}"]
tls = {{ ca = "{}" }}
retries = {{ attempts = 0 }}"#,
        up.port(),
        wrong.display()
    )))
    .await;
    assert_eq!(get(gw.addr("web").await, "/").await.status, 502);
}
