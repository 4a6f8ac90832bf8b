//! The plugin directory: every `NAME@VERSION.wasm` is compiled (in
//! parallel, on blocking threads, never on the request path), checked
//! against the contract, and published in one atomic swap. Compiled code is
//! cached on disk, keyed by the file's SHA-256 and the engine's
//! compatibility hash, so a restart loads plugins in well under a
//! millisecond each instead of compiling them again.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::FilterPluginPre;
use super::host::Ctx;
use super::{Phases, PluginEngine, PluginError, probe_phases, valid_name};
use crate::config::PluginsConfig;

/// A compiled, checked plugin version.
pub struct LoadedPlugin {
    /// Name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// `name@version`.
    pub id: Arc<str>,
    /// The file it came from.
    pub file: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub(super) pre: FilterPluginPre<Ctx>,
    /// Phases it implements.
    pub phases: Phases,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// How long compiling (or loading from cache) and checking took.
    pub load_time: Duration,
    /// Whether it came from the precompiled cache.
    pub from_cache: bool,
    /// Calls into it (all routes).
    pub calls: AtomicU64,
    /// Calls that failed (traps, timeouts, errors).
    pub errors: AtomicU64,
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Newly loaded or replaced `name@version`s.
    pub loaded: Vec<String>,
    /// Versions whose file disappeared.
    pub removed: Vec<String>,
    /// Files that could not be used, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

impl SyncReport {
    /// Whether the set of live plugins changed.
    pub fn changed(&self) -> bool {
        !self.loaded.is_empty() || !self.removed.is_empty()
    }
}

/// The plugins of one directory.
pub struct Registry {
    engine: Arc<PluginEngine>,
    dir: PathBuf,
    cache: PathBuf,
    plugins: ArcSwap<BTreeMap<String, Arc<LoadedPlugin>>>,
    failures: Mutex<BTreeMap<PathBuf, String>>,
    sync_lock: tokio::sync::Mutex<()>,
}

/// `NAME@VERSION.wasm` → (name, version).
pub fn parse_file_name(path: &Path) -> Result<(String, semver::Version), String> {
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".wasm"))
        .ok_or("not a .wasm file")?;
    let (name, version) = stem
        .split_once('@')
        .ok_or("plugin files are named NAME@VERSION.wasm")?;
    if !valid_name(name) {
        return Err(format!(
            "{name:?} is not a plugin name (lower-case letters, digits and '-')"
        ));
    }
    let version =
        semver::Version::parse(version).map_err(|e| format!("version {version:?}: {e}"))?;
    Ok((name.to_string(), version))
}

