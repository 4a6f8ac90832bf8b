//! A route's plugin chain: the request phase runs the plugins in order
//! (the first that answers ends it, and its answer goes back through the
//! response phases of the plugins before it), the response phase runs them
//! in reverse. Response headers a plugin set in its request phase are
//! applied at its place in the response phase, without calling it again;
//! a plugin whose request phase skipped its response phase is not called
//! there. Bodies are buffered only when a plugin that will see them asked
//! for them (`body = true`).
//!
//! The phase futures own what they use (the request goes in and comes back
//! out), so they are `Send + 'static` and borrow nothing from the caller.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{Body, full};
use crate::error::ProxyError;
use crate::plugin::{
    AfterRequest, Answer, Binding, Decision, Phases, PluginError, RequestState, ResponseState,
};

/// The plugins of one route.
#[derive(Default, Clone)]
pub struct Chain {
    /// Bindings in request-phase order.
    pub plugins: Arc<[Arc<Binding>]>,
}

/// What the request phase decided.
pub enum RequestOutcome {
    /// Forward the (edited) request; `Some` replaces the body. What the
    /// request phase left for the response phase comes along.
    Forward(Option<Bytes>, Instances),
    /// A plugin answered.
    Respond(Response<Body>),
}

/// What a request's request phase left for its response phase, by the
/// plugin's place in the chain: kept instances, response header edits, and
/// skipped response phases. Plugins that left nothing are not in it (and a
/// request that ran none allocates nothing).
#[derive(Default)]
pub struct Instances(Vec<(usize, AfterRequest)>);

impl Instances {
    fn take(&mut self, pos: usize) -> Option<AfterRequest> {
        let i = self.0.iter().position(|(p, _)| *p == pos)?;
        Some(self.0.swap_remove(i).1)
    }

    fn keep(&mut self, pos: usize, binding: &Binding, after: AfterRequest) {
        let default = after.held.is_none()
            && after.edits.is_empty()
            && after.response_phase == binding.phases().contains(Phases::RESPONSE);
        if !default {
            self.0.push((pos, after));
        }
    }

    /// Whether the plugin at `pos` runs its response phase.
    fn responds(&self, pos: usize, binding: &Binding) -> bool {
        match self.0.iter().find(|(p, _)| *p == pos) {
            Some((_, after)) => after.response_phase,
            None => binding.phases().contains(Phases::RESPONSE),
        }
    }

    fn has_edits(&self) -> bool {
        self.0.iter().any(|(_, a)| !a.edits.is_empty())
    }
}

impl Chain {
    /// True when no plugin runs.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Run the request phase; the request is handed back, edited.
    pub fn on_request(
        &self,
        route: Arc<str>,
        client_ip: IpAddr,
        req: Request<Incoming>,
        max_body: u64,
    ) -> impl Future<Output = Result<(Request<Incoming>, RequestOutcome), ProxyError>> + Send + 'static
    {
        request_phase(self.plugins.clone(), route, client_ip, req, max_body)
    }

    /// Whether the response phase has anything to do for a request whose
    /// request phase left `ran`.
    pub fn responds(&self, ran: &Instances) -> bool {
        response_work(&self.plugins, ran)
    }

    /// Run the response phase, last plugin first.
    pub fn on_response(
        &self,
        resp: Response<Body>,
        max_body: u64,
        held: Instances,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static {
        let all = self.plugins.len();
        response_phase(self.plugins.clone(), all, resp, max_body, held)
    }
}

async fn request_phase(
    chain: Arc<[Arc<Binding>]>,
    route: Arc<str>,
    client_ip: IpAddr,
    mut req: Request<Incoming>,
    max_body: u64,
) -> Result<(Request<Incoming>, RequestOutcome), ProxyError> {
    let plugins = || {
        chain
            .iter()
            .enumerate()
            .filter(|(_, b)| b.phases().contains(Phases::REQUEST))
    };
    if plugins().next().is_none() {
        return Ok((req, RequestOutcome::Forward(None, Instances::default())));
    }
    let body = if plugins().any(|(_, b)| b.body) {
        Some(read_limited(req.body_mut(), max_body).await?)
    } else {
        None
    };
    let mut state = RequestState {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers: std::mem::take(req.headers_mut()),
        body,
        client_ip,
        route,
    };
    let mut held = Instances::default();
    for (pos, binding) in plugins() {
        let (next, decision, after) = binding.on_request(state).await.map_err(plugin_error)?;
        state = next;
        if let Decision::Respond(answer) = decision {
            // The answer goes back through the response phases of the
            // plugins before this one, as an upstream response would (so a
            // CORS plugin decorates an auth plugin's 401, a shaping plugin
            // shapes an aggregation). The response headers this plugin set
            // apply to its own answer.
            let mut resp = answer_response(answer, &binding.plugin.id)?;
            for edit in after.edits {
                edit.apply(resp.headers_mut());
            }
            let resp = response_phase(chain.clone(), pos, resp, max_body, held).await?;
            return Ok((req, RequestOutcome::Respond(resp)));
        }
        held.keep(pos, binding, after);
    }
    *req.method_mut() = state.method;
    *req.headers_mut() = state.headers;
    // Most plugins leave the path and query alone: keep the parsed URI.
    if state.path != req.uri().path() || state.query.as_deref() != req.uri().query() {
        let pq = match &state.query {
            Some(q) => format!("{}?{q}", state.path),
            None => state.path,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| ProxyError::BadRequest("plugins produced an invalid path".into()))?,
        );
        *req.uri_mut() = http::Uri::from_parts(parts)
            .map_err(|e| ProxyError::BadRequest(format!("rewritten URI: {e}")))?;
    }
    if let Some(b) = &state.body {
        if let Ok(v) = HeaderValue::from_str(&b.len().to_string()) {
            req.headers_mut().insert(header::CONTENT_LENGTH, v);
        }
        req.headers_mut().remove(header::TRANSFER_ENCODING);
    }
    Ok((req, RequestOutcome::Forward(state.body, held)))
}

