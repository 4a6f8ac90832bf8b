//! JWT authentication end to end: the real `jwt-auth` plugin with the
//! gateway's native verifier, against the attacks a token gateway must
//! refuse, and key sets fetched from an upstream (JWKS) with rotation.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use transom_tests::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

fn rsa(kid: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture(&format!("{kid}.pem"))).unwrap()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `s` with the character at `at` replaced by a different one.
fn flip(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://id.example", "aud": "mobile", "exp": now() + 300, "scope": "read write"})
}

fn sign(kid: Option<&str>, claims: &serde_json::Value, key: &EncodingKey) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

/// A token with a hand-made header, signed with `key` (RS256).
fn sign_raw(header: &serde_json::Value, claims: &serde_json::Value, key: &EncodingKey) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, Algorithm::RS256).unwrap();
    format!("{input}.{sig}")
}

const ROUTE: &str = r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "jwt-auth", version = "1.0.0", keys = ["idp"], config = { keys = "idp", issuer = "https://id.example", audience = "mobile", required_claims = ["sub"], claims_to_headers = { sub = "x-user-id", scope = "x-scope" } } }]
"#;

async fn gateway(up: &TestUpstream, keys: &str, extra_upstreams: &str) -> TestGateway {
    gateway_with_route(up, keys, extra_upstreams, ROUTE).await
}

async fn gateway_with_route(
    up: &TestUpstream,
    keys: &str,
    extra_upstreams: &str,
    route: &str,
) -> TestGateway {
    let dir = TempDir::new();
    install_plugin(&dir.path().join("plugins"), "jwt_auth", "jwt-auth@1.0.0");
    let root = dir.write(
        "transom.toml",
        &format!(
            r#"
[plugins]
dir = "plugins"

[upstreams.u]
endpoints = ["{}"]
{extra_upstreams}

[keys.idp]
{keys}

[frontends.web]
listen = "127.0.0.1:0"
{route}
"#,
            up.addr
        ),
    );
    TestGateway::start_in(dir, root).await.unwrap()
}

async fn with_token(addr: std::net::SocketAddr, token: &str, extra: &[(&str, &str)]) -> Reply {
    let mut b = request("GET", addr, "/me").header("authorization", format!("Bearer {token}"));
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn jwt_auth_accepts_good_tokens_and_refuses_every_known_attack() {
    let up = TestUpstream::start("u").await;
    // A server that would hand out an attacker's key: it must never be asked.
    let attacker = TestUpstream::start("attacker").await;
    attacker.set_document(
        "/jwks.json",
        &std::fs::read_to_string(fixture("jwks-k1-k2.json")).unwrap(),
    );
    let gw = gateway(
        &up,
        &format!(
            "pem = \"{}\"\nkid = \"k1\"\nalgorithms = [\"RS256\"]\nleeway = \"5s\"",
            fixture("k1.pub.pem").display()
        ),
        "",
    )
    .await;
    let addr = gw.addr("web").await;
    let k1 = rsa("k1");
    let k2 = rsa("k2");

    // good: forwarded with the identity headers, a client's own x-user-id dropped
    let good = sign(Some("k1"), &claims(), &k1);
    let r = with_token(addr, &good, &[("x-user-id", "mallory")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-user-id"], "alice");
    assert_eq!(r.json()["headers"]["x-scope"], "read write");
    // no kid is fine when the set has one key
    assert_eq!(
        with_token(addr, &sign(None, &claims(), &k1), &[])
            .await
            .status,
        200
    );

    // no token at all: a challenge without an error code (RFC 6750)
    let r = get(addr, "/me").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"transom\"")
    );

    let parts: Vec<&str> = good.split('.').collect();
    let (head, payload, sig) = (parts[0], parts[1], parts[2]);
    let with = |c: serde_json::Value| sign(Some("k1"), &c, &k1);
    let mut c = claims();
    c["exp"] = json!(now() - 60);
    let expired = with(c);
    let mut c = claims();
    c["nbf"] = json!(now() + 600);
    let not_yet = with(c);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    let no_exp = with(c);
    let mut c = claims();
    c["aud"] = json!("web");
    let wrong_aud = with(c);
    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    let wrong_iss = with(c);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    let no_sub = with(c);
    let mut c = claims();
    c["pad"] = json!("x".repeat(5000));
    let oversized = with(c);
    let tampered_payload = {
        let mut c = claims();
        c["sub"] = json!("root");
        format!("{head}.{}.{sig}", b64(c.to_string().as_bytes()))
    };
    let rs = |h: serde_json::Value| sign_raw(&h, &claims(), &k1);
    let alg_none = |alg: &str| {
        format!(
            "{}.{payload}.",
            b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes())
        )
    };
    // HS256 with the RSA public key as the HMAC secret (key confusion)
    let hs_with_public_key = {
        let secret = std::fs::read(fixture("k1.pub.pem")).unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap()
    };
    let jwk = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
    let jku = format!("http://{}/jwks.json", attacker.addr);
    let cases: Vec<(&str, String)> = vec![
        ("alg none", alg_none("none")),
        ("alg None", alg_none("None")),
        ("alg NONE", alg_none("NONE")),
        (
            "alg nOnE with a signature",
            format!(
                "{}.{payload}.{sig}",
                b64(json!({"alg": "nOnE"}).to_string().as_bytes())
            ),
        ),
        ("stripped signature", format!("{head}.{payload}.")),
        (
            "tampered signature",
            format!("{head}.{payload}.{}", flip(sig, 10)),
        ),
        ("tampered payload", tampered_payload),
        ("signed by another key", sign(Some("k1"), &claims(), &k2)),
        ("HS256 with the RSA public key", hs_with_public_key),
        (
            "embedded jwk",
            rs(json!({"alg": "RS256", "kid": "k1", "jwk": jwk})),
        ),
        ("jku", rs(json!({"alg": "RS256", "kid": "k1", "jku": jku}))),
        ("x5u", rs(json!({"alg": "RS256", "kid": "k1", "x5u": jku}))),
        ("kid outside the set", sign(Some("k2"), &claims(), &k2)),
        (
            "unknown crit",
            rs(json!({"alg": "RS256", "kid": "k1", "crit": ["exp"], "exp": 1})),
        ),
        ("expired", expired),
        ("not yet valid", not_yet),
        ("missing exp", no_exp),
        ("wrong aud", wrong_aud),
        ("wrong iss", wrong_iss),
        ("missing required claim", no_sub),
        ("oversized", oversized),
        ("two segments", format!("{head}.{payload}")),
        ("four segments", format!("{good}.{sig}")),
        ("bad characters", format!("{head}.{payload}.{sig}+/")),
        ("padded", format!("{head}=.{payload}.{sig}")),
        ("garbage", "not-a-token".into()),
    ];
    let before = up.requests();
    for (name, token) in &cases {
        let r = with_token(addr, token, &[]).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"transom\", error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        assert!(
            !r.text().contains(token.as_str()),
            "{name}: the token is echoed"
        );
    }
    assert_eq!(
        up.requests(),
        before,
        "no refused token reached the upstream"
    );
    assert_eq!(attacker.requests(), 0, "jku/x5u were never fetched");
}

