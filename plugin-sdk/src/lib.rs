//! Write Transom plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`], exported with
//! [`export_plugin!`], built as a `cdylib` for `wasm32-wasip2`:
//!
//! ```ignore
//! use transom_plugin_sdk::{export_plugin, Action, Error, Plugin, Request};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { name: String, value: String }
//!
//! struct AddHeader;
//!
//! impl Plugin for AddHeader {
//!     fn on_request(req: &mut Request) -> Result<Action, Error> {
//!         let cfg: Config = transom_plugin_sdk::config()?;
//!         req.set_header(&cfg.name, &cfg.value)?;
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! export_plugin!(AddHeader);
//! ```
//!
//! The same code runs natively under `cargo test` against the fake host in
//! [`testing`], so plugin logic is unit-tested without Wasm or a gateway.
#![deny(missing_docs)]

// Generated code names the SDK by its crate name, also from inside it.
extern crate self as transom_plugin_sdk;

use std::fmt;
use std::rc::Rc;

mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod util;

/// Generated bindings of the `transom:plugin` contract. Used by
/// [`export_plugin!`]; plugins do not need to touch them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "filter-plugin",
        pub_export_macro: true,
        default_bindings_module: "transom_plugin_sdk::bindings",
        runtime_path: "transom_plugin_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub use sys::Level;
pub use util::{ConfigDuration, MANAGED_HEADERS, is_managed_header, parse_duration};

/// An error a plugin returns: the request fails with a 500 naming the plugin
/// and this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("invalid plugin config: {e}"))
    }
}

/// What the request phase decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next plugin and then the upstream.
    Continue,
    /// Answer the client now; later plugins and the upstream are skipped.
    Respond(Answer),
}

/// A response made by the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// An answer with a status and no body.
    pub fn new(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
        }
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Answer {
        self.body = body.into();
        self
    }
}

/// The request being handled. Reads and edits go straight to the gateway,
/// so only what the plugin asks for is copied.
#[derive(Debug)]
pub struct Request {
    _private: (),
}

impl Request {
    /// The method, e.g. `GET`.
    pub fn method(&self) -> String {
        sys::request::method()
    }
    /// The path without the query.
    pub fn path(&self) -> String {
        sys::request::path()
    }
    /// The query string without `?`.
    pub fn query(&self) -> Option<String> {
        sys::request::query()
    }
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        sys::request::header(name)
    }
    /// Every header, lower-case names, in order.
    pub fn headers(&self) -> Vec<(String, String)> {
        sys::request::headers()
    }
    /// The body, when the route gives it to this plugin (`body = true`).
    pub fn body(&self) -> Option<Vec<u8>> {
        sys::request::body()
    }
    /// The client's IP address.
    pub fn client_ip(&self) -> String {
        sys::request::client_ip()
    }
    /// The matched route's name.
    pub fn route(&self) -> String {
        sys::request::route()
    }
    /// Replace the method.
    pub fn set_method(&mut self, method: &str) -> Result<(), Error> {
        sys::request::set_method(method).map_err(Error)
    }
    /// Replace the path.
    pub fn set_path(&mut self, path: &str) -> Result<(), Error> {
        sys::request::set_path(path).map_err(Error)
    }
    /// Replace or remove the query.
    pub fn set_query(&mut self, query: Option<&str>) -> Result<(), Error> {
        sys::request::set_query(query).map_err(Error)
    }
    /// Set a header, replacing its values.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        sys::request::set_header(name, value).map_err(Error)
    }
    /// Add a header value.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        sys::request::add_header(name, value).map_err(Error)
    }
    /// Remove a header.
    pub fn remove_header(&mut self, name: &str) {
        sys::request::remove_header(name)
    }
    /// Replace the body.
    pub fn set_body(&mut self, body: &[u8]) -> Result<(), Error> {
        sys::request::set_body(body).map_err(Error)
    }
    /// Set a header on the response this request gets, replacing its
    /// values. The gateway applies it when the response arrives, at this
    /// plugin's place in the response phase, without calling the plugin
    /// again: a plugin that only adds response headers needs no
    /// [`Plugin::on_response`] (and costs one call into the sandbox, not two).
    pub fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        sys::request::set_response_header(name, value).map_err(Error)
    }
    /// Add a header value to the response this request gets (see
    /// [`Request::set_response_header`]).
    pub fn add_response_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        sys::request::add_response_header(name, value).map_err(Error)
    }
    /// Remove a header from the response this request gets (see
    /// [`Request::set_response_header`]).
    pub fn remove_response_header(&mut self, name: &str) -> Result<(), Error> {
        sys::request::remove_response_header(name).map_err(Error)
    }
    /// This request needs nothing from [`Plugin::on_response`]: the gateway
    /// does not call it, buffers no body for it, and in `per-request` mode
    /// drops the instance now instead of keeping it while the upstream
    /// answers. Response headers set with [`Request::set_response_header`]
    /// still apply.
    pub fn skip_response_phase(&mut self) {
        sys::request::skip_response_phase()
    }
}

