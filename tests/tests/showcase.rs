//! The BFF showcase (`examples/bff/`) end to end: its own config files and
//! real plugins, in front of the demo services on ephemeral ports. Every
//! flow the README shows is driven here over real sockets.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use transom::demo::{Kind, Knobs};
use transom_tests::*;

struct Showcase {
    gw: TestGateway,
    services: Vec<(Kind, Arc<Knobs>)>,
    web: SocketAddr,
    mobile: SocketAddr,
    partner: SocketAddr,
}

impl Showcase {
    async fn start() -> Showcase {
        let mut addrs = vec![
            ("127.0.0.1:9901".to_string(), "127.0.0.1:0".to_string()),
            ("127.0.0.1:8080".to_string(), "127.0.0.1:0".to_string()),
            ("127.0.0.1:8081".to_string(), "127.0.0.1:0".to_string()),
            ("127.0.0.1:8082".to_string(), "127.0.0.1:0".to_string()),
        ];
        let mut services = Vec::new();
        for s in transom::demo::SERVICES {
            let knobs = Arc::new(Knobs::default());
            let addr = transom::demo::spawn(s.kind, "127.0.0.1:0".parse().unwrap(), knobs.clone())
                .await
                .unwrap();
            addrs.push((s.addr.to_string(), addr.to_string()));
            services.push((s.kind, knobs));
        }
        let (dir, config) = example_copy("bff", &addrs);
        let gw = TestGateway::start_in(dir, config).await.unwrap();
        let (web, mobile, partner) = (
            gw.addr("web").await,
            gw.addr("mobile").await,
            gw.addr("partner").await,
        );
        Showcase {
            gw,
            services,
            web,
            mobile,
            partner,
        }
    }

    /// Latency and failure rate of every instance of `kind`.
    fn knobs(&self, kind: Kind, latency: Duration, failure_rate: f64) {
        for (k, knobs) in &self.services {
            if *k == kind {
                knobs.set_latency(latency);
                knobs.set_failure_rate(failure_rate);
            }
        }
    }
}

