//! WebAssembly plugins: sandboxed per-route policies.
//!
//! - [`PluginEngine`]: one wasmtime engine with the pooling allocator and
//!   epoch interruption (a ticker thread advances the epoch every tick, a
//!   tenth of the shortest plugin timeout in use, and every call sets its
//!   deadline first);
//! - [`Registry`]: the plugin directory (`NAME@VERSION.wasm`), compiled off
//!   the request path and cached on disk as precompiled artifacts;
//! - [`Binding`]: one plugin in one route's chain, with its configuration,
//!   limits and instances (`reuse`: pooled; `per-request`: fresh each time).
//!
//! A plugin that traps, loops, runs out of memory or returns an error fails
//! only the request it was handling; the instance is thrown away.

pub mod bindings;
mod host;
pub mod keys;
mod registry;
pub mod services;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, PoolingAllocationConfig, Store};

pub use bindings::{Answer, Decision, Phases};
pub use host::{HeaderEdit, MemoryBudget, RequestState, ResponseState};
pub use services::{Counters, PluginMetrics, Services};

pub use registry::{CheckReport, LoadedPlugin, Registry, SyncReport, check_file};

use crate::config::{InstanceMode, PluginRef, PluginsConfig};
use bindings::{FilterPlugin, FilterPluginPre};
use host::{Ctx, Identity};

/// Bounds of the epoch tick. A call is stopped at most one tick after its
/// deadline; each tick costs a thread wake-up (tens of microseconds of CPU
/// on a virtual machine), so the tick is a tenth of the shortest plugin
/// timeout in use, kept within these bounds.
const MIN_TICK: Duration = Duration::from_millis(1);
const MAX_TICK: Duration = Duration::from_millis(10);

/// How long the ticker keeps ticking after the last plugin call returned,
/// before it parks. Parking between the calls of a busy gateway would cost
/// a wake-up syscall and two context switches per tick.
const LINGER: Duration = Duration::from_millis(100);

/// How long a plugin's `phases()` may run when it is loaded.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// How long a parked ticker sleeps before it looks again by itself.
const PARK: Duration = Duration::from_millis(250);

/// Bytes of a pooled linear memory kept resident between instances.
const KEEP_RESIDENT: usize = 2 << 20;

/// Idle instances kept per binding in `reuse` mode.
const MAX_IDLE: usize = 64;

/// A plugin name: lower-case letters, digits and `-`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Why a plugin could not be loaded or did not complete a call.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// A file is not a usable plugin.
    #[error("{file}: {reason}")]
    Load {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The plugin trapped (panic, out of memory, stack overflow, ...).
    #[error("plugin {plugin} failed: {reason}")]
    Trap {
        /// `name@version`.
        plugin: Arc<str>,
        /// What happened.
        reason: String,
    },
    /// The plugin ran past its deadline.
    #[error("plugin {plugin} exceeded its {limit:?} time limit")]
    Timeout {
        /// `name@version`.
        plugin: Arc<str>,
        /// The limit.
        limit: Duration,
    },
    /// The plugin returned an error.
    #[error("plugin {plugin} returned an error: {message}")]
    Failed {
        /// `name@version`.
        plugin: Arc<str>,
        /// Its message.
        message: String,
    },
}

impl PluginError {
    /// True for a deadline (504); everything else is a 500.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PluginError::Timeout { .. })
    }
}

/// The wasmtime engine shared by every plugin of a gateway.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<Ctx>,
    ticker_stop: Arc<AtomicBool>,
    ticker: Arc<Ticker>,
}

/// The epoch ticker's switch: it ticks while some plugin code runs, and
/// sleeps while none does (an idle gateway, or plugins all waiting on
/// upstream calls).
pub(crate) struct Ticker {
    active: Arc<AtomicUsize>,
    /// The tick, in microseconds.
    tick_us: Arc<AtomicU64>,
    thread: std::thread::Thread,
}

