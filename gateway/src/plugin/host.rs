//! What a plugin can reach: the current request or response (held in the
//! store while one call runs), its configuration, the clock and the log.
//! Everything else a component may import (WASI) is linked with an empty,
//! deny-all context: no files, no sockets, no environment.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{
    Bucket, CallError, Counter, CountersApi, HostServices, Incoming, Level, Limit, MetricsApi,
    Outgoing, RequestApi, ResponseApi, TokenError, TokensApi, UpstreamApi,
};
use super::services::Services;

/// The request as plugins see and change it.
#[derive(Debug)]
pub struct RequestState {
    /// Method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query without `?`.
    pub query: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, when the chain asked for it.
    pub body: Option<Bytes>,
    /// Client address.
    pub client_ip: IpAddr,
    /// Matched route.
    pub route: Arc<str>,
}

/// The response as plugins see and change it.
#[derive(Debug)]
pub struct ResponseState {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, when the chain asked for it.
    pub body: Option<Bytes>,
}

/// A change to the response that a plugin asked for in its request phase
/// (`set-response-header` and friends), applied when the response arrives.
#[derive(Debug)]
pub enum HeaderEdit {
    /// Replace the header's values.
    Set(HeaderName, HeaderValue),
    /// Add a value.
    Append(HeaderName, HeaderValue),
    /// Remove the header.
    Remove(HeaderName),
}

impl HeaderEdit {
    /// Apply the edit to `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        match self {
            HeaderEdit::Set(n, v) => {
                headers.insert(n, v);
            }
            HeaderEdit::Append(n, v) => {
                headers.append(n, v);
            }
            HeaderEdit::Remove(n) => {
                headers.remove(n);
            }
        }
    }
}

/// Who a store belongs to and what its route grants it.
#[derive(Clone)]
pub struct Identity {
    /// `name@version`.
    pub plugin: Arc<str>,
    /// Plugin name.
    pub name: Arc<str>,
    /// The frontend whose route uses it (counters and buckets are its own).
    pub frontend: Arc<str>,
    /// Plugin version.
    pub version: Arc<str>,
    /// The route's configuration for the plugin, as JSON.
    pub config: Arc<str>,
    /// Whether this binding may see bodies.
    pub body: bool,
    /// Upstreams it may call.
    pub upstreams: Arc<[String]>,
    /// Key sets it may verify with.
    pub keys: Arc<[String]>,
    /// Environment variables granted.
    pub env: Arc<[(String, String)]>,
    /// Directories granted.
    pub dirs: Arc<[crate::config::DirGrant]>,
    /// The gateway's services.
    pub services: Arc<Services>,
}

/// Linear memory that all plugin instances of one frontend may hold at
/// once. Each instance charges what it grows and gives it back when it is
/// dropped, so one frontend's memory-hungry plugins fail their own calls
/// instead of starving other frontends.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Its size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The per-instance limits (wasmtime's) plus the frontend's budget.
pub(super) struct Limiter {
    limits: StoreLimits,
    budget: Option<Arc<MemoryBudget>>,
    charged: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.limits.memory_growing(current, desired, maximum)? {
            return Ok(false);
        }
        if let Some(b) = &self.budget {
            let more = desired.saturating_sub(current);
            if !b.charge(more) {
                return Err(wasmtime::format_err!(
                    "the frontend's plugin memory budget of {} bytes is used up",
                    b.limit
                ));
            }
            self.charged += more;
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.charged);
        }
    }
}

/// Store data of one plugin instance.
pub struct Ctx {
    /// Built on first use: a plugin that never calls WASI (most do not, at
    /// run time) never pays for it.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(super) limits: Limiter,
    pub(super) stderr: MemoryOutputPipe,
    pub(super) id: Identity,
    pub(super) req: Option<RequestState>,
    pub(super) resp: Option<ResponseState>,
    /// Response header edits made by the current request phase.
    pub(super) resp_edits: Vec<HeaderEdit>,
    /// Whether the current request phase asked to skip the response phase.
    pub(super) skip_response: bool,
    /// When the current call's CPU time is up.
    pub(super) deadline: Option<std::time::Instant>,
    /// The engine's epoch ticker, paused while the guest waits on the host.
    pub(super) ticker: Option<Arc<super::Ticker>>,
    /// Header names this instance has set, parsed once: a reused instance
    /// that sets the same headers on every request skips parsing and
    /// allocating them.
    names: Vec<HeaderName>,
}

