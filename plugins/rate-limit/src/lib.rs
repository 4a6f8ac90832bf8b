//! `rate-limit`: token-bucket rate limiting on the gateway's shared buckets.
//!
//! Each configured limit is a token bucket holding up to `burst` tokens that
//! refills at `requests` per `per`. A request takes one token from every
//! limit at once, atomically ([`transom_plugin_sdk::take`]): either every
//! bucket has a token and all are spent, or the request is refused with
//! `429 Too Many Requests` and nothing is spent, so a request the per-second
//! limit refuses never eats into the hourly budget.
//!
//! Buckets live in the gateway and are shared by every instance of the
//! plugin, across requests and routes. A bucket is named
//! `{scope}/{limit name}/{key}`: the scope defaults to the route's name, and
//! the key says whom the bucket counts (the client's IP address, the whole
//! route, a request header such as an API key, or a claim of the bearer
//! token).
//!
//! ```toml
//! plugins = [{ name = "rate-limit", version = "1.0.0", config = {
//!     limits = [
//!         { name = "per-second", requests = 10, per = "1s", burst = 20 },
//!         { name = "hourly", requests = 1000, per = "1h" },
//!     ],
//!     key = { header = "x-user-id" },
//!     missing_key = "client-ip",
//! } }]
//! ```
//!
//! Refused requests get a JSON `429` with `Retry-After` and the IETF
//! `RateLimit-Policy` / `RateLimit` headers (structured-field form of
//! draft-ietf-httpapi-ratelimit-headers); allowed requests continue and, with
//! `headers = true` (the default), the response carries the same two headers.
//!
//! **`key = { claim = "..." }` does not verify the token.** It decodes the
//! payload of the `Authorization: Bearer` JWT without checking its signature,
//! so it is only meaningful after a plugin that verifies the token (such as
//! `jwt-auth`) earlier in the same chain; on its own, a client can put any
//! claim value it likes in an unsigned token and get a fresh bucket. Keying
//! on a header the verifying plugin sets from the claim (`jwt-auth`'s
//! `claims_to_headers`) is more robust still.
use std::time::Duration;

use serde_json::json;
use transom_plugin_sdk::{
    Action, Answer, Bucket, Error, Limit, Plugin, Request, export_plugin, parse_duration,
};

/// At most this many limits per plugin entry.
const MAX_LIMITS: usize = 8;
/// Longest limit name.
const MAX_NAME: usize = 64;
/// Key values (header or claim values, IP addresses) longer than this are
/// replaced by a hash, so bucket names stay bounded.
const MAX_KEY: usize = 128;
/// Longest `scope`.
const MAX_SCOPE: usize = 128;
/// Longest bearer token whose payload is decoded for `key = { claim }`.
const MAX_TOKEN: usize = 16 * 1024;
/// The gateway clamps a bucket's refill period to this range.
const MIN_PERIOD_MS: u128 = 1;
const MAX_PERIOD_MS: u128 = 30 * 24 * 3600 * 1000;

/// The route's `config = { ... }`, validated while it is parsed (so the
/// gateway caches the checked form).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "RawConfig")]
struct Config {
    limits: Vec<LimitSpec>,
    key: Key,
    missing_key: MissingKey,
    scope: Option<String>,
    headers: bool,
    /// The `RateLimit-Policy` header value, listing every limit.
    policy: String,
}

/// `config = { ... }` as written in the route.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The limits, all applied to every request (1 to 8).
    limits: Vec<RawLimit>,
    /// What a bucket counts: `"client-ip"` (default), `"route"`,
    /// `{ header = "NAME" }` or `{ claim = "NAME" }`.
    #[serde(default)]
    key: Key,
    /// What to do when the key's header or claim is missing: `"deny"`
    /// (default, answer 400) or `"client-ip"` (count by the client's IP).
    #[serde(default)]
    missing_key: MissingKey,
    /// Bucket namespace; defaults to the route's name. Routes that set the
    /// same scope share buckets.
    #[serde(default)]
    scope: Option<String>,
    /// Whether allowed responses carry `RateLimit-Policy` and `RateLimit`
    /// too (refusals always do). Default `true`.
    #[serde(default = "yes")]
    headers: bool,
}

fn yes() -> bool {
    true
}

