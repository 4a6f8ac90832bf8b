//! The running gateway: builds a snapshot from a validated [`Config`] and
//! applies it in a fixed order (build upstreams → build frontend runtimes →
//! bind new listeners → swap → close removed listeners). Any failure before
//! the swap leaves the previous snapshot serving untouched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::config::{Config, ConfigErrors, PluginsConfig};
use crate::filter::Chain;
use crate::frontend::{FrontendRuntime, Listener};
use crate::metrics::Metrics;
use crate::plugin::{Binding, MemoryBudget, PluginEngine, Registry};
use crate::upstream::Upstream;

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A TLS file could not be used.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A route pins a plugin version that is not loaded.
    #[error("{0}")]
    Plugin(String),
    /// The plugin engine could not start.
    #[error("{0}")]
    PluginEngine(#[from] crate::plugin::PluginError),
    /// A listener could not be bound.
    #[error("frontend {frontend:?}: cannot listen on {addr}: {source}")]
    Bind {
        /// Frontend name.
        frontend: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Options that come from the command line, not the config.
#[derive(Debug, Clone)]
pub struct Options {
    /// Write one access-log line per request.
    pub access_log: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { access_log: true }
    }
}

/// What is live right now.
struct State {
    /// Listeners by frontend name, with the address they were configured with.
    listeners: BTreeMap<String, (SocketAddr, Listener)>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    keys: BTreeMap<String, Arc<crate::plugin::keys::KeySet>>,
    /// The plugin engine, with the settings it was built for.
    engine: Option<(PluginsConfig, Arc<PluginEngine>)>,
    /// One registry per plugin directory in use.
    registries: BTreeMap<PathBuf, Arc<Registry>>,
    /// Per-frontend plugin memory budgets, kept while their size holds.
    budgets: BTreeMap<String, Arc<MemoryBudget>>,
    /// Per-frontend in-flight request limits, kept while their size holds.
    inflight: BTreeMap<String, (usize, Arc<tokio::sync::Semaphore>)>,
}

/// A running gateway: every frontend's listener plus the admin listener.
pub struct Gateway {
    root: PathBuf,
    metrics: Arc<Metrics>,
    counters: Arc<crate::plugin::Counters>,
    buckets: Arc<crate::plugin::services::Buckets>,
    plugin_metrics: Arc<crate::plugin::PluginMetrics>,
    options: Options,
    state: Mutex<State>,
    config: ArcSwap<Config>,
    ready: AtomicBool,
    admin: std::sync::Mutex<Option<(SocketAddr, tokio::task::JoinHandle<()>)>>,
}

impl Gateway {
    /// Load the config at `path` and start serving it.
    pub async fn start(
        path: impl AsRef<Path>,
        options: Options,
    ) -> Result<Arc<Gateway>, ApplyError> {
        let config = Config::load(path.as_ref())?;
        let gw = Arc::new(Gateway {
            root: path.as_ref().to_path_buf(),
            metrics: Arc::new(Metrics::default()),
            counters: Arc::default(),
            buckets: Arc::default(),
            plugin_metrics: Arc::default(),
            options,
            state: Mutex::new(State {
                listeners: BTreeMap::new(),
                upstreams: BTreeMap::new(),
                keys: BTreeMap::new(),
                engine: None,
                registries: BTreeMap::new(),
                budgets: BTreeMap::new(),
                inflight: BTreeMap::new(),
            }),
            config: ArcSwap::from_pointee(config.clone()),
            ready: AtomicBool::new(false),
            admin: std::sync::Mutex::new(None),
        });
        gw.apply(config).await?;
        if let Some(admin) = gw.config.load().admin.clone() {
            let (addr, task) = crate::admin::spawn(admin.listen, Arc::downgrade(&gw))
                .await
                .map_err(|source| ApplyError::Bind {
                    frontend: "[admin]".into(),
                    addr: admin.listen,
                    source,
                })?;
            *gw.admin.lock().unwrap_or_else(|p| p.into_inner()) = Some((addr, task));
        }
        gw.ready.store(true, Ordering::Relaxed);
        Ok(gw)
    }

    /// The root config file.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Metrics that plugins name.
    pub fn plugin_metrics(&self) -> &crate::plugin::PluginMetrics {
        &self.plugin_metrics
    }

    /// The config currently applied.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Whether the gateway is serving and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The bound address of a frontend.
    pub async fn frontend_addr(&self, name: &str) -> Option<SocketAddr> {
        let state = self.state.lock().await;
        state.listeners.get(name).map(|(_, l)| l.local_addr)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(a, _)| *a)
    }

    /// Upstream by name (for the admin API and tests).
    pub async fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.state.lock().await.upstreams.get(name).cloned()
    }

    /// Re-read the config from disk and apply it; on failure the old config
    /// keeps serving. Counted in `transom_config_reloads`.
    ///
    /// A broken file other than the root is kept at its previous version
    /// while the other files' changes go live (counted as `partial`).
    pub async fn reload(&self) -> Result<bool, ApplyError> {
        let previous = self.config.load_full();
        let mut rejected = Vec::new();
        let result = match Config::reload(&self.root, &previous) {
            Ok(r) => {
                rejected = r.rejected;
                if r.config.files == previous.files {
                    if !rejected.is_empty() {
                        self.metrics.reload_partial();
                        tracing::error!(
                            "config change rejected; those files keep their previous version:\n{}",
                            ConfigErrors(rejected)
                        );
                    }
                    return Ok(false);
                }
                self.apply(r.config).await
            }
            Err(e) => Err(ApplyError::Config(e)),
        };
        match &result {
            Ok(()) if rejected.is_empty() => {
                self.metrics.reload(true);
                tracing::info!("config reloaded");
            }
            Ok(()) => {
                self.metrics.reload_partial();
                tracing::error!(
                    "config reloaded, except for files that keep their previous version:\n{}",
                    ConfigErrors(rejected)
                );
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!("config reload rejected; the previous config keeps serving:\n{e}")
            }
        }
        result.map(|()| true)
    }

    /// Apply a validated config.
    pub async fn apply(&self, config: Config) -> Result<(), ApplyError> {
        let mut state = self.state.lock().await;

        // build upstreams, keeping those whose config did not change (pools, health, breakers)
        let mut upstreams = BTreeMap::new();
        for (name, uc) in &config.upstreams {
            let up = match state.upstreams.get(name) {
                Some(old) if old.config == *uc => old.clone(),
                _ => Upstream::new(name, uc, &self.metrics)?,
            };
            upstreams.insert(name.clone(), up);
        }

        // load plugins (compiled off the request path), one registry per
        // directory, all on one engine
        let mut engine = None;
        let mut registries = BTreeMap::new();
        if let Some(pc) = &config.plugins {
            let (e, keep) = match &state.engine {
                Some((old, e)) if old.same_engine(pc) && old.cache == pc.cache => (e.clone(), true),
                _ => (PluginEngine::new(pc)?, false),
            };
            for dir in config.plugin_dirs() {
                let reg = match state.registries.get(&dir) {
                    Some(r) if keep => r.clone(),
                    _ => Arc::new(Registry::new(e.clone(), pc, &dir)),
                };
                reg.sync().await;
                registries.insert(dir, reg);
            }
            // deadlines as precise as the shortest plugin timeout needs
            let shortest = config
                .frontends
                .values()
                .flat_map(|f| &f.routes)
                .flat_map(|r| &r.plugins)
                .map(|p| p.timeout.get())
                .min()
                .unwrap_or_else(|| crate::config::PluginRef::default_timeout().get());
            e.set_shortest_timeout(shortest);
            engine = Some((pc.clone(), e));
        }

        // key sets: kept across reloads when unchanged (with fetched JWKS)
        let mut keys = BTreeMap::new();
        for (name, kc) in &config.keys {
            if let Some(old) = state.keys.get(name)
                && old.same(kc, &upstreams)
            {
                keys.insert(name.clone(), old.clone());
                continue;
            }
            let mut set = crate::plugin::keys::KeySet::load(kc).map_err(|(field, why)| {
                ApplyError::Plugin(format!("keys.{name}.{field}: {why}"))
            })?;
            set.attach(&upstreams);
            keys.insert(name.clone(), Arc::new(set));
        }
        let services = Arc::new(crate::plugin::Services {
            upstreams: upstreams.clone(),
            keys: keys.clone(),
            counters: self.counters.clone(),
            buckets: self.buckets.clone(),
            metrics: self.plugin_metrics.clone(),
        });

        // build frontend runtimes, each with its own plugins and limits
        let mut runtimes = Vec::new();
        let mut budgets = BTreeMap::new();
        let mut inflight = BTreeMap::new();
        for (name, fc) in &config.frontends {
            let budget = fc.plugins.as_ref().and_then(|p| p.max_memory).map(|m| {
                let bytes = m.bytes() as usize;
                match state.budgets.get(name) {
                    Some(b) if b.limit() == bytes => b.clone(),
                    _ => Arc::new(MemoryBudget::new(bytes)),
                }
            });
            if let Some(b) = &budget {
                budgets.insert(name.clone(), b.clone());
            }
            let limit = fc.limits.max_concurrent_requests.map(|n| {
                let sem = match state.inflight.get(name) {
                    Some((old, sem)) if *old == n => sem.clone(),
                    _ => Arc::new(tokio::sync::Semaphore::new(n)),
                };
                inflight.insert(name.clone(), (n, sem.clone()));
                sem
            });
            let registry = config
                .plugin_dir(name)
                .and_then(|d| registries.get(d))
                .map(|r: &Arc<Registry>| r.as_ref());
            let chains = bind_plugins(name, fc, registry, &services, budget.as_ref())?;
            let mut rt = FrontendRuntime::new(
                name,
                fc,
                &upstreams,
                &self.metrics,
                self.options.access_log,
                chains,
            )?;
            rt.inflight = limit;
            runtimes.push((name.clone(), fc.listen, rt));
        }

        // Reuse a socket when the frontend keeps its address, or when another
        // frontend that no longer uses that address held it; bind the rest.
        let mut old = std::mem::take(&mut state.listeners);
        let mut next: BTreeMap<String, (SocketAddr, Listener)> = BTreeMap::new();
        let mut swaps = Vec::new();
        let mut to_bind = Vec::new();
        for (name, addr, rt) in runtimes {
            let reuse = match old.get(&name) {
                Some((a, _)) if *a == addr => Some(name.clone()),
                _ if addr.port() != 0 => old
                    .iter()
                    .find(|(n, (a, _))| {
                        *a == addr && config.frontends.get(*n).is_none_or(|f| f.listen != addr)
                    })
                    .map(|(n, _)| n.clone()),
                _ => None,
            };
            match reuse.and_then(|n| old.remove(&n).map(|e| (n, e))) {
                Some((orig, entry)) => {
                    swaps.push((orig, name.clone(), rt));
                    next.insert(name, entry);
                }
                None => to_bind.push((name, addr, rt)),
            }
        }
        let mut bound = Vec::new();
        for (name, addr, rt) in to_bind {
            match Listener::bind(addr, rt) {
                Ok(l) => bound.push((name, addr, l)),
                Err(source) => {
                    for (_, _, l) in bound {
                        l.shutdown(Duration::ZERO).await;
                    }
                    // Nothing was swapped: put every listener back as it was.
                    for (orig, name, _) in swaps {
                        if let Some(entry) = next.remove(&name) {
                            old.insert(orig, entry);
                        }
                    }
                    state.listeners = old;
                    return Err(ApplyError::Bind {
                        frontend: name,
                        addr,
                        source,
                    });
                }
            }
        }

        // swap
        for (_, name, rt) in swaps {
            if let Some((_, l)) = next.get(&name) {
                l.update(rt);
            }
        }
        for (name, addr, l) in bound {
            tracing::info!(frontend = %name, addr = %l.local_addr, "listening");
            next.insert(name, (addr, l));
        }
        let grace = config.server.shutdown_grace.get();
        for (name, (_, l)) in old {
            tracing::info!(frontend = %name, addr = %l.local_addr, "frontend removed: draining its listener");
            tokio::spawn(l.shutdown(grace));
        }
        state.listeners = next;
        state.upstreams = upstreams;
        state.keys = keys;
        state.engine = engine;
        state.registries = registries;
        state.budgets = budgets;
        state.inflight = inflight;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The registry of `[plugins].dir` (or of the only plugin directory).
    pub async fn plugins(&self) -> Option<Arc<Registry>> {
        let config = self.config.load();
        let state = self.state.lock().await;
        config
            .plugins
            .as_ref()
            .and_then(|p| p.dir.as_ref())
            .and_then(|d| state.registries.get(d))
            .or_else(|| state.registries.values().next())
            .cloned()
    }

    /// The plugin memory budgets of frontends that have one.
    pub async fn memory_budgets(&self) -> Vec<(String, Arc<MemoryBudget>)> {
        let state = self.state.lock().await;
        state
            .budgets
            .iter()
            .map(|(f, b)| (f.clone(), b.clone()))
            .collect()
    }

    /// Every plugin directory's registry.
    pub async fn registries(&self) -> Vec<Arc<Registry>> {
        self.state
            .lock()
            .await
            .registries
            .values()
            .cloned()
            .collect()
    }

    /// Re-scan the plugin directories and, when the set of plugins changed,
    /// rebuild the routes with the current config. Files that fail to load
    /// are reported and the versions that were serving keep serving.
    pub async fn reload_plugins(&self) -> Result<bool, ApplyError> {
        let mut changed = false;
        for registry in self.registries().await {
            changed |= registry.sync().await.changed();
        }
        if !changed {
            return Ok(false);
        }
        let config = (*self.config.load_full()).clone();
        let result = self.apply(config).await;
        if let Err(e) = &result {
            tracing::error!(
                "plugins changed but the routes could not be rebuilt; the previous ones keep serving:\n{e}"
            );
        }
        result.map(|()| true)
    }

    /// Stop accepting everywhere, let in-flight requests finish within the
    /// configured grace period, then close.
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::Relaxed);
        let grace = self.config.load().server.shutdown_grace.get();
        let listeners = std::mem::take(&mut self.state.lock().await.listeners);
        let drains = listeners.into_values().map(|(_, l)| l.shutdown(grace));
        futures_util::future::join_all(drains).await;
        if let Some((_, task)) = self.admin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// The plugin chain of every route of a frontend, bound to loaded versions.