#[tokio::test]
async fn all_zero_es256_signature_is_refused() {
    let up = TestUpstream::start("u").await;
    let keydir = TempDir::new();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = keydir.write("es.pub.pem", &kp.public_key_pem());
    let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let gw = gateway(
        &up,
        &format!("pem = \"{}\"\nalgorithms = [\"ES256\"]", public.display()),
        "",
    )
    .await;
    let addr = gw.addr("web").await;
    let good = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &enc).unwrap();
    assert_eq!(with_token(addr, &good, &[]).await.status, 200);
    let (input, _) = good.rsplit_once('.').unwrap();
    let zero = format!("{input}.{}", b64(&[0u8; 64]));
    let r = with_token(addr, &zero, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn jwks_from_an_upstream_is_cached_and_refreshed_on_a_new_kid_at_a_bounded_rate() {
    let up = TestUpstream::start("u").await;
    let idp = TestUpstream::start("idp").await;
    idp.set_document(
        "/.well-known/jwks.json",
        &std::fs::read_to_string(fixture("jwks-k1.json")).unwrap(),
    );
    let gw = gateway(
        &up,
        "jwks_from = { upstream = \"idp\", refresh = \"10m\", min_interval = \"1s\" }\nalgorithms = [\"RS256\"]",
        &format!("\n[upstreams.idp]\nendpoints = [\"{}\"]\n", idp.addr),
    )
    .await;
    let addr = gw.addr("web").await;
    let (k1, k2) = (rsa("k1"), rsa("k2"));

    // first use fetches, later ones use the cache
    for _ in 0..5 {
        assert_eq!(
            with_token(addr, &sign(Some("k1"), &claims(), &k1), &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(idp.requests(), 1, "fetched once, then cached");

    // The provider rotates k2 in. A token naming k2 triggers a refresh...
    idp.set_document(
        "/.well-known/jwks.json",
        &std::fs::read_to_string(fixture("jwks-k1-k2.json")).unwrap(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = with_token(addr, &sign(Some("k2"), &claims(), &k2), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.requests(), 2);

    // ...but unknown kids cannot make the gateway hammer the provider.
    for i in 0..10 {
        let r = with_token(addr, &sign(Some(&format!("nope-{i}")), &claims(), &k2), &[]).await;
        assert_eq!(r.status, 401);
    }
    assert!(idp.requests() <= 3, "{} JWKS fetches", idp.requests());
    // k1 and k2 both still verify
    assert_eq!(
        with_token(addr, &sign(Some("k1"), &claims(), &k1), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        with_token(addr, &sign(Some("k2"), &claims(), &k2), &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_route_that_does_not_grant_the_key_set_is_a_500_naming_the_plugin() {
    let up = TestUpstream::start("u").await;
    let gw = gateway_with_route(
        &up,
        &format!(
            "pem = \"{}\"\nalgorithms = [\"RS256\"]",
            fixture("k1.pub.pem").display()
        ),
        "",
        &ROUTE.replace(r#"keys = ["idp"], "#, ""),
    )
    .await;
    let addr = gw.addr("web").await;
    let r = with_token(addr, &sign(None, &claims(), &rsa("k1")), &[]).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("jwt-auth@1.0.0"), "{}", r.text());
    assert!(r.text().contains("not granted"), "{}", r.text());
    assert_eq!(up.requests(), 0);
}
