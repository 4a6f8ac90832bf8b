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
    /// Shared token buckets.
    pub buckets: Arc<Buckets>,
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
        let shard = &self.shards[shard_of(&key)];
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

fn shard_of(key: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// Token buckets (for rate limits), sharded like [`Counters`]. A bucket
/// refills continuously; one idle for a full period is forgotten.
pub struct Buckets {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// When it is full again (and may be forgotten).
    full_at: Instant,
}

/// One bucket to take from, as `take` receives it.
#[derive(Debug, Clone)]
pub struct Take {
    /// Bucket name.
    pub key: String,
    /// Tokens wanted.
    pub cost: u64,
    /// Capacity (burst).
    pub capacity: u64,
    /// Time to refill from empty.
    pub period: Duration,
}

/// A bucket after `take`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Whether it had enough tokens.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Until `cost` tokens are there (zero when allowed).
    pub retry_after: Duration,
    /// Until it is full.
    pub full_in: Duration,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Buckets {
    /// Take from every bucket of `takes` if all have enough, else from none.
    pub fn take(&self, takes: &[Take]) -> Vec<Taken> {
        self.take_at(takes, Instant::now())
    }

    fn take_at(&self, takes: &[Take], now: Instant) -> Vec<Taken> {
        // Lock the shards involved in index order, so concurrent multi-bucket
        // takes cannot deadlock.
        let mut idx: Vec<usize> = takes.iter().map(|t| shard_of(&t.key)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards: HashMap<usize, std::sync::MutexGuard<'_, HashMap<String, Bucket>>> =
            HashMap::new();
        for i in idx {
            guards.insert(i, self.shards[i].lock().unwrap_or_else(|p| p.into_inner()));
        }
        let rate = |t: &Take| t.capacity.max(1) as f64 / t.period.as_secs_f64().max(1e-3);
        // refill and read each bucket
        let mut levels = Vec::with_capacity(takes.len());
        for t in takes {
            let Some(map) = guards.get_mut(&shard_of(&t.key)) else {
                levels.push(0.0);
                continue;
            };
            if map.len() >= SWEEP_AT && !map.contains_key(&t.key) {
                map.retain(|_, b| b.full_at > now);
                if map.len() >= MAX_PER_SHARD {
                    map.clear();
                }
            }
            let cap = t.capacity as f64;
            let b = map.entry(t.key.clone()).or_insert(Bucket {
                tokens: cap,
                at: now,
                full_at: now,
            });
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * rate(t)).min(cap);
            b.at = now;
            levels.push(b.tokens);
        }
        let all = takes
            .iter()
            .zip(&levels)
            .all(|(t, level)| *level >= t.cost as f64);
        let mut out = Vec::with_capacity(takes.len());
        for (t, level) in takes.iter().zip(levels) {
            let cost = t.cost as f64;
            let allowed = level >= cost;
            let left = if all { level - cost } else { level };
            if let Some(b) = guards
                .get_mut(&shard_of(&t.key))
                .and_then(|m| m.get_mut(&t.key))
            {
                b.tokens = left;
                b.full_at = now + secs((t.capacity as f64 - left).max(0.0) / rate(t));
            }
            out.push(Taken {
                allowed,
                remaining: left.max(0.0).floor() as u64,
                retry_after: if allowed {
                    Duration::ZERO
                } else {
                    secs((cost - level) / rate(t))
                },
                full_in: secs((t.capacity as f64 - left).max(0.0) / rate(t)),
            });
        }
        out
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn take(key: &str, cost: u64, capacity: u64, period_ms: u64) -> Take {
        Take {
            key: key.into(),
            cost,
            capacity,
            period: Duration::from_millis(period_ms),
        }
    }

    #[test]
    fn bucket_refills_evenly() {
        let b = Buckets::default();
        let t0 = Instant::now();
        let per_sec = [take("a", 1, 10, 1000)];
        for i in 0..10 {
            let r = b.take_at(&per_sec, t0);
            assert!(r[0].allowed, "burst of 10, request {i}");
        }
        let r = b.take_at(&per_sec, t0);
        assert!(!r[0].allowed);
        assert_eq!(r[0].remaining, 0);
        assert_eq!(r[0].retry_after, Duration::from_millis(100));
        // 10/s: after 100 ms one token is back
        let r = b.take_at(&per_sec, t0 + Duration::from_millis(100));
        assert!(r[0].allowed);
        let r = b.take_at(&per_sec, t0 + Duration::from_millis(150));
        assert!(!r[0].allowed);
    }

    #[test]
    fn several_limits_take_all_or_nothing() {
        let b = Buckets::default();
        let t0 = Instant::now();
        let limits = [take("s", 1, 2, 1000), take("h", 1, 3, 3_600_000)];
        assert!(b.take_at(&limits, t0).iter().all(|t| t.allowed));
        assert!(b.take_at(&limits, t0).iter().all(|t| t.allowed));
        // the per-second bucket is empty: nothing is taken from the hourly one
        let r = b.take_at(&limits, t0);
        assert!(!r[0].allowed && r[1].allowed);
        assert_eq!(r[1].remaining, 1);
        let r = b.take_at(&limits, t0 + Duration::from_secs(1));
        assert!(r.iter().all(|t| t.allowed));
        assert_eq!(r[1].remaining, 0);
        let r = b.take_at(&limits, t0 + Duration::from_secs(2));
        assert!(r[0].allowed && !r[1].allowed);
    }
}
