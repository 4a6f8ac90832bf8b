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
