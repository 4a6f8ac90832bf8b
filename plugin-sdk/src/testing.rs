//! A fake gateway for unit-testing plugin logic natively with `cargo test`:
//! build a [`TestHost`] with a request (and response), a configuration and a
//! fixed clock, run a phase, then look at what the plugin changed.
//!
//! ```ignore
//! let mut host = TestHost::new().header("authorization", "Bearer x").config(r#"{"name":"x-a","value":"1"}"#);
//! let action = host.run_request::<AddHeader>();
//! assert_eq!(action, Ok(Action::Continue));
//! assert_eq!(host.request.header("x-a").as_deref(), Some("1"));
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::{Action, Call, CallError, Error, Plugin, Reply, Request, Response};

/// Answers upstream calls in tests.
pub type UpstreamFn = Arc<dyn Fn(&Call) -> Result<Reply, CallError> + Send + Sync>;

/// Fake upstreams by name.
#[derive(Clone, Default)]
pub struct Upstreams(pub HashMap<String, UpstreamFn>);

impl fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Log levels, as in the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

/// The request a test hands to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query.
    pub query: Option<String>,
    /// Headers (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Client IP.
    pub client_ip: String,
    /// Route name.
    pub route: String,
}

impl TestRequest {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        find(&self.headers, name)
    }

    pub(crate) fn set_method(&mut self, m: &str) -> Result<(), String> {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("{m:?} is not an HTTP method"));
        }
        self.method = m.to_string();
        Ok(())
    }

    pub(crate) fn set_path(&mut self, p: &str) -> Result<(), String> {
        if !p.starts_with('/') || p.contains('?') {
            return Err(format!(
                "{p:?} is not a path (it must start with '/' and have no '?')"
            ));
        }
        self.path = p.to_string();
        Ok(())
    }
}

/// The response a test hands to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
}

impl TestResponse {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        find(&self.headers, name)
    }

    pub(crate) fn set_status(&mut self, s: u16) -> Result<(), String> {
        if !(200..=999).contains(&s) {
            return Err(format!("{s} is not a final status code"));
        }
        self.status = s;
        Ok(())
    }
}

/// The fake gateway.
#[derive(Debug, Clone)]
pub struct TestHost {
    /// The request.
    pub request: TestRequest,
    /// The response (for the response phase).
    pub response: TestResponse,
    /// The plugin's configuration, as JSON.
    pub config: String,
    /// Whether the plugin gets bodies (`body = true` on the route).
    pub body: bool,
    /// What `now_ms` returns.
    pub now_ms: u64,
    /// Lines the plugin logged.
    pub logs: Vec<(Level, String)>,
    /// Upstreams the plugin may call, answered by functions.
    pub upstreams: Upstreams,
    /// Calls the plugin made, in order.
    pub calls: Vec<Call>,
    /// The sizes of the batches made with [`call_all`](crate::call_all), in
    /// order (the calls themselves are in [`TestHost::calls`]); a batch's
    /// calls run concurrently in the gateway.
    pub batches: Vec<usize>,
    /// Counters: key → (value, window end in ms on [`TestHost::now_ms`]'s clock).
    pub counters: HashMap<String, (i64, u64)>,
    /// Token buckets: key → (tokens, last refill in ms on the test clock).
    pub buckets: HashMap<String, (f64, u64)>,
    /// Tokens the fake verifier knows: (token, key set) → claims or error.
    pub tokens: HashMap<(String, String), Result<serde_json::Value, String>>,
    /// Key sets granted to the plugin ([`TestHost::token`] and
    /// [`TestHost::key_set`] grant theirs); others are "not granted".
    pub key_sets: std::collections::HashSet<String>,
    /// Metrics recorded: (name, value).
    pub metrics: Vec<(String, f64)>,
    /// Whether the request phase called
    /// [`Request::skip_response_phase`](crate::Request::skip_response_phase).
    /// Response headers the request phase sets land on
    /// [`TestHost::response`] at once, as the gateway applies them to the
    /// response when it arrives: build the response before running the
    /// request phase.
    pub response_phase_skipped: bool,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<TestHost>> = const { RefCell::new(None) };
}

