//! `jwt-auth`: authenticate requests with a JSON Web Token.
//!
//! The token is taken from the first configured source that carries one (by
//! default the `Authorization: Bearer …` header), checked for shape and size
//! locally, then verified natively by the gateway with the key set the route
//! grants ([`transom_plugin_sdk::verify_jwt`]: signature, pinned algorithm,
//! `kid`, `exp`/`nbf` with leeway, and refusal of `alg: none`, embedded keys
//! and unknown `crit`). This plugin then checks issuer, audience and required
//! claims, and copies chosen claims into request headers for the upstream.
//!
//! Headers that claims are copied into are always removed from what the
//! client sent first, on every request (also when authentication fails or
//! the claim is absent), so a client can never inject them.
//!
//! Failures answer `401` with a JSON body `{"error": "..."}` and a
//! `WWW-Authenticate: Bearer realm="…"` challenge (with
//! `error="invalid_token"` and a sanitised `error_description` when a token
//! was given but is not acceptable). The token itself never appears in
//! answers or logs.
//!
//! ```toml
//! plugins = [{ name = "jwt-auth", version = "1.0.0", keys = ["idp"], config = {
//!     keys = "idp",
//!     issuer = "https://idp.example.com/",
//!     audience = "orders-api",
//!     required_claims = ["sub"],
//!     claims_to_headers = { sub = "x-user-id", scope = "x-user-scopes" },
//! } }]
//! ```
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use transom_plugin_sdk::{
    Action, Answer, Error, Level, Plugin, Request, TokenError, export_plugin, is_managed_header,
};

/// Default for [`Config::max_token_bytes`].
const DEFAULT_MAX_TOKEN_BYTES: usize = 4096;
/// The largest `max_token_bytes` a configuration may ask for.
const MAX_TOKEN_BYTES_LIMIT: usize = 64 * 1024;
/// Longest `error_description` sent back, in bytes (it is ASCII).
const MAX_DESCRIPTION: usize = 100;
/// Headers that must not carry claims besides the gateway-managed ones
/// ([`is_managed_header`]): `host` routes the request, and the gateway strips
/// the hop-by-hop ones before the upstream would see them.
const NO_CLAIM_HEADERS: &[&str] = &["host", "keep-alive", "proxy-connection"];

/// The plugin's per-route configuration (`config = { ... }`).
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Key set to verify tokens with; the route must grant it (`keys = [...]`).
    keys: String,
    /// Where to look for the token, tried in order; the first source that
    /// carries one is used.
    #[serde(default = "default_from")]
    from: Vec<SourceConfig>,
    /// Accepted issuers: the `iss` claim must equal one of them.
    #[serde(default, deserialize_with = "string_or_list")]
    issuer: Option<Vec<String>>,
    /// Accepted audiences: the `aud` claim (a string or a list) must contain
    /// one of them.
    #[serde(default, deserialize_with = "string_or_list")]
    audience: Option<Vec<String>>,
    /// Claims that must be present and not `null`.
    #[serde(default)]
    required_claims: Vec<String>,
    /// Claim name → request header to copy its value into.
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    /// Longer tokens are refused before verification.
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    realm: String,
    /// Whether the token is forwarded to the upstream.
    #[serde(default = "default_true")]
    forward_token: bool,
    /// Whether requests without any token go on unauthenticated.
    #[serde(default)]
    optional: bool,
}

/// One entry of `from`, as written: exactly one of `header`, `cookie` or
/// `query` (and `prefix` only with `header`).
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct SourceConfig {
    /// A request header.
    header: Option<String>,
    /// For `header`: what precedes the token (matched case-insensitively).
    prefix: Option<String>,
    /// A cookie.
    cookie: Option<String>,
    /// A query parameter.
    query: Option<String>,
}

fn default_from() -> Vec<SourceConfig> {
    vec![SourceConfig {
        header: Some("authorization".into()),
        prefix: Some("Bearer ".into()),
        cookie: None,
        query: None,
    }]
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

fn default_realm() -> String {
    "transom".into()
}

fn default_true() -> bool {
    true
}

/// Deserialise `"a"` or `["a", "b"]` into a list (`null` is "not set").
fn string_or_list<'de, D>(d: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(vec![s.to_string()]))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(V)
}

/// Where a token comes from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A header (lower-case name) and the prefix before the token.
    Header { name: String, prefix: String },
    /// A cookie by name.
    Cookie(String),
    /// A query parameter by (decoded) name.
    Query(String),
}

impl Source {
    /// The request header this source reads, if any.
    fn header(&self) -> Option<&str> {
        match self {
            Source::Header { name, .. } => Some(name),
            Source::Cookie(_) => Some("cookie"),
            Source::Query(_) => None,
        }
    }
}

