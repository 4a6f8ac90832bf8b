//! Configuration: load a root TOML file and its includes, merge them, and
//! validate the whole before anything is built from it.
//!
//! Every error names the file, line, column and field path, in the same form
//! for `transom check`, for a refused reload and for start-up:
//! `FILE:LINE:COL: field.path: what is wrong`.

mod locate;
pub mod schema;
pub mod units;
mod validate;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

pub use schema::*;
pub use units::{ByteSize, Duration};

use locate::{Seg, path_at, span_at};

/// A validated configuration: the merge of a root file and its includes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The root file.
    pub root: PathBuf,
    /// Every file that was read, root first, with its contents.
    pub files: Vec<SourceFile>,
    /// `[admin]`, if any file set it.
    pub admin: Option<AdminConfig>,
    /// `[server]`, with defaults.
    pub server: ServerConfig,
    /// `[plugins]`, if any file set it (paths resolved).
    pub plugins: Option<PluginsConfig>,
    /// All upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Key sets by name (paths resolved).
    pub keys: BTreeMap<String, KeySetConfig>,
    /// All frontends by name.
    pub frontends: BTreeMap<String, FrontendConfig>,
    /// Directories to watch for changes: those of every file read and of
    /// every include pattern (so a file that starts matching is noticed).
    pub watch_dirs: Vec<PathBuf>,
}

/// A config re-read by [`Config::reload`].
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// What to apply.
    pub config: Config,
    /// Problems of files that were kept at their previous version.
    pub rejected: Vec<ConfigError>,
}

/// One file that took part in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path as resolved from the including file.
    pub path: PathBuf,
    /// Its text when read.
    pub text: String,
}

/// One problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Dotted path of the field, e.g. `frontends.web.routes[0].upstream`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            if self.field.is_empty() {
                "(file)"
            } else {
                &self.field
            },
            self.message
        )
    }
}

/// Every problem found in a config; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Read, merge and validate the config rooted at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let mut loader = Loader::default();
        loader.load_file(path.as_ref().to_path_buf());
        if loader.unparsed {
            return Err(ConfigErrors(loader.errors));
        }
        loader.finish(path.as_ref())
    }

    /// Re-read the config rooted at `path` for a running gateway whose
    /// config is `previous`. A file other than the root that is now broken
    /// (unreadable, unparsable, or invalid with the rest) is kept at the
    /// version `previous` read, and its errors come back in
    /// [`Reloaded::rejected`]: one team's broken frontend file does not hold
    /// back another team's change. Errors in the root file, or in a file
    /// with no previous version, reject the whole reload.
    pub fn reload(path: impl AsRef<Path>, previous: &Config) -> Result<Reloaded, ConfigErrors> {
        let root = path.as_ref();
        let fallback: std::collections::HashMap<PathBuf, String> = previous
            .files
            .iter()
            .skip(1)
            .map(|f| (f.path.clone(), f.text.clone()))
            .collect();
        let mut forced: std::collections::HashMap<PathBuf, String> = Default::default();
        let mut rejected: Vec<ConfigError> = Vec::new();
        loop {
            let mut loader = Loader {
                forced: forced.clone(),
                ..Loader::default()
            };
            loader.load_file(root.to_path_buf());
            let result = if loader.unparsed {
                Err(ConfigErrors(loader.errors))
            } else {
                loader.finish(root)
            };
            let errors = match result {
                Ok(config) => return Ok(Reloaded { config, rejected }),
                Err(e) => e.0,
            };
            let bad: std::collections::BTreeSet<PathBuf> =
                errors.iter().map(|e| e.file.clone()).collect();
            let can_fall_back = bad
                .iter()
                .all(|f| fallback.contains_key(f) && !forced.contains_key(f));
            if !can_fall_back {
                let mut all = rejected;
                all.extend(errors);
                return Err(ConfigErrors(all));
            }
            for f in bad {
                if let Some(text) = fallback.get(&f) {
                    forced.insert(f, text.clone());
                }
            }
            rejected.extend(errors);
        }
    }

    /// The plugin directory of frontend `name`: its own, or `[plugins].dir`.
    pub fn plugin_dir(&self, frontend: &str) -> Option<&Path> {
        self.frontends
            .get(frontend)
            .and_then(|f| f.plugins.as_ref())
            .and_then(|p| p.dir.as_deref())
            .or_else(|| self.plugins.as_ref().and_then(|p| p.dir.as_deref()))
    }

    /// Every plugin directory in use, without repeats.
    pub fn plugin_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .plugins
            .iter()
            .filter_map(|p| p.dir.clone())
            .chain(
                self.frontends
                    .values()
                    .filter_map(|f| f.plugins.as_ref().and_then(|p| p.dir.clone())),
            )
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Paths of every file this config was read from (for the file watcher).
    pub fn file_paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Directories the file watcher should watch.
    pub fn include_dirs(&self) -> Vec<PathBuf> {
        self.watch_dirs.clone()
    }

    /// The effective config as JSON, with secrets replaced by `"<redacted>"`:
    /// TLS keys, and plugin settings whose names suggest a secret.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut frontends = serde_json::Map::new();
        for (name, f) in &self.frontends {
            let mut v = serde_json::to_value(f).unwrap_or(serde_json::Value::Null);
            if let Some(tls) = v.get_mut("tls").and_then(|t| t.as_object_mut()) {
                tls.insert("key".into(), "<redacted>".into());
            }
            if let Some(routes) = v.get_mut("routes").and_then(|r| r.as_array_mut()) {
                for route in routes {
                    if let Some(plugins) = route.get_mut("plugins").and_then(|p| p.as_array_mut()) {
                        for p in plugins {
                            if let Some(c) = p.get_mut("config") {
                                redact_secrets(c);
                            }
                        }
                    }
                }
            }
            frontends.insert(name.clone(), v);
        }
        serde_json::json!({
            "files": self.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
            "admin": self.admin,
            "server": self.server,
            "plugins": self.plugins,
            "upstreams": self.upstreams,
            "keys": self.keys,
            "frontends": frontends,
        })
    }
}

