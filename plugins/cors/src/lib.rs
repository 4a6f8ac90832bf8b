//! `cors`: Cross-Origin Resource Sharing at the gateway, per route.
//!
//! - **Preflights** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) are answered here: `204` with the
//!   `Access-Control-Allow-*` headers when the origin, the method and every
//!   requested header are allowed, `403` with a JSON error naming what is not
//!   allowed otherwise. They never reach the upstream.
//! - **Actual requests** from an allowed origin get
//!   `Access-Control-Allow-Origin` (and `-Allow-Credentials`,
//!   `-Expose-Headers` when configured) on their response. Requests from
//!   other origins pass through without CORS headers, so the browser blocks
//!   the response.
//! - Every response that passes through gets `Vary: Origin` (appended to any
//!   `Vary` already there), so shared caches never serve one origin's answer
//!   to another.
//!
//! Put it first in the chain, so preflights (which carry no credentials) are
//! answered before authentication, and error answers of later plugins carry
//! CORS headers the browser needs to let the page read them.
//!
//! ```toml
//! plugins = [{ name = "cors", version = "1.0.0", config = {
//!     allow_origins = ["https://app.example.com", "https://*.example.com"],
//!     allow_methods = ["GET", "POST", "DELETE"],
//!     allow_headers = ["authorization", "content-type"],
//!     expose_headers = ["x-request-id"],
//!     allow_credentials = true,
//!     max_age = "1h",
//! } }]
//! ```
use std::cell::RefCell;

use serde::Deserialize;
use transom_plugin_sdk::{
    Action, Answer, Error, Plugin, Request, Response, export_plugin, parse_duration,
};

/// Longest `Origin` considered; longer ones are never allowed.
const MAX_ORIGIN: usize = 512;
/// Most header names a preflight may ask for.
const MAX_REQUEST_HEADERS: usize = 64;
/// Longest request value quoted back in a `403` error.
const MAX_QUOTED: usize = 100;
/// `Vary` of a preflight answer.
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// The plugin's per-route configuration (`config = { ... }`).
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Origins allowed: exact (`"https://app.example.com"`), any subdomain
    /// (`"https://*.example.com"`), or any origin (`"*"`).
    allow_origins: Vec<String>,
    /// Methods a preflight may ask for.
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (`"*"`: any, only without
    /// credentials).
    #[serde(default)]
    allow_headers: Vec<String>,
    /// Response headers the page may read (`"*"`: any, only without
    /// credentials).
    #[serde(default)]
    expose_headers: Vec<String>,
    /// Whether the browser may send cookies and read the answer to
    /// credentialed requests.
    #[serde(default)]
    allow_credentials: bool,
    /// How long browsers may cache a preflight answer, e.g. `"10m"`.
    #[serde(default = "default_max_age")]
    max_age: String,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn default_max_age() -> String {
    "10m".into()
}

/// One entry of `allow_origins`, normalised to lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    /// Exactly this origin.
    Exact(String),
    /// `scheme://*.suffix`: one or more labels followed by `.suffix`.
    Subdomains {
        /// `"https://"`.
        scheme: String,
        /// `".example.com"` (with the port, if any).
        suffix: String,
    },
}

impl OriginPattern {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => o == origin,
            OriginPattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|labels| {
                    labels.split('.').all(|label| {
                        !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
                }),
        }
    }
}

/// The configuration, checked and normalised.
#[derive(Debug)]
struct Policy {
    /// `"*"` is among the origins.
    any_origin: bool,
    origins: Vec<OriginPattern>,
    /// Upper case.
    methods: Vec<String>,
    /// `"*"` is among the request headers.
    any_header: bool,
    /// Lower case.
    headers: Vec<String>,
    expose: Vec<String>,
    credentials: bool,
    max_age_secs: u64,
}

fn bad(msg: String) -> Error {
    Error(format!("invalid cors config: {msg}"))
}

