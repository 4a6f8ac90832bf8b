//! What a plugin can reach: the current request or response (held in the
//! store while one call runs), its configuration, the clock and the log.
//! Everything else a component may import (WASI) is linked with an empty,
//! deny-all context: no files, no sockets, no environment.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{HostServices, Level, RequestApi, ResponseApi};

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

/// Who a store belongs to, for logs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `name@version`.
    pub plugin: Arc<str>,
    /// The route's configuration for the plugin, as JSON.
    pub config: Arc<str>,
    /// Whether this binding may see bodies.
    pub body: bool,
}

/// Store data of one plugin instance.
pub struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) stderr: MemoryOutputPipe,
    pub(super) id: Identity,
    pub(super) req: Option<RequestState>,
    pub(super) resp: Option<ResponseState>,
}

/// Bytes of a plugin's stderr kept (a panic message fits).
const STDERR_CAPACITY: usize = 64 * 1024;

impl Ctx {
    pub(super) fn new(id: Identity, memory: usize) -> Ctx {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        Ctx {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory)
                .instances(16)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            stderr,
            id,
            req: None,
            resp: None,
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

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
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

fn set_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    append: bool,
) -> Result<(), String> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "the value for {name:?} is {} bytes; at most {MAX_HEADER_VALUE} are allowed",
            value.len()
        ));
    }
    if headers.len() >= MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} headers are allowed"));
    }
    let (n, v) = header_pair(name, value)?;
    if reserved(&n) {
        return Err(format!("{name:?} is managed by the gateway"));
    }
    if append {
        headers.append(n, v);
    } else {
        headers.insert(n, v);
    }
    Ok(())
}

impl RequestApi for Ctx {
    async fn method(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.method.as_str().to_string())
    }

    async fn path(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.path.clone())
    }

    async fn query(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.req()?.query.clone())
    }

    async fn header(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(get_header(&self.req()?.headers, &name))
    }

    async fn headers(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(all_headers(&self.req()?.headers))
    }

    async fn body(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let allowed = self.id.body;
        Ok(self
            .req()?
            .body
            .as_ref()
            .filter(|_| allowed)
            .map(|b| b.to_vec()))
    }

    async fn client_ip(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.client_ip.to_string())
    }

    async fn route(&mut self) -> wasmtime::Result<String> {
        Ok(self.req()?.route.to_string())
    }

    async fn set_method(&mut self, method: String) -> wasmtime::Result<Result<(), String>> {
        let req = self.req()?;
        Ok(match Method::from_bytes(method.as_bytes()) {
            Ok(m) => {
                req.method = m;
                Ok(())
            }
            Err(_) => Err(format!("{method:?} is not an HTTP method")),
        })
    }

    async fn set_path(&mut self, path: String) -> wasmtime::Result<Result<(), String>> {
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

    async fn set_query(&mut self, query: Option<String>) -> wasmtime::Result<Result<(), String>> {
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

    async fn set_header(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(&mut self.req()?.headers, &name, &value, false))
    }

    async fn add_header(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(&mut self.req()?.headers, &name, &value, true))
    }

    async fn remove_header(&mut self, name: String) -> wasmtime::Result<()> {
        self.req()?.headers.remove(name.as_str());
        Ok(())
    }

    async fn set_body(&mut self, body: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if !self.id.body {
            return Ok(Err(
                "this route does not give the plugin the body (set `body = true`)".into(),
            ));
        }
        self.req()?.body = Some(Bytes::from(body));
        Ok(Ok(()))
    }
}

impl ResponseApi for Ctx {
    async fn status(&mut self) -> wasmtime::Result<u16> {
        Ok(self.resp()?.status.as_u16())
    }

    async fn header(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(get_header(&self.resp()?.headers, &name))
    }

    async fn headers(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(all_headers(&self.resp()?.headers))
    }

    async fn body(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let allowed = self.id.body;
        Ok(self
            .resp()?
            .body
            .as_ref()
            .filter(|_| allowed)
            .map(|b| b.to_vec()))
    }

    async fn set_status(&mut self, status: u16) -> wasmtime::Result<Result<(), String>> {
        let resp = self.resp()?;
        Ok(match StatusCode::from_u16(status) {
            Ok(s) if s.as_u16() >= 200 => {
                resp.status = s;
                Ok(())
            }
            _ => Err(format!("{status} is not a final status code")),
        })
    }

    async fn set_header(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(&mut self.resp()?.headers, &name, &value, false))
    }

    async fn add_header(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(set_header(&mut self.resp()?.headers, &name, &value, true))
    }

    async fn remove_header(&mut self, name: String) -> wasmtime::Result<()> {
        self.resp()?.headers.remove(name.as_str());
        Ok(())
    }

    async fn set_body(&mut self, body: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
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
    async fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self.id.config.to_string())
    }

    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
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

    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }
}