/// Where a merged item was defined: which file, so errors can point into it.
#[derive(Default)]
struct Origins {
    upstreams: BTreeMap<String, usize>,
    frontends: BTreeMap<String, usize>,
    keys: BTreeMap<String, usize>,
    admin: Option<usize>,
    plugins: Option<usize>,
}

#[derive(Default)]
struct Loader {
    files: Vec<SourceFile>,
    parsed: Vec<FileConfig>,
    seen: HashSet<PathBuf>,
    errors: Vec<ConfigError>,
    /// A file could not be read or parsed: validating the rest would only
    /// add confusing follow-on errors.
    unparsed: bool,
    watch_dirs: Vec<PathBuf>,
    /// Files read from these texts instead of the disk (their last good
    /// versions, on reload).
    forced: std::collections::HashMap<PathBuf, String>,
}

impl Loader {
    fn load_file(&mut self, path: PathBuf) {
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !self.seen.insert(key) {
            return;
        }
        let read = match self.forced.get(&path) {
            Some(text) => Ok(text.clone()),
            None => std::fs::read_to_string(&path),
        };
        let text = match read {
            Ok(t) => t,
            Err(e) => {
                self.unparsed = true;
                self.errors.push(ConfigError {
                    file: path,
                    line: 1,
                    col: 1,
                    field: String::new(),
                    message: format!("cannot read file: {e}"),
                });
                return;
            }
        };
        let parsed = match toml::from_str::<FileConfig>(&text) {
            Ok(p) => p,
            Err(e) => {
                self.unparsed = true;
                let span = e.span().unwrap_or(0..0);
                let field = path_at(&text, span.start);
                let (line, col) = line_col(&text, span.start);
                self.errors.push(ConfigError {
                    file: path,
                    line,
                    col,
                    field,
                    message: e.message().trim().to_string(),
                });
                return;
            }
        };
        let includes = parsed.include.clone();
        let index = self.files.len();
        self.files.push(SourceFile {
            path: path.clone(),
            text,
        });
        self.parsed.push(parsed);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.watch_dirs.push(absolute(&dir));
        for (i, pattern) in includes.iter().enumerate() {
            let full = dir.join(pattern);
            // The deepest directory of the pattern that has no glob in it.
            let fixed: PathBuf = full
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            let fixed_dir = if fixed == full {
                fixed.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                fixed
            };
            self.watch_dirs.push(absolute(&fixed_dir));
            let full_str = full.to_string_lossy().into_owned();
            let is_glob = pattern.contains(['*', '?', '[']);
            let matches = match glob::glob(&full_str) {
                Ok(paths) => {
                    let mut v: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                    v.sort();
                    v
                }
                Err(e) => {
                    self.error_at(index, &[Seg::key("include"), Seg::Index(i)], e.msg);
                    continue;
                }
            };
            if matches.is_empty() && !is_glob {
                self.error_at(
                    index,
                    &[Seg::key("include"), Seg::Index(i)],
                    format!("included file {} does not exist", full.display()),
                );
            }
            for m in matches {
                self.load_file(m);
            }
        }
    }

    fn error_at(&mut self, file: usize, path: &[Seg], message: impl Into<String>) {
        self.errors
            .push(locate_error(&self.files[file], path, message.into()));
    }