/// Whether `s` is a non-empty RFC 9110 token (methods, header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parse an `allow_origins` entry other than `"*"`.
fn parse_origin(raw: &str) -> Result<OriginPattern, Error> {
    let origin = raw.to_ascii_lowercase();
    let complain = |why: &str| {
        bad(format!(
            "allow_origins: {raw:?} {why} (write e.g. \"https://app.example.com\" or \"https://*.example.com\")"
        ))
    };
    if origin == "null" {
        return Err(complain(
            "is the opaque origin of sandboxed and file pages and cannot be trusted",
        ));
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(complain("has no scheme"));
    };
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(complain("has no valid scheme"));
    }
    let host = authority.strip_prefix("*.").unwrap_or(authority);
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(complain(
            "is not an origin: scheme://host[:port] only, no path, no trailing slash, `*` only as the first label",
        ));
    }
    Ok(if host.len() == authority.len() {
        OriginPattern::Exact(origin)
    } else {
        OriginPattern::Subdomains {
            scheme: format!("{scheme}://"),
            suffix: format!(".{host}"),
        }
    })
}

/// Parse a duration such as `"500ms"`, `"30s"`, `"10m"` or `"1h"` (see
/// [`transom_plugin_sdk::parse_duration`]) into whole seconds (rounded down).
fn parse_seconds(field: &str, raw: &str) -> Result<u64, Error> {
    parse_duration(raw)
        .map(|d| d.as_secs())
        .map_err(|e| bad(format!("{field}: {e}")))
}

impl Config {
    fn policy(self) -> Result<Policy, Error> {
        if self.allow_origins.is_empty() {
            return Err(bad("allow_origins must list at least one origin".into()));
        }
        let any_origin = self.allow_origins.iter().any(|o| o == "*");
        let origins = self
            .allow_origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| parse_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        let mut methods = Vec::with_capacity(self.allow_methods.len());
        for m in &self.allow_methods {
            if !is_token(m) || m == "*" {
                return Err(bad(format!(
                    "allow_methods: {m:?} is not a method (list them, e.g. [\"GET\", \"POST\"])"
                )));
            }
            methods.push(m.to_ascii_uppercase());
        }
        let header_list = |field: &str, list: &[String]| -> Result<(bool, Vec<String>), Error> {
            let mut names = Vec::with_capacity(list.len());
            let mut any = false;
            for h in list {
                if h == "*" {
                    any = true;
                } else if is_token(h) {
                    names.push(h.to_ascii_lowercase());
                } else {
                    return Err(bad(format!("{field}: {h:?} is not a header name")));
                }
            }
            Ok((any, names))
        };
        let (any_header, headers) = header_list("allow_headers", &self.allow_headers)?;
        let (any_expose, mut expose) = header_list("expose_headers", &self.expose_headers)?;
        if self.allow_credentials {
            for (field, wildcard) in [
                ("allow_origins", any_origin),
                ("allow_headers", any_header),
                ("expose_headers", any_expose),
            ] {
                if wildcard {
                    return Err(bad(format!(
                        "{field}: \"*\" cannot be used with allow_credentials = true (browsers refuse it); list the values"
                    )));
                }
            }
        }
        if any_expose {
            expose = vec!["*".into()];
        }
        Ok(Policy {
            any_origin,
            origins,
            methods,
            any_header,
            headers,
            expose,
            credentials: self.allow_credentials,
            max_age_secs: parse_seconds("max_age", &self.max_age)?,
        })
    }
}

impl Policy {
    /// The `Access-Control-Allow-Origin` to send to `origin`, if allowed.
    fn allow_origin(&self, origin: &str) -> Option<String> {
        if self.any_origin {
            // Credentials with "*" are refused by the config check.
            return Some("*".into());
        }
        if origin.len() > MAX_ORIGIN {
            return None;
        }
        let lower = origin.to_ascii_lowercase();
        self.origins
            .iter()
            .any(|p| p.matches(&lower))
            .then(|| origin.to_string())
    }

