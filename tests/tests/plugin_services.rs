//! Host services through a real plugin: concurrent upstream batches, grants,
//! native JWT verification, shared counters and plugin-named metrics.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use transom_tests::*;

async fn gateway(
    ups: &[&TestUpstream],
    extra: &str,
    plugin_config: &str,
    grants: &str,
) -> TestGateway {
    let dir = TempDir::new();
    install_plugin(
        &dir.path().join("plugins"),
        "fixture_services",
        "services@1.0.0",
    );
    let mut upstreams = String::new();
    for u in ups {
        upstreams.push_str(&format!(
            "[upstreams.{}]\nendpoints = [\"{}\"]\n",
            u.name, u.addr
        ));
    }
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[plugins]
dir = "plugins"

{upstreams}
{extra}

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
upstream = "{first}"
plugins = [{{ name = "services", version = "1.0.0", timeout = "2s", config = {plugin_config}, {grants} }}]
"#,
        first = ups[0].name
    );
    let root = dir.write("transom.toml", &toml);
    TestGateway::start_in(dir, root)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_batch_of_upstream_calls_runs_concurrently() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let gw = gateway(
        &[&a, &b, &c],
        "",
        r#"{ mode = "batch", calls = [{ upstream = "a", path = "/sleep/200/x" }, { upstream = "b", path = "/sleep/200/y" }, { upstream = "c", path = "/sleep/200/z" }] }"#,
        r#"upstreams = ["a", "b", "c"]"#,
    )
    .await;
    let addr = gw.addr("web").await;
    get(addr, "/warm").await;
    let started = Instant::now();
    let r = get(addr, "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let body: serde_json::Value =
            serde_json::from_str(j["results"][i]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["upstream"], *name);
    }
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_millis(500),
        "three 200 ms calls took {took:?}: not concurrent"
    );
}

#[tokio::test]
async fn an_upstream_the_route_did_not_grant_cannot_be_called() {
    let open = TestUpstream::start("open").await;
    let secret = TestUpstream::start("secret").await;
    let gw = gateway(
        &[&open, &secret],
        "",
        r#"{ mode = "call", call = { upstream = "secret", path = "/" } }"#,
        r#"upstreams = ["open"]"#,
    )
    .await;
    let r = get(gw.addr("web").await, "/").await;
    assert!(
        r.json()["error"].as_str().unwrap().contains("not granted"),
        "{}",
        r.text()
    );
    assert_eq!(secret.requests(), 0, "no network request was made");
}

#[tokio::test]
async fn call_timeouts_and_failures_come_back_to_the_plugin() {
    let a = TestUpstream::start("a").await;
    let gw = gateway(
        &[&a],
        "",
        r#"{ mode = "batch", calls = [{ upstream = "a", path = "/sleep/1000", timeout_ms = 100 }, { upstream = "a", path = "/status/503" }] }"#,
        r#"upstreams = ["a"]"#,
    )
    .await;
    let started = Instant::now();
    let r = get(gw.addr("web").await, "/").await;
    assert!(started.elapsed() < Duration::from_millis(900));
    let j = r.json();
    assert_eq!(j["results"][0]["error"], "timed out");
    assert_eq!(j["results"][1]["status"], 503);
}

fn es256_keys(dir: &std::path::Path) -> (jsonwebtoken::EncodingKey, std::path::PathBuf) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = dir.join("es256.pub.pem");
    std::fs::write(&public, kp.public_key_pem()).unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    (enc, public)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn jwt_verification_runs_natively_in_the_host() {
    let up = TestUpstream::start("u").await;
    let keydir = TempDir::new();
    let (enc, public) = es256_keys(keydir.path());
    let otherdir = TempDir::new();
    let other = es256_keys(otherdir.path()).0;
    let gw = gateway(
        &[&up],
        &format!(
            "[keys.demo]\npem = \"{}\"\nalgorithms = [\"ES256\"]\nleeway = \"5s\"\n",
            public.display()
        ),
        r#"{ mode = "jwt", keys = "demo" }"#,
        r#"keys = ["demo"]"#,
    )
    .await;
    let addr = gw.addr("web").await;
    let sign = |claims: serde_json::Value, key: &jsonwebtoken::EncodingKey| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            key,
        )
        .unwrap()
    };
    let with = |token: String| async move {
        let req = request("GET", addr, "/me")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&client(), req).await.unwrap()
    };

    let good = sign(serde_json::json!({"sub": "alice", "exp": now() + 60}), &enc);
    let r = with(good.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-user-id"], "alice");

    let expired = sign(serde_json::json!({"sub": "alice", "exp": now() - 60}), &enc);
    let forged = sign(
        serde_json::json!({"sub": "alice", "exp": now() + 60}),
        &other,
    );
    let no_exp = sign(serde_json::json!({"sub": "alice"}), &enc);
    let mut tampered = good.clone();
    tampered.insert(good.find('.').unwrap() + 2, 'A');
    let alg_none = format!(
        "{}.{}.",
        base64url(r#"{"alg":"none","typ":"JWT"}"#),
        base64url(&format!(r#"{{"sub":"mallory","exp":{}}}"#, now() + 60))
    );
    for (name, token) in [
        ("expired", expired),
        ("forged", forged),
        ("no exp", no_exp),
        ("tampered", tampered),
        ("alg none", alg_none),
        ("garbage", "x.y.z".into()),
    ] {
        let r = with(token).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(up.requests(), 1, "only the good token reached the upstream");
}

fn base64url(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_key_set_not_granted_is_refused() {
    let up = TestUpstream::start("u").await;
    let keydir = TempDir::new();
    let (_enc, public) = es256_keys(keydir.path());
    let gw = gateway(
        &[&up],
        &format!(
            "[keys.demo]\npem = \"{}\"\nalgorithms = [\"ES256\"]\n",
            public.display()
        ),
        r#"{ mode = "jwt", keys = "demo" }"#,
        r#"keys = []"#,
    )
    .await;
    let r = get(gw.addr("web").await, "/").await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("not granted"));
}

#[tokio::test]
async fn shared_counters_limit_requests_and_metrics_are_exported() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &[&up],
        "",
        r#"{ mode = "counter", limit = 2, window_ms = 60000 }"#,
        "",
    )
    .await;
    let addr = gw.addr("web").await;
    assert_eq!(get(addr, "/").await.json()["headers"]["x-count"], "1");
    assert_eq!(get(addr, "/").await.json()["headers"]["x-count"], "2");
    let r = get(addr, "/").await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "retry-after {retry}");
    let m = get(gw.gw.admin_addr().unwrap(), "/metrics").await.text();
    assert!(
        m.contains("transom_plugin_metric_counter_total{plugin=\"services\",version=\"1.0.0\",name=\"requests\"} 3"),
        "{m}"
    );
}