/// The configuration, checked and normalised.
struct Settings {
    keys: String,
    sources: Vec<Source>,
    issuers: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    required_claims: Vec<String>,
    /// (claim, lower-case header name).
    claim_headers: Vec<(String, String)>,
    max_token_bytes: usize,
    realm: String,
    forward_token: bool,
    optional: bool,
}

fn bad(msg: String) -> Error {
    Error(format!("invalid jwt-auth config: {msg}"))
}

/// Whether `s` is a non-empty RFC 9110 token (header names, cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` can go inside a quoted-string of `WWW-Authenticate` as is.
fn is_quotable(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

impl Config {
    fn validate(self) -> Result<Settings, Error> {
        if self.keys.trim().is_empty() {
            return Err(bad("`keys` must name a key set".into()));
        }
        if self.from.is_empty() {
            return Err(bad("`from` must list at least one token source".into()));
        }
        let mut sources = Vec::with_capacity(self.from.len());
        for (i, s) in self.from.into_iter().enumerate() {
            let source = match (s.header, s.cookie, s.query) {
                (Some(name), None, None) => {
                    if !is_token(&name) {
                        return Err(bad(format!(
                            "from[{i}].header {name:?} is not a header name"
                        )));
                    }
                    let prefix = s.prefix.unwrap_or_default();
                    if prefix.bytes().any(|b| b.is_ascii_control()) {
                        return Err(bad(format!("from[{i}].prefix has control characters")));
                    }
                    Source::Header {
                        name: name.to_ascii_lowercase(),
                        prefix,
                    }
                }
                (None, Some(_), None) | (None, None, Some(_)) if s.prefix.is_some() => {
                    return Err(bad(format!("from[{i}]: `prefix` goes only with `header`")));
                }
                (None, Some(name), None) => {
                    if !is_token(&name) {
                        return Err(bad(format!(
                            "from[{i}].cookie {name:?} is not a cookie name"
                        )));
                    }
                    Source::Cookie(name)
                }
                (None, None, Some(name)) => {
                    if name.is_empty() {
                        return Err(bad(format!("from[{i}].query must not be empty")));
                    }
                    Source::Query(name)
                }
                _ => {
                    return Err(bad(format!(
                        "from[{i}] must set exactly one of `header`, `cookie` or `query`"
                    )));
                }
            };
            sources.push(source);
        }
        for (field, list) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if list
                .as_ref()
                .is_some_and(|l| l.is_empty() || l.iter().any(String::is_empty))
            {
                return Err(bad(format!("`{field}` must not be empty")));
            }
        }
        if self.required_claims.iter().any(String::is_empty) {
            return Err(bad("`required_claims` has an empty name".into()));
        }
        let mut claim_headers: Vec<(String, String)> = Vec::new();
        for (claim, header) in self.claims_to_headers {
            let header = header.to_ascii_lowercase();
            if claim.is_empty() || !is_token(&header) {
                return Err(bad(format!(
                    "claims_to_headers: {claim:?} → {header:?} is not a claim and a header name"
                )));
            }
            if is_managed_header(&header) || NO_CLAIM_HEADERS.contains(&header.as_str()) {
                return Err(bad(format!(
                    "claims_to_headers: {header:?} cannot carry a claim"
                )));
            }
            if claim_headers.iter().any(|(_, h)| *h == header) {
                return Err(bad(format!(
                    "claims_to_headers: two claims map to {header:?}"
                )));
            }
            if sources.iter().any(|s| s.header() == Some(header.as_str())) {
                return Err(bad(format!(
                    "claims_to_headers: {header:?} is also a token source"
                )));
            }
            claim_headers.push((claim, header));
        }
        if self.max_token_bytes == 0 || self.max_token_bytes > MAX_TOKEN_BYTES_LIMIT {
            return Err(bad(format!(
                "`max_token_bytes` must be between 1 and {MAX_TOKEN_BYTES_LIMIT}"
            )));
        }
        if self.realm.is_empty() || !is_quotable(&self.realm) {
            return Err(bad(
                "`realm` must be non-empty printable ASCII without quotes or backslashes".into(),
            ));
        }
        Ok(Settings {
            keys: self.keys,
            sources,
            issuers: self.issuer,
            audiences: self.audience,
            required_claims: self.required_claims,
            claim_headers,
            max_token_bytes: self.max_token_bytes,
            realm: self.realm,
            forward_token: self.forward_token,
            optional: self.optional,
        })
    }
}