/// The upstream's response.
#[derive(Debug)]
pub struct Response {
    _private: (),
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        sys::response::status()
    }
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        sys::response::header(name)
    }
    /// Every header.
    pub fn headers(&self) -> Vec<(String, String)> {
        sys::response::headers()
    }
    /// The body, when the route gives it to this plugin.
    pub fn body(&self) -> Option<Vec<u8>> {
        sys::response::body()
    }
    /// Replace the status.
    pub fn set_status(&mut self, status: u16) -> Result<(), Error> {
        sys::response::set_status(status).map_err(Error)
    }
    /// Set a header.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        sys::response::set_header(name, value).map_err(Error)
    }
    /// Add a header value.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        sys::response::add_header(name, value).map_err(Error)
    }
    /// Remove a header.
    pub fn remove_header(&mut self, name: &str) {
        sys::response::remove_header(name)
    }
    /// Replace the body.
    pub fn set_body(&mut self, body: &[u8]) -> Result<(), Error> {
        sys::response::set_body(body).map_err(Error)
    }
}

/// A plugin. Implement the phases you need; the others do nothing and are
/// never called (set the matching `const` so the gateway knows).
pub trait Plugin {
    /// Whether [`Plugin::on_request`] is implemented.
    const ON_REQUEST: bool = true;
    /// Whether [`Plugin::on_response`] is implemented.
    const ON_RESPONSE: bool = false;

    /// The request phase.
    fn on_request(req: &mut Request) -> Result<Action, Error> {
        let _ = req;
        Ok(Action::Continue)
    }

    /// The response phase (runs in reverse chain order).
    fn on_response(resp: &mut Response) -> Result<(), Error> {
        let _ = resp;
        Ok(())
    }
}

/// A call to an upstream the route grants this plugin (`upstreams = [...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Upstream name.
    pub upstream: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Limit for this call (default: the upstream's `request_timeout`).
    pub timeout: Option<std::time::Duration>,
}

impl Call {
    /// `GET path` on `upstream`.
    pub fn get(upstream: &str, path: &str) -> Call {
        Call {
            upstream: upstream.into(),
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    /// `POST path` on `upstream` with a body.
    pub fn post(upstream: &str, path: &str, body: impl Into<Vec<u8>>) -> Call {
        Call {
            method: "POST".into(),
            body: Some(body.into()),
            ..Call::get(upstream, path)
        }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Limit this call.
    pub fn timeout(mut self, t: std::time::Duration) -> Call {
        self.timeout = Some(t);
        self
    }
}

/// An upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error(format!("upstream body is not the expected JSON: {e}")))
    }

    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The route does not grant this upstream to the plugin.
    NotGranted(String),
    /// The request was malformed.
    Invalid(String),
    /// No healthy endpoint.
    Unavailable(String),
    /// It did not finish in time.
    Timeout,
    /// Connection or protocol failure.
    Failed(String),
    /// The response exceeded what a plugin may receive.
    TooLarge,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotGranted(u) => write!(f, "upstream {u:?} is not granted to this plugin"),
            CallError::Invalid(s) => write!(f, "invalid call: {s}"),
            CallError::Unavailable(s) => write!(f, "unavailable: {s}"),
            CallError::Timeout => f.write_str("timed out"),
            CallError::Failed(s) => write!(f, "failed: {s}"),
            CallError::TooLarge => f.write_str("response too large"),
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        Error(e.to_string())
    }
}