impl Ticker {
    /// The tick for plugins whose shortest timeout is `shortest`.
    fn tick_for(shortest: Duration) -> Duration {
        (shortest / 10).clamp(MIN_TICK, MAX_TICK)
    }

    /// Guest code runs until the guard is dropped.
    pub(crate) fn running(self: &Arc<Self>) -> Running {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Running(self.clone())
    }

    /// Guest code waits on the host until the guard is dropped.
    pub(crate) fn waiting(self: &Arc<Self>) -> Waiting {
        self.active.fetch_sub(1, Ordering::AcqRel);
        Waiting(self.clone())
    }
}

/// See [`Ticker::running`].
pub(crate) struct Running(Arc<Ticker>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// See [`Ticker::waiting`].
pub(crate) struct Waiting(Arc<Ticker>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.0.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.0.thread.unpark();
        }
    }
}

impl PluginEngine {
    fn running(&self) -> Running {
        self.ticker.running()
    }

    /// Size the epoch tick for the plugin timeouts in use: a call is stopped
    /// within a tenth of the shortest one after its deadline (at least 1 ms,
    /// at most 10 ms).
    pub fn set_shortest_timeout(&self, shortest: Duration) {
        let tick = Ticker::tick_for(shortest);
        self.ticker
            .tick_us
            .store(tick.as_micros() as u64, Ordering::Relaxed);
    }

    /// The current epoch tick.
    pub fn tick(&self) -> Duration {
        Duration::from_micros(self.ticker.tick_us.load(Ordering::Relaxed))
    }
}

impl PluginEngine {
    /// An engine sized by `[plugins]`.
    pub fn new(cfg: &PluginsConfig) -> Result<Arc<PluginEngine>, PluginError> {
        let err = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        let n = cfg.max_instances;
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n)
            .total_tables(n.saturating_mul(2))
            .total_stacks(n)
            .max_memory_size(cfg.max_memory.bytes() as usize)
            // A fresh instance should not pay page faults for memory a
            // previous one already touched: reset the first pages of a
            // pooled slot with memset instead of giving them back to the
            // kernel (with PAGEMAP_SCAN, only the pages actually dirtied).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .concurrency_support(false)
            .allocation_strategy(pool)
            .max_wasm_stack(512 * 1024);
        // `TRANSOM_PERFMAP=1`: write perf's map of JIT code, so that `perf`
        // names the guest functions a profile lands in.
        if std::env::var_os("TRANSOM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
        bindings::add_to_linker(&mut linker, |c| c).map_err(err)?;

        // The epoch advances every tick while plugins run; an idle
        // gateway's ticker sleeps (it would otherwise wake every tick for
        // nothing), after lingering for a busy one's next call.
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let tick_us = Arc::new(AtomicU64::new(
            Ticker::tick_for(PluginRef::default_timeout().get()).as_micros() as u64,
        ));
        let ticker_engine = engine.weak();
        let (ticker_stop, ticker_active, ticker_tick) =
            (stop.clone(), active.clone(), tick_us.clone());
        let ticker = std::thread::Builder::new()
            .name("transom-epoch".into())
            .spawn(move || {
                let mut idle = Duration::ZERO;
                while !ticker_stop.load(Ordering::Relaxed) {
                    let tick = Duration::from_micros(ticker_tick.load(Ordering::Relaxed));
                    if ticker_active.load(Ordering::Acquire) == 0 {
                        idle = idle.saturating_add(tick);
                        if idle > LINGER {
                            let parked = std::time::Instant::now();
                            std::thread::park_timeout(PARK);
                            if parked.elapsed() < PARK {
                                // Woken by a call: linger after it too.
                                idle = Duration::ZERO;
                            }
                            continue;
                        }
                    } else {
                        idle = Duration::ZERO;
                    }
                    std::thread::sleep(tick);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("epoch ticker: {e}")))?;
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            ticker_stop: stop,
            ticker: Arc::new(Ticker {
                active,
                tick_us,
                thread: ticker.thread().clone(),
            }),
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        self.ticker.thread.unpark();
    }
}

/// A live instance and its store.
struct Instance {
    store: Store<Ctx>,
    filter: FilterPlugin,
}

/// The instance that ran a request's request phase, kept for the same
/// request's response phase (so a `per-request` instance sees both, and
/// plugin state can pass between them). Dropped unused, it goes back to its
/// pool.
pub struct Held {
    inst: Option<Instance>,
    binding: Arc<Binding>,
}

/// What a plugin's request phase leaves for the same request's response
/// phase.
pub struct AfterRequest {
    /// The instance, when the plugin's response phase runs in it.
    pub held: Option<Held>,
    /// Response header edits, applied at the plugin's place in the response
    /// phase.
    pub edits: Vec<HeaderEdit>,
    /// Whether the plugin's response phase runs for this request (false
    /// when it has none, or its request phase asked to skip it).
    pub response_phase: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(inst) = self.inst.take() {
            self.binding.release(inst);
        }
    }
}