/// One limit as written in the route.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    /// Unique name, `[a-z0-9_-]`, shown in headers and answers.
    name: String,
    /// Requests allowed per `per`: the refill rate.
    requests: u64,
    /// The window of `requests`, e.g. `"1s"`, `"10m"`, `"1h"`, `"1d"`.
    per: String,
    /// Bucket capacity: how many requests may come at once. Default `requests`.
    #[serde(default)]
    burst: Option<u64>,
}

/// A checked limit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LimitSpec {
    name: String,
    /// Bucket capacity (`burst`).
    capacity: u64,
    /// Time in which an empty bucket refills: `per * burst / requests`.
    period: Duration,
}

/// What a bucket counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum Key {
    /// The client's IP address (IPv6 clients by their /64 network).
    #[default]
    ClientIp,
    /// One bucket for the whole scope (route).
    Route,
    /// The value of this request header.
    Header(String),
    /// This claim of the (already verified) bearer token.
    Claim(String),
}

/// What to do when the key's source is missing from the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MissingKey {
    /// Answer 400 naming the missing header or claim.
    #[default]
    Deny,
    /// Count the request by the client's IP address instead.
    ClientIp,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        if raw.limits.is_empty() {
            return Err("limits: name at least one limit".into());
        }
        if raw.limits.len() > MAX_LIMITS {
            return Err(format!("limits: at most {MAX_LIMITS} limits"));
        }
        let mut limits: Vec<LimitSpec> = Vec::with_capacity(raw.limits.len());
        let mut policy = Vec::with_capacity(raw.limits.len());
        for (i, l) in raw.limits.iter().enumerate() {
            let at = format!("limits[{i}]");
            check_name(&l.name).map_err(|e| format!("{at}.name: {e}"))?;
            if limits.iter().any(|s| s.name == l.name) {
                return Err(format!("{at}.name: {:?} is used twice", l.name));
            }
            if l.requests == 0 {
                return Err(format!("{at}.requests: must be at least 1"));
            }
            let per_ms = parse_duration(&l.per)
                .and_then(|d| {
                    u64::try_from(d.as_millis())
                        .map_err(|_| format!("{:?} is too long to be a duration", l.per))
                })
                .map_err(|e| format!("{at}.per: {e}"))?;
            if per_ms == 0 {
                return Err(format!("{at}.per: must be longer than 0"));
            }
            let capacity = l.burst.unwrap_or(l.requests);
            if capacity == 0 {
                return Err(format!("{at}.burst: must be at least 1"));
            }
            // The bucket refills `capacity` tokens per `period`; choose the
            // period so that this is `requests` per `per`. The gateway
            // counts periods in whole milliseconds: round, and refuse limits
            // whose rate that rounding would change by more than 1%.
            let exact = u128::from(per_ms) * u128::from(capacity);
            let requests = u128::from(l.requests);
            let period_ms = (exact + requests / 2) / requests;
            if period_ms > MAX_PERIOD_MS {
                return Err(format!(
                    "{at}: the bucket would take more than 30 days to refill (per * burst / requests); lower burst or per"
                ));
            }
            if period_ms < MIN_PERIOD_MS || (period_ms * requests).abs_diff(exact) * 100 > exact {
                return Err(format!(
                    "{at}: burst {capacity} is too small for {} per {}: the bucket would refill in under a millisecond or not in whole milliseconds; raise burst",
                    l.requests, l.per
                ));
            }
            let period = Duration::from_millis(u64::try_from(period_ms).unwrap_or(u64::MAX));
            policy.push(policy_item(&l.name, l.requests, per_ms));
            limits.push(LimitSpec {
                name: l.name.clone(),
                capacity,
                period,
            });
        }
        match &raw.key {
            Key::Header(h) => check_header_name(h).map_err(|e| format!("key.header: {e}"))?,
            Key::Claim(c) if c.is_empty() || c.len() > MAX_NAME => {
                return Err(format!("key.claim: must be 1 to {MAX_NAME} characters"));
            }
            _ => {}
        }
        if let Some(s) = &raw.scope
            && (s.is_empty()
                || s.len() > MAX_SCOPE
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        {
            return Err(format!(
                "scope: {s:?} must be 1 to {MAX_SCOPE} of [A-Za-z0-9-_.:]"
            ));
        }
        let key = match raw.key {
            Key::Header(h) => Key::Header(h.to_ascii_lowercase()),
            k => k,
        };
        Ok(Config {
            limits,
            key,
            missing_key: raw.missing_key,
            scope: raw.scope,
            headers: raw.headers,
            policy: policy.join(", "),
        })
    }
}

