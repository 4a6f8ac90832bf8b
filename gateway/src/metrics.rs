//! Prometheus metrics. Handles for the hot path (per route and status class)
//! are looked up once when a snapshot is built, so a request only bumps
//! atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Frontend name.
    pub frontend: String,
    /// Route name (`none` when nothing matched).
    pub route: String,
    /// `2xx`, `4xx`, ...
    pub class: String,
}

/// Labels per frontend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontendLabels {
    /// Frontend name.
    pub frontend: String,
}

/// Labels per upstream endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Upstream name.
    pub upstream: String,
    /// `host:port`.
    pub endpoint: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `failed`.
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100µs .. ~52s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by frontend, route and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency (to the end of the response body) by frontend.
    pub latency: HistogramFamily<FrontendLabels>,
    /// Open downstream connections by frontend.
    pub open_connections: Family<FrontendLabels, Gauge>,
    /// 1 when an endpoint passes health checks.
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    /// Times an endpoint's circuit opened.
    pub endpoint_ejections: Family<EndpointLabels, Counter>,
    /// Config reloads by result.
    pub reloads: Family<ReloadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("transom");
        let requests = Family::default();
        registry.register("requests", "Requests handled", requests.clone());
        let latency: HistogramFamily<FrontendLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Request duration until the response body ended",
            latency.clone(),
        );
        let open_connections = Family::default();
        registry.register(
            "open_connections",
            "Open downstream connections",
            open_connections.clone(),
        );
        let endpoint_healthy = Family::default();
        registry.register(
            "upstream_endpoint_healthy",
            "1 if the endpoint passes active health checks",
            endpoint_healthy.clone(),
        );
        let endpoint_ejections = Family::default();
        registry.register(
            "upstream_endpoint_ejections",
            "Times the endpoint's circuit breaker opened",
            endpoint_ejections.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            open_connections,
            endpoint_healthy,
            endpoint_ejections,
            reloads,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counters for one route, one per status class (1xx..5xx).
    pub fn route_counters(&self, frontend: &str, route: &str) -> [Counter; 5] {
        ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            self.requests
                .get_or_create(&RequestLabels {
                    frontend: frontend.to_string(),
                    route: route.to_string(),
                    class: class.to_string(),
                })
                .clone()
        })
    }

    /// Count a reload that went live except for files kept at their
    /// previous version.
    pub fn reload_partial(&self) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: "partial".to_string(),
            })
            .inc();
    }

    /// Count a config reload that succeeded or failed.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }
}
