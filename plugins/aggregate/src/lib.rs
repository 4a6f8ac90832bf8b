//! `aggregate`: answer one route from several upstream calls, made in
//! parallel, merged into one JSON document.
//!
//! The calls are grouped in stages. The calls of a stage go out together
//! through the gateway's batch call (concurrently, over its pools); a later
//! stage can use the JSON results of earlier ones in its paths, e.g. the
//! product ids of the orders just fetched. The plugin always answers itself
//! (it never forwards to the route's upstream): 200 with
//!
//! ```json
//! { "profile": {...}, "orders": {...}, "recommendations": null, "products": [...] }
//! ```
//!
//! keyed by call name in config order. An optional call that fails is `null`
//! and named in the `x-transom-partial` header; a required one that fails
//! makes the answer a 502.
//!
//! ```toml
//! upstreams = ["users", "orders", "recommendations", "products"]
//! plugins = [
//!   { name = "jwt-auth", version = "1.0.0", config = { ... } },   # sets x-user-id from `sub`
//!   { name = "aggregate", version = "1.0.0", config = {
//!       pattern = "/home/{section}",
//!       forward_headers = ["authorization", "x-request-id", "accept-language"],
//!       stages = [
//!         { calls = [
//!             { name = "profile", upstream = "users", path = "/users/{header.x-user-id}", required = true, timeout = "300ms" },
//!             { name = "orders", upstream = "orders", path = "/orders?user={header.x-user-id}&limit={query.limit|5}" },
//!             { name = "recommendations", upstream = "recommendations", path = "/recommendations/{header.x-user-id}", timeout = "150ms" },
//!         ] },
//!         { calls = [
//!             { name = "products", upstream = "products", path = "/products?ids={orders.orders[].product_id}" },
//!         ] },
//!       ],
//!   } },
//! ]
//! ```
//!
//! Placeholders in paths are described in [`template`]; claims reach the
//! plugin as request headers set by an authentication plugin earlier in the
//! chain (`{header.x-user-id}`). A call with `for_each = "orders.orders[].product_id"`
//! is made once per distinct value found there, with the value as `{item}`;
//! its result is an array in the values' order. Requests make at most
//! `max_calls` upstream calls: the calls without `for_each` are counted when
//! the config is loaded, and a `for_each` that would need more than what is
//! left fails as a whole (it is never cut short silently). The results of one
//! request may hold at most `max_bytes` (default 4 MiB).
//!
//! Call names are plain (letters, digits, `_`, `-`; no dots), so in
//! `{orders.orders[].product_id}` the first segment is always the call.
//!
//! The plugin entry's own `timeout` (default 100ms) bounds the whole request
//! phase, upstream calls included: set it above the sum over stages of each
//! stage's slowest call. See the README for the full reference.

use serde_json::{Value, json};
use transom_plugin_sdk::{
    Action, Answer, Call, CallError, Error, Level, Plugin, Reply, Request, export_plugin,
};

mod config;
pub mod template;

use config::{CallSpec, Config};
use template::{FillError, FillErrorKind, Resolved, Source, parse_query};

/// Most calls in one batch to the gateway (its own limit); a stage with
/// more goes out in several batches.
const BATCH: usize = 32;

pub struct Aggregate;

impl Plugin for Aggregate {
    fn on_request(req: &mut Request) -> Result<Action, Error> {
        let cfg = transom_plugin_sdk::shared_config::<Config>()?;
        let mut made = 0;
        let answer = aggregate(req, &cfg, &mut made);
        transom_plugin_sdk::metric_observe("calls", made as f64);
        Ok(Action::Respond(answer))
    }
}

export_plugin!(Aggregate);

/// What the client's request offers templates.
struct Client<'a> {
    req: &'a Request,
    method: String,
    params: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

impl Client<'_> {
    /// A client value; empty counts as missing.
    fn value(&self, source: &Source) -> Option<String> {
        let find = |pairs: &[(String, String)], name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        match source {
            Source::Path(name) => find(&self.params, name),
            Source::Query(name) => find(&self.query, name),
            Source::Header(name) => self.req.header(name),
            Source::Method => Some(self.method.clone()),
            Source::Item | Source::Call(_) => None,
        }
        .filter(|v| !v.is_empty())
    }
}

/// Where a call stands.
enum Outcome {
    /// Not settled yet.
    Pending,
    /// Its JSON (as received, for the merged document) and, when a later
    /// call reads it, parsed.
    Done { raw: Vec<u8>, value: Option<Value> },
    /// Failed or skipped: `null`.
    Null,
}

/// A call that worked: its JSON as received (trimmed) and, when a later
/// call reads it, parsed.
struct Success {
    raw: Vec<u8>,
    value: Option<Value>,
}

/// Why a call cannot be made or failed.
enum Problem {
    /// Its path could not be filled.
    Fill(FillError),
    /// It failed (the reason).
    Failed(String),
}

/// Why a call failed: what the answer may say, and more for the log (the
/// gateway's transport errors name endpoints, which clients need not see).
struct Failure {
    reason: String,
    detail: Option<String>,
}

impl Failure {
    fn new(reason: String) -> Failure {
        Failure {
            reason,
            detail: None,
        }
    }