    fn finish(mut self, root: &Path) -> Result<Config, ConfigErrors> {
        let mut origins = Origins::default();
        let mut admin = None;
        let mut server = None;
        let mut plugins: Option<PluginsConfig> = None;
        let mut upstreams = BTreeMap::new();
        let mut frontends = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let parsed = std::mem::take(&mut self.parsed);
        for (i, file) in parsed.into_iter().enumerate() {
            if let Some(a) = file.admin {
                if admin.is_some() {
                    self.error_at(
                        i,
                        &[Seg::key("admin")],
                        "[admin] is set in more than one file",
                    );
                } else {
                    admin = Some(a);
                    origins.admin = Some(i);
                }
            }
            if let Some(s) = file.server {
                if server.is_some() {
                    self.error_at(
                        i,
                        &[Seg::key("server")],
                        "[server] is set in more than one file",
                    );
                } else {
                    server = Some(s);
                }
            }
            if let Some(mut p) = file.plugins {
                if plugins.is_some() {
                    self.error_at(
                        i,
                        &[Seg::key("plugins")],
                        "[plugins] is set in more than one file",
                    );
                } else {
                    let dir = self.files[i]
                        .path
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    p.dir = p.dir.map(|d| dir.join(d));
                    p.cache = p.cache.map(|c| dir.join(c));
                    plugins = Some(p);
                    origins.plugins = Some(i);
                }
            }
            for (name, u) in file.upstreams {
                if let Some(&prev) = origins.upstreams.get(&name) {
                    let other = self.files[prev].path.display().to_string();
                    self.error_at(
                        i,
                        &[Seg::key("upstreams"), Seg::key(&name)],
                        format!("upstream {name:?} is already defined in {other}"),
                    );
                    continue;
                }
                origins.upstreams.insert(name.clone(), i);
                upstreams.insert(name, u);
            }
            for (name, mut k) in file.keys {
                if let Some(&prev) = origins.keys.get(&name) {
                    let other = self.files[prev].path.display().to_string();
                    self.error_at(
                        i,
                        &[Seg::key("keys"), Seg::key(&name)],
                        format!("key set {name:?} is already defined in {other}"),
                    );
                    continue;
                }
                let dir = self.files[i]
                    .path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                k.pem = k.pem.map(|p| dir.join(p));
                k.secret_file = k.secret_file.map(|p| dir.join(p));
                k.jwks = k.jwks.map(|p| dir.join(p));
                origins.keys.insert(name.clone(), i);
                keys.insert(name, k);
            }
            for (name, f) in file.frontends {
                if let Some(&prev) = origins.frontends.get(&name) {
                    let other = self.files[prev].path.display().to_string();
                    self.error_at(
                        i,
                        &[Seg::key("frontends"), Seg::key(&name)],
                        format!("frontend {name:?} is already defined in {other}"),
                    );
                    continue;
                }
                origins.frontends.insert(name.clone(), i);
                let mut f = f;
                if let Some(p) = &mut f.plugins {
                    let dir = self.files[i]
                        .path
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    p.dir = p.dir.as_ref().map(|d| dir.join(d));
                }
                frontends.insert(name, f);
            }
        }
        self.watch_dirs.sort();
        self.watch_dirs.dedup();
        let mut config = Config {
            watch_dirs: std::mem::take(&mut self.watch_dirs),
            root: root.to_path_buf(),
            files: self.files,
            admin,
            server: server.unwrap_or_default(),
            plugins,
            upstreams,
            keys,
            frontends,
        };
        let mut errors = self.errors;
        for (file, path, message) in validate::validate(&mut config, &origins) {
            errors.push(locate_error(&config.files[file], &path, message));
        }
        // Report in file order, then line order.
        let order: Vec<PathBuf> = config.files.iter().map(|f| f.path.clone()).collect();
        errors.sort_by_key(|e| {
            (
                order
                    .iter()
                    .position(|p| *p == e.file)
                    .unwrap_or(usize::MAX),
                e.line,
                e.col,
            )
        });
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn locate_error(file: &SourceFile, path: &[Seg], message: String) -> ConfigError {
    let offset = span_at(&file.text, path).map(|s| s.start).unwrap_or(0);
    let (line, col) = line_col(&file.text, offset);
    ConfigError {
        file: file.path.clone(),
        line,
        col,
        field: locate::display_path(path),
        message,
    }
}

/// Replace values under keys that look like secrets.
fn redact_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if ["secret", "password", "token", "key", "credential"]
                    .iter()
                    .any(|s| k.contains(s))
                    && !val.is_object()
                {
                    *val = "<redacted>".into();
                } else {
                    redact_secrets(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

fn absolute(dir: &Path) -> PathBuf {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}