/// Run `f` on the host of the phase being run.
///
/// # Panics
/// When called outside [`TestHost::run_request`] / [`TestHost::run_response`].
pub(crate) fn with<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let host = c
            .as_mut()
            .expect("plugin host functions are only available inside TestHost::run_*");
        f(host)
    })
}

impl TestHost {
    /// `GET /` from 127.0.0.1, no headers, config `{}`, clock at 1 700 000 000 000 ms.
    pub fn new() -> TestHost {
        TestHost {
            request: TestRequest {
                method: "GET".into(),
                path: "/".into(),
                query: None,
                headers: Vec::new(),
                body: None,
                client_ip: "127.0.0.1".into(),
                route: "test".into(),
            },
            response: TestResponse {
                status: 200,
                headers: Vec::new(),
                body: None,
            },
            config: "{}".into(),
            body: false,
            now_ms: 1_700_000_000_000,
            logs: Vec::new(),
            upstreams: Upstreams::default(),
            calls: Vec::new(),
            batches: Vec::new(),
            counters: HashMap::new(),
            buckets: HashMap::new(),
            tokens: HashMap::new(),
            key_sets: Default::default(),
            metrics: Vec::new(),
            response_phase_skipped: false,
        }
    }

    /// Answer calls to `name` with `f` (grants the upstream).
    pub fn upstream(
        mut self,
        name: &str,
        f: impl Fn(&Call) -> Result<Reply, CallError> + Send + Sync + 'static,
    ) -> TestHost {
        self.upstreams.0.insert(name.into(), Arc::new(f));
        self
    }

    /// Make `token` verify against key set `keys` with these claims
    /// (signatures are the gateway's job; the harness only maps tokens).
    /// It also grants the key set.
    pub fn token(mut self, token: &str, keys: &str, claims: serde_json::Value) -> TestHost {
        self.key_sets.insert(keys.into());
        self.tokens.insert((token.into(), keys.into()), Ok(claims));
        self
    }

    pub(crate) fn counter_add(&mut self, key: &str, delta: i64, window_ms: u64) -> (i64, u64) {
        let now = self.now_ms;
        let entry = self
            .counters
            .entry(key.to_string())
            .or_insert((0, now + window_ms));
        if entry.1 <= now {
            *entry = (0, now + window_ms);
        }
        entry.0 = entry.0.saturating_add(delta);
        (entry.0, entry.1 - now)
    }

    /// The gateway's token buckets, on the test clock: all or nothing.
    pub(crate) fn take(&mut self, limits: &[crate::Limit]) -> Vec<crate::Bucket> {
        let now = self.now_ms;
        let rate =
            |l: &crate::Limit| l.capacity.max(1) as f64 / (l.period.as_millis().max(1) as f64);
        let levels: Vec<f64> = limits
            .iter()
            .map(|l| {
                let (tokens, at) = self
                    .buckets
                    .get(&l.key)
                    .copied()
                    .unwrap_or((l.capacity as f64, now));
                (tokens + now.saturating_sub(at) as f64 * rate(l)).min(l.capacity as f64)
            })
            .collect();
        let all = limits.iter().zip(&levels).all(|(l, v)| *v >= l.cost as f64);
        limits
            .iter()
            .zip(levels)
            .map(|(l, level)| {
                let cost = l.cost as f64;
                let left = if all { level - cost } else { level };
                self.buckets.insert(l.key.clone(), (left, now));
                let ms = |x: f64| std::time::Duration::from_millis(x.max(0.0).ceil() as u64);
                crate::Bucket {
                    allowed: level >= cost,
                    remaining: left.max(0.0).floor() as u64,
                    retry_after: if level >= cost {
                        std::time::Duration::ZERO
                    } else {
                        ms((cost - level) / rate(l))
                    },
                    full_in: ms((l.capacity as f64 - left) / rate(l)),
                }
            })
            .collect()
    }

    /// Grant a key set with no known tokens (every token is invalid with it).
    pub fn key_set(mut self, keys: &str) -> TestHost {
        self.key_sets.insert(keys.into());
        self
    }

