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

use crate::{Action, Error, Plugin, Request, Response};

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
    if matches!(
        name.as_str(),
        "content-length" | "transfer-encoding" | "connection" | "upgrade" | "te" | "trailer"
    ) {
        return Err(format!("{name:?} is managed by the gateway"));
    }
    if !append {
        remove_header(headers, &name);
    }
    headers.push((name, value.to_string()));
    Ok(())
}

pub(crate) fn remove_header(headers: &mut Vec<(String, String)>, name: &str) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}