/// One item of `RateLimit-Policy`: `"name";q=QUOTA;w=WINDOW`, the window
/// in whole seconds. A window that is not a whole number of seconds is
/// rounded up and the quota scaled down to match.
fn policy_item(name: &str, requests: u64, per_ms: u64) -> String {
    let w = u128::from(per_ms).div_ceil(1000).max(1);
    let q = if per_ms.is_multiple_of(1000) {
        u128::from(requests)
    } else {
        u128::from(requests) * w * 1000 / u128::from(per_ms)
    };
    format!("\"{name}\";q={q};w={w}")
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("must be 1 to {MAX_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!("{name:?} may only use [a-z0-9-_]"));
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), String> {
    const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~";
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TCHAR.contains(&b))
    {
        return Err(format!("{name:?} is not a header name"));
    }
    Ok(())
}

/// The plugin.
pub struct RateLimit;

impl Plugin for RateLimit {
    fn on_request(req: &mut Request) -> Result<Action, Error> {
        let cfg = transom_plugin_sdk::shared_config::<Config>()?;

        let key = match key_value(req, &cfg.key) {
            Some(k) => k,
            None if cfg.missing_key == MissingKey::ClientIp => client_ip_key(&req.client_ip()),
            None => return Ok(Action::Respond(missing_key_answer(&cfg.key))),
        };
        let scope = match &cfg.scope {
            Some(s) => s.clone(),
            None => escape_scope(&req.route()),
        };
        let limits: Vec<Limit> = cfg
            .limits
            .iter()
            .map(|l| Limit {
                key: format!("{scope}/{}/{key}", l.name),
                cost: 1,
                capacity: l.capacity,
                period: l.period,
            })
            .collect();
        let buckets = transom_plugin_sdk::take(&limits);
        if buckets.len() != limits.len() {
            return Err(Error(format!(
                "the gateway answered {} buckets for {} limits",
                buckets.len(),
                limits.len()
            )));
        }
        let states: Vec<(&LimitSpec, Bucket)> = cfg.limits.iter().zip(buckets).collect();

        // Refused: report the limit that keeps the client waiting longest.
        if let Some((spec, bucket)) = states
            .iter()
            .filter(|(_, b)| !b.allowed)
            .max_by_key(|(_, b)| b.retry_after)
        {
            transom_plugin_sdk::metric_counter("limited", 1);
            let retry = ceil_secs(bucket.retry_after).max(1);
            let answer = Answer::json(
                429,
                &json!({"error": "rate limit exceeded", "limit": spec.name}),
            )
            .header("retry-after", &retry.to_string())
            .header("ratelimit-policy", &cfg.policy)
            .header("ratelimit", &ratelimit_item(spec, bucket));
            return Ok(Action::Respond(answer));
        }

        // Allowed: the response reports the tightest limit (the gateway sets
        // the headers when it arrives; no response phase is needed).
        if cfg.headers
            && let Some((spec, bucket)) = states.iter().min_by(|(_, a), (_, b)| {
                a.remaining
                    .cmp(&b.remaining)
                    .then(b.full_in.cmp(&a.full_in))
            })
        {
            req.set_response_header("ratelimit-policy", &cfg.policy)?;
            req.set_response_header("ratelimit", &ratelimit_item(spec, bucket))?;
        }
        Ok(Action::Continue)
    }
}

export_plugin!(RateLimit);

/// `RateLimit: "name";r=REMAINING;t=SECONDS`, `t` being the whole seconds
/// (rounded up) until the bucket is full again.
fn ratelimit_item(spec: &LimitSpec, bucket: &Bucket) -> String {
    format!(
        "\"{}\";r={};t={}",
        spec.name,
        bucket.remaining,
        ceil_secs(bucket.full_in)
    )
}

fn ceil_secs(d: Duration) -> u128 {
    d.as_millis().div_ceil(1000)
}

/// The 400 answer for a request without the key's header or claim.
fn missing_key_answer(key: &Key) -> Answer {
    let body = match key {
        Key::Header(h) => json!({"error": "missing rate limit key", "header": h}),
        Key::Claim(c) => json!({"error": "missing rate limit key", "claim": c}),
        // Client IP and route keys are never missing.
        Key::ClientIp | Key::Route => json!({"error": "missing rate limit key"}),
    };
    Answer::json(400, &body)
}