    /// The reason with its detail, for the log.
    fn logged(&self) -> String {
        match &self.detail {
            Some(d) => format!("{} ({d})", self.reason),
            None => self.reason.clone(),
        }
    }
}

impl From<Problem> for Failure {
    fn from(p: Problem) -> Failure {
        Failure::new(match p {
            Problem::Fill(e) => e.to_string(),
            Problem::Failed(why) => why,
        })
    }
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Failure {
        let reason = match &e {
            CallError::NotGranted(_) => "the upstream is not granted to the plugin",
            CallError::Invalid(_) => "the call is invalid",
            CallError::Unavailable(_) => "the upstream is unavailable",
            CallError::Timeout => "timed out",
            CallError::Failed(_) => "the upstream connection failed",
            CallError::TooLarge => "the response is too large",
        };
        let detail = match e {
            CallError::NotGranted(d)
            | CallError::Invalid(d)
            | CallError::Unavailable(d)
            | CallError::Failed(d) => Some(d),
            CallError::Timeout | CallError::TooLarge => None,
        };
        Failure {
            reason: reason.into(),
            detail,
        }
    }
}

/// The calls one configured call turns into for this request.
struct Plan {
    /// Filled paths, one per upstream call.
    paths: Vec<String>,
    /// For `for_each`: the values, one per path.
    items: Option<Vec<String>>,
}

/// Run every stage and build the answer; `made` counts the upstream calls.
fn aggregate(req: &Request, cfg: &Config, made: &mut usize) -> Answer {
    let path = req.path();
    let params = match &cfg.pattern {
        None => Vec::new(),
        Some(p) => match p.matches(&path) {
            Some(params) => params,
            None => {
                return Answer::json(
                    404,
                    &json!({ "error": format!("no aggregate for path {path:?}") }),
                );
            }
        },
    };
    let client = Client {
        req,
        method: req.method(),
        params,
        query: req.query().as_deref().map(parse_query).unwrap_or_default(),
    };

    // What required calls need from the client is checked before any call.
    for spec in cfg.calls.iter().filter(|c| c.required) {
        for v in spec.path.vars() {
            if v.source.from_client() && v.default.is_none() && client.value(&v.source).is_none() {
                return bad_input(
                    spec,
                    &FillError {
                        var: v.text.clone(),
                        kind: FillErrorKind::Missing,
                        from_client: true,
                    },
                    &v.source,
                );
            }
        }
    }

    let headers: Vec<(String, String)> = req
        .headers()
        .into_iter()
        .filter(|(k, _)| cfg.forward_headers.contains(k))
        .collect();
    let mut outcomes: Vec<Outcome> = cfg.calls.iter().map(|_| Outcome::Pending).collect();
    let mut partial = vec![false; cfg.calls.len()];
    // Calls left for `for_each` once those without are counted.
    let mut budget = cfg.max_calls.saturating_sub(cfg.static_calls);
    let mut total = 0;

    for stage in &cfg.stages {
        let mut batch: Vec<Call> = Vec::new();
        let mut planned: Vec<(usize, Plan)> = Vec::new();
        for &i in stage {
            let spec = &cfg.calls[i];
            match plan(spec, &client, &outcomes, &mut budget) {
                Ok(p) => {
                    batch.extend(p.paths.iter().map(|path| Call {
                        upstream: spec.upstream.clone(),
                        method: "GET".into(),
                        path: path.clone(),
                        headers: headers.clone(),
                        body: None,
                        timeout: spec.timeout,
                    }));
                    planned.push((i, p));
                }
                Err(Problem::Fill(e)) if spec.required && e.from_client => {
                    let source = spec
                        .path
                        .vars()
                        .find(|v| v.text == e.var)
                        .map(|v| v.source.clone())
                        .unwrap_or(Source::Method);
                    return bad_input(spec, &e, &source);
                }
                Err(p) if spec.required => return required_failed(spec, &p.into()),
                Err(p) => {
                    leave_out(spec, &p.into());
                    outcomes[i] = Outcome::Null;
                    partial[i] = true;
                }
            }
        }

        *made += batch.len();
        let mut replies = run_batches(batch).into_iter();
        for (i, p) in planned {
            let spec = &cfg.calls[i];
            let mut next = || {
                replies
                    .next()
                    .unwrap_or_else(|| Err(CallError::Failed("the gateway gave no result".into())))
            };
            let settled = match p.items {
                None => check(next(), spec.read_later, &mut total, cfg.max_bytes)
                    .map(|Success { raw, value }| (Outcome::Done { raw, value }, false)),
                Some(items) => {
                    let results: Vec<_> = items
                        .iter()
                        .map(|item| {
                            let r = check(next(), spec.read_later, &mut total, cfg.max_bytes);
                            (item, r)
                        })
                        .collect();
                    for_each_outcome(spec, results)
                }
            };
            match settled {
                Ok((outcome, some_failed)) => {
                    outcomes[i] = outcome;
                    partial[i] = some_failed;
                }
                Err(f) if spec.required => return required_failed(spec, &f),
                Err(f) => {
                    leave_out(spec, &f);
                    outcomes[i] = Outcome::Null;
                    partial[i] = true;
                }
            }
        }
    }

    let mut body = Vec::with_capacity(total + 16 * cfg.calls.len() + 2);
    body.push(b'{');
    for (i, (spec, outcome)) in cfg.calls.iter().zip(&outcomes).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(Value::from(spec.name.as_str()).to_string().as_bytes());
        body.push(b':');
        match outcome {
            Outcome::Done { raw, .. } => body.extend_from_slice(raw),
            Outcome::Pending | Outcome::Null => body.extend_from_slice(b"null"),
        }
    }
    body.push(b'}');

    let mut answer = Answer::new(200)
        .header("content-type", "application/json")
        .body(body);
    let left_out: Vec<&str> = cfg
        .calls
        .iter()
        .zip(&partial)
        .filter(|(_, p)| **p)
        .map(|(c, _)| c.name.as_str())
        .collect();
    if !left_out.is_empty() {
        answer = answer.header("x-transom-partial", &left_out.join(","));
        transom_plugin_sdk::metric_counter("partial", 1);
    }
    answer
}