/// What looking for a token found.
enum Found {
    /// No source carries a token.
    Nothing,
    /// A token, and the index of the source it came from.
    Token(String, usize),
    /// A source carries more than one token: refused, as it is ambiguous
    /// which one the upstream would see.
    Ambiguous,
}

/// Strip `prefix` (case-insensitively) from a header value; the token after
/// it, without surrounding blanks, if any.
fn after_prefix(value: &str, prefix: &str) -> Option<String> {
    let head = value.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = value[prefix.len()..].trim_matches([' ', '\t']);
    (!rest.is_empty()).then(|| rest.to_string())
}

/// `(name, value)` of each `name=value` pair of the `Cookie` headers.
fn cookie_pairs(headers: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim(), value))
        })
}

/// Decode a `application/x-www-form-urlencoded` component; `None` when it
/// is not valid percent-encoded UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The query's `key=value` pairs, raw, with each key decoded.
fn query_pairs(query: &str) -> impl Iterator<Item = (Option<String>, &str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key), value, pair)
    })
}

fn find_token(req: &Request, sources: &[Source]) -> Found {
    let mut headers: Option<Vec<(String, String)>> = None;
    for (index, source) in sources.iter().enumerate() {
        let tokens: Vec<String> = match source {
            Source::Header { name, prefix } => headers
                .get_or_insert_with(|| req.headers())
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .filter_map(|(_, v)| after_prefix(v, prefix))
                .take(2)
                .collect(),
            Source::Cookie(name) => {
                // Browsers may send two cookies of one name (different
                // paths), most specific first: take the first.
                cookie_pairs(headers.get_or_insert_with(|| req.headers()))
                    .find(|(n, v)| n == name && !v.is_empty())
                    .map(|(_, v)| v.to_string())
                    .into_iter()
                    .collect()
            }
            Source::Query(name) => {
                let query = req.query().unwrap_or_default();
                query_pairs(&query)
                    .filter(|(k, v, _)| k.as_deref() == Some(name) && !v.is_empty())
                    // Undecodable values stay raw and fail the shape check.
                    .map(|(_, v, _)| form_decode(v).unwrap_or_else(|| v.to_string()))
                    .take(2)
                    .collect()
            }
        };
        let mut tokens = tokens.into_iter();
        match (tokens.next(), tokens.next()) {
            (None, _) => continue,
            (Some(token), None) => return Found::Token(token, index),
            (Some(_), Some(_)) => return Found::Ambiguous,
        }
    }
    Found::Nothing
}

/// Why a token is not accepted, as told to the client (never the token).
struct Invalid(String);

/// Local checks before the gateway is asked: size and JWS compact shape
/// (three non-empty unpadded base64url segments).
fn check_shape(token: &str, max: usize) -> Result<(), Invalid> {
    if token.len() > max {
        return Err(Invalid(format!("token is longer than {max} bytes")));
    }
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segments > 3 {
            break;
        }
        if segment.is_empty() {
            return Err(Invalid("malformed token: empty segment".into()));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Invalid(
                "malformed token: segments must be unpadded base64url".into(),
            ));
        }
    }
    if segments != 3 {
        return Err(Invalid(
            "malformed token: expected three dot-separated segments".into(),
        ));
    }
    Ok(())
}

/// Issuer, audience and required claims.
fn check_claims(claims: &Value, cfg: &Settings) -> Result<(), Invalid> {
    let Some(claims) = claims.as_object() else {
        return Err(Invalid("token claims are not a JSON object".into()));
    };
    if let Some(issuers) = &cfg.issuers {
        match claims.get("iss").and_then(Value::as_str) {
            None => return Err(Invalid("token has no issuer".into())),
            Some(iss) if !issuers.iter().any(|i| i == iss) => {
                return Err(Invalid("token issuer is not accepted".into()));
            }
            Some(_) => {}
        }
    }
    if let Some(audiences) = &cfg.audiences {
        let accepted = |a: &str| audiences.iter().any(|x| x == a);
        let ok = match claims.get("aud") {
            None | Some(Value::Null) => return Err(Invalid("token has no audience".into())),
            Some(Value::String(a)) => accepted(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
            Some(_) => false,
        };
        if !ok {
            return Err(Invalid("token audience is not accepted".into()));
        }
    }
    if let Some(missing) = cfg
        .required_claims
        .iter()
        .find(|c| claims.get(c.as_str()).is_none_or(Value::is_null))
    {
        return Err(Invalid(format!("token lacks required claim {missing}")));
    }
    Ok(())
}

/// A claim's value as a header value: strings as is, numbers and booleans
/// as text, lists of strings joined by spaces, anything else as compact
/// JSON. `None` for `null`.
fn header_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => Some(other.to_string()),
    }
}

