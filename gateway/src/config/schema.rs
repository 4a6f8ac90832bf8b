//! The configuration file format: plain serde types with
//! `deny_unknown_fields` and every default written out.
//!
//! One file may `include` others (globs, relative to the including file);
//! every file has this same shape and the loader merges them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Duration};

/// One TOML file as written on disk.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Other files to load, as globs relative to this file.
    #[serde(default)]
    pub include: Vec<String>,
    /// The admin listener (health, metrics, effective config).
    pub admin: Option<AdminConfig>,
    /// Process-wide settings.
    pub server: Option<ServerConfig>,
    /// Where plugins come from and how many may run at once.
    pub plugins: Option<PluginsConfig>,
    /// Named upstream clusters.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Named key sets for token verification by plugins.
    #[serde(default)]
    pub keys: BTreeMap<String, KeySetConfig>,
    /// Named frontends: each is its own gateway with its own listener.
    #[serde(default)]
    pub frontends: BTreeMap<String, FrontendConfig>,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens. Keep it on loopback.
    pub listen: SocketAddr,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(default = "ServerConfig::default_grace")]
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    fn default_grace() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Self::default_grace(),
        }
    }
}

/// `[plugins]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of `NAME@VERSION.wasm` files, watched for changes; for
    /// frontends that do not name their own (`frontends.NAME.plugins.dir`).
    pub dir: Option<PathBuf>,
    /// Where precompiled plugins are cached (default: `DIR/.cache`).
    pub cache: Option<PathBuf>,
    /// Plugin instances that may exist at once, across all routes.
    #[serde(default = "PluginsConfig::default_max_instances")]
    pub max_instances: u32,
    /// The most memory any one plugin instance may be given.
    #[serde(default = "PluginsConfig::default_max_memory")]
    pub max_memory: ByteSize,
}

impl PluginsConfig {
    fn default_max_instances() -> u32 {
        256
    }
    fn default_max_memory() -> ByteSize {
        ByteSize::mib(64)
    }

    /// The cache directory for plugins of `dir`.
    pub fn cache_dir(&self, dir: &std::path::Path) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| dir.join(".cache"))
    }

    /// Whether the engine settings (not the directories) are the same.
    pub fn same_engine(&self, other: &PluginsConfig) -> bool {
        self.max_instances == other.max_instances && self.max_memory == other.max_memory
    }
}

/// One plugin in a route's chain.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Plugin name (the part of the file name before `@`).
    pub name: String,
    /// Exact version (the part after `@`), e.g. `"1.2.0"`.
    pub version: String,
    /// Configuration handed to the plugin as JSON.
    pub config: Option<toml::Table>,
    /// Give the plugin the request and response bodies (buffered, up to `max_request_body`).
    #[serde(default)]
    pub body: bool,
    /// Wall-clock limit for one call into the plugin (504 when exceeded).
    #[serde(default = "PluginRef::default_timeout")]
    pub timeout: Duration,
    /// Memory limit for one instance (500 when exceeded).
    #[serde(default = "PluginRef::default_memory")]
    pub memory: ByteSize,
    /// `reuse` keeps instances in a pool; `per-request` gives every request a fresh one.
    #[serde(default)]
    pub instance: InstanceMode,
    /// Upstreams the plugin may call.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Key sets the plugin may verify tokens with.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Environment variables the plugin sees (none by default).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directories the plugin may open (none by default).
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
}

/// `{ host = "data", guest = "/data", writable = false }`: a directory
/// granted to a plugin.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the gateway's machine (relative to the config file).
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Whether the plugin may write (read-only by default).
    #[serde(default)]
    pub writable: bool,
}

impl PluginRef {
    pub(crate) fn default_timeout() -> Duration {
        Duration::from_millis(100)
    }
    fn default_memory() -> ByteSize {
        ByteSize::mib(16)
    }

    /// The plugin's config as a JSON document (`{}` when none).
    pub fn config_json(&self) -> String {
        self.config
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok())
            .unwrap_or_else(|| "{}".to_string())
    }
}

