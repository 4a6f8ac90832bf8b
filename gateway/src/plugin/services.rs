//! The gateway services plugins reach through the host: upstream calls,
//! shared counters, token verification and plugin-named metrics. One
//! [`Services`] belongs to one applied config; counters and metrics outlive
//! reloads.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::keys::KeySet;
use crate::upstream::Upstream;

/// What plugins may use, by name; each binding sees only what its route grants.
pub struct Services {
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Key sets by name.
    pub keys: BTreeMap<String, Arc<KeySet>>,
    /// Shared counters.
    pub counters: Arc<Counters>,
    /// Plugin-named metrics.
    pub metrics: Arc<PluginMetrics>,
}

const SHARDS: usize = 16;
/// Counters kept per shard before expired ones are swept.
const SWEEP_AT: usize = 4096;
/// Hard bound per shard: past it, the oldest windows are dropped.
const MAX_PER_SHARD: usize = 65_536;

/// Fixed-window counters, sharded to keep lock hold times short.
pub struct Counters {
    shards: Vec<Mutex<HashMap<String, Window>>>,
}

struct Window {
    value: i64,
    ends: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Counters {
    /// Add `delta` to `key` in a window of `window`; (value, time left).
    pub fn add(&self, key: String, delta: i64, window: Duration) -> (i64, Duration) {
        let now = Instant::now();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT && !map.contains_key(&key) {
            map.retain(|_, w| w.ends > now);
            if map.len() >= MAX_PER_SHARD {
                let mut ends: Vec<Instant> = map.values().map(|w| w.ends).collect();
                ends.sort();
                let cut = ends[ends.len() / 2];
                map.retain(|_, w| w.ends > cut);
            }
        }
        let w = map.entry(key).or_insert(Window {
            value: 0,
            ends: now + window,
        });
        if w.ends <= now {
            w.value = 0;
            w.ends = now + window;
        }
        w.value = w.value.saturating_add(delta);
        (w.value, w.ends.saturating_duration_since(now))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    plugin: String,
    version: String,
    name: String,
}

type HistogramFamily = Family<MetricLabels, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Metrics plugins name themselves.
pub struct PluginMetrics {
    registry: Registry,
    counters: Family<MetricLabels, Counter>,
    histograms: HistogramFamily,
    /// Distinct series, bounded so a plugin cannot exhaust memory with names.
    series: Mutex<usize>,
}

/// Distinct (plugin, name) series allowed.
const MAX_SERIES: usize = 1000;

impl Default for PluginMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("transom_plugin_metric");
        let counters = Family::default();
        registry.register("counter", "Counters named by plugins", counters.clone());
        let histograms: HistogramFamily = Family::new_with_constructor(histogram);
        registry.register(
            "histogram",
            "Histograms named by plugins",
            histograms.clone(),
        );
        PluginMetrics {
            registry,
            counters,
            histograms,
            series: Mutex::new(0),
        }
    }
}

impl PluginMetrics {
    fn admit(&self, name: &str) -> bool {
        if name.is_empty() || name.len() > 64 {
            return false;
        }
        let mut n = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if *n >= MAX_SERIES {
            return false;
        }
        *n += 1;
        true
    }

    fn labels(plugin: &str, version: &str, name: &str) -> MetricLabels {
        MetricLabels {
            plugin: plugin.to_string(),
            version: version.to_string(),
            name: name.to_string(),
        }
    }

    /// Add to a plugin's counter.
    pub fn counter_add(&self, plugin: &str, version: &str, name: &str, value: u64) {
        let labels = Self::labels(plugin, version, name);
        if let Some(c) = self.counters.get(&labels) {
            c.inc_by(value);
        } else if self.admit(name) {
            self.counters.get_or_create(&labels).inc_by(value);
        }
    }

    /// Observe a value in a plugin's histogram.
    pub fn observe(&self, plugin: &str, version: &str, name: &str, value: f64) {
        let labels = Self::labels(plugin, version, name);
        if let Some(h) = self.histograms.get(&labels) {
            h.observe(value);
        } else if self.admit(name) {
            self.histograms.get_or_create(&labels).observe(value);
        }
    }

    /// Text exposition, without the trailing `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
