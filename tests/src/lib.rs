//! Test harness for Transom's integration tests: real upstream servers on
//! ephemeral loopback ports, a gateway started from a TOML written to a
//! temporary directory, and HTTP clients (HTTP/1.1, HTTP/2, TLS, raw TCP).
//!
//! ```ignore
//! let users = TestUpstream::start("users").await;
//! let gw = TestGateway::start(&format!(r#"
//!     [upstreams.users]
//!     endpoints = ["{}"]
//!     [frontends.web]
//!     listen = "127.0.0.1:0"
//!     [[frontends.web.routes]]
//!     upstream = "users"
//! "#, users.addr)).await;
//! let resp = get(gw.addr("web").await, "/x").await;
//! ```
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use transom;

/// Boxed body used by the test upstreams.
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Install a tracing subscriber once (set `RUST_LOG` to see gateway logs).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A real HTTP/1.1 + HTTP/2 upstream on 127.0.0.1:0.
///
/// Paths it understands:
/// - `/health`: 200, or 503 after [`TestUpstream::set_healthy(false)`];
/// - `/sleep/MS/...`: waits MS milliseconds, then echoes;
/// - `/status/CODE/...`: answers CODE;
/// - `/bytes/N`: streams N bytes of `x` in 64 KiB chunks;
/// - `/sink`: reads the whole body and answers its length;
/// - `/upgrade`: answers 101 and echoes bytes on the upgraded connection;
/// - anything else: echoes method, path, query, headers and body length as JSON.
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Name reported in echoes.
    pub name: String,
    state: Arc<UpstreamState>,
    tasks: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct UpstreamState {
    name: String,
    requests: AtomicUsize,
    healthy: AtomicBool,
    fail_with: AtomicU64,
    delay_ms: AtomicU64,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    /// Fixed answers by path (see [`TestUpstream::set_document`]).
    documents: Mutex<HashMap<String, String>>,
}

impl TestUpstream {
    /// Start an upstream named `name`.
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// Start an upstream on a given address (to restart one that was killed).
    pub async fn start_on(addr: SocketAddr, name: &str) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            requests: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            fail_with: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            documents: Mutex::new(Default::default()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(serve(st, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
            // Dropping `conns` (on abort) closes every connection.
        });
        TestUpstream {
            addr,
            name: name.to_string(),
            state,
            tasks: Mutex::new(Some(task)),
        }
    }

    /// Answer `GET path` with this JSON document (replacing any before).
    pub fn set_document(&self, path: &str, json: &str) {
        self.state
            .documents
            .lock()
            .unwrap()
            .insert(path.to_string(), json.to_string());
    }

    /// Requests served so far (health checks included).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Highest number of concurrent requests seen.
    pub fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }

    /// Make `/health` answer 503 (false) or 200 (true).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Answer every non-health request with this status (0 = normal).
    pub fn fail_with(&self, status: u16) {
        self.state
            .fail_with
            .store(u64::from(status), Ordering::SeqCst);
    }

    /// Delay every non-health answer by `ms` milliseconds.
    pub fn set_delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Stop listening and drop every open connection.
    pub fn kill(&self) {
        if let Some(t) = self.tasks.lock().unwrap().take() {
            t.abort();
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

struct InflightGuard(Arc<UpstreamState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(st: Arc<UpstreamState>, mut req: Request<Incoming>) -> Response<TestBody> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let now = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_inflight.fetch_max(now, Ordering::SeqCst);
    let _guard = InflightGuard(st.clone());
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.first() == Some(&"health") {
        let ok = st.healthy.load(Ordering::SeqCst);
        return status(if ok { 200 } else { 503 }, if ok { "ok" } else { "down" });
    }
    let document = st.documents.lock().unwrap().get(&path).cloned();
    if let Some(doc) = document {
        let mut resp = Response::new(full(doc));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return resp;
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = st.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return status(fail as u16, "failing on purpose");
    }
    match segs.as_slice() {
        ["sleep", ms, ..] => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        ["status", code, ..] => {
            return status(code.parse().unwrap_or(500), "as requested");
        }
        ["bytes", n] => {
            let n: usize = n.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = (0..n.div_ceil(chunk.len())).map(move |i| {
                let len = (n - i * chunk.len()).min(chunk.len());
                Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
            });
            let body = StreamBody::new(futures_util::stream::iter(chunks));
            let mut resp = Response::new(BodyExt::boxed(body));
            resp.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            return resp;
        }
        ["sink"] => {
            let mut total = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            total += d.len() as u64;
                        }
                    }
                    Err(_) => return status(400, "body error"),
                }
            }
            return status(200, &total.to_string());
        }
        ["upgrade"] => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut resp = Response::new(full(""));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            resp.headers_mut()
                .insert("upgrade", "echo".parse().unwrap());
            return resp;
        }
        _ => {}
    }
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body_len = body.map(|b| b.len()).unwrap_or(0);
    let echo = serde_json::json!({
        "upstream": st.name,
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body_len": body_len,
    });
    let mut resp = Response::new(full(echo.to_string()));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