/// One plugin as used by one route: the loaded version, its configuration,
/// limits, and (in `reuse` mode) a pool of idle instances.
pub struct Binding {
    /// The loaded plugin.
    pub plugin: Arc<LoadedPlugin>,
    id: Identity,
    timeout: Duration,
    memory: usize,
    mode: InstanceMode,
    /// Whether the chain must buffer bodies for this plugin.
    pub body: bool,
    idle: Mutex<Vec<Instance>>,
    engine: Arc<PluginEngine>,
    /// Calls made through this binding.
    pub calls: AtomicU64,
    /// The frontend's plugin memory budget.
    budget: Option<Arc<MemoryBudget>>,
}

impl Binding {
    /// Bind `plugin` with the settings and grants of `r`.
    pub fn new(
        engine: Arc<PluginEngine>,
        frontend: &str,
        plugin: Arc<LoadedPlugin>,
        r: &PluginRef,
        services: Arc<Services>,
        budget: Option<Arc<MemoryBudget>>,
    ) -> Binding {
        Binding {
            id: Identity {
                plugin: plugin.id.clone(),
                name: plugin.name.as_str().into(),
                frontend: frontend.into(),
                version: plugin.version.to_string().into(),
                config: r.config_json().into(),
                body: r.body,
                upstreams: r.upstreams.clone().into(),
                keys: r.keys.clone().into(),
                env: r.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                dirs: r.dirs.clone().into(),
                services,
            },
            timeout: r.timeout.get(),
            memory: r.memory.bytes() as usize,
            mode: r.instance,
            body: r.body,
            idle: Mutex::new(Vec::new()),
            plugin,
            engine,
            calls: AtomicU64::new(0),
            budget,
        }
    }

    /// Which phases the plugin implements.
    pub fn phases(&self) -> Phases {
        self.plugin.phases
    }

    /// Arm the CPU deadline for the next call into `store`: the epoch
    /// callback fires every tick the guest runs, yields to the executor (so
    /// a busy plugin never holds a worker thread for long) and interrupts
    /// the guest once the call's time is up.
    fn arm(&self, store: &mut Store<Ctx>) {
        store.data_mut().deadline = Some(std::time::Instant::now() + self.timeout);
        store.set_epoch_deadline(1);
    }

    async fn instance(&self) -> Result<Instance, PluginError> {
        if self.mode == InstanceMode::Reuse
            && let Some(inst) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
        {
            return Ok(inst);
        }
        let mut store = Store::new(
            &self.engine.engine,
            Ctx::new(self.id.clone(), self.memory, self.budget.clone()),
        );
        store.limiter(|c| &mut c.limits);
        store.data_mut().ticker = Some(self.engine.ticker.clone());
        store.epoch_deadline_callback(|cx| {
            Ok(match cx.data().deadline {
                Some(d) if std::time::Instant::now() < d => {
                    wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
                }
                _ => wasmtime::UpdateDeadline::Interrupt,
            })
        });
        self.arm(&mut store);
        let _running = self.engine.running();
        match self.plugin.pre.instantiate_async(&mut store).await {
            Ok(filter) => Ok(Instance { store, filter }),
            Err(e) => Err(self.classify(e, &store)),
        }
    }