/// Make one upstream call.
pub fn call(c: Call) -> Result<Reply, CallError> {
    sys::services::call(c)
}

/// Make several upstream calls; the gateway runs them concurrently and the
/// results come back in order.
pub fn call_all(calls: Vec<Call>) -> Vec<Result<Reply, CallError>> {
    sys::services::call_batch(calls)
}

/// A shared counter after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterValue {
    /// Value after the update.
    pub value: i64,
    /// Time until its window ends.
    pub reset_in: std::time::Duration,
}

/// Add `delta` to this plugin's counter `key`, in a fixed window.
pub fn counter_add(key: &str, delta: i64, window: std::time::Duration) -> CounterValue {
    let (value, left) = sys::services::counter_add(key, delta, window.as_millis() as u64);
    CounterValue {
        value,
        reset_in: std::time::Duration::from_millis(left),
    }
}

/// One token bucket for [`take`]: holds up to `capacity` tokens and refills
/// evenly at `capacity` per `period` ("10 per second": capacity 10, period 1 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Bucket name, scoped to this plugin (include the limit's name and the
    /// client key, e.g. `"per-second/10.0.0.1"`).
    pub key: String,
    /// Tokens this request takes (usually 1).
    pub cost: u64,
    /// Tokens when full: the burst.
    pub capacity: u64,
    /// Time in which an empty bucket refills.
    pub period: std::time::Duration,
}

/// A bucket after [`take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Whether it had `cost` tokens.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Until `cost` tokens are there again (zero when allowed).
    pub retry_after: std::time::Duration,
    /// Until the bucket is full.
    pub full_in: std::time::Duration,
}

/// Take from several shared token buckets at once: tokens are taken only
/// if every bucket has enough (so a refused request costs nothing). The
/// buckets live in the gateway and are shared by every instance of this
/// plugin. Results come back in order.
pub fn take(limits: &[Limit]) -> Vec<Bucket> {
    sys::services::take(limits)
}

/// Why [`verify_jwt`] did not accept a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The route does not grant the key set to this plugin: a configuration
    /// mistake (answer 500), not the client's.
    NotGranted(String),
    /// The token is not acceptable (answer 401): malformed, badly signed,
    /// expired, not yet valid, or naming a key or algorithm the set refuses.
    Invalid(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NotGranted(s) | TokenError::Invalid(s) => f.write_str(s),
        }
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error(e.to_string())
    }
}

/// Verify a JWT natively in the gateway with the key set `keys` (granted by
/// the route: `keys = ["NAME"]`); its claims on success. The gateway checks
/// the signature, the pinned algorithm, the `kid`, `exp` and `nbf`; the
/// plugin checks the rest (`iss`, `aud`, ...).
pub fn verify_jwt(token: &str, keys: &str) -> Result<serde_json::Value, TokenError> {
    let claims = sys::services::verify_jwt(token, keys)?;
    serde_json::from_str(&claims)
        .map_err(|e| TokenError::Invalid(format!("the token's claims are not JSON: {e}")))
}

/// Add to a counter this plugin names (exported as a Prometheus metric).
pub fn metric_counter(name: &str, value: u64) {
    sys::services::metric_counter(name, value)
}

/// Observe a value in a histogram this plugin names.
pub fn metric_observe(name: &str, value: f64) {
    sys::services::metric_observe(name, value)
}

