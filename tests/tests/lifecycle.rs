//! Lifecycle: hot reload (file watcher and explicit) under load, a bad
//! config refused while the old one serves, listeners opened and closed with
//! their frontends, and graceful shutdown.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use transom_tests::*;

fn config(a: &TestUpstream, b: &TestUpstream, extra_route: &str) -> String {
    format!(
        r#"
[upstreams.a]
endpoints = ["{}"]
[upstreams.b]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
match = {{ path_prefix = "/a" }}
upstream = "a"
{extra_route}
"#,
        a.addr, b.addr
    )
}

const ROUTE_B: &str = r#"
[[frontends.web.routes]]
match = { path_prefix = "/b" }
upstream = "b"
"#;

/// Hammer `/a` from 4 tasks until `stop`; returns (ok, failed).
fn client_loop(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::SeqCst) {
                    let req = request("GET", addr, "/a")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match send(&c, req).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reloads_under_load_without_a_failed_request() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&config(&a, &b, "")).await;
    transom::reload::watch(Arc::downgrade(&gw.gw)).unwrap();
    let addr = gw.addr("web").await;
    assert_eq!(get(addr, "/b").await.status, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = Instant::now();
    gw.dir.write("transom.toml", &config(&a, &b, ROUTE_B));
    let live = eventually(Duration::from_secs(3), || async {
        get(addr, "/b").await.status == 200
    })
    .await;
    let took = written.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();

    assert!(live, "the new route never went live");
    assert!(took < Duration::from_secs(2), "reload took {took:?}");
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the reload ({ok} ok)"
    );
    assert!(ok > 50, "the client loop ran ({ok} requests)");
    assert_eq!(gw.addr("web").await, addr, "the listener kept its socket");
    let m = gw.gw.metrics().encode();
    assert!(
        m.contains("transom_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn invalid_config_is_rejected_and_the_old_one_keeps_serving() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&config(&a, &b, "")).await;
    let addr = gw.addr("web").await;

    // A reference to an upstream that does not exist.
    let broken = config(&a, &b, ROUTE_B).replace("upstream = \"b\"", "upstream = \"nope\"");
    let err = gw.rewrite(&broken).await.unwrap_err().to_string();
    assert!(
        err.contains("transom.toml:")
            && err.contains("frontends.web.routes[1].upstream: unknown upstream \"nope\""),
        "{err}"
    );
    // A syntax error.
    let err = gw
        .rewrite("[frontends.web\nlisten = 1")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("transom.toml:1:"), "{err}");

    assert_eq!(get(addr, "/a").await.status, 200, "old config still serves");
    assert_eq!(get(addr, "/b").await.status, 404);
    let m = gw.gw.metrics().encode();
    assert!(
        m.contains("transom_config_reloads_total{result=\"failed\"} 2"),
        "{m}"
    );

    // Fixing the file makes the next reload succeed.
    assert!(gw.rewrite(&config(&a, &b, ROUTE_B)).await.unwrap());
    assert_eq!(get(addr, "/b").await.status, 200);
}

#[tokio::test]
async fn frontends_open_and_close_their_listeners() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&config(&a, &b, "")).await;
    let web = gw.addr("web").await;

    let with_mobile = format!(
        "{}\n[frontends.mobile]\nlisten = \"127.0.0.1:0\"\n[[frontends.mobile.routes]]\nupstream = \"b\"\n",
        config(&a, &b, "")
    );
    assert!(gw.rewrite(&with_mobile).await.unwrap());
    let mobile = gw.addr("mobile").await;
    assert_eq!(get(mobile, "/x").await.json()["upstream"], "b");
    assert_eq!(gw.addr("web").await, web, "web kept its listener");

    // Remove web: its port stops accepting.
    let only_mobile = format!(
        "[upstreams.b]\nendpoints = [\"{}\"]\n[frontends.mobile]\nlisten = \"127.0.0.1:0\"\n[[frontends.mobile.routes]]\nupstream = \"b\"\n",
        b.addr
    );
    assert!(gw.rewrite(&only_mobile).await.unwrap());
    assert!(
        eventually(Duration::from_secs(2), || async {
            tokio::net::TcpStream::connect(web).await.is_err()
        })
        .await,
        "web's listener was closed"
    );
    assert_eq!(get(gw.addr("mobile").await, "/x").await.status, 200);
    assert_eq!(gw.addr("mobile").await, mobile);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&format!(
        "[server]\nshutdown_grace = \"5s\"\n{}",
        config(&a, &b, "")
    ))
    .await;
    let addr = gw.addr("web").await;
    a.set_delay(600);
    let slow = tokio::spawn(async move { get(addr, "/a").await });
    let slow2 = tokio::spawn(async move {
        let r = request("GET", addr, "/a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&client(), r).await.map(|r| r.status)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    gw.gw.shutdown().await;
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request finished: {}", r.text());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "shutdown waited for it"
    );
    assert_eq!(slow2.await.unwrap().unwrap(), 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn grace_period_bounds_shutdown() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&format!(
        "[server]\nshutdown_grace = \"200ms\"\n{}",
        config(&a, &b, "")
    ))
    .await;
    let addr = gw.addr("web").await;
    let _stuck = tokio::spawn(async move {
        let r = request("GET", addr, "/a/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&client(), r).await
    });
    a.set_delay(10_000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    gw.gw.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
}