fn status(code: u16, body: &str) -> Response<TestBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory.
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "transom-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Write a file inside it (creating parent directories).
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        // Write to a temporary name and rename, as editors do, so a watcher
        // never sees a half-written file.
        let tmp = p.with_extension("tmp-write");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// A gateway started in this process from a config written to a temp dir.
pub struct TestGateway {
    /// The gateway.
    pub gw: Arc<transom::Gateway>,
    /// The directory holding its config.
    pub dir: TempDir,
    /// The root config file.
    pub config: PathBuf,
}

impl TestGateway {
    /// Start from `toml` (the root file).
    pub async fn start(toml: &str) -> TestGateway {
        Self::try_start(toml)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Start, or return the error.
    pub async fn try_start(toml: &str) -> Result<TestGateway, transom::gateway::ApplyError> {
        init_logs();
        let dir = TempDir::new();
        let config = dir.write("transom.toml", toml);
        Self::start_in(dir, config).await
    }

    /// Start with the files already written in `dir`.
    pub async fn start_in(
        dir: TempDir,
        config: PathBuf,
    ) -> Result<TestGateway, transom::gateway::ApplyError> {
        init_logs();
        let gw = transom::Gateway::start(&config, transom::Options { access_log: false }).await?;
        Ok(TestGateway { gw, dir, config })
    }

    /// Bound address of a frontend.
    pub async fn addr(&self, frontend: &str) -> SocketAddr {
        self.gw
            .frontend_addr(frontend)
            .await
            .unwrap_or_else(|| panic!("no frontend {frontend}"))
    }

    /// Replace the root config and reload.
    pub async fn rewrite(&self, toml: &str) -> Result<bool, transom::gateway::ApplyError> {
        self.dir.write("transom.toml", toml);
        self.gw.reload().await
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
    /// HTTP version of the response.
    pub version: http::Version,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Send a request and read the whole response.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    })
}

/// `GET http://addr{path}` on a fresh client.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&client(), req).await.unwrap()
}

/// A request builder for `http://addr{path}`.
pub fn request(method: &str, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
}

/// Write raw bytes on a new TCP connection and read until the peer closes
/// (or `timeout` passes). Returns what was read and whether the peer closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(timeout, s.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Poll `check` every 20 ms until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of this process in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The compiled plugin `stem` (e.g. `add_header`, `fixture_kit`) built from
/// `plugins/` by this package's build script.
pub fn plugin_wasm(stem: &str) -> PathBuf {
    let p = Path::new(env!("TRANSOM_TEST_PLUGINS")).join(format!("{stem}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// Copy the compiled plugin `stem` into `dir` as `NAME@VERSION.wasm`
/// (written under a temporary name and renamed, as a deploy would).
pub fn install_plugin(dir: &Path, stem: &str, id: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(format!("{id}.wasm"));
    let tmp = dir.join(format!(".{id}.partial"));
    std::fs::copy(plugin_wasm(stem), &tmp).unwrap();
    std::fs::rename(&tmp, &to).unwrap();
    to
}

/// A copy of `examples/NAME` in a temp dir, with every `from` address in its
/// TOML files replaced by its `to`, and the plugins its frontends pin
/// installed from this package's build (as `transom demo` does from a
/// release build).
pub fn example_copy(name: &str, addrs: &[(String, String)]) -> (TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = root.join("examples").join(name);
    let dir = TempDir::new();
    fn copy(from: &Path, to: &Path, addrs: &[(String, String)]) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                // installed plugins and caches are not part of the example
                if name != "plugins" {
                    copy(&path, &to.join(&name), addrs);
                }
            } else if path.extension().is_some_and(|e| e == "toml") {
                let mut text = std::fs::read_to_string(&path).unwrap();
                for (a, b) in addrs {
                    text = text.replace(a.as_str(), b.as_str());
                }
                std::fs::write(to.join(&name), text).unwrap();
            } else {
                std::fs::copy(&path, to.join(&name)).unwrap();
            }
        }
    }
    copy(&src, dir.path(), addrs);
    transom::demo::install_plugins(
        dir.path(),
        &root.join("plugins"),
        Path::new(env!("TRANSOM_TEST_PLUGINS")),
    )
    .unwrap();
    let config = dir.path().join("transom.toml");
    (dir, config)
}