    pub(crate) fn verify(&self, token: &str, keys: &str) -> Result<String, crate::TokenError> {
        if !self.key_sets.contains(keys) {
            return Err(crate::TokenError::NotGranted(format!(
                "key set {keys:?} is not granted to this plugin"
            )));
        }
        match self.tokens.get(&(token.to_string(), keys.to_string())) {
            Some(Ok(claims)) => Ok(claims.to_string()),
            Some(Err(e)) => Err(crate::TokenError::Invalid(e.clone())),
            None => Err(crate::TokenError::Invalid(
                "invalid token: unknown to the test host".into(),
            )),
        }
    }

    /// Set method and path (with `?query` if any).
    pub fn request(mut self, method: &str, path_and_query: &str) -> TestHost {
        self.request.method = method.into();
        match path_and_query.split_once('?') {
            Some((p, q)) => {
                self.request.path = p.into();
                self.request.query = Some(q.into());
            }
            None => self.request.path = path_and_query.into(),
        }
        self
    }

    /// Add a request header.
    pub fn header(mut self, name: &str, value: &str) -> TestHost {
        self.request
            .headers
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Set the request body (and give the plugin bodies).
    pub fn body(mut self, body: &[u8]) -> TestHost {
        self.request.body = Some(body.to_vec());
        self.body = true;
        self
    }

    /// Set the configuration (JSON).
    pub fn config(mut self, json: &str) -> TestHost {
        self.config = json.into();
        self
    }

    /// Set the upstream response for the response phase.
    pub fn response(
        mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> TestHost {
        self.response = TestResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
        };
        if body.is_some() {
            self.body = true;
        }
        self
    }

    /// Set the clock.
    pub fn now(mut self, ms: u64) -> TestHost {
        self.now_ms = ms;
        self
    }

    fn enter<R>(&mut self, f: impl FnOnce() -> R) -> R {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        let result = f();
        if let Some(after) = CURRENT.with(|c| c.borrow_mut().take()) {
            *self = after;
        }
        result
    }

    /// Run `P`'s request phase against this host.
    pub fn run_request<P: Plugin>(&mut self) -> Result<Action, Error> {
        self.enter(|| P::on_request(&mut Request { _private: () }))
    }

    /// Run `P`'s response phase against this host.
    pub fn run_response<P: Plugin>(&mut self) -> Result<(), Error> {
        self.enter(|| P::on_response(&mut Response { _private: () }))
    }

    pub(crate) fn set_request_body(&mut self, b: &[u8]) -> Result<(), String> {
        if !self.body {
            return Err("this route does not give the plugin the body (set `body = true`)".into());
        }
        self.request.body = Some(b.to_vec());
        Ok(())
    }

    pub(crate) fn set_response_body(&mut self, b: &[u8]) -> Result<(), String> {
        if !self.body {
            return Err("this route does not give the plugin the body (set `body = true`)".into());
        }
        self.response.body = Some(b.to_vec());
        Ok(())
    }
}

fn find(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

pub(crate) fn set_header(
    headers: &mut Vec<(String, String)>,
    name: &str,
    value: &str,
    append: bool,
) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!(
            "the value for {name:?} is not a valid header value"
        ));
    }
    let name = name.to_ascii_lowercase();
    if crate::is_managed_header(&name) {
        return Err(format!("{name:?} is managed by the gateway"));
    }
    if !append {
        remove_header(headers, &name);
    }
    headers.push((name, value.to_string()));
    Ok(())
}

/// Remove a header a plugin may set (as the gateway checks a response
/// header removal made in the request phase).
pub(crate) fn remove_settable_header(
    headers: &mut Vec<(String, String)>,
    name: &str,
) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if crate::is_managed_header(&name.to_ascii_lowercase()) {
        return Err(format!("{name:?} is managed by the gateway"));
    }
    remove_header(headers, name);
    Ok(())
}

pub(crate) fn remove_header(headers: &mut Vec<(String, String)>, name: &str) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

/// An upstream call made against the fake host: recorded, then answered by
/// the function registered for its upstream (outside the host borrow, so the
/// function may itself inspect anything it captured).
pub(crate) fn fake_call(c: Call) -> Result<Reply, CallError> {
    let f = with(|h| {
        h.calls.push(c.clone());
        h.upstreams.0.get(&c.upstream).cloned()
    });
    match f {
        Some(f) => f(&c),
        None => Err(CallError::NotGranted(c.upstream.clone())),
    }
}
