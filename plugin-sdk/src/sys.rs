//! The host calls behind [`crate::Request`], [`crate::Response`] and the
//! services: the gateway's imports on `wasm32`, the fake host of
//! [`crate::testing`] everywhere else.

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::transom::plugin::host::Level;

#[cfg(target_arch = "wasm32")]
pub mod request {
    use crate::bindings::transom::plugin::request as r;
    pub fn method() -> String {
        r::method()
    }
    pub fn path() -> String {
        r::path()
    }
    pub fn query() -> Option<String> {
        r::query()
    }
    pub fn header(name: &str) -> Option<String> {
        r::header(name)
    }
    pub fn headers() -> Vec<(String, String)> {
        r::headers()
    }
    pub fn body() -> Option<Vec<u8>> {
        r::body()
    }
    pub fn client_ip() -> String {
        r::client_ip()
    }
    pub fn route() -> String {
        r::route()
    }
    pub fn set_method(m: &str) -> Result<(), String> {
        r::set_method(m)
    }
    pub fn set_path(p: &str) -> Result<(), String> {
        r::set_path(p)
    }
    pub fn set_query(q: Option<&str>) -> Result<(), String> {
        r::set_query(q)
    }
    pub fn set_header(n: &str, v: &str) -> Result<(), String> {
        r::set_header(n, v)
    }
    pub fn add_header(n: &str, v: &str) -> Result<(), String> {
        r::add_header(n, v)
    }
    pub fn remove_header(n: &str) {
        r::remove_header(n)
    }
    pub fn set_body(b: &[u8]) -> Result<(), String> {
        r::set_body(b)
    }
    pub fn set_response_header(n: &str, v: &str) -> Result<(), String> {
        r::set_response_header(n, v)
    }
    pub fn add_response_header(n: &str, v: &str) -> Result<(), String> {
        r::add_response_header(n, v)
    }
    pub fn remove_response_header(n: &str) -> Result<(), String> {
        r::remove_response_header(n)
    }
    pub fn skip_response_phase() {
        r::skip_response_phase()
    }
}

#[cfg(target_arch = "wasm32")]
pub mod response {
    use crate::bindings::transom::plugin::response as r;
    pub fn status() -> u16 {
        r::status()
    }
    pub fn header(name: &str) -> Option<String> {
        r::header(name)
    }
    pub fn headers() -> Vec<(String, String)> {
        r::headers()
    }
    pub fn body() -> Option<Vec<u8>> {
        r::body()
    }
    pub fn set_status(s: u16) -> Result<(), String> {
        r::set_status(s)
    }
    pub fn set_header(n: &str, v: &str) -> Result<(), String> {
        r::set_header(n, v)
    }
    pub fn add_header(n: &str, v: &str) -> Result<(), String> {
        r::add_header(n, v)
    }
    pub fn remove_header(n: &str) {
        r::remove_header(n)
    }
    pub fn set_body(b: &[u8]) -> Result<(), String> {
        r::set_body(b)
    }
}

#[cfg(target_arch = "wasm32")]
pub mod host {
    use crate::bindings::transom::plugin::host as h;
    pub fn config() -> String {
        h::config()
    }
    pub fn log(level: super::Level, message: &str) {
        h::log(level, message)
    }
    pub fn now_ms() -> u64 {
        h::now_ms()
    }
}

#[cfg(target_arch = "wasm32")]
pub mod services {
    use crate::bindings::transom::plugin::{
        counters as c, metrics as m, tokens as t, upstream as u,
    };
    use crate::{Call, CallError, Reply};

    fn to_wit(call: Call) -> u::Outgoing {
        u::Outgoing {
            upstream: call.upstream,
            method: call.method,
            path: call.path,
            headers: call.headers,
            body: call.body,
            timeout_ms: call
                .timeout
                .map(|d| d.as_millis().min(u32::MAX as u128) as u32),
        }
    }

    fn from_wit(r: Result<u::Incoming, u::CallError>) -> Result<Reply, CallError> {
        match r {
            Ok(i) => Ok(Reply {
                status: i.status,
                headers: i.headers,
                body: i.body,
            }),
            Err(u::CallError::NotGranted(s)) => Err(CallError::NotGranted(s)),
            Err(u::CallError::Invalid(s)) => Err(CallError::Invalid(s)),
            Err(u::CallError::Unavailable(s)) => Err(CallError::Unavailable(s)),
            Err(u::CallError::Timeout) => Err(CallError::Timeout),
            Err(u::CallError::Failed(s)) => Err(CallError::Failed(s)),
            Err(u::CallError::TooLarge) => Err(CallError::TooLarge),
        }
    }