impl Registry {
    /// A registry for `dir`, caching as `cfg` says; nothing is loaded
    /// until [`Registry::sync`].
    pub fn new(engine: Arc<PluginEngine>, cfg: &PluginsConfig, dir: &Path) -> Registry {
        Registry {
            engine,
            dir: dir.to_path_buf(),
            cache: cfg.cache_dir(dir),
            plugins: ArcSwap::from_pointee(BTreeMap::new()),
            failures: Mutex::new(BTreeMap::new()),
            sync_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A loaded version.
    pub fn get(&self, name: &str, version: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins
            .load()
            .get(&format!("{name}@{version}"))
            .cloned()
    }

    /// Every loaded version.
    pub fn list(&self) -> Vec<Arc<LoadedPlugin>> {
        self.plugins.load().values().cloned().collect()
    }

    /// Files that failed their last load, with the reason.
    pub fn failures(&self) -> Vec<(PathBuf, String)> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect()
    }

    /// Bring the loaded set in line with the directory: load new and changed
    /// files, drop removed ones. A file that fails keeps whatever version of
    /// it was loaded before.
    pub async fn sync(&self) -> SyncReport {
        let _guard = self.sync_lock.lock().await;
        let mut report = SyncReport::default();
        let current = self.plugins.load_full();
        let mut next: BTreeMap<String, Arc<LoadedPlugin>> = BTreeMap::new();

        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
                .collect(),
            Err(e) => {
                report.failed.push((
                    self.dir.clone(),
                    format!("cannot read the plugin directory: {e}"),
                ));
                Vec::new()
            }
        };
        files.sort();

        let mut jobs = Vec::new();
        for file in files {
            let (name, version) = match parse_file_name(&file) {
                Ok(nv) => nv,
                Err(e) => {
                    report.failed.push((file, e));
                    continue;
                }
            };
            let id = format!("{name}@{version}");
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    report.failed.push((file, format!("cannot read: {e}")));
                    if let Some(old) = current.get(&id) {
                        next.insert(id, old.clone());
                    }
                    continue;
                }
            };
            let sha = hex(&Sha256::digest(&bytes));
            if let Some(old) = current.get(&id)
                && old.sha256 == sha
            {
                next.insert(id, old.clone());
                continue;
            }
            jobs.push((file, name, version, id, bytes, sha));
        }

        let loads = jobs
            .into_iter()
            .map(|(file, name, version, id, bytes, sha)| {
                let engine = self.engine.clone();
                let cache = self.cache.clone();
                async move {
                    let result =
                        load(&engine, Some(&cache), &file, name, version, &id, bytes, sha).await;
                    (file, id, result)
                }
            });
        for (file, id, result) in futures_util::future::join_all(loads).await {
            match result {
                Ok(plugin) => {
                    tracing::info!(
                        plugin = %id,
                        file = %file.display(),
                        ms = plugin.load_time.as_secs_f64() * 1000.0,
                        cached = plugin.from_cache,
                        "plugin loaded"
                    );
                    report.loaded.push(id.clone());
                    next.insert(id, Arc::new(plugin));
                }
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "plugin rejected; the previous version (if any) keeps serving");
                    report.failed.push((file, e.to_string()));
                    if let Some(old) = current.get(&id) {
                        next.insert(id, old.clone());
                    }
                }
            }
        }
        for id in current.keys() {
            if !next.contains_key(id) {
                tracing::info!(plugin = %id, "plugin file removed");
                report.removed.push(id.clone());
            }
        }
        {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.clear();
            for (f, e) in &report.failed {
                failures.insert(f.clone(), e.clone());
            }
        }
        if report.changed() {
            self.plugins.store(Arc::new(next));
        }
        report
    }
}

#[allow(clippy::too_many_arguments)]
async fn load(
    engine: &Arc<PluginEngine>,
    cache: Option<&Path>,
    file: &Path,
    name: String,
    version: semver::Version,
    id: &str,
    bytes: Vec<u8>,
    sha: String,
) -> Result<LoadedPlugin, PluginError> {
    let started = Instant::now();
    let fail = |reason: String| PluginError::Load {
        file: file.display().to_string(),
        reason,
    };
    let (component, from_cache) = {
        let engine = engine.clone();
        let cache = cache.map(Path::to_path_buf);
        let sha = sha.clone();
        tokio::task::spawn_blocking(move || compile(&engine, cache.as_deref(), &bytes, &sha))
            .await
            .map_err(|e| fail(format!("compiler task failed: {e}")))?
            .map_err(fail)?
    };
    let pre = engine.linker.instantiate_pre(&component).map_err(|e| {
        fail(format!(
            "imports something the gateway does not provide: {e:#}"
        ))
    })?;
    let pre = FilterPluginPre::new(pre).map_err(|e| {
        fail(format!(
            "does not export the transom:plugin/filter contract: {e:#}"
        ))
    })?;
    let id: Arc<str> = id.into();
    let phases = probe_phases(engine, &pre, id.clone()).await.map_err(fail)?;
    Ok(LoadedPlugin {
        name,
        version,
        id,
        file: file.to_path_buf(),
        sha256: sha,
        pre,
        phases,
        loaded_at: SystemTime::now(),
        load_time: started.elapsed(),
        from_cache,
        calls: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    })
}