    /// The answer to a preflight.
    fn preflight(&self, origin: &str, method: &str, headers: Option<&str>) -> Answer {
        let Some(allow_origin) = self.allow_origin(origin) else {
            return deny(format!("origin {} is not allowed", quote(origin)));
        };
        if !self.methods.iter().any(|m| m == method) {
            return deny(format!("method {} is not allowed", quote(method)));
        }
        let mut requested: Vec<String> = Vec::new();
        for name in headers.unwrap_or_default().split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if requested.len() == MAX_REQUEST_HEADERS {
                return deny(format!(
                    "more than {MAX_REQUEST_HEADERS} request headers asked for"
                ));
            }
            let name = name.to_ascii_lowercase();
            if !is_token(&name) || !(self.any_header || self.headers.contains(&name)) {
                return deny(format!("request header {} is not allowed", quote(&name)));
            }
            requested.push(name);
        }

        let mut answer = Answer::new(204)
            .header("access-control-allow-origin", &allow_origin)
            .header("access-control-allow-methods", &self.methods.join(", "));
        if !requested.is_empty() {
            answer = answer.header("access-control-allow-headers", &requested.join(", "));
        }
        answer = answer.header("access-control-max-age", &self.max_age_secs.to_string());
        if self.credentials {
            answer = answer.header("access-control-allow-credentials", "true");
        }
        answer.header("vary", PREFLIGHT_VARY)
    }
}

/// A refused preflight: `403`, no CORS headers.
fn deny(error: String) -> Answer {
    Answer::json(403, &serde_json::json!({ "error": error })).header("vary", PREFLIGHT_VARY)
}

/// A request value for an error message, bounded.
fn quote(s: &str) -> String {
    let short: String = s.chars().take(MAX_QUOTED).collect();
    format!("{short:?}")
}

/// Append `token` to the response's `Vary`, unless it (or `*`) is there.
fn add_vary(resp: &mut Response, token: &str) -> Result<(), Error> {
    let existing: Vec<String> = resp
        .headers()
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("vary"))
        .map(|(_, v)| v)
        .collect();
    let tokens: Vec<&str> = existing
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens
        .iter()
        .any(|t| *t == "*" || t.eq_ignore_ascii_case(token))
    {
        return Ok(());
    }
    let mut vary = tokens.join(", ");
    if !vary.is_empty() {
        vary.push_str(", ");
    }
    vary.push_str(token);
    resp.set_header("vary", &vary)
}