fn bind_plugins(
    frontend: &str,
    fc: &crate::config::FrontendConfig,
    registry: Option<&Registry>,
    services: &Arc<crate::plugin::Services>,
    budget: Option<&Arc<MemoryBudget>>,
) -> Result<Vec<Chain>, ApplyError> {
    let mut chains = Vec::with_capacity(fc.routes.len());
    for (i, route) in fc.routes.iter().enumerate() {
        let mut bindings = Vec::with_capacity(route.plugins.len());
        for p in &route.plugins {
            let Some(reg) = registry else {
                return Err(ApplyError::Plugin(format!(
                    "frontends.{frontend}: routes use plugins but no plugin directory is set"
                )));
            };
            let Some(loaded) = reg.get(&p.name, &p.version) else {
                let file = reg.dir().join(format!("{}@{}.wasm", p.name, p.version));
                let why = reg
                    .failures()
                    .into_iter()
                    .find(|(f, _)| *f == file)
                    .map(|(_, e)| e)
                    .unwrap_or_else(|| "it is not in the plugin directory".into());
                return Err(ApplyError::Plugin(format!(
                    "frontends.{frontend}.routes[{i}] pins {}@{}, which is not loaded: {why}",
                    p.name, p.version
                )));
            };
            bindings.push(Arc::new(Binding::new(
                reg.engine().clone(),
                frontend,
                loaded,
                p,
                services.clone(),
                budget.cloned(),
            )));
        }
        chains.push(Chain {
            plugins: bindings.into(),
        });
    }
    Ok(chains)
}