/// The headers to set for the claims, all or nothing.
fn mapped_headers(claims: &Value, cfg: &Settings) -> Result<Vec<(String, String)>, Invalid> {
    let mut out = Vec::with_capacity(cfg.claim_headers.len());
    for (claim, header) in &cfg.claim_headers {
        let Some(value) = claims.get(claim.as_str()).and_then(header_value) else {
            continue;
        };
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(Invalid(format!(
                "claim {claim} has characters a header cannot carry"
            )));
        }
        out.push((header.clone(), value));
    }
    Ok(out)
}

/// Keep only what may go in a quoted `error_description`: printable ASCII
/// without quotes or backslashes, at most [`MAX_DESCRIPTION`] bytes.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => ' ',
        })
        .take(MAX_DESCRIPTION)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

/// A `401` for a request without a token (RFC 6750 §3.1: no error code).
fn missing(cfg: &Settings) -> Action {
    transom_plugin_sdk::metric_counter("rejected", 1);
    transom_plugin_sdk::log(Level::Debug, "rejected: no token");
    Action::Respond(
        Answer::json(401, &serde_json::json!({ "error": "missing token" })).header(
            "www-authenticate",
            &format!("Bearer realm=\"{}\"", cfg.realm),
        ),
    )
}

/// A `401` for a token that is not accepted.
fn invalid(cfg: &Settings, why: &str) -> Action {
    let description = sanitize(why);
    transom_plugin_sdk::metric_counter("rejected", 1);
    transom_plugin_sdk::log(Level::Debug, &format!("rejected: {description}"));
    Action::Respond(
        Answer::json(401, &serde_json::json!({ "error": description })).header(
            "www-authenticate",
            &format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{description}\"",
                cfg.realm
            ),
        ),
    )
}

/// Remove the token from where it was found, before forwarding.
fn strip_token(req: &mut Request, source: &Source) -> Result<(), Error> {
    match source {
        Source::Header { name, .. } => req.remove_header(name),
        Source::Cookie(name) => {
            let headers = req.headers();
            let kept: Vec<String> = headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                .flat_map(|(_, v)| v.split(';'))
                .map(str::trim)
                .filter(|pair| {
                    !pair.is_empty() && pair.split_once('=').is_none_or(|(n, _)| n.trim() != name)
                })
                .map(str::to_string)
                .collect();
            req.remove_header("cookie");
            if !kept.is_empty() {
                req.set_header("cookie", &kept.join("; "))?;
            }
        }
        Source::Query(name) => {
            let query = req.query().unwrap_or_default();
            let kept: Vec<&str> = query_pairs(&query)
                .filter(|(k, _, _)| k.as_deref() != Some(name))
                .map(|(_, _, raw)| raw)
                .collect();
            let rebuilt = kept.join("&");
            req.set_query((!rebuilt.is_empty()).then_some(rebuilt.as_str()))?;
        }
    }
    Ok(())
}

/// The plugin.
pub struct JwtAuth;

impl Plugin for JwtAuth {
    fn on_request(req: &mut Request) -> Result<Action, Error> {
        let cfg = transom_plugin_sdk::config::<Config>()?.validate()?;

        // Whatever happens next, the client's own copies of the claim
        // headers never reach the upstream.
        for (_, header) in &cfg.claim_headers {
            req.remove_header(header);
        }

        let (token, source) = match find_token(req, &cfg.sources) {
            Found::Nothing if cfg.optional => {
                transom_plugin_sdk::metric_counter("anonymous", 1);
                return Ok(Action::Continue);
            }
            Found::Nothing => return Ok(missing(&cfg)),
            Found::Ambiguous => return Ok(invalid(&cfg, "more than one token given")),
            Found::Token(token, index) => (token, index),
        };
        if let Err(Invalid(why)) = check_shape(&token, cfg.max_token_bytes) {
            return Ok(invalid(&cfg, &why));
        }
        let claims = match transom_plugin_sdk::verify_jwt(&token, &cfg.keys) {
            Ok(claims) => claims,
            // The route forgot `keys = [...]`: the operator's mistake, a 500
            // naming this plugin, not the client's 401.
            Err(TokenError::NotGranted(why)) => return Err(Error(why)),
            // Should the gateway ever quote the token, it is not passed on.
            Err(TokenError::Invalid(why)) => {
                return Ok(invalid(&cfg, &why.replace(token.as_str(), "[token]")));
            }
        };
        let headers = match check_claims(&claims, &cfg).and_then(|()| mapped_headers(&claims, &cfg))
        {
            Ok(headers) => headers,
            Err(Invalid(why)) => return Ok(invalid(&cfg, &why)),
        };
        for (name, value) in &headers {
            req.set_header(name, value)?;
        }
        if !cfg.forward_token
            && let Some(source) = cfg.sources.get(source)
        {
            strip_token(req, source)?;
        }
        transom_plugin_sdk::metric_counter("accepted", 1);
        Ok(Action::Continue)
    }
}