    pub fn call(c: Call) -> Result<Reply, CallError> {
        from_wit(u::call(&to_wit(c)))
    }
    pub fn call_batch(cs: Vec<Call>) -> Vec<Result<Reply, CallError>> {
        let reqs: Vec<u::Outgoing> = cs.into_iter().map(to_wit).collect();
        u::call_batch(&reqs).into_iter().map(from_wit).collect()
    }
    pub fn counter_add(key: &str, delta: i64, window_ms: u64) -> (i64, u64) {
        let c = c::add(key, delta, window_ms);
        (c.value, c.reset_in_ms)
    }
    pub fn take(limits: &[crate::Limit]) -> Vec<crate::Bucket> {
        let wit: Vec<c::Limit> = limits
            .iter()
            .map(|l| c::Limit {
                key: l.key.clone(),
                cost: l.cost,
                capacity: l.capacity,
                period_ms: l.period.as_millis().min(u64::MAX as u128) as u64,
            })
            .collect();
        c::take(&wit)
            .into_iter()
            .map(|b| crate::Bucket {
                allowed: b.allowed,
                remaining: b.remaining,
                retry_after: std::time::Duration::from_millis(b.retry_after_ms),
                full_in: std::time::Duration::from_millis(b.full_in_ms),
            })
            .collect()
    }
    pub fn verify_jwt(token: &str, keys: &str) -> Result<String, crate::TokenError> {
        t::verify_jwt(token, keys).map_err(|e| match e {
            t::TokenError::NotGranted(s) => crate::TokenError::NotGranted(s),
            t::TokenError::Invalid(s) => crate::TokenError::Invalid(s),
        })
    }
    pub fn metric_counter(name: &str, v: u64) {
        m::counter_add(name, v)
    }
    pub fn metric_observe(name: &str, v: f64) {
        m::histogram_observe(name, v)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use crate::testing::Level;

#[cfg(not(target_arch = "wasm32"))]
pub mod services {
    use crate::testing::with;
    use crate::{Call, CallError, Reply};

    pub fn call(c: Call) -> Result<Reply, CallError> {
        crate::testing::fake_call(c)
    }
    pub fn call_batch(cs: Vec<Call>) -> Vec<Result<Reply, CallError>> {
        with(|h| h.batches.push(cs.len()));
        cs.into_iter().map(crate::testing::fake_call).collect()
    }
    pub fn counter_add(key: &str, delta: i64, window_ms: u64) -> (i64, u64) {
        with(|h| h.counter_add(key, delta, window_ms))
    }
    pub fn take(limits: &[crate::Limit]) -> Vec<crate::Bucket> {
        with(|h| h.take(limits))
    }
    pub fn verify_jwt(token: &str, keys: &str) -> Result<String, crate::TokenError> {
        with(|h| h.verify(token, keys))
    }
    pub fn metric_counter(name: &str, v: u64) {
        with(|h| h.metrics.push((name.to_string(), v as f64)))
    }
    pub fn metric_observe(name: &str, v: f64) {
        with(|h| h.metrics.push((name.to_string(), v)))
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub mod request {
    use crate::testing::with;
    pub fn method() -> String {
        with(|h| h.request.method.clone())
    }
    pub fn path() -> String {
        with(|h| h.request.path.clone())
    }
    pub fn query() -> Option<String> {
        with(|h| h.request.query.clone())
    }
    pub fn header(name: &str) -> Option<String> {
        with(|h| h.request.header(name))
    }
    pub fn headers() -> Vec<(String, String)> {
        with(|h| h.request.headers.clone())
    }
    pub fn body() -> Option<Vec<u8>> {
        with(|h| if h.body { h.request.body.clone() } else { None })
    }
    pub fn client_ip() -> String {
        with(|h| h.request.client_ip.clone())
    }
    pub fn route() -> String {
        with(|h| h.request.route.clone())
    }
    pub fn set_method(m: &str) -> Result<(), String> {
        with(|h| h.request.set_method(m))
    }
    pub fn set_path(p: &str) -> Result<(), String> {
        with(|h| h.request.set_path(p))
    }
    pub fn set_query(q: Option<&str>) -> Result<(), String> {
        with(|h| {
            h.request.query = q.map(str::to_string);
            Ok(())
        })
    }
    pub fn set_header(n: &str, v: &str) -> Result<(), String> {
        with(|h| crate::testing::set_header(&mut h.request.headers, n, v, false))
    }
    pub fn add_header(n: &str, v: &str) -> Result<(), String> {
        with(|h| crate::testing::set_header(&mut h.request.headers, n, v, true))
    }
    pub fn remove_header(n: &str) {
        with(|h| crate::testing::remove_header(&mut h.request.headers, n))
    }
    pub fn set_body(b: &[u8]) -> Result<(), String> {
        with(|h| h.set_request_body(b))
    }
    pub fn set_response_header(n: &str, v: &str) -> Result<(), String> {
        with(|h| crate::testing::set_header(&mut h.response.headers, n, v, false))
    }
    pub fn add_response_header(n: &str, v: &str) -> Result<(), String> {
        with(|h| crate::testing::set_header(&mut h.response.headers, n, v, true))
    }
    pub fn remove_response_header(n: &str) -> Result<(), String> {
        with(|h| crate::testing::remove_settable_header(&mut h.response.headers, n))
    }
    pub fn skip_response_phase() {
        with(|h| h.response_phase_skipped = true)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub mod response {
    use crate::testing::with;
    pub fn status() -> u16 {
        with(|h| h.response.status)
    }
    pub fn header(name: &str) -> Option<String> {
        with(|h| h.response.header(name))
    }
    pub fn headers() -> Vec<(String, String)> {
        with(|h| h.response.headers.clone())
    }
    pub fn body() -> Option<Vec<u8>> {
        with(|h| {
            if h.body {
                h.response.body.clone()
            } else {
                None
            }
        })
    }
    pub fn set_status(s: u16) -> Result<(), String> {
        with(|h| h.response.set_status(s))
    }
    pub fn set_header(n: &str, v: &str) -> Result<(), String> {
        with(|h| crate::testing::set_header(&mut h.response.headers, n, v, false))
    }
    pub fn add_header(n: &str, v: &str) -> Result<(), String> {
        with(|h| crate::testing::set_header(&mut h.response.headers, n, v, true))
    }
    pub fn remove_header(n: &str) {
        with(|h| crate::testing::remove_header(&mut h.response.headers, n))
    }
    pub fn set_body(b: &[u8]) -> Result<(), String> {
        with(|h| h.set_response_body(b))
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub mod host {
    use crate::testing::with;
    pub fn config() -> String {
        with(|h| h.config.clone())
    }
    pub fn log(level: super::Level, message: &str) {
        with(|h| h.logs.push((level, message.to_string())))
    }
    pub fn now_ms() -> u64 {
        with(|h| h.now_ms)
    }
}