/// This request's key value, prefixed by its kind (so a header value cannot
/// name the bucket of an IP address); `None` when the header or claim is
/// missing or empty.
fn key_value(req: &Request, key: &Key) -> Option<String> {
    match key {
        Key::ClientIp => Some(client_ip_key(&req.client_ip())),
        Key::Route => Some("route".into()),
        Key::Header(name) => {
            let v = req.header(name)?;
            (!v.is_empty()).then(|| bounded("header", &v))
        }
        Key::Claim(claim) => {
            let v = bearer_claim(req.header("authorization")?.as_str(), claim)?;
            Some(bounded("claim", &v))
        }
    }
}

/// The client-IP key: IPv4 addresses as they are (also when IPv4-mapped),
/// IPv6 addresses by their /64 network, since one client usually holds a
/// whole /64.
fn client_ip_key(ip: &str) -> String {
    use std::net::IpAddr;
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => format!("ip:{v4}"),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => bounded("ip", ip),
    }
}

/// `kind:value`, or `kind#HASH` when the value is longer than [`MAX_KEY`].
fn bounded(kind: &str, value: &str) -> String {
    if value.len() <= MAX_KEY {
        format!("{kind}:{value}")
    } else {
        format!("{kind}#{:032x}", fnv1a_128(value.as_bytes()))
    }
}