/// `[keys.NAME]`: keys a plugin may verify tokens with (when granted).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetConfig {
    /// PEM file with one public key (RSA, EC or Ed25519).
    pub pem: Option<PathBuf>,
    /// File holding an HMAC secret (its bytes, trailing newline removed).
    pub secret_file: Option<PathBuf>,
    /// JWKS document (JSON) with one or more public keys, chosen by `kid`.
    pub jwks: Option<PathBuf>,
    /// A JWKS document fetched from an upstream and cached.
    pub jwks_from: Option<JwksFrom>,
    /// The key id of a `pem` or `secret_file` key. When set, tokens must
    /// name it; when unset, tokens must not name a key.
    pub kid: Option<String>,
    /// Algorithms accepted with these keys, e.g. `["RS256"]`.
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (at most 5 minutes).
    #[serde(default = "KeySetConfig::default_leeway")]
    pub leeway: Duration,
}

impl KeySetConfig {
    fn default_leeway() -> Duration {
        Duration::from_secs(30)
    }
}

/// `jwks_from = { upstream = "idp", path = "/.well-known/jwks.json" }`: where
/// a key set is fetched from, and how often.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksFrom {
    /// The upstream serving the document (`[upstreams.NAME]`).
    pub upstream: String,
    /// Its path.
    #[serde(default = "JwksFrom::default_path")]
    pub path: String,
    /// How long a fetched document is used before it is fetched again.
    #[serde(default = "JwksFrom::default_refresh")]
    pub refresh: Duration,
    /// Least time between two fetches, also when a token names an unknown
    /// `kid` (so unknown ids cannot be used to flood the identity provider).
    #[serde(default = "JwksFrom::default_min_interval")]
    pub min_interval: Duration,
}

impl JwksFrom {
    fn default_path() -> String {
        "/.well-known/jwks.json".into()
    }
    fn default_refresh() -> Duration {
        Duration::from_secs(600)
    }
    fn default_min_interval() -> Duration {
        Duration::from_secs(30)
    }
}

/// How plugin instances are managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// Instances are pooled and reused; a trap discards the instance.
    #[default]
    Reuse,
    /// A fresh instance per request: no state can leak between requests.
    PerRequest,
}

/// `[upstreams.NAME]`: a cluster of interchangeable endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `"host:port"` or `{ address = "host:port", weight = 3 }`.
    pub endpoints: Vec<EndpointSpec>,
    /// How requests are spread over healthy endpoints.
    #[serde(default)]
    pub balance: Balance,
    /// HTTP version spoken to the endpoints.
    #[serde(default)]
    pub protocol: Protocol,
    /// Speak HTTPS to the endpoints.
    pub tls: Option<UpstreamTls>,
    /// Limit on establishing one connection.
    #[serde(default = "UpstreamConfig::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving the response head.
    #[serde(default = "UpstreamConfig::default_request_timeout")]
    pub request_timeout: Duration,
    /// Retries of idempotent requests.
    #[serde(default)]
    pub retries: Retries,
    /// Active health checking.
    pub health: Option<HealthCheck>,
    /// Per-endpoint circuit breaker (passive outlier ejection).
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Connection pool settings.
    #[serde(default)]
    pub pool: Pool,
}

impl UpstreamConfig {
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_request_timeout() -> Duration {
        Duration::from_secs(15)
    }
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EndpointSpec {
    /// `"host:port"`, weight 1.
    Address(String),
    /// `{ address = "host:port", weight = N }`.
    Weighted {
        /// `host:port`.
        address: String,
        /// Relative share of requests (1..=1000).
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

impl EndpointSpec {
    /// The `host:port` of this endpoint.
    pub fn address(&self) -> &str {
        match self {
            EndpointSpec::Address(a) => a,
            EndpointSpec::Weighted { address, .. } => address,
        }
    }

    /// The endpoint's weight.
    pub fn weight(&self) -> u32 {
        match self {
            EndpointSpec::Address(_) => 1,
            EndpointSpec::Weighted { weight, .. } => *weight,
        }
    }
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin (smooth, nginx-style).
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests per weight.
    LeastRequest,
    /// Weighted random.
    Random,
}

/// Upstream HTTP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 (ALPN over TLS, prior knowledge in cleartext).
    Http2,
}

/// `tls = { ca = "ca.pem" }` on an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of the roots trusted for this upstream.
    pub ca: PathBuf,
    /// Name to verify the certificate against (default: the endpoint host).
    pub server_name: Option<String>,
}

/// `retries = { attempts = 2, on = ["connect-failure", "reset", "503"] }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Extra attempts after the first one.
    #[serde(default = "Retries::default_attempts")]
    pub attempts: u32,
    /// Which failures are retried.
    #[serde(default = "Retries::default_on")]
    pub on: Vec<RetryOn>,
}