    fn release(&self, inst: Instance) {
        if self.mode != InstanceMode::Reuse {
            return;
        }
        // A plugin that keeps writing to stderr is recycled before its
        // buffer fills.
        let data = inst.store.data();
        if data.used_wasi() && data.stderr.contents().len() > 16 * 1024 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(inst);
        }
    }

    fn classify(&self, e: wasmtime::Error, store: &Store<Ctx>) -> PluginError {
        let plugin = self.id.plugin.clone();
        if let Some(trap) = e.downcast_ref::<wasmtime::Trap>()
            && *trap == wasmtime::Trap::Interrupt
        {
            return PluginError::Timeout {
                plugin,
                limit: self.timeout,
            };
        }
        let mut reason = format!("{e:#}");
        if let Some(first) = reason.lines().next() {
            reason = first.to_string();
        }
        if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            reason = match trap {
                wasmtime::Trap::StackOverflow => "stack overflow".into(),
                // A Rust guest's stack lives in linear memory: overflowing it
                // shows up as an access below address 0.
                wasmtime::Trap::MemoryOutOfBounds => {
                    "out-of-bounds memory access (a stack overflow, usually)".into()
                }
                wasmtime::Trap::UnreachableCodeReached => "trap (panic or abort)".into(),
                other => format!("trap: {other}"),
            };
        }
        let debug = format!("{e:?}");
        if debug.contains("forcing trap when growing memory") {
            reason = format!("memory limit of {} bytes exceeded", self.memory);
        } else if let Some(at) = debug.find("the frontend's plugin memory budget") {
            reason = debug[at..].lines().next().unwrap_or_default().to_string();
        }
        let stderr = store.data().stderr_tail();
        if !stderr.is_empty() {
            reason = format!("{reason}: {stderr}");
        }
        PluginError::Trap { plugin, reason }
    }

    /// The instance for a call (the held one, a pooled one or a new one),
    /// with the call counted.
    async fn enter(&self, held: Option<Held>) -> Result<Instance, PluginError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.plugin.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(inst) = held.and_then(|mut h| h.inst.take()) {
            return Ok(inst);
        }
        self.instance().await.inspect_err(|_| {
            self.plugin.errors.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Run the request phase on `req`. When the plugin's response phase is
    /// to run, its instance comes back as [`Held`] for that phase.
    pub async fn on_request(
        self: &Arc<Self>,
        req: RequestState,
    ) -> Result<(RequestState, Decision, AfterRequest), PluginError> {
        let mut inst = self.enter(None).await?;
        inst.store.data_mut().req = Some(req);
        self.arm(&mut inst.store);
        let running = self.engine.running();
        let result = inst
            .filter
            .transom_plugin_filter()
            .call_on_request(&mut inst.store)
            .await;
        drop(running);
        let data = inst.store.data_mut();
        let req = data.req.take();
        let edits = std::mem::take(&mut data.resp_edits);
        let skip = std::mem::replace(&mut data.skip_response, false);
        let outcome = match (result, req) {
            (Ok(Ok(decision)), Some(req)) => Ok((req, decision)),
            (Ok(Err(message)), _) => Err(PluginError::Failed {
                plugin: self.id.plugin.clone(),
                message,
            }),
            (Err(e), _) => Err(self.classify(e, &inst.store)),
            (Ok(Ok(_)), None) => Err(PluginError::Trap {
                plugin: self.id.plugin.clone(),
                reason: "request state lost".into(),
            }),
        };
        match outcome {
            Ok((req, decision)) => {
                let response_phase = self.plugin.phases.contains(Phases::RESPONSE) && !skip;
                let held = if response_phase && matches!(decision, Decision::Continue) {
                    Some(Held {
                        inst: Some(inst),
                        binding: self.clone(),
                    })
                } else {
                    self.release(inst);
                    None
                };
                let after = AfterRequest {
                    held,
                    edits,
                    response_phase,
                };
                Ok((req, decision, after))
            }
            Err(e @ PluginError::Failed { .. }) => {
                self.plugin.errors.fetch_add(1, Ordering::Relaxed);
                self.release(inst);
                Err(e)
            }
            Err(e) => {
                // Trapped instances cannot be entered again: drop it.
                self.plugin.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Run the response phase on `resp`, in the instance that ran the
    /// request phase when there is one.
    pub async fn on_response(
        &self,
        held: Option<Held>,
        resp: ResponseState,
    ) -> Result<ResponseState, PluginError> {
        let mut inst = self.enter(held).await?;
        inst.store.data_mut().resp = Some(resp);
        self.arm(&mut inst.store);
        let running = self.engine.running();
        let result = inst
            .filter
            .transom_plugin_filter()
            .call_on_response(&mut inst.store)
            .await;
        drop(running);
        let resp = inst.store.data_mut().resp.take();
        let outcome = match (result, resp) {
            (Ok(Ok(())), Some(resp)) => Ok(resp),
            (Ok(Err(message)), _) => Err(PluginError::Failed {
                plugin: self.id.plugin.clone(),
                message,
            }),
            (Err(e), _) => Err(self.classify(e, &inst.store)),
            (Ok(Ok(())), None) => Err(PluginError::Trap {
                plugin: self.id.plugin.clone(),
                reason: "response state lost".into(),
            }),
        };
        match &outcome {
            Ok(_) => self.release(inst),
            Err(PluginError::Failed { .. }) => {
                self.plugin.errors.fetch_add(1, Ordering::Relaxed);
                self.release(inst);
            }
            Err(_) => {
                self.plugin.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }
}

/// Used by [`registry`] to read a plugin's phases once at load.
async fn probe_phases(
    engine: &PluginEngine,
    pre: &FilterPluginPre<Ctx>,
    id: Arc<str>,
) -> Result<Phases, String> {
    let services = Arc::new(Services {
        upstreams: Default::default(),
        keys: Default::default(),
        counters: Default::default(),
        buckets: Default::default(),
        metrics: Default::default(),
    });
    let mut store = Store::new(
        &engine.engine,
        Ctx::new(
            Identity {
                name: id.clone(),
                frontend: "".into(),
                version: id.clone(),
                plugin: id,
                config: "{}".into(),
                body: false,
                upstreams: Arc::from(Vec::new()),
                keys: Arc::from(Vec::new()),
                env: Arc::from(Vec::new()),
                dirs: Arc::from(Vec::new()),
                services,
            },
            16 << 20,
            None,
        ),
    );
    store.limiter(|c| &mut c.limits);
    // `phases()` gets a second, whatever the tick.
    let ticks = PROBE_DEADLINE.as_micros() / engine.tick().as_micros().max(1);
    store.set_epoch_deadline(ticks.max(1) as u64);
    let _running = engine.running();
    let filter = pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| format!("cannot instantiate: {e:#}"))?;
    filter
        .transom_plugin_filter()
        .call_phases(&mut store)
        .await
        .map_err(|e| format!("phases() failed: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_is_a_tenth_of_the_shortest_timeout_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(Ticker::tick_for(ms(100)), ms(10));
        assert_eq!(Ticker::tick_for(ms(30)), ms(3));
        assert_eq!(Ticker::tick_for(ms(5)), MIN_TICK);
        assert_eq!(Ticker::tick_for(Duration::ZERO), MIN_TICK);
        assert_eq!(Ticker::tick_for(Duration::from_secs(10)), MAX_TICK);
    }

    #[test]
    fn an_engine_follows_the_shortest_timeout_it_is_given() {
        let cfg: PluginsConfig = toml::from_str("dir = \"plugins\"").expect("plugins config");
        let engine = PluginEngine::new(&cfg).expect("engine");
        assert_eq!(engine.tick(), Duration::from_millis(10));
        engine.set_shortest_timeout(Duration::from_millis(20));
        assert_eq!(engine.tick(), Duration::from_millis(2));
    }
}