/// FNV-1a, 128 bits: enough to keep long keys apart (finding a collision
/// with someone's key needs that key in the first place).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// The route name as a scope: `%` and `/` escaped so that bucket names split
/// into scope, limit and key only one way.
fn escape_scope(route: &str) -> String {
    let mut out = String::with_capacity(route.len());
    for c in route.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// A claim of the bearer token in `authorization`, read from its payload
/// WITHOUT verifying the token: strings as they are, numbers as JSON
/// writes them; anything else (or a malformed token) counts as missing.
fn bearer_claim(authorization: &str, claim: &str) -> Option<String> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if token.len() > MAX_TOKEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    match claims.get(claim)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Decode unpadded (or padded) base64url; `None` on any other character.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover character carries fewer than 8 bits: not base64.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use transom_plugin_sdk::testing::TestHost;

    const T0: u64 = 1_700_000_000_000;

    /// Run the request phase; the answer if the plugin answered.
    fn answer(host: &mut TestHost) -> Option<Answer> {
        match host.run_request::<RateLimit>() {
            Ok(Action::Continue) => None,
            Ok(Action::Respond(a)) => Some(a),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn body(a: &Answer) -> serde_json::Value {
        serde_json::from_slice(&a.body).expect("JSON body")
    }

    fn config_error(config: &str) -> String {
        let mut host = TestHost::new().config(config);
        match host.run_request::<RateLimit>() {
            Err(e) => e.0,
            other => panic!("expected a config error for {config}, got {other:?}"),
        }
    }

    const PER_SECOND: &str =
        r#"{"limits": [{"name": "per-second", "requests": 2, "per": "1s", "burst": 3}]}"#;

    #[test]
    fn burst_then_refusal() {
        let mut host = TestHost::new().config(PER_SECOND);
        for _ in 0..3 {
            assert_eq!(answer(&mut host), None);
        }
        let a = answer(&mut host).expect("refused");
        assert_eq!(a.status, 429);
        assert_eq!(
            body(&a),
            json!({"error": "rate limit exceeded", "limit": "per-second"})
        );
        assert_eq!(a.header_value("content-type"), Some("application/json"));
        assert_eq!(host.metrics, vec![("limited".to_string(), 1.0)]);
    }

    #[test]
    fn refills_over_time() {
        let mut host = TestHost::new().config(PER_SECOND);
        for _ in 0..3 {
            assert_eq!(answer(&mut host), None);
        }
        assert!(answer(&mut host).is_some());
        // 2 per second: one token after 500 ms, not before.
        host.now_ms = T0 + 499;
        assert!(answer(&mut host).is_some());
        host.now_ms = T0 + 500;
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
        // After long enough the bucket is full again: the whole burst.
        host.now_ms = T0 + 60_000;
        for _ in 0..3 {
            assert_eq!(answer(&mut host), None);
        }
        assert!(answer(&mut host).is_some());
    }

    #[test]
    fn a_refused_request_spends_no_other_limit() {
        let config = r#"{"limits": [
            {"name": "per-second", "requests": 1, "per": "1s"},
            {"name": "hourly", "requests": 3, "per": "1h"}]}"#;
        let mut host = TestHost::new().config(config);
        assert_eq!(answer(&mut host), None);
        for _ in 0..5 {
            let a = answer(&mut host).expect("refused by the per-second limit");
            assert_eq!(body(&a)["limit"], "per-second");
        }
        // The hourly limit lost only the one allowed request.
        for i in 1..=2u64 {
            host.now_ms = T0 + i * 1000;
            assert_eq!(answer(&mut host), None);
        }
        host.now_ms = T0 + 3000;
        let a = answer(&mut host).expect("refused by the hourly limit");
        assert_eq!(body(&a)["limit"], "hourly");
        // One hourly token comes back every 20 minutes.
        assert_eq!(a.header_value("retry-after"), Some("1197"));
        assert_eq!(
            a.header_value("ratelimit-policy"),
            Some(r#""per-second";q=1;w=1, "hourly";q=3;w=3600"#)
        );
        assert_eq!(a.header_value("ratelimit"), Some(r#""hourly";r=0;t=3597"#));
    }

    #[test]
    fn refusal_headers() {
        let config = r#"{"limits": [{"name": "per-second", "requests": 10, "per": "1s"}]}"#;
        let mut host = TestHost::new().config(config);
        for _ in 0..10 {
            assert_eq!(answer(&mut host), None);
        }
        let a = answer(&mut host).expect("refused");
        // One token is 100 ms away: Retry-After rounds up to a whole second.
        assert_eq!(a.header_value("retry-after"), Some("1"));
        assert_eq!(
            a.header_value("ratelimit-policy"),
            Some(r#""per-second";q=10;w=1"#)
        );
        assert_eq!(a.header_value("ratelimit"), Some(r#""per-second";r=0;t=1"#));

        // 1 per 10 s: 4.5 s after the last request, 5.5 s remain → 6.
        let config = r#"{"limits": [{"name": "slow", "requests": 1, "per": "10s"}]}"#;
        let mut host = TestHost::new().config(config);
        assert_eq!(answer(&mut host), None);
        host.now_ms = T0 + 4500;
        let a = answer(&mut host).expect("refused");
        assert_eq!(a.header_value("retry-after"), Some("6"));
        assert_eq!(a.header_value("ratelimit"), Some(r#""slow";r=0;t=6"#));
    }

    #[test]
    fn responses_report_the_tightest_limit() {
        let config = r#"{"limits": [
            {"name": "per-second", "requests": 10, "per": "1s"},
            {"name": "per-minute", "requests": 3, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config);
        assert_eq!(answer(&mut host), None);
        assert_eq!(
            host.response.header("ratelimit-policy").as_deref(),
            Some(r#""per-second";q=10;w=1, "per-minute";q=3;w=60"#)
        );
        // per-minute: 2 left, full again in 20 s.
        assert_eq!(
            host.response.header("ratelimit").as_deref(),
            Some(r#""per-minute";r=2;t=20"#)
        );
    }

    #[test]
    fn response_headers_replace_the_upstreams_and_can_be_turned_off() {
        let mut host = TestHost::new().config(PER_SECOND).response(
            200,
            &[("RateLimit", "\"upstream\";r=1;t=1")],
            None,
        );
        assert_eq!(answer(&mut host), None);
        let values: Vec<_> = host
            .response
            .headers
            .iter()
            .filter(|(k, _)| k == "ratelimit")
            .collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].1, r#""per-second";r=2;t=1"#);

        let config = r#"{"headers": false, "limits": [{"name": "a", "requests": 2, "per": "1s"}]}"#;
        let mut host = TestHost::new().config(config);
        assert_eq!(answer(&mut host), None);
        assert!(host.response.headers.is_empty());
    }

    #[test]
    fn client_ips_have_separate_buckets() {
        let config = r#"{"limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config);
        host.request.client_ip = "10.0.0.1".into();
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
        host.request.client_ip = "10.0.0.2".into();
        assert_eq!(answer(&mut host), None);
        // IPv6 clients count by /64; IPv4-mapped addresses as IPv4.
        host.request.client_ip = "2001:db8:1:2:aaaa::1".into();
        assert_eq!(answer(&mut host), None);
        host.request.client_ip = "2001:db8:1:2:bbbb::2".into();
        assert!(answer(&mut host).is_some());
        host.request.client_ip = "::ffff:10.0.0.1".into();
        assert!(answer(&mut host).is_some());
        assert!(host.buckets.contains_key("test/a/ip:10.0.0.1"));
        assert!(host.buckets.contains_key("test/a/ip:2001:db8:1:2::/64"));
    }

    #[test]
    fn header_keys_are_independent() {
        let config = r#"{"key": {"header": "X-Api-Key"},
            "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config).header("x-api-key", "k1");
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
        host.request.headers = vec![("x-api-key".into(), "k2".into())];
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
        // Same key from another IP: same bucket.
        host.request.client_ip = "10.9.9.9".into();
        assert!(answer(&mut host).is_some());
        assert!(host.buckets.contains_key("test/a/header:k1"));
        assert!(host.buckets.contains_key("test/a/header:k2"));
    }

    #[test]
    fn long_key_values_are_hashed() {
        let config = r#"{"key": {"header": "x-api-key"},
            "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let long_a = "a".repeat(1000);
        let long_b = format!("{}b", "a".repeat(999));
        let mut host = TestHost::new().config(config).header("x-api-key", &long_a);
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
        host.request.headers = vec![("x-api-key".into(), long_b)];
        assert_eq!(answer(&mut host), None);
        assert_eq!(host.buckets.len(), 2);
        for key in host.buckets.keys() {
            assert!(key.len() < 64, "{key} is bounded");
            assert!(key.starts_with("test/a/header#"), "{key}");
        }
    }

    #[test]
    fn route_key_is_one_bucket_for_everyone() {
        let config = r#"{"key": "route", "limits": [{"name": "a", "requests": 2, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config);
        host.request.client_ip = "10.0.0.1".into();
        assert_eq!(answer(&mut host), None);
        host.request.client_ip = "10.0.0.2".into();
        assert_eq!(answer(&mut host), None);
        host.request.client_ip = "10.0.0.3".into();
        assert!(answer(&mut host).is_some());
        assert_eq!(
            host.buckets.keys().collect::<Vec<_>>(),
            vec!["test/a/route"]
        );
        // Another route has buckets of its own...
        host.request.route = "other".into();
        assert_eq!(answer(&mut host), None);
    }

    #[test]
    fn scope_shares_buckets_between_routes() {
        let config = r#"{"key": "route", "scope": "shared",
            "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config);
        host.request.route = "one".into();
        assert_eq!(answer(&mut host), None);
        host.request.route = "two".into();
        assert!(answer(&mut host).is_some());
        assert!(host.buckets.contains_key("shared/a/route"));
    }

    #[test]
    fn route_names_are_escaped_in_bucket_names() {
        let config = r#"{"key": "route", "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config);
        host.request.route = "api/v1%".into();
        assert_eq!(answer(&mut host), None);
        assert!(host.buckets.contains_key("api%2Fv1%25/a/route"));
    }

    /// An unsigned JWT carrying `claims` (the plugin does not verify it).
    fn jwt(claims: &serde_json::Value) -> String {
        let enc = |bytes: &[u8]| {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        };
        format!(
            "{}.{}.sig",
            enc(br#"{"alg":"none"}"#),
            enc(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn claim_key_reads_the_bearer_token() {
        let config = r#"{"key": {"claim": "sub"},
            "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let alice = format!("Bearer {}", jwt(&json!({"sub": "alice", "x": "ü?>"})));
        let bob = format!("bearer {}", jwt(&json!({"sub": "bob"})));
        let number = format!("Bearer {}", jwt(&json!({"sub": 42})));
        let mut host = TestHost::new()
            .config(config)
            .header("authorization", &alice);
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
        host.request.headers = vec![("authorization".into(), bob)];
        assert_eq!(answer(&mut host), None);
        host.request.headers = vec![("authorization".into(), number)];
        assert_eq!(answer(&mut host), None);
        let mut keys: Vec<_> = host.buckets.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec!["test/a/claim:42", "test/a/claim:alice", "test/a/claim:bob"]
        );
    }

    #[test]
    fn missing_header_is_denied_by_default() {
        let config = r#"{"key": {"header": "x-api-key"},
            "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config);
        let a = answer(&mut host).expect("denied");
        assert_eq!(a.status, 400);
        assert_eq!(
            body(&a),
            json!({"error": "missing rate limit key", "header": "x-api-key"})
        );
        assert!(host.buckets.is_empty(), "nothing taken");
        // An empty value is no key either.
        let mut host = host.header("x-api-key", "");
        assert_eq!(answer(&mut host).map(|a| a.status), Some(400));
    }

    #[test]
    fn missing_or_malformed_claim_is_denied() {
        let config = r#"{"key": {"claim": "sub"},
            "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let no_sub = format!("Bearer {}", jwt(&json!({"iss": "x"})));
        let object_sub = format!("Bearer {}", jwt(&json!({"sub": {"id": 1}})));
        for auth in [
            None,
            Some("Basic dXNlcjpwYXNz".to_string()),
            Some("Bearer not-a-jwt".to_string()),
            Some("Bearer a.!!!.c".to_string()),
            Some("Bearer a.bm90IGpzb24.c".to_string()),
            Some(no_sub),
            Some(object_sub),
        ] {
            let mut host = TestHost::new().config(config);
            if let Some(auth) = &auth {
                host = host.header("authorization", auth);
            }
            let a = answer(&mut host).unwrap_or_else(|| panic!("{auth:?} is denied"));
            assert_eq!(a.status, 400, "{auth:?}");
            assert_eq!(
                body(&a),
                json!({"error": "missing rate limit key", "claim": "sub"})
            );
        }
    }

    #[test]
    fn missing_key_can_fall_back_to_the_client_ip() {
        let config = r#"{"key": {"header": "x-api-key"}, "missing_key": "client-ip",
            "limits": [{"name": "a", "requests": 1, "per": "1m"}]}"#;
        let mut host = TestHost::new().config(config);
        host.request.client_ip = "10.0.0.1".into();
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
        // A header whose value looks like that IP has a bucket of its own.
        let mut host = host.header("x-api-key", "10.0.0.1");
        assert_eq!(answer(&mut host), None);
        assert!(host.buckets.contains_key("test/a/ip:10.0.0.1"));
        assert!(host.buckets.contains_key("test/a/header:10.0.0.1"));
    }

    #[test]
    fn burst_and_rate_make_the_bucket() {
        let raw = |s: &str| -> Config { serde_json::from_str(s).expect("valid config") };
        let cfg = raw(r#"{"limits": [{"name": "a", "requests": 10, "per": "1s", "burst": 20}]}"#);
        assert_eq!(cfg.limits[0].capacity, 20);
        assert_eq!(cfg.limits[0].period, Duration::from_secs(2));
        assert_eq!(cfg.policy, r#""a";q=10;w=1"#);
        let cfg = raw(r#"{"limits": [{"name": "a", "requests": 1000, "per": "1h"}]}"#);
        assert_eq!(cfg.limits[0].capacity, 1000);
        assert_eq!(cfg.limits[0].period, Duration::from_secs(3600));
        let cfg = raw(r#"{"limits": [{"name": "a", "requests": 24, "per": "1d"}]}"#);
        assert_eq!(cfg.limits[0].period, Duration::from_secs(86_400));
        assert_eq!(cfg.policy, r#""a";q=24;w=86400"#);
        // A window that is not whole seconds is rounded up, the quota scaled.
        let cfg = raw(r#"{"limits": [{"name": "a", "requests": 5, "per": "500ms"}]}"#);
        assert_eq!(cfg.policy, r#""a";q=10;w=1"#);
        let cfg = raw(r#"{"limits": [{"name": "a", "requests": 1, "per": "1500ms"}]}"#);
        assert_eq!(cfg.policy, r#""a";q=1;w=2"#);
        assert_eq!(cfg.key, Key::ClientIp);
        assert_eq!(cfg.missing_key, MissingKey::Deny);
        assert!(cfg.headers);
    }

    #[test]
    fn a_larger_burst_refills_at_the_configured_rate() {
        // 1 per second, burst 5: after the burst, one request per second.
        let config = r#"{"limits": [{"name": "a", "requests": 1, "per": "1s", "burst": 5}]}"#;
        let mut host = TestHost::new().config(config);
        for _ in 0..5 {
            assert_eq!(answer(&mut host), None);
        }
        assert!(answer(&mut host).is_some());
        host.now_ms = T0 + 1000;
        assert_eq!(answer(&mut host), None);
        assert!(answer(&mut host).is_some());
    }

    #[test]
    fn invalid_configs_are_errors() {
        let cases = [
            (r#"{}"#, "missing field `limits`"),
            (r#"{"limits": []}"#, "at least one limit"),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "1s"}, {"name": "a", "requests": 2, "per": "1m"}]}"#,
                "limits[1].name: \"a\" is used twice",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 0, "per": "1s"}]}"#,
                "limits[0].requests: must be at least 1",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "1s", "burst": 0}]}"#,
                "limits[0].burst",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "1 second"}]}"#,
                "limits[0].per: \"1 second\" is not a duration",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "s"}]}"#,
                "limits[0].per",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "0s"}]}"#,
                "limits[0].per: must be longer than 0",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "99999999999999999999d"}]}"#,
                "limits[0].per",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "18446744073709551615s"}]}"#,
                "limits[0].per: \"18446744073709551615s\" is too long",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "1.5s"}]}"#,
                "limits[0].per: \"1.5s\" is not a duration",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "1S"}]}"#,
                "limits[0].per: \"1S\" is not a duration",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "365d"}]}"#,
                "more than 30 days",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 100000, "per": "1s", "burst": 1}]}"#,
                "burst 1 is too small",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 3000, "per": "1s", "burst": 2}]}"#,
                "burst 2 is too small",
            ),
            (
                r#"{"limits": [{"name": "Per Second", "requests": 1, "per": "1s"}]}"#,
                "limits[0].name",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "1s", "extra": 1}]}"#,
                "unknown field `extra`",
            ),
            (
                r#"{"limits": [{"name": "a", "requests": 1, "per": "1s"}, {"name": "b", "requests": 1, "per": "1s"}, {"name": "c", "requests": 1, "per": "1s"}, {"name": "d", "requests": 1, "per": "1s"}, {"name": "e", "requests": 1, "per": "1s"}, {"name": "f", "requests": 1, "per": "1s"}, {"name": "g", "requests": 1, "per": "1s"}, {"name": "h", "requests": 1, "per": "1s"}, {"name": "i", "requests": 1, "per": "1s"}]}"#,
                "at most 8 limits",
            ),
            (
                r#"{"key": "header", "limits": [{"name": "a", "requests": 1, "per": "1s"}]}"#,
                "expected newtype variant",
            ),
            (
                r#"{"key": {"header": "x", "claim": "y"}, "limits": [{"name": "a", "requests": 1, "per": "1s"}]}"#,
                "invalid plugin config",
            ),
            (
                r#"{"key": {"header": "bad header"}, "limits": [{"name": "a", "requests": 1, "per": "1s"}]}"#,
                "key.header",
            ),
            (
                r#"{"key": {"claim": ""}, "limits": [{"name": "a", "requests": 1, "per": "1s"}]}"#,
                "key.claim",
            ),
            (
                r#"{"key": "user", "limits": [{"name": "a", "requests": 1, "per": "1s"}]}"#,
                "unknown variant `user`",
            ),
            (
                r#"{"missing_key": "allow", "limits": [{"name": "a", "requests": 1, "per": "1s"}]}"#,
                "unknown variant `allow`",
            ),
            (
                r#"{"scope": "a/b", "limits": [{"name": "a", "requests": 1, "per": "1s"}]}"#,
                "scope",
            ),
        ];
        for (config, want) in cases {
            let err = config_error(config);
            assert!(
                err.contains(want),
                "config {config}: error {err:?} should mention {want:?}"
            );
        }
    }

    #[test]
    fn documented_configs_are_valid() {
        for config in [
            json!({"key": {"header": "x-user-id"}, "missing_key": "client-ip", "limits": [
                {"name": "per-second", "requests": 10, "per": "1s", "burst": 20},
                {"name": "hourly", "requests": 1000, "per": "1h"}]}),
            json!({"key": {"claim": "sub"}, "limits": [{"name": "per-minute", "requests": 60, "per": "1m"}]}),
            json!({"key": "route", "scope": "legacy-backend", "limits": [{"name": "global", "requests": 500, "per": "1s"}]}),
        ] {
            let parsed: Result<Config, _> = serde_json::from_value(config.clone());
            assert!(parsed.is_ok(), "{config}: {:?}", parsed.err());
        }
    }

    #[test]
    fn base64url() {
        assert_eq!(base64url_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64url_decode("Zg").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64url_decode("Zm8").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64url_decode("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(base64url_decode("Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url_decode("Z"), None);
        assert_eq!(base64url_decode("Zm+v"), None);
    }
}