impl Retries {
    fn default_attempts() -> u32 {
        1
    }
    fn default_on() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure]
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: Self::default_attempts(),
            on: Self::default_on(),
        }
    }
}

/// A retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum RetryOn {
    /// The connection could not be established (nothing was sent).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection broke before a response head arrived.
    #[serde(rename = "reset")]
    Reset,
    /// The endpoint answered 502.
    #[serde(rename = "502")]
    Status502,
    /// The endpoint answered 503.
    #[serde(rename = "503")]
    Status503,
    /// The endpoint answered 504.
    #[serde(rename = "504")]
    Status504,
}

/// `health = { path = "/health", interval = "2s", ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path probed with `GET`; any 2xx is healthy.
    pub path: String,
    /// Time between probes.
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: Duration,
    /// Limit for one probe.
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: Duration,
    /// Consecutive failed probes that take an endpoint out.
    #[serde(default = "HealthCheck::default_threshold")]
    pub unhealthy_after: u32,
    /// Consecutive good probes that bring it back.
    #[serde(default = "HealthCheck::default_threshold")]
    pub healthy_after: u32,
}

impl HealthCheck {
    fn default_interval() -> Duration {
        Duration::from_secs(5)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_threshold() -> u32 {
        2
    }
}

/// `circuit_breaker = { consecutive_failures = 5, open_for = "10s" }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Consecutive failures (connect errors, resets, 502/503/504) that open it.
    #[serde(default = "CircuitBreaker::default_failures")]
    pub consecutive_failures: u32,
    /// How long it stays open before one half-open probe request is let through.
    #[serde(default = "CircuitBreaker::default_open_for")]
    pub open_for: Duration,
}

impl CircuitBreaker {
    fn default_failures() -> u32 {
        5
    }
    fn default_open_for() -> Duration {
        Duration::from_secs(10)
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            consecutive_failures: Self::default_failures(),
            open_for: Self::default_open_for(),
        }
    }
}

/// `pool = { max_idle_per_endpoint = 64, idle_timeout = "90s" }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "Pool::default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// How long an idle connection is kept.
    #[serde(default = "Pool::default_idle_timeout")]
    pub idle_timeout: Duration,
}

impl Pool {
    fn default_max_idle() -> usize {
        128
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: Self::default_max_idle(),
            idle_timeout: Self::default_idle_timeout(),
        }
    }
}

/// `[frontends.NAME]`: one team's gateway.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// Listener address.
    pub listen: SocketAddr,
    /// Terminate TLS (HTTP/2 and HTTP/1.1 by ALPN).
    pub tls: Option<FrontendTls>,
    /// Connection and request limits.
    #[serde(default)]
    pub limits: Limits,
    /// This frontend's own plugin directory and plugin memory budget.
    pub plugins: Option<FrontendPlugins>,
    /// Routes, matched first to last.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `plugins = { dir = "plugins/mobile", max_memory = "256MiB" }` on a
/// frontend: its team deploys into its own directory, and its plugins
/// together cannot take more than their budget.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendPlugins {
    /// Directory of `NAME@VERSION.wasm` files (default: `[plugins].dir`).
    pub dir: Option<PathBuf>,
    /// Linear memory all plugin instances of this frontend may hold at once;
    /// past it, a plugin call fails with 500 instead of taking memory from
    /// other frontends.
    pub max_memory: Option<ByteSize>,
}