fn compat_key(engine: &wasmtime::Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// Compile `bytes`, or load the cached artifact of an identical file.
fn compile(
    engine: &PluginEngine,
    cache: Option<&Path>,
    bytes: &[u8],
    sha: &str,
) -> Result<(Component, bool), String> {
    let cached = cache.map(|c| c.join(format!("{sha}-{:016x}.cwasm", compat_key(&engine.engine))));
    if let Some(cached) = cached.as_ref().filter(|c| c.is_file()) {
        // SAFETY: the cache directory belongs to the gateway; artifacts in it
        // are written only by `serialize` below, under a name that binds
        // them to the source's SHA-256 and to this engine's configuration.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(&engine.engine, cached) };
        match loaded {
            Ok(c) => return Ok((c, true)),
            Err(e) => {
                tracing::warn!(file = %cached.display(), error = %e, "discarding unusable cache entry");
                let _ = std::fs::remove_file(cached);
            }
        }
    }
    if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
        return Err("not a WebAssembly file".into());
    }
    let component = Component::new(&engine.engine, bytes).map_err(|e| format!("{e:#}"))?;
    if let (Some(cache), Some(cached), Ok(artifact)) = (cache, cached, component.serialize()) {
        let _ = std::fs::create_dir_all(cache);
        let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, artifact).is_ok() && std::fs::rename(&tmp, &cached).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((component, false))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let (n, v) = parse_file_name(Path::new("dir/add-header@1.2.0.wasm")).expect("valid name");
        assert_eq!(n, "add-header");
        assert_eq!(v.to_string(), "1.2.0");
        assert!(parse_file_name(Path::new("x.wasm")).is_err());
        assert!(parse_file_name(Path::new("Bad@1.0.0.wasm")).is_err());
        assert!(parse_file_name(Path::new("x@1.0.wasm")).is_err());
    }
}

/// What `transom plugin check` reports about a file.
#[derive(Debug)]
pub struct CheckReport {
    /// `name@version` from the file name, when it follows the convention.
    pub id: Option<String>,
    /// Exported interfaces (with their WIT versions).
    pub exports: Vec<String>,
    /// Imported interfaces.
    pub imports: Vec<String>,
    /// Phases implemented.
    pub phases: Phases,
    /// Compile and check time.
    pub load_time: Duration,
}

/// Compile and check one file against the contract, without a gateway.
pub async fn check_file(
    engine: &Arc<PluginEngine>,
    file: &Path,
) -> Result<CheckReport, PluginError> {
    let bytes = std::fs::read(file).map_err(|e| PluginError::Load {
        file: file.display().to_string(),
        reason: format!("cannot read: {e}"),
    })?;
    if bytes.len() < 8 || bytes[..4] != *b"\0asm" {
        return Err(PluginError::Load {
            file: file.display().to_string(),
            reason: "not a WebAssembly file".into(),
        });
    }
    let named = parse_file_name(file).ok();
    let (name, version) = named
        .clone()
        .unwrap_or_else(|| ("plugin".to_string(), semver::Version::new(0, 0, 0)));
    let id = format!("{name}@{version}");
    let sha = hex(&Sha256::digest(&bytes));
    let component = Component::new(&engine.engine, &bytes).map_err(|e| PluginError::Load {
        file: file.display().to_string(),
        reason: format!("{e:#}"),
    })?;
    let ty = component.component_type();
    let exports = ty
        .exports(&engine.engine)
        .map(|(n, _)| n.to_string())
        .collect();
    let imports = ty
        .imports(&engine.engine)
        .map(|(n, _)| n.to_string())
        .collect();
    let loaded = load(engine, None, file, name, version, &id, bytes, sha).await?;
    Ok(CheckReport {
        id: named.map(|_| id),
        exports,
        imports,
        phases: loaded.phases,
        load_time: loaded.load_time,
    })
}