/// Header names an instance keeps parsed.
const KEPT_NAMES: usize = 16;

/// Bytes of a plugin's stderr kept (a panic message fits).
const STDERR_CAPACITY: usize = 64 * 1024;

impl Ctx {
    pub(super) fn new(id: Identity, memory: usize, budget: Option<Arc<MemoryBudget>>) -> Ctx {
        Ctx {
            wasi: None,
            table: ResourceTable::new(),
            limits: Limiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(memory)
                    .instances(16)
                    .tables(16)
                    .memories(4)
                    .trap_on_grow_failure(true)
                    .build(),
                budget,
                charged: 0,
            },
            stderr: MemoryOutputPipe::new(STDERR_CAPACITY),
            id,
            req: None,
            resp: None,
            resp_edits: Vec::new(),
            skip_response: false,
            deadline: None,
            ticker: None,
            names: Vec::new(),
        }
    }

    /// Whether the plugin ever used WASI (and so may have written to stderr).
    pub(super) fn used_wasi(&self) -> bool {
        self.wasi.is_some()
    }

    fn req_headers(&mut self) -> wasmtime::Result<(&mut HeaderMap, &mut Vec<HeaderName>)> {
        let Ctx { req, names, .. } = self;
        match req {
            Some(r) => Ok((&mut r.headers, names)),
            None => Err(wasmtime::format_err!(
                "the request is only available in on-request"
            )),
        }
    }

    fn resp_headers(&mut self) -> wasmtime::Result<(&mut HeaderMap, &mut Vec<HeaderName>)> {
        let Ctx { resp, names, .. } = self;
        match resp {
            Some(r) => Ok((&mut r.headers, names)),
            None => Err(wasmtime::format_err!(
                "the response is only available in on-response"
            )),
        }
    }

    /// The last lines the plugin wrote to stderr (its panic message, usually).
    pub(super) fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        let start = text.len().saturating_sub(512);
        let start = (start..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// Time spent waiting on the network (upstream calls, a JWKS fetch) is
    /// not the plugin's: move its deadline by that much. Each wait is
    /// bounded by its own timeout.
    fn pause_deadline(&mut self, since: std::time::Instant) {
        if let Some(d) = &mut self.deadline {
            *d += since.elapsed();
        }
    }

    fn req(&mut self) -> wasmtime::Result<&mut RequestState> {
        self.req
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("the request is only available in on-request"))
    }

    fn resp(&mut self) -> wasmtime::Result<&mut ResponseState> {
        self.resp
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("the response is only available in on-response"))
    }
}

/// The WASI context of a plugin: stderr kept for error messages, and only
/// what the route grants: no sockets, no environment, no directories unless
/// listed.
fn build_wasi(id: &Identity, stderr: &MemoryOutputPipe) -> WasiCtx {
    let mut wasi = WasiCtx::builder();
    wasi.stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (k, v) in id.env.iter() {
        wasi.env(k, v);
    }
    for d in id.dirs.iter() {
        let perms = if d.writable {
            wasmtime_wasi::FsPerms::ReadWrite
        } else {
            wasmtime_wasi::FsPerms::ReadOnly
        };
        if let Err(e) = wasi.preopened_dir(&d.host, &d.guest, perms) {
            tracing::warn!(plugin = %id.plugin, dir = %d.host.display(), error = %e, "granted directory unavailable");
        }
    }
    wasi.build()
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let Ctx {
            wasi,
            table,
            id,
            stderr,
            ..
        } = self;
        WasiCtxView {
            ctx: wasi.get_or_insert_with(|| build_wasi(id, stderr)),
            table,
        }
    }
}