/// `tls = { cert = "cert.pem", key = "key.pem" }` on a frontend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `limits = { ... }` on a frontend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open downstream connections; further clients wait in the accept queue.
    #[serde(default = "Limits::default_max_connections")]
    pub max_connections: usize,
    /// Time allowed for a client to send a complete request head (and a TLS handshake).
    #[serde(default = "Limits::default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "Limits::default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Largest request body accepted (413 above it).
    #[serde(default = "Limits::default_max_request_body")]
    pub max_request_body: ByteSize,
    /// Largest request head accepted (431 above it); at least 8KiB.
    #[serde(default = "Limits::default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Requests in flight at once; more are answered 503 at once (default: no limit).
    pub max_concurrent_requests: Option<usize>,
}

impl Limits {
    fn default_max_connections() -> usize {
        10_000
    }
    fn default_header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    fn default_max_request_body() -> ByteSize {
        ByteSize::mib(10)
    }
    fn default_max_header_bytes() -> ByteSize {
        ByteSize::kib(32)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: Self::default_max_connections(),
            header_read_timeout: Self::default_header_read_timeout(),
            idle_timeout: Self::default_idle_timeout(),
            max_request_body: Self::default_max_request_body(),
            max_header_bytes: Self::default_max_header_bytes(),
            max_concurrent_requests: None,
        }
    }
}

/// `[[frontends.NAME.routes]]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and metrics (default: `route-N`, N counted from 0).
    pub name: Option<String>,
    /// What the request must look like.
    #[serde(rename = "match", default)]
    pub matcher: Match,
    /// Prefix removed from the path before forwarding.
    pub strip_prefix: Option<String>,
    /// The upstream that serves the route.
    pub upstream: Option<String>,
    /// Weighted split between upstreams, instead of `upstream`.
    pub split: Option<Vec<SplitTarget>>,
    /// Requests carrying a header go to another upstream.
    pub canary: Option<Canary>,
    /// Overrides the upstream's `request_timeout` for this route.
    pub timeout: Option<Duration>,
    /// Compress responses by `Accept-Encoding`: `true` or `{ min_size = "1KiB" }`.
    pub compress: Option<CompressSetting>,
    /// Plugin chain: request phase in this order, response phase in reverse.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
}

/// `match = { ... }`
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Path must start with this, at a segment boundary (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
    /// Path must equal this.
    pub path: Option<String>,
    /// Allowed methods; others get 405 when nothing else matches.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host (without port) must equal this; `*.example.com` matches subdomains.
    pub host: Option<String>,
    /// Headers that must be present with these exact values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One leg of a weighted split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// Upstream name.
    pub upstream: String,
    /// Relative weight.
    pub weight: u32,
}

/// `canary = { header = "x-canary", value = "1", upstream = "users-canary" }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Header name.
    pub header: String,
    /// Exact value that selects the canary.
    pub value: String,
    /// Upstream that serves matching requests.
    pub upstream: String,
}

/// `compress = true` or `compress = { ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CompressSetting {
    /// `true` enables with defaults, `false` disables.
    Enabled(bool),
    /// Explicit settings.
    Settings(CompressConfig),
}

/// Response compression settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// Bodies known to be smaller than this are sent as they are.
    #[serde(default = "CompressConfig::default_min_size")]
    pub min_size: ByteSize,
    /// Encodings offered, in order of preference.
    #[serde(default = "CompressConfig::default_algorithms")]
    pub algorithms: Vec<Encoding>,
}

impl CompressConfig {
    fn default_min_size() -> ByteSize {
        ByteSize(860)
    }
    fn default_algorithms() -> Vec<Encoding> {
        vec![Encoding::Zstd, Encoding::Br, Encoding::Gzip]
    }
}

impl Default for CompressConfig {
    fn default() -> Self {
        Self {
            min_size: Self::default_min_size(),
            algorithms: Self::default_algorithms(),
        }
    }
}

/// A content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `gzip`
    Gzip,
    /// `br` (Brotli)
    Br,
    /// `zstd`
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
        }
    }
}