/// Whether `chain`'s response phase has anything to do after a request
/// phase that left `held`: a header edit to apply or a plugin to call.
fn response_work(chain: &[Arc<Binding>], held: &Instances) -> bool {
    held.has_edits()
        || chain
            .iter()
            .enumerate()
            .any(|(pos, b)| held.responds(pos, b))
}

/// The response phases of `chain[..upto]`, last plugin first.
async fn response_phase(
    chain: Arc<[Arc<Binding>]>,
    upto: usize,
    resp: Response<Body>,
    max_body: u64,
    mut held: Instances,
) -> Result<Response<Body>, ProxyError> {
    let chain = &chain[..upto.min(chain.len())];
    if !response_work(chain, &held) {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let buffer = chain
        .iter()
        .enumerate()
        .any(|(pos, b)| b.body && held.responds(pos, b));
    let (stream, buffered) = if buffer {
        (None, Some(read_limited_body(body, max_body).await?))
    } else {
        (Some(body), None)
    };
    let mut state = ResponseState {
        status: parts.status,
        headers: parts.headers,
        body: buffered,
    };
    for (pos, binding) in chain.iter().enumerate().rev() {
        let (kept, responds) = match held.take(pos) {
            Some(after) => {
                for edit in after.edits {
                    edit.apply(&mut state.headers);
                }
                (after.held, after.response_phase)
            }
            None => (None, binding.phases().contains(Phases::RESPONSE)),
        };
        if responds {
            state = binding
                .on_response(kept, state)
                .await
                .map_err(plugin_error)?;
        }
    }
    let body = match (stream, state.body) {
        (_, Some(bytes)) => {
            state.headers.remove(header::TRANSFER_ENCODING);
            if let Ok(v) = HeaderValue::from_str(&bytes.len().to_string()) {
                state.headers.insert(header::CONTENT_LENGTH, v);
            }
            full(bytes)
        }
        (Some(stream), None) => stream,
        (None, None) => crate::body::empty(),
    };
    let mut out = Response::new(body);
    *out.status_mut() = state.status;
    *out.headers_mut() = state.headers;
    *out.version_mut() = parts.version;
    Ok(out)
}

fn plugin_error(e: PluginError) -> ProxyError {
    tracing::warn!(error = %e, "plugin failed");
    ProxyError::Plugin(e)
}

fn answer_response(answer: Answer, plugin: &Arc<str>) -> Result<Response<Body>, ProxyError> {
    let invalid = |message: String| {
        ProxyError::Plugin(PluginError::Failed {
            plugin: plugin.clone(),
            message,
        })
    };
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| invalid(format!("answered with invalid status {}", answer.status)))?;
    let mut resp = Response::new(full(answer.body));
    *resp.status_mut() = status;
    for (k, v) in answer.headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) else {
            return Err(invalid(format!("answered with an invalid header {k:?}")));
        };
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    Ok(resp)
}

async fn read_limited(body: &mut Incoming, max: u64) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::BadRequest(format!("request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > max {
                return Err(ProxyError::BodyTooLarge(max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

async fn read_limited_body(mut body: Body, max: u64) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::BadGateway(format!("upstream response body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > max {
                return Err(ProxyError::BadGateway(format!(
                    "upstream response larger than {max} bytes cannot be given to plugins"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