/// `name` parsed, from `kept` when it was parsed before.
fn kept_name(kept: &mut Vec<HeaderName>, name: &str) -> Result<HeaderName, String> {
    // Names in `kept` are valid and lower-case: an input that matches one
    // ignoring ASCII case parses to it.
    if let Some(n) = kept
        .iter()
        .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name.as_bytes()))
    {
        return Ok(n.clone());
    }
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if kept.len() < KEPT_NAMES {
        kept.push(n.clone());
    }
    Ok(n)
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    let v = HeaderValue::from_str(value)
        .map_err(|_| format!("the value for {name:?} is not a valid header value"))?;
    Ok((n, v))
}

fn get_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn all_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Headers a plugin may not set: framing and connection management belong
/// to the gateway.
fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "transfer-encoding" | "connection" | "upgrade" | "te" | "trailer"
    )
}

/// Largest header value a plugin may set; upstreams refuse much less.
const MAX_HEADER_VALUE: usize = 16 * 1024;
/// Most headers a message may carry after plugins edited it.
const MAX_HEADERS: usize = 200;

/// A header a plugin may set: a valid name that the gateway does not
/// manage, and a valid value of bounded size.
fn settable(
    kept: &mut Vec<HeaderName>,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), String> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "the value for {name:?} is {} bytes; at most {MAX_HEADER_VALUE} are allowed",
            value.len()
        ));
    }
    let n = kept_name(kept, name)?;
    let v = HeaderValue::from_str(value)
        .map_err(|_| format!("the value for {name:?} is not a valid header value"))?;
    if reserved(&n) {
        return Err(format!("{name:?} is managed by the gateway"));
    }
    Ok((n, v))
}

fn set_header(
    (headers, kept): (&mut HeaderMap, &mut Vec<HeaderName>),
    name: &str,
    value: &str,
    append: bool,
) -> Result<(), String> {
    if headers.len() >= MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} headers are allowed"));
    }
    let (n, v) = settable(kept, name, value)?;
    if append {
        headers.append(n, v);
    } else {
        headers.insert(n, v);
    }
    Ok(())
}

impl RequestApi for Ctx {
    fn method(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.method.as_str().to_string())
    }

    fn path(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.path.clone())
    }

    fn query(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.req()?.query.clone())
    }

    fn header(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(get_header(&self.req()?.headers, &name))
    }

    fn headers(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(all_headers(&self.req()?.headers))
    }

    fn body(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let allowed = self.id.body;
        Ok(self
            .req()?
            .body
            .as_ref()
            .filter(|_| allowed)
            .map(|b| b.to_vec()))
    }

    fn client_ip(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.client_ip.to_string())
    }

    fn route(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.route.to_string())
    }

    fn set_method(&mut self, method: String) -> wasmtime::Result<Result<(), String>> {
        let req = self.req()?;
        Ok(match Method::from_bytes(method.as_bytes()) {
            Ok(m) => {
                req.method = m;
                Ok(())
            }
            Err(_) => Err(format!("{method:?} is not an HTTP method")),
        })
    }

    fn set_path(&mut self, path: String) -> wasmtime::Result<Result<(), String>> {
        let req = self.req()?;
        Ok(
            if path.starts_with('/')
                && path.parse::<http::uri::PathAndQuery>().is_ok()
                && !path.contains('?')
            {
                req.path = path;
                Ok(())
            } else {
                Err(format!(
                    "{path:?} is not a path (it must start with '/' and have no '?')"
                ))
            },
        )
    }

    fn set_query(&mut self, query: Option<String>) -> wasmtime::Result<Result<(), String>> {
        let req = self.req()?;
        Ok(match query {
            Some(q) if format!("/?{q}").parse::<http::uri::PathAndQuery>().is_err() => {
                Err(format!("{q:?} is not a valid query string"))
            }
            q => {
                req.query = q;
                Ok(())
            }
        })
    }

    fn set_header(&mut self, name: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(self.req_headers()?, &name, &value, false))
    }

    fn add_header(&mut self, name: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(self.req_headers()?, &name, &value, true))
    }

    fn remove_header(&mut self, name: String) -> wasmtime::Result<()> {
        self.req()?.headers.remove(name.as_str());
        Ok(())
    }

    fn set_body(&mut self, body: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if !self.id.body {
            return Ok(Err(
                "this route does not give the plugin the body (set `body = true`)".into(),
            ));
        }
        self.req()?.body = Some(Bytes::from(body));
        Ok(Ok(()))
    }

    fn set_response_header(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let edit = self.response_edit(&name, Some(&value))?;
        Ok(edit.map(|(n, v)| self.resp_edits.push(HeaderEdit::Set(n, v))))
    }

    fn add_response_header(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let edit = self.response_edit(&name, Some(&value))?;
        Ok(edit.map(|(n, v)| self.resp_edits.push(HeaderEdit::Append(n, v))))
    }

    fn remove_response_header(&mut self, name: String) -> wasmtime::Result<Result<(), String>> {
        let edit = self.response_edit(&name, None)?;
        Ok(edit.map(|(n, _)| self.resp_edits.push(HeaderEdit::Remove(n))))
    }

    fn skip_response_phase(&mut self) -> wasmtime::Result<()> {
        self.req()?;
        self.skip_response = true;
        Ok(())
    }
}