export_plugin!(JwtAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use transom_plugin_sdk::testing::TestHost;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    fn claims() -> Value {
        json!({
            "sub": "alice",
            "iss": "https://idp.example.com/",
            "aud": "orders",
            "scope": ["read", "write"],
            "admin": false,
            "level": 3,
            "org": {"id": 7},
        })
    }

    fn host(config: Value) -> TestHost {
        TestHost::new()
            .token(TOKEN, "idp", claims())
            .config(&config.to_string())
    }

    fn answer(host: &mut TestHost) -> Answer {
        match host.run_request::<JwtAuth>() {
            Ok(Action::Respond(a)) => a,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn error(a: &Answer) -> String {
        let body: Value = serde_json::from_slice(&a.body).expect("JSON body");
        body["error"].as_str().expect("error string").to_string()
    }

    fn metric(host: &TestHost, name: &str) -> usize {
        host.metrics.iter().filter(|(n, _)| n == name).count()
    }

    /// A 401 for a bad token; returns the error_description.
    fn assert_invalid(host: &mut TestHost) -> String {
        let a = answer(host);
        assert_eq!(a.status, 401);
        let challenge = a.header_value("www-authenticate").expect("challenge");
        assert!(
            challenge.starts_with(
                r#"Bearer realm="transom", error="invalid_token", error_description=""#
            ),
            "{challenge}"
        );
        assert!(!challenge.contains(TOKEN));
        assert!(!error(&a).contains(TOKEN));
        assert_eq!(metric(host, "rejected"), 1);
        assert_eq!(metric(host, "accepted"), 0);
        let start = challenge.find("error_description=\"").expect("description") + 19;
        let description = challenge[start..challenge.len() - 1].to_string();
        assert_eq!(error(&a), description, "the body says the same");
        description
    }

    #[test]
    fn valid_token_forwards_with_mapped_headers() {
        let mut host = host(json!({
            "keys": "idp",
            "issuer": "https://idp.example.com/",
            "audience": "orders",
            "required_claims": ["sub"],
            "claims_to_headers": {
                "sub": "X-User-Id", "scope": "x-scopes", "admin": "x-admin",
                "level": "x-level", "org": "x-org", "absent": "x-absent"
            }
        }))
        .header("authorization", &format!("Bearer {TOKEN}"));
        assert_eq!(host.run_request::<JwtAuth>(), Ok(Action::Continue));
        let r = &host.request;
        assert_eq!(r.header("x-user-id").as_deref(), Some("alice"));
        assert_eq!(r.header("x-scopes").as_deref(), Some("read write"));
        assert_eq!(r.header("x-admin").as_deref(), Some("false"));
        assert_eq!(r.header("x-level").as_deref(), Some("3"));
        assert_eq!(r.header("x-org").as_deref(), Some(r#"{"id":7}"#));
        assert_eq!(r.header("x-absent"), None);
        assert_eq!(r.header("authorization"), Some(format!("Bearer {TOKEN}")));
        assert_eq!(metric(&host, "accepted"), 1);
        assert_eq!(metric(&host, "rejected"), 0);
        assert!(host.logs.iter().all(|(_, l)| !l.contains(TOKEN)));
    }

    #[test]
    fn client_sent_mapped_headers_are_always_stripped() {
        let config =
            json!({"keys": "idp", "claims_to_headers": {"sub": "x-user-id", "nope": "x-role"}});
        // Valid token: replaced by the claim; absent claim: just removed.
        let mut h = host(config.clone())
            .header("x-user-id", "mallory")
            .header("X-Role", "admin")
            .header("authorization", &format!("Bearer {TOKEN}"));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(h.request.header("x-user-id").as_deref(), Some("alice"));
        assert_eq!(h.request.header("x-role"), None);
        assert_eq!(
            h.request
                .headers
                .iter()
                .filter(|(k, _)| k == "x-user-id")
                .count(),
            1
        );

        // Invalid token: rejected, and the header is gone all the same.
        let mut h = host(config.clone())
            .header("x-user-id", "mallory")
            .header("authorization", "Bearer a.b.c");
        assert_invalid(&mut h);
        assert_eq!(h.request.header("x-user-id"), None);

        // Optional mode without a token: goes on, stripped.
        let mut config = config;
        config["optional"] = json!(true);
        let mut h = host(config).header("x-user-id", "mallory");
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(h.request.header("x-user-id"), None);
        assert_eq!(metric(&h, "anonymous"), 1);
    }

    #[test]
    fn optional_mode_still_rejects_bad_tokens() {
        let mut h =
            host(json!({"keys": "idp", "optional": true})).header("authorization", "Bearer a.b.c");
        assert_invalid(&mut h);
    }

    #[test]
    fn missing_token_is_a_plain_challenge() {
        let mut h = host(json!({"keys": "idp", "realm": "orders"}));
        let a = answer(&mut h);
        assert_eq!(a.status, 401);
        assert_eq!(
            a.header_value("www-authenticate"),
            Some(r#"Bearer realm="orders""#)
        );
        assert_eq!(a.header_value("content-type"), Some("application/json"));
        assert_eq!(error(&a), "missing token");
        assert_eq!(metric(&h, "rejected"), 1);

        // Another scheme is not a bearer token either.
        let mut h = host(json!({"keys": "idp"})).header("authorization", "Basic dXNlcjpwdw==");
        let a = answer(&mut h);
        assert_eq!(
            a.header_value("www-authenticate"),
            Some(r#"Bearer realm="transom""#)
        );

        // Nor is an empty one.
        let mut h = host(json!({"keys": "idp"})).header("authorization", "Bearer   ");
        assert_eq!(error(&answer(&mut h)), "missing token");
    }

    #[test]
    fn malformed_tokens_are_refused_before_verification() {
        let cases = [
            "aaa.bbb",         // two segments
            "aaa.bbb.ccc.ddd", // four segments
            "aaa.b+b.ccc",     // not base64url
            "aaa.bbb.ccc=",    // padding
            "aaa..ccc",        // empty segment
            ".bbb.ccc",        // empty first segment
            "aaa.bbb.",        // empty last segment
            "aaa.bbb.c c",     // blank
            "aaa.bbb.cé",      // non-ASCII
        ];
        for token in cases {
            // The fake host would accept each of them: only the local check
            // can refuse.
            let mut h = TestHost::new()
                .token(token, "idp", claims())
                .config(r#"{"keys": "idp"}"#)
                .header("authorization", &format!("Bearer {token}"));
            let description = assert_invalid(&mut h);
            assert!(
                description.starts_with("malformed token"),
                "{token}: {description}"
            );
        }
    }

    #[test]
    fn oversized_tokens_are_refused_before_verification() {
        let long = format!("aaa.{}.ccc", "b".repeat(100));
        let mut h = TestHost::new()
            .token(&long, "idp", claims())
            .config(r#"{"keys": "idp", "max_token_bytes": 64}"#)
            .header("authorization", &format!("Bearer {long}"));
        assert_eq!(assert_invalid(&mut h), "token is longer than 64 bytes");

        // The default is 4096.
        let long = format!("aaa.{}.ccc", "b".repeat(4096));
        let mut h = TestHost::new()
            .token(&long, "idp", claims())
            .config(r#"{"keys": "idp"}"#)
            .header("authorization", &format!("Bearer {long}"));
        assert_eq!(assert_invalid(&mut h), "token is longer than 4096 bytes");
    }

    #[test]
    fn host_rejection_reason_is_the_description() {
        let mut h = host(json!({"keys": "idp"})).header("authorization", "Bearer aaa.bbb.ccc");
        let description = assert_invalid(&mut h);
        assert_eq!(description, "invalid token: unknown to the test host");

        // Quotes, control characters and length are tamed, and the token
        // itself is never echoed.
        let mut h =
            host(json!({"keys": "idp"})).header("authorization", &format!("Bearer {TOKEN}"));
        h.tokens.insert(
            (TOKEN.into(), "idp".into()),
            Err(format!("bad \"kid\"\\\r\n in {TOKEN} {}", "x".repeat(200))),
        );
        let description = assert_invalid(&mut h);
        assert!(
            description.starts_with("bad 'kid'/   in [token] xxx"),
            "{description}"
        );
        assert!(description.len() <= MAX_DESCRIPTION);
        assert!(is_quotable(&description));
    }

    #[test]
    fn issuer_must_match() {
        let bearer = format!("Bearer {TOKEN}");
        let mut h = host(json!({"keys": "idp", "issuer": "https://other.example.com/"}))
            .header("authorization", &bearer);
        assert_eq!(assert_invalid(&mut h), "token issuer is not accepted");

        let mut h =
            host(json!({"keys": "idp", "issuer": ["https://other/", "https://idp.example.com/"]}))
                .header("authorization", &bearer);
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));

        let mut h = TestHost::new()
            .token(TOKEN, "idp", json!({"sub": "a"}))
            .config(r#"{"keys": "idp", "issuer": "https://idp.example.com/"}"#)
            .header("authorization", &bearer);
        assert_eq!(assert_invalid(&mut h), "token has no issuer");
    }

    #[test]
    fn audience_must_match() {
        let bearer = format!("Bearer {TOKEN}");
        let mut h =
            host(json!({"keys": "idp", "audience": "billing"})).header("authorization", &bearer);
        assert_eq!(assert_invalid(&mut h), "token audience is not accepted");

        let mut h = host(json!({"keys": "idp", "audience": ["billing", "orders"]}))
            .header("authorization", &bearer);
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));

        // `aud` as an array containing the audience.
        let with_aud = |aud: Value| {
            TestHost::new()
                .token(TOKEN, "idp", json!({"sub": "a", "aud": aud}))
                .config(r#"{"keys": "idp", "audience": "orders"}"#)
                .header("authorization", &bearer)
        };
        let mut h = with_aud(json!(["billing", "orders"]));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        let mut h = with_aud(json!(["billing", 7]));
        assert_eq!(assert_invalid(&mut h), "token audience is not accepted");
        let mut h = with_aud(json!({"orders": true}));
        assert_eq!(assert_invalid(&mut h), "token audience is not accepted");
        let mut h = with_aud(Value::Null);
        assert_eq!(assert_invalid(&mut h), "token has no audience");
    }

    #[test]
    fn required_claims_must_be_present_and_not_null() {
        let bearer = format!("Bearer {TOKEN}");
        let mut h = host(json!({"keys": "idp", "required_claims": ["sub", "email"]}))
            .header("authorization", &bearer);
        assert_eq!(assert_invalid(&mut h), "token lacks required claim email");

        let mut h = TestHost::new()
            .token(TOKEN, "idp", json!({"sub": null}))
            .config(r#"{"keys": "idp", "required_claims": ["sub"]}"#)
            .header("authorization", &bearer);
        assert_eq!(assert_invalid(&mut h), "token lacks required claim sub");
    }

    #[test]
    fn claims_that_cannot_be_headers_are_refused() {
        let mut h = TestHost::new()
            .token(TOKEN, "idp", json!({"sub": "alice\r\nx-admin: true"}))
            .config(r#"{"keys": "idp", "claims_to_headers": {"sub": "x-user-id"}}"#)
            .header("authorization", &format!("Bearer {TOKEN}"));
        assert_eq!(
            assert_invalid(&mut h),
            "claim sub has characters a header cannot carry"
        );
        assert_eq!(h.request.header("x-user-id"), None);
        assert_eq!(h.request.header("x-admin"), None);
    }

    #[test]
    fn scheme_is_case_insensitive() {
        for value in [format!("bearer {TOKEN}"), format!("BEARER  {TOKEN}")] {
            let mut h = host(json!({"keys": "idp"})).header("authorization", &value);
            assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue), "{value}");
        }
    }

    #[test]
    fn two_bearer_tokens_are_ambiguous() {
        let mut h = host(json!({"keys": "idp"}))
            .header("authorization", &format!("Bearer {TOKEN}"))
            .header("authorization", &format!("Bearer {TOKEN}"));
        assert_eq!(assert_invalid(&mut h), "more than one token given");
    }

    #[test]
    fn token_from_a_cookie() {
        let config =
            json!({"keys": "idp", "from": [{"cookie": "session"}], "forward_token": false});
        let mut h = host(config.clone())
            .header("cookie", &format!("theme=dark; session={TOKEN}"))
            .header("cookie", "lang=en");
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(
            h.request.header("cookie").as_deref(),
            Some("theme=dark; lang=en")
        );

        // The header source is not consulted when only the cookie is configured.
        let mut h = host(config.clone()).header("authorization", &format!("Bearer {TOKEN}"));
        assert_eq!(error(&answer(&mut h)), "missing token");

        // A quoted cookie value; the only cookie is removed entirely.
        let mut h = host(config).header("cookie", &format!("session=\"{TOKEN}\""));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(h.request.header("cookie"), None);
    }

    #[test]
    fn sources_are_tried_in_order() {
        let config = json!({"keys": "idp", "from": [
            {"header": "authorization", "prefix": "Bearer "},
            {"cookie": "session"}
        ]});
        // The header comes first and is bad: the cookie is not a fallback.
        let mut h = host(config.clone())
            .header("authorization", "Bearer aaa.bbb.ccc")
            .header("cookie", &format!("session={TOKEN}"));
        assert_invalid(&mut h);
        // No header: the cookie is used.
        let mut h = host(config).header("cookie", &format!("session={TOKEN}"));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
    }

    #[test]
    fn token_from_the_query_can_be_removed() {
        let config =
            json!({"keys": "idp", "from": [{"query": "access_token"}], "forward_token": false});
        let mut h =
            host(config.clone()).request("GET", &format!("/a?x=1&access_token={TOKEN}&y=a%20b&z"));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(h.request.query.as_deref(), Some("x=1&y=a%20b&z"));

        let mut h = host(config.clone()).request("GET", &format!("/a?access_token={TOKEN}"));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(h.request.query, None);

        // Forwarded by default.
        let mut config = config;
        config["forward_token"] = json!(true);
        let query = format!("access_token={TOKEN}&x=1");
        let mut h = host(config.clone()).request("GET", &format!("/a?{query}"));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(h.request.query.as_deref(), Some(query.as_str()));

        // Given twice: ambiguous.
        let mut h = host(config).request(
            "GET",
            &format!("/a?access_token={TOKEN}&access_token=a.b.c"),
        );
        assert_eq!(assert_invalid(&mut h), "more than one token given");
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%5Fb+c").as_deref(), Some("a_b c"));
        assert_eq!(form_decode("%41%42").as_deref(), Some("AB"));
        for bad in ["%", "%4", "%+1", "%zz", "%ff", "%4é"] {
            assert_eq!(form_decode(bad), None, "{bad}");
        }
        // An encoded parameter name still names the token.
        let mut h = host(json!({"keys": "idp", "from": [{"query": "access_token"}]}))
            .request("GET", &format!("/?access%5Ftoken={TOKEN}"));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
    }

    #[test]
    fn header_token_can_be_removed() {
        let mut h = host(
            json!({"keys": "idp", "forward_token": false, "claims_to_headers": {"sub": "x-user"}}),
        )
        .header("authorization", &format!("Bearer {TOKEN}"));
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
        assert_eq!(h.request.header("authorization"), None);
        assert_eq!(h.request.header("x-user").as_deref(), Some("alice"));
    }

    #[test]
    fn custom_header_without_prefix() {
        let mut h =
            host(json!({"keys": "idp", "from": [{"header": "X-Token"}]})).header("x-token", TOKEN);
        assert_eq!(h.run_request::<JwtAuth>(), Ok(Action::Continue));
    }

    #[test]
    fn wrong_key_set_is_not_accepted() {
        let mut h = host(json!({"keys": "other"}))
            .key_set("other")
            .header("authorization", &format!("Bearer {TOKEN}"));
        assert_invalid(&mut h);
    }

    #[test]
    fn a_key_set_the_route_does_not_grant_is_a_configuration_error() {
        let mut h =
            host(json!({"keys": "other"})).header("authorization", &format!("Bearer {TOKEN}"));
        let err = h.run_request::<JwtAuth>().unwrap_err();
        assert!(err.0.contains("not granted"), "{err}");
    }

    #[test]
    fn invalid_configs_are_errors() {
        let configs = [
            json!({}),
            json!({"keys": ""}),
            json!({"keys": "idp", "kyes": "x"}),
            json!({"keys": "idp", "from": []}),
            json!({"keys": "idp", "from": [{}]}),
            json!({"keys": "idp", "from": [{"header": "a", "cookie": "b"}]}),
            json!({"keys": "idp", "from": [{"cookie": "b", "prefix": "x"}]}),
            json!({"keys": "idp", "from": [{"header": "bad header"}]}),
            json!({"keys": "idp", "issuer": []}),
            json!({"keys": "idp", "issuer": 5}),
            json!({"keys": "idp", "audience": [""]}),
            json!({"keys": "idp", "claims_to_headers": {"sub": "content-length"}}),
            json!({"keys": "idp", "claims_to_headers": {"sub": "x-a", "email": "X-A"}}),
            json!({"keys": "idp", "claims_to_headers": {"sub": "authorization"}}),
            json!({"keys": "idp", "from": [{"cookie": "s"}], "claims_to_headers": {"sub": "Cookie"}}),
            json!({"keys": "idp", "max_token_bytes": 0}),
            json!({"keys": "idp", "max_token_bytes": 1_000_000}),
            json!({"keys": "idp", "realm": "a\"b"}),
        ];
        for config in configs {
            let mut h = host(config.clone()).header("authorization", &format!("Bearer {TOKEN}"));
            assert!(h.run_request::<JwtAuth>().is_err(), "{config}");
        }
        let mut h = host(json!({"kyes": "idp"}));
        let err = h.run_request::<JwtAuth>().expect_err("missing keys");
        assert!(err.0.contains("keys"), "{err}");
    }
}