/// This plugin's configuration for the current route, deserialised from the
/// route's `config = { ... }`: a copy of what [`shared_config`] gives.
pub fn config<T: serde::de::DeserializeOwned + 'static + Clone>() -> Result<T, Error> {
    shared_config::<T>().map(|c| T::clone(&c))
}

/// This plugin's configuration for the current route, shared rather than
/// copied: the cheap way for a plugin to read a large configuration on
/// every call.
///
/// An instance only ever serves one route's plugin entry, so in the gateway
/// the parsed value is cached per instance and type: a reused instance
/// parses its configuration once. The cache is a short list, not a
/// `HashMap`: std's `HashMap` seeds itself from WASI randomness, which in a
/// fresh instance costs a call out to the host.
pub fn shared_config<T: serde::de::DeserializeOwned + 'static>() -> Result<Rc<T>, Error> {
    #[cfg(target_arch = "wasm32")]
    {
        use std::any::{Any, TypeId};
        use std::cell::RefCell;
        thread_local! {
            static CACHE: RefCell<Vec<(TypeId, Rc<dyn Any>)>> = const { RefCell::new(Vec::new()) };
        }
        let hit = CACHE.with(|c| {
            c.borrow()
                .iter()
                .find(|(t, _)| *t == TypeId::of::<T>())
                .and_then(|(_, v)| v.clone().downcast::<T>().ok())
        });
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let parsed: Rc<T> = Rc::new(serde_json::from_str(&sys::host::config())?);
        let any: Rc<dyn Any> = parsed.clone();
        CACHE.with(|c| c.borrow_mut().push((TypeId::of::<T>(), any)));
        Ok(parsed)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        // Natively, every TestHost run may carry another config: no cache.
        Ok(Rc::new(serde_json::from_str(&sys::host::config())?))
    }
}

/// Write to the gateway's log, tagged with this plugin's name and version.
pub fn log(level: Level, message: &str) {
    sys::host::log(level, message)
}

/// Milliseconds since the Unix epoch, from the gateway's clock.
pub fn now_ms() -> u64 {
    sys::host::now_ms()
}

#[doc(hidden)]
pub mod __export {
    use super::*;
    use crate::bindings::exports::transom::plugin::filter as wit;

    pub fn phases<P: Plugin>() -> wit::PhaseFlags {
        let mut f = wit::PhaseFlags::empty();
        if P::ON_REQUEST {
            f |= wit::PhaseFlags::REQUEST;
        }
        if P::ON_RESPONSE {
            f |= wit::PhaseFlags::RESPONSE;
        }
        f
    }

    pub fn on_request<P: Plugin>() -> Result<wit::Decision, String> {
        let mut req = Request { _private: () };
        match P::on_request(&mut req) {
            Ok(Action::Continue) => Ok(wit::Decision::Continue),
            Ok(Action::Respond(a)) => Ok(wit::Decision::Respond(wit::Answer {
                status: a.status,
                headers: a.headers,
                body: a.body,
            })),
            Err(e) => Err(e.0),
        }
    }

    pub fn on_response<P: Plugin>() -> Result<(), String> {
        let mut resp = Response { _private: () };
        P::on_response(&mut resp).map_err(|e| e.0)
    }
}

/// Export a [`Plugin`] as the component's `transom:plugin/filter`.
///
/// Only on `wasm32`: natively (under `cargo test`) the plugin is driven by
/// [`testing::TestHost`](crate) instead.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __TransomPluginExport;

            impl $crate::bindings::exports::transom::plugin::filter::Guest for __TransomPluginExport {
                fn phases() -> $crate::bindings::exports::transom::plugin::filter::PhaseFlags {
                    $crate::__export::phases::<$plugin>()
                }
                fn on_request() -> ::std::result::Result<
                    $crate::bindings::exports::transom::plugin::filter::Decision,
                    ::std::string::String,
                > {
                    $crate::__export::on_request::<$plugin>()
                }
                fn on_response() -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__export::on_response::<$plugin>()
                }
            }

            $crate::bindings::export!(__TransomPluginExport with_types_in $crate::bindings);
        };
    };
}