impl Ctx {
    /// Check a response header edit made in the request phase: the same
    /// rules as setting a header on the response, and at most
    /// [`MAX_HEADERS`] edits per call. Removing takes no value.
    fn response_edit(
        &mut self,
        name: &str,
        value: Option<&str>,
    ) -> wasmtime::Result<Result<(HeaderName, HeaderValue), String>> {
        self.req()?;
        if self.resp_edits.len() >= MAX_HEADERS {
            return Ok(Err(format!(
                "at most {MAX_HEADERS} response header edits are allowed"
            )));
        }
        Ok(match value {
            Some(v) => settable(&mut self.names, name, v),
            None => kept_name(&mut self.names, name).and_then(|n| {
                if reserved(&n) {
                    Err(format!("{name:?} is managed by the gateway"))
                } else {
                    Ok((n, HeaderValue::from_static("")))
                }
            }),
        })
    }
}

impl ResponseApi for Ctx {
    fn status(&mut self) -> wasmtime::Result<u16> {
        Ok(self.resp()?.status.as_u16())
    }

    fn header(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(get_header(&self.resp()?.headers, &name))
    }

    fn headers(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(all_headers(&self.resp()?.headers))
    }

    fn body(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let allowed = self.id.body;
        Ok(self
            .resp()?
            .body
            .as_ref()
            .filter(|_| allowed)
            .map(|b| b.to_vec()))
    }

    fn set_status(&mut self, status: u16) -> wasmtime::Result<Result<(), String>> {
        let resp = self.resp()?;
        Ok(match StatusCode::from_u16(status) {
            Ok(s) if s.as_u16() >= 200 => {
                resp.status = s;
                Ok(())
            }
            _ => Err(format!("{status} is not a final status code")),
        })
    }

    fn set_header(&mut self, name: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(self.resp_headers()?, &name, &value, false))
    }

    fn add_header(&mut self, name: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(self.resp_headers()?, &name, &value, true))
    }

    fn remove_header(&mut self, name: String) -> wasmtime::Result<()> {
        self.resp()?.headers.remove(name.as_str());
        Ok(())
    }

    fn set_body(&mut self, body: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if !self.id.body {
            return Ok(Err(
                "this route does not give the plugin the body (set `body = true`)".into(),
            ));
        }
        self.resp()?.body = Some(Bytes::from(body));
        Ok(Ok(()))
    }
}

