//! The gateway's own answers: every error a client can get from Transom
//! itself, with its status and a JSON body `{"error", "request_id"}`.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};

/// Why the gateway answered instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches.
    #[error("no route for this request")]
    NoRoute,
    /// A route matches the path but not the method.
    #[error("method not allowed")]
    MethodNotAllowed(Vec<http::Method>),
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body is larger than the frontend allows.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The upstream could not be reached or broke the protocol.
    #[error("{0}")]
    BadGateway(String),
    /// No endpoint can take the request.
    #[error("{0}")]
    Unavailable(String),
    /// The upstream did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The frontend has as many requests in flight as its limits allow.
    #[error("too many requests in flight on this frontend")]
    Overloaded,
    /// A plugin failed (trap, deadline, memory limit, error).
    #[error("{0}")]
    Plugin(#[from] crate::plugin::PluginError),
}

impl ProxyError {
    /// The status sent for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Unavailable(_) | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Plugin(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Plugin(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response sent to the client.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<Body> {
        let status = self.status();
        let mut resp = json_error(status, &self.to_string(), request_id);
        if let ProxyError::MethodNotAllowed(methods) = &self {
            let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
        }
        if matches!(self, ProxyError::Overloaded) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::BodyTooLarge(_)
        ) {
            // The rest of the request cannot be trusted: close the connection.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A JSON error response.
pub fn json_error(status: StatusCode, message: &str, request_id: &HeaderValue) -> Response<Body> {
    let body = serde_json::json!({
        "error": message,
        "request_id": request_id.to_str().unwrap_or(""),
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(crate::proxy::X_REQUEST_ID.clone(), request_id.clone());
    resp
}