/// A token signed with the showcase's demo key, as `transom token --demo`.
fn token(sub: &str, aud: &str) -> String {
    let pem = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/bff/keys/demo-private.pem"),
    )
    .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("demo".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &h,
        &json!({"sub": sub, "aud": aud, "iss": "https://id.transom.example", "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = request(method, addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

async fn home(addr: SocketAddr, token: &str) -> Reply {
    call(
        addr,
        "GET",
        "/home",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn mobile_home_is_one_small_payload_and_web_gets_the_rich_one() {
    let s = Showcase::start().await;
    let m = home(s.mobile, &token("alice", "mobile")).await;
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.header("x-transom-partial"), None);
    let doc = m.json();
    // exactly what the app shows
    assert_eq!(
        doc["profile"],
        json!({"avatar_url": "https://img.example.com/avatars/alice.png", "id": "alice", "name": "Alice Martin", "tier": "gold"})
    );
    let orders = doc["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 3, "truncated to 3");
    assert_eq!(orders[0]["id"], "o-1001");
    assert_eq!(
        orders[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["id", "placed_at", "status", "total"]
    );
    let recs = doc["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 3);
    assert!(recs[0]["title"].is_string() && recs[0].get("score").is_none());
    // stage 2 fetched the products of the orders just returned
    let products = doc["products"].as_array().unwrap();
    assert!(
        products
            .iter()
            .any(|p| p["id"] == "p-1" && p["name"] == "Trail Shoes")
    );
    assert!(products.iter().all(|p| p.get("description").is_none()));

    let w = home(s.web, &token("alice", "web")).await;
    assert_eq!(w.status, 200, "{}", w.text());
    let rich = w.json();
    assert_eq!(rich["profile"]["email"], "alice@example.com");
    assert!(rich["orders"]["orders"].as_array().unwrap().len() > 3);
    assert!(rich["products"]["products"][0]["description"].is_string());
    assert!(
        w.body.len() > 3 * m.body.len(),
        "web {} bytes, mobile {} bytes",
        w.body.len(),
        m.body.len()
    );
    // A different user sees their own data: the identity comes from the token.
    let bob = home(s.mobile, &token("bob", "mobile")).await.json();
    assert_eq!(bob["profile"]["id"], "bob");
    let forged = call(
        s.mobile,
        "GET",
        "/home",
        &[
            (
                "authorization",
                &format!("Bearer {}", token("bob", "mobile")),
            ),
            ("x-user-id", "alice"),
        ],
    )
    .await;
    assert_eq!(
        forged.json()["profile"]["id"],
        "bob",
        "a client's x-user-id is ignored"
    );
}

#[tokio::test]
async fn the_three_calls_run_in_parallel_and_a_failing_optional_one_makes_the_answer_partial() {
    let s = Showcase::start().await;
    let mobile = token("alice", "mobile");
    // three services at 150 ms each: one round of latency, not three
    for k in [Kind::Users, Kind::Orders, Kind::Recommendations] {
        s.knobs(k, Duration::from_millis(150), 0.0);
    }
    let started = Instant::now();
    let r = home(s.mobile, &mobile).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took >= Duration::from_millis(150));
    assert!(
        took < Duration::from_millis(400),
        "took {took:?}: not parallel"
    );
    for k in [Kind::Users, Kind::Orders, Kind::Recommendations] {
        s.knobs(k, Duration::ZERO, 0.0);
    }

    // recommendations down: the home screen still comes, marked partial
    s.knobs(Kind::Recommendations, Duration::ZERO, 1.0);
    let r = home(s.mobile, &mobile).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-transom-partial"), Some("recommendations"));
    assert!(
        r.json().get("recommendations").is_none(),
        "null dropped by shape"
    );
    assert_eq!(r.json()["profile"]["id"], "alice");
    let w = home(s.web, &token("alice", "web")).await;
    assert_eq!(w.header("x-transom-partial"), Some("recommendations"));
    assert_eq!(w.json()["recommendations"], serde_json::Value::Null);

    // recommendations slow: cut at its 250 ms timeout, still partial
    s.knobs(Kind::Recommendations, Duration::from_secs(2), 0.0);
    let started = Instant::now();
    let r = home(s.mobile, &mobile).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-transom-partial"), Some("recommendations"));
    assert!(started.elapsed() < Duration::from_secs(1));
    s.knobs(Kind::Recommendations, Duration::ZERO, 0.0);

    // the profile is required: without it there is no home screen
    s.knobs(Kind::Users, Duration::ZERO, 1.0);
    let r = home(s.mobile, &mobile).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("profile"), "{}", r.text());
}

#[tokio::test]
async fn tokens_are_checked_per_frontend_and_browser_calls_get_cors() {
    let s = Showcase::start().await;
    // no token
    let r = call(s.mobile, "GET", "/home", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"transom\"")
    );
    // a mobile token is not a web token
    let r = home(s.web, &token("alice", "mobile")).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );

    // preflight from the browser app
    let r = call(
        s.web,
        "OPTIONS",
        "/home",
        &[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // from elsewhere: refused
    let r = call(
        s.web,
        "OPTIONS",
        "/home",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // the actual call, and a 401, both carry CORS headers so the app can read them
    let web = token("alice", "web");
    let auth = format!("Bearer {web}");
    let ok = call(
        s.web,
        "GET",
        "/home",
        &[
            ("origin", "https://app.transom.example"),
            ("authorization", &auth),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.transom.example")
    );
    let denied = call(
        s.web,
        "GET",
        "/home",
        &[("origin", "https://app.transom.example")],
    )
    .await;
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("access-control-allow-origin"),
        Some("https://app.transom.example")
    );
}

#[tokio::test]
async fn partners_get_two_contract_versions_side_by_side_under_a_strict_rate_limit() {
    let s = Showcase::start().await;
    let acme = format!("Bearer {}", token("acme", "partner"));
    let v1 = call(
        s.partner,
        "GET",
        "/v1/products/p-2",
        &[("authorization", &acme)],
    )
    .await;
    assert_eq!(v1.status, 200, "{}", v1.text());
    assert_eq!(v1.header("x-api-version"), Some("1"));
    assert_eq!(v1.json()["item"]["sku"], "p-2");
    assert!(v1.json()["item"]["price_cents"].is_i64());
    let v2 = call(
        s.partner,
        "GET",
        "/v2/products/p-2",
        &[("authorization", &acme)],
    )
    .await;
    assert_eq!(v2.header("x-api-version"), Some("2"));
    assert_eq!(v2.json()["data"]["id"], "p-2");
    assert_eq!(v2.json()["data"]["price"]["currency"], "EUR");
    assert!(
        v2.header("ratelimit-policy")
            .unwrap()
            .contains("\"per-second\";q=5;w=1")
    );

    // burst of 10 per partner (two spent above), shared by /v1 and /v2
    let mut statuses = Vec::new();
    for i in 0..12 {
        let path = if i % 2 == 0 {
            "/v1/products"
        } else {
            "/v2/products"
        };
        let r = call(s.partner, "GET", path, &[("authorization", &acme)]).await;
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
            assert!(r.header("ratelimit").unwrap().contains("r=0"));
        }
        statuses.push(r.status.as_u16());
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!((3..=5).contains(&limited), "{statuses:?}");
    assert_eq!(statuses[0], 200);
    assert_eq!(*statuses.last().unwrap(), 429);
    // another partner has its own bucket
    let globex = format!("Bearer {}", token("globex", "partner"));
    assert_eq!(
        call(
            s.partner,
            "GET",
            "/v2/products",
            &[("authorization", &globex)]
        )
        .await
        .status,
        200
    );
    // and no token is no entry
    assert_eq!(
        call(s.partner, "GET", "/v2/products", &[]).await.status,
        401
    );
}

#[tokio::test]
async fn a_broken_mobile_file_is_held_back_while_webs_change_goes_live() {
    let s = Showcase::start().await;
    let fe = s.gw.dir.path().join("frontends");
    // web's team opens its API to another browser origin...
    let web = std::fs::read_to_string(fe.join("web.toml"))
        .unwrap()
        .replace(
            "\"http://localhost:3000\", ",
            "\"http://localhost:3000\", \"https://new.example\", ",
        );
    std::fs::write(fe.join("web.toml"), web).unwrap();
    // ...while mobile's team saves a file with a syntax error
    let mobile = std::fs::read_to_string(fe.join("mobile.toml")).unwrap();
    std::fs::write(
        fe.join("mobile.toml"),
        mobile.replace("[frontends.mobile]", "[frontends.mobile"),
    )
    .unwrap();
    assert!(s.gw.gw.reload().await.unwrap());
    let r = call(
        s.web,
        "OPTIONS",
        "/api/products",
        &[
            ("origin", "https://new.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 204, "web's change is live");
    let m = home(s.mobile, &token("alice", "mobile")).await;
    assert_eq!(m.status, 200, "mobile serves its last good config");
    assert_eq!(m.json()["orders"].as_array().unwrap().len(), 3);
}