impl HostServices for Ctx {
    fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self.id.config.to_string())
    }

    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.id.plugin;
        // Bound what one line can put into the gateway's log.
        let message = if message.len() > 4096 {
            let mut end = 4096;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            &message[..end]
        } else {
            &message
        };
        match level {
            Level::Trace => tracing::trace!(target: "transom::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "transom::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "transom::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "transom::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "transom::plugin", plugin, "{message}"),
        }
        Ok(())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }
}

/// Most bytes of an upstream response handed to a plugin.
const MAX_CALL_BODY: usize = 8 << 20;
/// Most calls in one batch.
const MAX_BATCH: usize = 32;

/// One upstream call on behalf of a plugin (granted names only).
async fn call_upstream(id: Identity, req: Outgoing) -> Result<Incoming, CallError> {
    use http_body_util::BodyExt;

    if !id.upstreams.contains(&req.upstream) {
        return Err(CallError::NotGranted(req.upstream));
    }
    let Some(upstream) = id.services.upstreams.get(&req.upstream).cloned() else {
        return Err(CallError::NotGranted(req.upstream));
    };
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| CallError::Invalid(format!("{:?} is not an HTTP method", req.method)))?;
    if !req.path.starts_with('/') {
        return Err(CallError::Invalid(format!(
            "{:?} does not start with '/'",
            req.path
        )));
    }
    let path_and_query = req
        .path
        .parse::<http::uri::PathAndQuery>()
        .map_err(|_| CallError::Invalid(format!("{:?} is not a valid path", req.path)))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        let (n, v) = header_pair(k, v).map_err(CallError::Invalid)?;
        if !reserved(&n) {
            headers.append(n, v);
        }
    }
    if !headers.contains_key(http::header::HOST)
        && let Ok(h) = HeaderValue::from_str(&req.upstream)
    {
        headers.insert(http::header::HOST, h);
    }
    let body = req.body.map(|b| crate::body::full(Bytes::from(b)));
    let timeout = req
        .timeout_ms
        .map(|ms| std::time::Duration::from_millis(u64::from(ms)))
        .unwrap_or_else(|| upstream.config.request_timeout.get());
    let out = crate::upstream::Outbound {
        method,
        path_and_query,
        headers,
        body,
    };
    let started = std::time::Instant::now();
    let answer = upstream.send(out, timeout).await.map_err(|e| match e {
        crate::upstream::UpstreamError::NoHealthyEndpoint(_) => {
            CallError::Unavailable(e.to_string())
        }
        crate::upstream::UpstreamError::Timeout(_) => CallError::Timeout,
        other => CallError::Failed(other.to_string()),
    })?;
    let (parts, body) = answer.response.into_parts();
    let remaining = timeout.saturating_sub(started.elapsed());
    let limited = http_body_util::Limited::new(body, MAX_CALL_BODY);
    let collected = match tokio::time::timeout(remaining, limited.collect()).await {
        Err(_) => return Err(CallError::Timeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(CallError::TooLarge);
        }
        Ok(Err(e)) => return Err(CallError::Failed(format!("reading the body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    Ok(Incoming {
        status: parts.status.as_u16(),
        headers: all_headers(&parts.headers),
        body: collected.to_vec(),
    })
}

impl UpstreamApi for Ctx {
    async fn call(&mut self, req: Outgoing) -> wasmtime::Result<Result<Incoming, CallError>> {
        let started = std::time::Instant::now();
        let _waiting = self.ticker.as_ref().map(|t| t.waiting());
        let result = call_upstream(self.id.clone(), req).await;
        self.pause_deadline(started);
        Ok(result)
    }

    async fn call_batch(
        &mut self,
        reqs: Vec<Outgoing>,
    ) -> wasmtime::Result<Vec<Result<Incoming, CallError>>> {
        if reqs.len() > MAX_BATCH {
            return Ok(reqs
                .into_iter()
                .map(|_| {
                    Err(CallError::Invalid(format!(
                        "at most {MAX_BATCH} calls per batch"
                    )))
                })
                .collect());
        }
        let started = std::time::Instant::now();
        let _waiting = self.ticker.as_ref().map(|t| t.waiting());
        let calls = reqs.into_iter().map(|r| call_upstream(self.id.clone(), r));
        let results = futures_util::future::join_all(calls).await;
        self.pause_deadline(started);
        Ok(results)
    }
}

impl CountersApi for Ctx {
    fn add(&mut self, key: String, delta: i64, window_ms: u64) -> wasmtime::Result<Counter> {
        // Counters are per frontend and plugin: one plugin cannot read or
        // move another's, and one frontend's traffic never spends another's.
        let key = format!("{}/{}/{key}", self.id.frontend, self.id.name);
        let window = std::time::Duration::from_millis(window_ms.clamp(1, 30 * 24 * 3600 * 1000));
        let (value, left) = self.id.services.counters.add(key, delta, window);
        Ok(Counter {
            value,
            reset_in_ms: left.as_millis() as u64,
        })
    }

    fn take(&mut self, limits: Vec<Limit>) -> wasmtime::Result<Vec<Bucket>> {
        const MAX_LIMITS: usize = 16;
        if limits.len() > MAX_LIMITS {
            return Err(wasmtime::format_err!(
                "take: at most {MAX_LIMITS} buckets per call"
            ));
        }
        let takes: Vec<_> = limits
            .into_iter()
            .map(|l| super::services::Take {
                key: format!("{}/{}/{}", self.id.frontend, self.id.name, l.key),
                cost: l.cost,
                capacity: l.capacity,
                period: std::time::Duration::from_millis(
                    l.period_ms.clamp(1, 30 * 24 * 3600 * 1000),
                ),
            })
            .collect();
        let ms = |d: std::time::Duration| d.as_millis().min(u64::MAX as u128) as u64;
        Ok(self
            .id
            .services
            .buckets
            .take(&takes)
            .into_iter()
            .map(|t| Bucket {
                allowed: t.allowed,
                remaining: t.remaining,
                retry_after_ms: ms(t.retry_after),
                full_in_ms: ms(t.full_in),
            })
            .collect())
    }
}

impl TokensApi for Ctx {
    async fn verify_jwt(
        &mut self,
        token: String,
        keys: String,
    ) -> wasmtime::Result<Result<String, TokenError>> {
        let set = match self.id.services.keys.get(&keys) {
            Some(set) if self.id.keys.contains(&keys) => set.clone(),
            _ => {
                return Ok(Err(TokenError::NotGranted(format!(
                    "key set {keys:?} is not granted to this plugin"
                ))));
            }
        };
        let started = std::time::Instant::now();
        let _waiting = self.ticker.as_ref().map(|t| t.waiting());
        let result = set.verify(&token).await;
        self.pause_deadline(started);
        Ok(result.map_err(TokenError::Invalid))
    }
}

impl MetricsApi for Ctx {
    fn counter_add(&mut self, name: String, value: u64) -> wasmtime::Result<()> {
        self.id
            .services
            .metrics
            .counter_add(&self.id.name, &self.id.version, &name, value);
        Ok(())
    }

    fn histogram_observe(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        if value.is_finite() {
            self.id
                .services
                .metrics
                .observe(&self.id.name, &self.id.version, &name, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_parsed_once_and_matched_ignoring_case() {
        let mut kept = Vec::new();
        let a = kept_name(&mut kept, "X-Team").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.as_str(), "x-team");
        assert_eq!(kept.len(), 1);
        let b = kept_name(&mut kept, "x-TEAM").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b, a);
        assert_eq!(kept.len(), 1, "found, not parsed again");
        assert!(kept_name(&mut kept, "x team").is_err());
        assert!(kept_name(&mut kept, "").is_err());
        for i in 0..2 * KEPT_NAMES {
            let n = format!("x-{i}");
            assert_eq!(
                kept_name(&mut kept, &n).map(|h| h.to_string()),
                Ok(n.clone())
            );
        }
        assert_eq!(kept.len(), KEPT_NAMES, "bounded");
    }
}