thread_local! {
    /// The `Access-Control-Allow-Origin` decided in the request phase for
    /// the response phase (which cannot read the request); `None` when the
    /// response gets no CORS headers.
    static ALLOW_ORIGIN: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The plugin.
pub struct Cors;

impl Plugin for Cors {
    const ON_RESPONSE: bool = true;

    fn on_request(req: &mut Request) -> Result<Action, Error> {
        ALLOW_ORIGIN.with(|d| d.borrow_mut().take());
        let policy = transom_plugin_sdk::config::<Config>()?.policy()?;
        let Some(origin) = req.header("origin") else {
            return Ok(Action::Continue);
        };
        if req.method() == "OPTIONS"
            && let Some(method) = req.header("access-control-request-method")
        {
            let headers = req.header("access-control-request-headers");
            return Ok(Action::Respond(policy.preflight(
                &origin,
                &method,
                headers.as_deref(),
            )));
        }
        let allowed = policy.allow_origin(&origin);
        ALLOW_ORIGIN.with(|d| *d.borrow_mut() = allowed);
        Ok(Action::Continue)
    }

    fn on_response(resp: &mut Response) -> Result<(), Error> {
        let policy = transom_plugin_sdk::config::<Config>()?.policy()?;
        add_vary(resp, "Origin")?;
        let Some(allow_origin) = ALLOW_ORIGIN.with(|d| d.borrow_mut().take()) else {
            return Ok(());
        };
        resp.set_header("access-control-allow-origin", &allow_origin)?;
        if policy.credentials {
            resp.set_header("access-control-allow-credentials", "true")?;
        }
        if !policy.expose.is_empty() {
            resp.set_header("access-control-expose-headers", &policy.expose.join(", "))?;
        }
        Ok(())
    }
}

export_plugin!(Cors);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use transom_plugin_sdk::testing::TestHost;

    const APP: &str = "https://app.example.com";

    fn config() -> Value {
        json!({
            "allow_origins": [APP, "https://*.example.org"],
            "allow_methods": ["GET", "POST", "delete"],
            "allow_headers": ["Authorization", "content-type"],
            "expose_headers": ["x-request-id"],
            "max_age": "1h",
        })
    }

    fn preflight(config: &Value, origin: &str, method: &str, headers: Option<&str>) -> TestHost {
        let mut host = TestHost::new()
            .request("OPTIONS", "/api/orders")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .config(&config.to_string());
        if let Some(h) = headers {
            host = host.header("access-control-request-headers", h);
        }
        host
    }

    fn answer(host: &mut TestHost) -> Answer {
        match host.run_request::<Cors>() {
            Ok(Action::Respond(a)) => a,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn error(a: &Answer) -> String {
        let body: Value = serde_json::from_slice(&a.body).expect("JSON body");
        body["error"].as_str().expect("error string").to_string()
    }

    /// A `403` without any CORS header; its error.
    fn denied(host: &mut TestHost) -> String {
        let a = answer(host);
        assert_eq!(a.status, 403);
        assert!(
            a.headers
                .iter()
                .all(|(k, _)| !k.starts_with("access-control-")),
            "{:?}",
            a.headers
        );
        error(&a)
    }

    /// Run an actual request and then the response phase.
    fn actual(config: &Value, origin: Option<&str>, response: &[(&str, &str)]) -> TestHost {
        let mut host = TestHost::new()
            .request("GET", "/api/orders")
            .config(&config.to_string())
            .response(200, response, None);
        if let Some(o) = origin {
            host = host.header("origin", o);
        }
        assert_eq!(host.run_request::<Cors>(), Ok(Action::Continue));
        assert_eq!(host.run_response::<Cors>(), Ok(()));
        host
    }

    #[test]
    fn allowed_preflight_is_answered() {
        let mut h = preflight(
            &config(),
            APP,
            "DELETE",
            Some("content-type, Authorization"),
        );
        let a = answer(&mut h);
        assert_eq!(a.status, 204);
        assert!(a.body.is_empty());
        assert_eq!(a.header_value("access-control-allow-origin"), Some(APP));
        assert_eq!(
            a.header_value("access-control-allow-methods"),
            Some("GET, POST, DELETE")
        );
        assert_eq!(
            a.header_value("access-control-allow-headers"),
            Some("content-type, authorization")
        );
        assert_eq!(a.header_value("access-control-max-age"), Some("3600"));
        assert_eq!(a.header_value("access-control-allow-credentials"), None);
        assert_eq!(a.header_value("vary"), Some(PREFLIGHT_VARY));

        // No headers asked for: none listed.
        let a = answer(&mut preflight(&config(), APP, "GET", None));
        assert_eq!(a.status, 204);
        assert_eq!(a.header_value("access-control-allow-headers"), None);
    }

    #[test]
    fn preflight_with_a_disallowed_origin_is_refused() {
        let e = denied(&mut preflight(&config(), "https://evil.com", "GET", None));
        assert_eq!(e, r#"origin "https://evil.com" is not allowed"#);
    }

    #[test]
    fn preflight_with_a_disallowed_method_is_refused() {
        let e = denied(&mut preflight(&config(), APP, "PUT", None));
        assert_eq!(e, r#"method "PUT" is not allowed"#);
        // Methods are case-sensitive, as browsers compare them.
        let e = denied(&mut preflight(&config(), APP, "delete", None));
        assert_eq!(e, r#"method "delete" is not allowed"#);
    }

    #[test]
    fn preflight_with_a_disallowed_header_is_refused() {
        let e = denied(&mut preflight(
            &config(),
            APP,
            "GET",
            Some("content-type,x-debug"),
        ));
        assert_eq!(e, r#"request header "x-debug" is not allowed"#);
        let many = vec!["content-type"; MAX_REQUEST_HEADERS + 1].join(",");
        let e = denied(&mut preflight(&config(), APP, "GET", Some(&many)));
        assert!(e.starts_with("more than"), "{e}");
    }

    #[test]
    fn wildcard_subdomains() {
        for origin in [
            "https://a.example.org",
            "https://a.b-c.example.org",
            "HTTPS://A.EXAMPLE.ORG",
        ] {
            let a = answer(&mut preflight(&config(), origin, "GET", None));
            assert_eq!(a.status, 204, "{origin}");
            assert_eq!(a.header_value("access-control-allow-origin"), Some(origin));
        }
        for origin in [
            "https://example.org",
            "https://evil-example.org",
            "https://example.org.evil.com",
            "https://a.example.org.evil.com",
            "https://a.example.org:8443",
            "http://a.example.org",
            "https://..example.org",
            "https://a..example.org",
            "https://evil.com/.example.org",
            "https://evil.com?.example.org",
            "https://user@a.example.org",
            "https://a_b.example.org",
            "null",
        ] {
            denied(&mut preflight(&config(), origin, "GET", None));
        }
    }

    #[test]
    fn exact_origins_match_exactly() {
        for origin in [
            "https://app.example.com.evil.com",
            "https://app.example.com:8443",
            "http://app.example.com",
            "https://evilapp.example.com",
        ] {
            denied(&mut preflight(&config(), origin, "GET", None));
        }
    }

    #[test]
    fn any_origin() {
        let config = json!({"allow_origins": ["*"], "allow_headers": ["*"]});
        let a = answer(&mut preflight(
            &config,
            "https://anyone.test",
            "POST",
            Some("x-a, x-b"),
        ));
        assert_eq!(a.status, 204);
        assert_eq!(a.header_value("access-control-allow-origin"), Some("*"));
        assert_eq!(
            a.header_value("access-control-allow-headers"),
            Some("x-a, x-b")
        );
        assert_eq!(
            a.header_value("access-control-allow-methods"),
            Some("GET, HEAD, POST")
        );
        assert_eq!(a.header_value("access-control-max-age"), Some("600"));

        let h = actual(&config, Some("https://anyone.test"), &[]);
        assert_eq!(
            h.response.header("access-control-allow-origin").as_deref(),
            Some("*")
        );
        assert_eq!(h.response.header("access-control-allow-credentials"), None);
    }

    #[test]
    fn credentials() {
        let mut config = config();
        config["allow_credentials"] = json!(true);
        let a = answer(&mut preflight(&config, APP, "POST", None));
        assert_eq!(a.header_value("access-control-allow-origin"), Some(APP));
        assert_eq!(
            a.header_value("access-control-allow-credentials"),
            Some("true")
        );

        let h = actual(&config, Some(APP), &[]);
        assert_eq!(
            h.response.header("access-control-allow-origin").as_deref(),
            Some(APP)
        );
        assert_eq!(
            h.response
                .header("access-control-allow-credentials")
                .as_deref(),
            Some("true")
        );
    }

    #[test]
    fn actual_request_from_an_allowed_origin() {
        let h = actual(
            &config(),
            Some(APP),
            &[
                ("vary", "Accept-Encoding"),
                ("access-control-allow-origin", "*"),
            ],
        );
        let r = &h.response;
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some(APP)
        );
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k == "access-control-allow-origin")
                .count(),
            1,
            "the upstream's value is replaced"
        );
        assert_eq!(
            r.header("access-control-expose-headers").as_deref(),
            Some("x-request-id")
        );
        assert_eq!(r.header("access-control-allow-credentials"), None);
        assert_eq!(r.header("vary").as_deref(), Some("Accept-Encoding, Origin"));
    }

    #[test]
    fn vary_is_not_duplicated() {
        for (upstream, expected) in [
            (vec![("vary", "origin")], "origin"),
            (vec![("vary", "Accept, Origin")], "Accept, Origin"),
            (vec![("vary", "*")], "*"),
            (
                vec![("vary", "Accept"), ("vary", "Cookie")],
                "Accept, Cookie, Origin",
            ),
            (vec![], "Origin"),
        ] {
            let h = actual(&config(), Some(APP), &upstream);
            let values: Vec<&str> = h
                .response
                .headers
                .iter()
                .filter(|(k, _)| k == "vary")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(values, [expected], "{upstream:?}");
        }
    }

    #[test]
    fn actual_request_from_another_origin_gets_no_cors_headers() {
        let h = actual(&config(), Some("https://evil.com"), &[]);
        assert!(
            h.response
                .headers
                .iter()
                .all(|(k, _)| !k.starts_with("access-control-"))
        );
        assert_eq!(h.response.header("vary").as_deref(), Some("Origin"));
    }

    #[test]
    fn request_without_origin_gets_no_cors_headers() {
        let h = actual(&config(), None, &[("x-a", "1")]);
        assert_eq!(
            h.response.headers,
            [
                ("x-a".to_string(), "1".to_string()),
                ("vary".into(), "Origin".into())
            ]
        );
    }

    #[test]
    fn state_does_not_leak_between_requests() {
        // An allowed request, then one without Origin on the same instance.
        actual(&config(), Some(APP), &[]);
        let h = actual(&config(), None, &[]);
        assert_eq!(h.response.header("access-control-allow-origin"), None);
    }

    #[test]
    fn options_without_request_method_is_not_a_preflight() {
        let mut h = TestHost::new()
            .request("OPTIONS", "/api")
            .header("origin", APP)
            .config(&config().to_string());
        assert_eq!(h.run_request::<Cors>(), Ok(Action::Continue));
        assert_eq!(h.run_response::<Cors>(), Ok(()));
        assert_eq!(
            h.response.header("access-control-allow-origin").as_deref(),
            Some(APP)
        );

        // Without Origin either.
        let mut h = TestHost::new()
            .request("OPTIONS", "/api")
            .header("access-control-request-method", "GET")
            .config(&config().to_string());
        assert_eq!(h.run_request::<Cors>(), Ok(Action::Continue));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("f", "500ms"), Ok(0));
        assert_eq!(parse_seconds("f", "1500ms"), Ok(1));
        assert_eq!(parse_seconds("f", "30s"), Ok(30));
        assert_eq!(parse_seconds("f", "10m"), Ok(600));
        assert_eq!(parse_seconds("f", "2h"), Ok(7200));
        assert_eq!(parse_seconds("f", "1d"), Ok(86_400));
        assert_eq!(parse_seconds("f", "0s"), Ok(0));
        for bad in [
            "",
            "10",
            "m",
            "1.5h",
            "-1s",
            "10 m",
            "99999999999999999999h",
        ] {
            let e = parse_seconds("max_age", bad).expect_err(bad);
            assert!(e.0.contains("max_age"), "{e}");
        }
    }

    #[test]
    fn invalid_configs_are_errors() {
        for config in [
            json!({}),
            json!({"allow_origins": []}),
            json!({"allow_origins": [APP], "allow_methodz": []}),
            json!({"allow_origins": ["*"], "allow_credentials": true}),
            json!({"allow_origins": [APP], "allow_headers": ["*"], "allow_credentials": true}),
            json!({"allow_origins": [APP], "expose_headers": ["*"], "allow_credentials": true}),
            json!({"allow_origins": ["app.example.com"]}),
            json!({"allow_origins": ["https://app.example.com/"]}),
            json!({"allow_origins": ["https://app.example.com/path"]}),
            json!({"allow_origins": ["https://*"]}),
            json!({"allow_origins": ["https://a.*.example.com"]}),
            json!({"allow_origins": ["*.example.com"]}),
            json!({"allow_origins": ["null"]}),
            json!({"allow_origins": [APP], "allow_methods": ["*"]}),
            json!({"allow_origins": [APP], "allow_methods": ["GET POST"]}),
            json!({"allow_origins": [APP], "allow_headers": ["bad header"]}),
            json!({"allow_origins": [APP], "max_age": "ten minutes"}),
        ] {
            let mut h = preflight(&config, APP, "GET", None);
            let e = h.run_request::<Cors>().expect_err(&config.to_string());
            assert!(e.0.starts_with("invalid"), "{e}");
        }
        let e = TestHost::new()
            .config(r#"{"allow_origins": ["*"], "allow_credentials": true}"#)
            .run_request::<Cors>()
            .expect_err("wildcard with credentials");
        assert!(e.0.contains("allow_credentials"), "{e}");
    }
}