/// The upstream calls `spec` makes for this request.
fn plan(
    spec: &CallSpec,
    client: &Client<'_>,
    outcomes: &[Outcome],
    budget: &mut usize,
) -> Result<Plan, Problem> {
    let Some(each) = &spec.for_each else {
        let path = spec
            .path
            .fill(&mut |s: &Source| resolve(s, client, outcomes, None))
            .map_err(Problem::Fill)?;
        return Ok(Plan {
            paths: vec![path],
            items: None,
        });
    };
    let items = match outcomes.get(each.index) {
        Some(Outcome::Done { value: Some(v), .. }) => each.values(v),
        _ => {
            return Err(Problem::Failed(format!(
                "for_each: call {:?} has no result",
                each.name
            )));
        }
    };
    if items.len() > *budget {
        return Err(Problem::Failed(format!(
            "for_each needs {} calls but only {} of max_calls are left",
            items.len(),
            *budget
        )));
    }
    let paths = items
        .iter()
        .map(|item| {
            spec.path
                .fill(&mut |s: &Source| resolve(s, client, outcomes, Some(item)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(Problem::Fill)?;
    *budget -= paths.len();
    Ok(Plan {
        paths,
        items: Some(items),
    })
}

/// What `source` has for this request (`item`: the value of a `for_each` call).
fn resolve(
    source: &Source,
    client: &Client<'_>,
    outcomes: &[Outcome],
    item: Option<&str>,
) -> Resolved {
    match source {
        Source::Call(r) => match outcomes.get(r.index) {
            Some(Outcome::Done { value: Some(v), .. }) => Resolved::Values(r.values(v)),
            _ => Resolved::Unavailable(format!("call {:?} has no result", r.name)),
        },
        Source::Item => Resolved::Values(item.map(str::to_string).into_iter().collect()),
        other => Resolved::Values(client.value(other).into_iter().collect()),
    }
}

/// Send the calls in batches the gateway accepts; results in order.
fn run_batches(calls: Vec<Call>) -> Vec<Result<Reply, CallError>> {
    let mut replies = Vec::with_capacity(calls.len());
    let mut calls = calls.into_iter().peekable();
    while calls.peek().is_some() {
        let chunk: Vec<Call> = calls.by_ref().take(BATCH).collect();
        replies.extend(transom_plugin_sdk::call_all(chunk));
    }
    replies
}

/// A successful call: 2xx with a JSON body (parsed when `parse`), counted
/// into `total`, which may not exceed `max`. Otherwise why not.
fn check(
    reply: Result<Reply, CallError>,
    parse: bool,
    total: &mut usize,
    max: usize,
) -> Result<Success, Failure> {
    let reply = reply?;
    if !(200..300).contains(&reply.status) {
        return Err(Failure::new(format!("status {}", reply.status)));
    }
    let raw = reply.body.trim_ascii();
    let not_json = |e: String| Failure::new(format!("the body is not JSON: {e}"));
    if std::str::from_utf8(raw).is_err() {
        return Err(not_json("not UTF-8".into()));
    }
    let value = if parse {
        Some(serde_json::from_slice::<Value>(raw).map_err(|e| not_json(e.to_string()))?)
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(raw)
            .map_err(|e| not_json(e.to_string()))?;
        None
    };
    if *total + raw.len() > max {
        return Err(Failure::new(format!(
            "the results would exceed max_bytes ({max} bytes)"
        )));
    }
    *total += raw.len();
    Ok(Success {
        raw: raw.to_vec(),
        value,
    })
}

/// The array of a `for_each` call, with `null` for failed elements (and
/// whether there are any). A required call fails with its first failure.
fn for_each_outcome(
    spec: &CallSpec,
    results: Vec<(&String, Result<Success, Failure>)>,
) -> Result<(Outcome, bool), Failure> {
    let mut raw = vec![b'['];
    let mut values = Vec::new();
    let mut some_failed = false;
    for (n, (item, result)) in results.into_iter().enumerate() {
        if n > 0 {
            raw.push(b',');
        }
        match result {
            Ok(done) => {
                raw.extend_from_slice(&done.raw);
                values.push(done.value.unwrap_or(Value::Null));
            }
            Err(f) if spec.required => {
                return Err(Failure {
                    reason: format!("item {item:?}: {}", f.reason),
                    detail: f.detail,
                });
            }
            Err(f) => {
                transom_plugin_sdk::log(
                    Level::Info,
                    &format!("call {:?}, item {item:?}: {}", spec.name, f.logged()),
                );
                raw.extend_from_slice(b"null");
                values.push(Value::Null);
                some_failed = true;
            }
        }
    }
    raw.push(b']');
    let value = spec.read_later.then_some(Value::Array(values));
    Ok((Outcome::Done { raw, value }, some_failed))
}

/// An optional call is left out: logged, and later `null` + partial.
fn leave_out(spec: &CallSpec, f: &Failure) {
    transom_plugin_sdk::log(
        Level::Info,
        &format!("call {:?} left out: {}", spec.name, f.logged()),
    );
}

/// 502: a required call failed.
fn required_failed(spec: &CallSpec, f: &Failure) -> Answer {
    transom_plugin_sdk::log(
        Level::Warn,
        &format!("required call {:?} failed: {}", spec.name, f.logged()),
    );
    Answer::json(
        502,
        &json!({
            "error": format!("required call {:?} failed: {}", spec.name, f.reason),
            "call": spec.name,
        }),
    )
}

/// 400: the client's request lacks (or has an unusable) input of a required call.
fn bad_input(spec: &CallSpec, e: &FillError, source: &Source) -> Answer {
    let what = match source {
        Source::Header(n) => format!("header {n:?}"),
        Source::Query(n) => format!("query parameter {n:?}"),
        Source::Path(n) => format!("path parameter {n:?}"),
        _ => e.var.clone(),
    };
    let error = match e.kind {
        FillErrorKind::Missing => format!("missing {what} (needed by call {:?})", spec.name),
        FillErrorKind::DotSegment => format!(
            "invalid {what}: `.` and `..` cannot be used in a path (call {:?})",
            spec.name
        ),
        FillErrorKind::TooLong => format!("{what} is too long (call {:?})", spec.name),
        FillErrorKind::Unavailable(_) => format!("unusable {what} (call {:?})", spec.name),
    };
    Answer::json(
        400,
        &json!({ "error": error, "call": spec.name, "variable": e.var }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use transom_plugin_sdk::testing::TestHost;

    fn ok(body: Value) -> Result<Reply, CallError> {
        Ok(Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        })
    }

    fn status(code: u16, body: &str) -> Result<Reply, CallError> {
        Ok(Reply {
            status: code,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        })
    }

    /// Fake services for the home page: users, orders (with product ids),
    /// recommendations, products (echoing the ids asked for).
    fn services(host: TestHost) -> TestHost {
        host.upstream("users", |c| {
            let id = c.path.trim_start_matches("/users/");
            ok(json!({"id": id, "name": "Ada"}))
        })
        .upstream("orders", |_| {
            ok(json!({"orders": [
                {"id": "o1", "product_id": "p1"},
                {"id": "o2", "product_id": "p2"},
                {"id": "o3", "product_id": "p1"}
            ]}))
        })
        .upstream("recommendations", |_| ok(json!([{"title": "r1"}])))
        .upstream("products", |c| {
            let ids = c.path.split("ids=").nth(1).unwrap_or("");
            ok(json!({"ids": ids}))
        })
    }

    fn home_config() -> Value {
        json!({
            "forward_headers": ["authorization", "x-request-id"],
            "stages": [
                { "calls": [
                    { "name": "profile", "upstream": "users", "path": "/users/{header.x-user-id}", "required": true, "timeout": "300ms" },
                    { "name": "orders", "upstream": "orders", "path": "/orders?user={header.x-user-id}&limit={query.limit|5}" },
                    { "name": "recommendations", "upstream": "recommendations", "path": "/recommendations/{header.x-user-id}", "timeout": "150ms" }
                ] },
                { "calls": [
                    { "name": "products", "upstream": "products", "path": "/products?ids={orders.orders[].product_id}" }
                ] }
            ]
        })
    }

    fn run(host: &mut TestHost) -> Answer {
        match host.run_request::<Aggregate>() {
            Ok(Action::Respond(a)) => a,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn body(a: &Answer) -> Value {
        serde_json::from_slice(&a.body).expect("a JSON body")
    }

    fn paths(host: &TestHost) -> Vec<String> {
        host.calls
            .iter()
            .map(|c| format!("{} {}", c.upstream, c.path))
            .collect()
    }

    fn config_error(config: Value) -> String {
        let mut host = TestHost::new().config(&config.to_string());
        match host.run_request::<Aggregate>() {
            Err(e) => e.0,
            Ok(a) => panic!("config {config} should be refused, got {a:?}"),
        }
    }

    #[test]
    fn merges_the_calls_in_config_order() {
        let mut host = services(TestHost::new())
            .request("GET", "/home")
            .header("x-user-id", "u1")
            .header("authorization", "Bearer t")
            .header("cookie", "secret")
            .config(&home_config().to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 200);
        assert_eq!(a.header_value("content-type"), Some("application/json"));
        assert_eq!(a.header_value("x-transom-partial"), None);
        let text = String::from_utf8(a.body.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"profile":{"#) && text.contains(r#"},"orders":{"#),
            "config order: {text}"
        );
        assert_eq!(
            body(&a),
            json!({
                "profile": {"id": "u1", "name": "Ada"},
                "orders": {"orders": [
                    {"id": "o1", "product_id": "p1"},
                    {"id": "o2", "product_id": "p2"},
                    {"id": "o3", "product_id": "p1"}
                ]},
                "recommendations": [{"title": "r1"}],
                "products": {"ids": "p1,p2"}
            })
        );
        assert_eq!(host.metrics, vec![("calls".to_string(), 4.0)]);
        // Forwarded headers only, and per-call timeouts.
        let profile = &host.calls[0];
        assert_eq!(profile.method, "GET");
        assert_eq!(
            profile.headers,
            vec![("authorization".to_string(), "Bearer t".to_string())]
        );
        assert_eq!(profile.timeout, Some(Duration::from_millis(300)));
        assert_eq!(host.calls[1].timeout, None);
        assert_eq!(host.calls[2].timeout, Some(Duration::from_millis(150)));
    }

    #[test]
    fn stages_run_in_order_and_later_ones_read_earlier_results() {
        let mut host = services(TestHost::new())
            .request("GET", "/home?limit=2")
            .header("x-user-id", "u1")
            .config(&home_config().to_string());
        run(&mut host);
        assert_eq!(
            paths(&host),
            vec![
                "users /users/u1",
                "orders /orders?user=u1&limit=2",
                "recommendations /recommendations/u1",
                // Distinct ids, in document order, joined with literal commas.
                "products /products?ids=p1,p2",
            ]
        );
        assert_eq!(host.batches, vec![3, 1], "one concurrent batch per stage");
    }

    #[test]
    fn values_are_encoded_for_their_position_and_defaults_fill_gaps() {
        let config = json!({"stages": [{"calls": [
            {"name": "a", "upstream": "s", "path": "/u/{header.x-user-id}/x?q={query.q}&l={query.limit|5}&m={method}&e={query.e|}"}
        ]}]});
        let mut host = TestHost::new()
            .upstream("s", |_| ok(json!({})))
            .request("POST", "/any?q=a%26b+c%3Dd&limit=")
            .header("x-user-id", "a b/c?,")
            .config(&config.to_string());
        assert_eq!(run(&mut host).status, 200);
        assert_eq!(
            paths(&host),
            vec!["s /u/a%20b%2Fc%3F%2C/x?q=a%26b%20c%3Dd&l=5&m=POST&e="]
        );
    }

    #[test]
    fn pattern_parameters_fill_paths() {
        let config = json!({"pattern": "/home/{section}", "stages": [{"calls": [
            {"name": "s", "upstream": "sections", "path": "/sections/{path.section}"}
        ]}]});
        let mut host = TestHost::new()
            .upstream("sections", |c| ok(json!({"path": c.path})))
            .request("GET", "/home/top%20picks%2F2")
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(
            body(&a),
            json!({"s": {"path": "/sections/top%20picks%2F2"}})
        );

        let mut host = TestHost::new()
            .upstream("sections", |_| ok(json!({})))
            .request("GET", "/elsewhere/x")
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 404);
        assert!(host.calls.is_empty());
    }

    #[test]
    fn for_each_makes_one_call_per_distinct_value() {
        let config = json!({"stages": [
            {"calls": [{"name": "orders", "upstream": "orders", "path": "/orders"}]},
            {"calls": [{"name": "products", "upstream": "products", "path": "/products/{item}?full=1", "for_each": "orders.orders[].product_id"}]}
        ]});
        let mut host = services(TestHost::new())
            .upstream("products", |c| ok(json!({"at": c.path})))
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(a.header_value("x-transom-partial"), None);
        assert_eq!(
            body(&a)["products"],
            json!([{"at": "/products/p1?full=1"}, {"at": "/products/p2?full=1"}])
        );
        assert_eq!(host.calls.len(), 3);
        assert_eq!(host.metrics, vec![("calls".to_string(), 3.0)]);
    }

    #[test]
    fn for_each_over_nothing_is_an_empty_array() {
        let config = json!({"stages": [
            {"calls": [{"name": "orders", "upstream": "orders", "path": "/orders"}]},
            {"calls": [{"name": "products", "upstream": "products", "path": "/p/{item}", "for_each": "orders.orders[].product_id"}]}
        ]});
        let mut host = TestHost::new()
            .upstream("orders", |_| ok(json!({"orders": []})))
            .upstream("products", |_| ok(json!({})))
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(body(&a), json!({"orders": {"orders": []}, "products": []}));
        assert_eq!(a.header_value("x-transom-partial"), None);
        assert_eq!(host.calls.len(), 1);
    }

    #[test]
    fn for_each_elements_that_fail_are_null_and_partial() {
        let config = json!({"stages": [
            {"calls": [{"name": "ids", "upstream": "ids", "path": "/ids"}]},
            {"calls": [{"name": "items", "upstream": "items", "path": "/items/{item}", "for_each": "ids[]"}]}
        ]});
        let mut host = TestHost::new()
            .upstream("ids", |_| ok(json!([1, 2, 3])))
            .upstream("items", |c| {
                if c.path.ends_with('2') {
                    status(500, "{}")
                } else {
                    ok(json!({"p": c.path}))
                }
            })
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(
            body(&a)["items"],
            json!([{"p": "/items/1"}, null, {"p": "/items/3"}])
        );
        assert_eq!(a.header_value("x-transom-partial"), Some("items"));
    }

    #[test]
    fn a_failed_element_fails_a_required_for_each() {
        let config = json!({"stages": [
            {"calls": [{"name": "ids", "upstream": "ids", "path": "/ids"}]},
            {"calls": [{"name": "items", "upstream": "items", "path": "/items/{item}", "for_each": "ids[]", "required": true}]}
        ]});
        let mut host = TestHost::new()
            .upstream("ids", |_| ok(json!([1, 2])))
            .upstream("items", |c| {
                if c.path.ends_with('2') {
                    status(500, "{}")
                } else {
                    ok(json!({}))
                }
            })
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 502);
        assert_eq!(
            body(&a)["error"],
            "required call \"items\" failed: item \"2\": status 500"
        );
    }

    #[test]
    fn a_for_each_result_can_be_read_by_a_later_stage() {
        let config = json!({"stages": [
            {"calls": [{"name": "ids", "upstream": "s", "path": "/ids"}]},
            {"calls": [{"name": "items", "upstream": "s", "path": "/items/{item}", "for_each": "ids[]"}]},
            {"calls": [{"name": "owners", "upstream": "s", "path": "/owners?ids={items[].owner}"}]}
        ]});
        let mut host = TestHost::new()
            .upstream("s", |c| match c.path.as_str() {
                "/ids" => ok(json!(["a", "b"])),
                "/items/a" => ok(json!({"owner": "x"})),
                "/items/b" => ok(json!({"owner": "y"})),
                other => ok(json!({"path": other})),
            })
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(body(&a)["owners"], json!({"path": "/owners?ids=x,y"}));
    }

    #[test]
    fn optional_failures_are_null_and_listed_as_partial() {
        let mut host = services(TestHost::new())
            .upstream("recommendations", |_| Err(CallError::Timeout))
            .upstream("orders", |_| status(503, r#"{"error":"down"}"#))
            .header("x-user-id", "u1")
            .config(&home_config().to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 200);
        assert_eq!(
            body(&a),
            json!({"profile": {"id": "u1", "name": "Ada"}, "orders": null, "recommendations": null, "products": null})
        );
        // `products` read the failed `orders`: skipped, never called.
        assert_eq!(
            a.header_value("x-transom-partial"),
            Some("orders,recommendations,products")
        );
        assert!(host.calls.iter().all(|c| c.upstream != "products"));
        assert!(host.metrics.contains(&("partial".to_string(), 1.0)));
        assert!(host.logs.iter().any(|(_, m)| m.contains("status 503")));
    }

    #[test]
    fn a_default_stands_in_for_a_failed_input() {
        let mut config = home_config();
        config["stages"][1]["calls"][0]["path"] =
            json!("/products?ids={orders.orders[].product_id|}");
        let mut host = services(TestHost::new())
            .upstream("orders", |_| Err(CallError::Failed("reset".into())))
            .header("x-user-id", "u1")
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(body(&a)["products"], json!({"ids": ""}));
        assert_eq!(a.header_value("x-transom-partial"), Some("orders"));
    }

    #[test]
    fn missing_values_in_a_result_skip_the_call() {
        let mut host = services(TestHost::new())
            .upstream("orders", |_| ok(json!({"orders": []})))
            .header("x-user-id", "u1")
            .config(&home_config().to_string());
        let a = run(&mut host);
        assert_eq!(body(&a)["products"], Value::Null);
        assert_eq!(a.header_value("x-transom-partial"), Some("products"));
    }

    #[test]
    fn a_required_failure_is_a_502_and_stops() {
        let mut host = services(TestHost::new())
            .upstream("users", |_| status(500, "oops"))
            .header("x-user-id", "u1")
            .config(&home_config().to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 502);
        assert_eq!(a.header_value("content-type"), Some("application/json"));
        assert_eq!(
            body(&a),
            json!({"error": "required call \"profile\" failed: status 500", "call": "profile"})
        );
        // Stage 1 ran; stage 2 never did.
        assert_eq!(host.calls.len(), 3);
        assert!(host.logs.iter().any(|(l, _)| *l == Level::Warn));
    }

    #[test]
    fn transport_details_go_to_the_log_not_the_client() {
        let mut host = services(TestHost::new())
            .upstream("users", |_| {
                Err(CallError::Failed("connect to 10.1.2.3:8080 refused".into()))
            })
            .header("x-user-id", "u1")
            .config(&home_config().to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 502);
        assert_eq!(
            body(&a)["error"],
            "required call \"profile\" failed: the upstream connection failed"
        );
        assert!(
            host.logs
                .iter()
                .any(|(l, m)| *l == Level::Warn && m.contains("10.1.2.3"))
        );
    }

    #[test]
    fn a_required_call_fails_when_its_input_failed() {
        let mut config = home_config();
        config["stages"][1]["calls"][0]["required"] = json!(true);
        let mut host = services(TestHost::new())
            .upstream("orders", |_| status(404, "{}"))
            .header("x-user-id", "u1")
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 502);
        assert_eq!(body(&a)["call"], "products");
        let error = body(&a)["error"].as_str().unwrap_or("").to_string();
        assert!(error.contains("call \"orders\" has no result"), "{error}");
    }

    #[test]
    fn missing_client_input_of_a_required_call_is_a_400() {
        let mut host = services(TestHost::new()).config(&home_config().to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 400);
        assert_eq!(
            body(&a),
            json!({
                "error": "missing header \"x-user-id\" (needed by call \"profile\")",
                "call": "profile",
                "variable": "header.x-user-id"
            })
        );
        assert!(host.calls.is_empty(), "checked before any call");
    }

    #[test]
    fn missing_client_input_of_an_optional_call_is_null() {
        let config = json!({"stages": [{"calls": [
            {"name": "a", "upstream": "s", "path": "/a"},
            {"name": "b", "upstream": "s", "path": "/b?q={query.q}"}
        ]}]});
        let mut host = TestHost::new()
            .upstream("s", |_| ok(json!(1)))
            .request("GET", "/x?q=")
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(body(&a), json!({"a": 1, "b": null}));
        assert_eq!(a.header_value("x-transom-partial"), Some("b"));
        assert_eq!(paths(&host), vec!["s /a"]);
    }

    #[test]
    fn dot_segments_from_the_client_are_refused() {
        let mut host = services(TestHost::new())
            .header("x-user-id", "..")
            .config(&home_config().to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 400);
        assert_eq!(body(&a)["variable"], "header.x-user-id");
        assert!(host.calls.is_empty());
    }

    #[test]
    fn non_2xx_and_non_json_bodies_are_failures() {
        let config = json!({"stages": [{"calls": [
            {"name": "html", "upstream": "html", "path": "/"},
            {"name": "empty", "upstream": "empty", "path": "/"},
            {"name": "redirect", "upstream": "redirect", "path": "/"},
            {"name": "binary", "upstream": "binary", "path": "/"},
            {"name": "denied", "upstream": "not-granted", "path": "/"},
            {"name": "fine", "upstream": "fine", "path": "/"}
        ]}]});
        let mut host = TestHost::new()
            .upstream("html", |_| status(200, "<html></html>"))
            .upstream("empty", |_| status(200, ""))
            .upstream("redirect", |_| status(302, "{}"))
            .upstream("binary", |_| {
                Ok(Reply {
                    status: 200,
                    headers: vec![],
                    body: vec![b'"', 0xff, b'"'],
                })
            })
            .upstream("fine", |_| status(201, " [1, 2] \n"))
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(a.status, 200);
        assert_eq!(
            String::from_utf8(a.body.clone()).unwrap(),
            r#"{"html":null,"empty":null,"redirect":null,"binary":null,"denied":null,"fine":[1, 2]}"#
        );
        assert_eq!(
            a.header_value("x-transom-partial"),
            Some("html,empty,redirect,binary,denied")
        );
    }

    #[test]
    fn for_each_over_the_cap_fails_instead_of_truncating() {
        let config = |required: bool| {
            json!({"max_calls": 4, "stages": [
                {"calls": [{"name": "ids", "upstream": "ids", "path": "/ids"}]},
                {"calls": [
                    {"name": "items", "upstream": "items", "path": "/items/{item}", "for_each": "ids[]", "required": required},
                    {"name": "other", "upstream": "ids", "path": "/other"}
                ]}
            ]})
        };
        // Two static calls leave two for for_each; four ids need four.
        let host = TestHost::new()
            .upstream("ids", |_| ok(json!([1, 2, 3, 4])))
            .upstream("items", |_| ok(json!({})));
        let mut optional = host.clone().config(&config(false).to_string());
        let a = run(&mut optional);
        assert_eq!(body(&a)["items"], Value::Null);
        assert_eq!(a.header_value("x-transom-partial"), Some("items"));
        assert_eq!(paths(&optional), vec!["ids /ids", "ids /other"]);

        let mut required = host.clone().config(&config(true).to_string());
        let a = run(&mut required);
        assert_eq!(a.status, 502);
        let error = body(&a)["error"].as_str().unwrap_or("").to_string();
        assert!(error.contains("needs 4 calls but only 2"), "{error}");

        // Within the cap, it goes through.
        let mut fits = TestHost::new()
            .upstream("ids", |_| ok(json!([1, 2])))
            .upstream("items", |_| ok(json!({})))
            .config(&config(true).to_string());
        assert_eq!(run(&mut fits).status, 200);
        assert_eq!(fits.calls.len(), 4);
    }

    #[test]
    fn a_stage_larger_than_a_gateway_batch_still_completes() {
        let config = json!({"max_calls": 64, "stages": [
            {"calls": [{"name": "ids", "upstream": "ids", "path": "/ids"}]},
            {"calls": [{"name": "items", "upstream": "items", "path": "/items/{item}", "for_each": "ids[]"}]}
        ]});
        let mut host = TestHost::new()
            .upstream("ids", |_| ok(Value::from((0..40).collect::<Vec<i32>>())))
            .upstream("items", |c| ok(Value::from(c.path.clone())))
            .config(&config.to_string());
        let a = run(&mut host);
        let items = body(&a)["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), 40);
        assert_eq!(items[39], "/items/39");
        assert_eq!(host.calls.len(), 41);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let call = |name: &str, path: &str| json!({"name": name, "upstream": "u", "path": path});
        let one = |calls: Vec<Value>| json!({"stages": [{"calls": calls}]});
        let two = |a: Vec<Value>, b: Vec<Value>| json!({"stages": [{"calls": a}, {"calls": b}]});
        for (config, needle) in [
            (json!({"stages": []}), "at least one stage"),
            (json!({}), "missing field `stages`"),
            (json!({"stages": [{"calls": []}]}), "no calls"),
            (one(vec![call("a", "/a"), call("a", "/b")]), "used twice"),
            (one(vec![call("a.b", "/a")]), "no dots"),
            (one(vec![call("header", "/a")]), "reserved"),
            (one(vec![call("a", "a")]), "must start with `/`"),
            (
                one(vec![call("a", "/{nope.x}")]),
                "not a call of an earlier stage",
            ),
            (
                one(vec![call("a", "/x"), call("b", "/{a.x}")]),
                "same stage",
            ),
            (
                two(vec![call("a", "/{b.x}")], vec![call("b", "/x")]),
                "not a call of an earlier stage",
            ),
            (one(vec![call("a", "/{path.id}")]), "needs a `pattern`"),
            (one(vec![call("a", "/{item}")]), "needs for_each"),
            (
                two(
                    vec![call("a", "/")],
                    vec![json!({"name": "b", "upstream": "u", "path": "/x", "for_each": "a[]"})],
                ),
                "must use {item}",
            ),
            (
                two(
                    vec![call("a", "/")],
                    vec![
                        json!({"name": "b", "upstream": "u", "path": "/{item}", "for_each": "b[]"}),
                    ],
                ),
                "not a call of an earlier stage",
            ),
            (
                one(vec![
                    json!({"name": "a", "upstream": "u", "path": "/", "timeout": "soon"}),
                ]),
                "not a duration",
            ),
            (
                json!({"timeout": "0s", "stages": [{"calls": [call("a", "/")]}]}),
                "more than 0",
            ),
            (
                json!({"max_calls": 0, "stages": [{"calls": [call("a", "/")]}]}),
                "max_calls",
            ),
            (
                json!({"max_calls": 65, "stages": [{"calls": [call("a", "/")]}]}),
                "max_calls",
            ),
            (
                json!({"max_bytes": 0, "stages": [{"calls": [call("a", "/")]}]}),
                "max_bytes",
            ),
            (
                json!({"max_calls": 1, "stages": [{"calls": [call("a", "/"), call("b", "/")]}]}),
                "2 calls are configured but max_calls is 1",
            ),
            (
                json!({"pattern": "/a/{x}{y}", "stages": [{"calls": [call("a", "/")]}]}),
                "whole segment",
            ),
            (
                json!({"forward_headers": ["Host"], "stages": [{"calls": [call("a", "/")]}]}),
                "managed by the gateway",
            ),
            (
                json!({"forward_headers": ["a b"], "stages": [{"calls": [call("a", "/")]}]}),
                "not a header name",
            ),
            (
                one(vec![
                    json!({"name": "a", "upstream": "u", "path": "/", "extra": 1}),
                ]),
                "unknown field",
            ),
            (
                one(vec![json!({"name": "a", "upstream": "", "path": "/"})]),
                "upstream is empty",
            ),
        ] {
            let err = config_error(config.clone());
            assert!(err.contains(needle), "{config}: {err}");
        }
    }

    #[test]
    fn results_beyond_max_bytes_are_failures() {
        let config = json!({"max_bytes": 20, "stages": [{"calls": [
            {"name": "a", "upstream": "s", "path": "/a"},
            {"name": "b", "upstream": "s", "path": "/b"}
        ]}]});
        let mut host = TestHost::new()
            .upstream("s", |_| ok(json!("0123456789abc")))
            .config(&config.to_string());
        let a = run(&mut host);
        assert_eq!(body(&a), json!({"a": "0123456789abc", "b": null}));
        assert_eq!(a.header_value("x-transom-partial"), Some("b"));
        assert!(host.logs.iter().any(|(_, m)| m.contains("max_bytes")));
    }

    #[test]
    fn default_forward_header_is_the_request_id() {
        let config = json!({"timeout": "2s", "stages": [{"calls": [{"name": "a", "upstream": "s", "path": "/"}]}]});
        let mut host = TestHost::new()
            .upstream("s", |_| ok(json!({})))
            .header("x-request-id", "r1")
            .header("authorization", "Bearer t")
            .config(&config.to_string());
        run(&mut host);
        assert_eq!(
            host.calls[0].headers,
            vec![("x-request-id".to_string(), "r1".to_string())]
        );
        assert_eq!(host.calls[0].timeout, Some(Duration::from_secs(2)));
    }
}
