//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text),
//! `/config` (the effective config, secrets redacted). Plain HTTP/1.1; keep
//! it on loopback.

use std::net::SocketAddr;
use std::sync::Weak;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{Body, full};
use crate::gateway::Gateway;

/// Bind the admin listener and serve it until the task is aborted.
pub async fn spawn(
    addr: SocketAddr,
    gateway: Weak<Gateway>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "admin listening");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let gw = gateway.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let gw = gw.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(gw, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

async fn answer(gw: Weak<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let Some(gw) = gw.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if gw.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => {
            let mut text = gw.metrics().encode();
            let registries = gw.registries().await;
            if !registries.is_empty() {
                plugin_metrics(&mut text, &registries, &gw.memory_budgets().await);
                let named = gw.plugin_metrics().encode();
                match text.rfind("# EOF") {
                    Some(at) => text.insert_str(at, &named),
                    None => text.push_str(&named),
                }
            }
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/config" => {
            let body = serde_json::to_string_pretty(&gw.config().redacted_json())
                .unwrap_or_else(|_| "{}".into());
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/plugins" => {
            let body = serde_json::to_string_pretty(&plugins_json(&gw).await)
                .unwrap_or_else(|_| "{}".into());
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /healthz /readyz /metrics /config /plugins\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Every loaded plugin version: where it is used, when and how fast it
/// loaded, its calls and failures; and the files that were rejected.
async fn plugins_json(gw: &Gateway) -> serde_json::Value {
    let config = gw.config();
    let mut plugins = Vec::new();
    let mut rejected = Vec::new();
    let registries = gw.registries().await;
    // every registry shares one engine, so one epoch tick
    let tick_ms = registries
        .first()
        .map(|r| r.engine().tick().as_secs_f64() * 1000.0);
    for reg in registries {
        for p in reg.list() {
            let mut used_by = Vec::new();
            for (fname, f) in &config.frontends {
                if config.plugin_dir(fname) != Some(reg.dir()) {
                    continue;
                }
                for (i, r) in f.routes.iter().enumerate() {
                    if r.plugins
                        .iter()
                        .any(|u| u.name == p.name && u.version == p.version.to_string())
                    {
                        let rname = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
                        used_by.push(format!("{fname}/{rname}"));
                    }
                }
            }
            let loaded_ms = p
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut phases = Vec::new();
            if p.phases.contains(crate::plugin::Phases::REQUEST) {
                phases.push("request");
            }
            if p.phases.contains(crate::plugin::Phases::RESPONSE) {
                phases.push("response");
            }
            plugins.push(serde_json::json!({
                "name": p.name,
                "version": p.version.to_string(),
                "file": p.file.display().to_string(),
                "sha256": p.sha256,
                "phases": phases,
                "used_by": used_by,
                "loaded_at_unix_ms": loaded_ms,
                "load_ms": p.load_time.as_secs_f64() * 1000.0,
                "from_cache": p.from_cache,
                "calls": p.calls.load(std::sync::atomic::Ordering::Relaxed),
                "errors": p.errors.load(std::sync::atomic::Ordering::Relaxed),
            }));
        }
        rejected.extend(
            reg.failures()
                .into_iter()
                .map(|(f, e)| serde_json::json!({ "file": f.display().to_string(), "error": e })),
        );
    }
    let budgets: serde_json::Map<String, serde_json::Value> = gw
        .memory_budgets()
        .await
        .into_iter()
        .map(|(f, b)| {
            (
                f,
                serde_json::json!({ "limit_bytes": b.limit(), "used_bytes": b.used() }),
            )
        })
        .collect();
    serde_json::json!({
        "plugins": plugins,
        "rejected": rejected,
        "memory_budgets": budgets,
        "deadline_tick_ms": tick_ms,
    })
}

/// Plugin counters, in the same exposition (before OpenMetrics' `# EOF`).
fn plugin_metrics(
    text: &mut String,
    registries: &[std::sync::Arc<crate::plugin::Registry>],
    budgets: &[(String, std::sync::Arc<crate::plugin::MemoryBudget>)],
) {
    use std::fmt::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let plugins: Vec<_> = registries.iter().flat_map(|r| r.list()).collect();
    let failures: usize = registries.iter().map(|r| r.failures().len()).sum();
    let mut extra = String::new();
    type Read = fn(&crate::plugin::LoadedPlugin) -> &AtomicU64;
    let series: [(&str, &str, Read); 2] = [
        ("calls", "Calls into a plugin version.", |p| &p.calls),
        ("errors", "Failed calls (traps, deadlines, errors).", |p| {
            &p.errors
        }),
    ];
    for (name, help, value) in series {
        let _ = writeln!(extra, "# HELP transom_plugin_{name} {help}");
        let _ = writeln!(extra, "# TYPE transom_plugin_{name} counter");
        for p in &plugins {
            let _ = writeln!(
                extra,
                "transom_plugin_{name}_total{{plugin=\"{}\",version=\"{}\",dir=\"{}\"}} {}",
                p.name,
                p.version,
                p.file
                    .parent()
                    .map(|d| d.display().to_string().replace(['\\', '"'], "_"))
                    .unwrap_or_default(),
                value(p).load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        extra,
        "# HELP transom_plugin_rejected_files Plugin files that failed to load."
    );
    let _ = writeln!(extra, "# TYPE transom_plugin_rejected_files gauge");
    let _ = writeln!(extra, "transom_plugin_rejected_files {failures}");
    if !budgets.is_empty() {
        let _ = writeln!(
            extra,
            "# HELP transom_plugin_memory_bytes Linear memory held by a frontend's plugin instances."
        );
        let _ = writeln!(extra, "# TYPE transom_plugin_memory_bytes gauge");
        for (f, b) in budgets {
            let _ = writeln!(
                extra,
                "transom_plugin_memory_bytes{{frontend=\"{f}\"}} {}",
                b.used()
            );
        }
        let _ = writeln!(
            extra,
            "# HELP transom_plugin_memory_limit_bytes A frontend's plugin memory budget."
        );
        let _ = writeln!(extra, "# TYPE transom_plugin_memory_limit_bytes gauge");
        for (f, b) in budgets {
            let _ = writeln!(
                extra,
                "transom_plugin_memory_limit_bytes{{frontend=\"{f}\"}} {}",
                b.limit()
            );
        }
    }
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &extra),
        None => text.push_str(&extra),
    }
}
