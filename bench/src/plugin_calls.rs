//! `plugin-calls`: what the plugin runtime itself costs per request, without
//! the network.
//!
//! The HTTP benchmarks (`bench/plugins.sh`) measure a plugin's cost as the
//! difference between two routes' CPU per request, on top of some 20 µs of
//! proxying whose noise on a shared machine is as large as a plugin's whole
//! cost. This binary runs the same bindings the gateway runs (a route's
//! request phase, then its response phase, in the instance the request phase
//! used) in a loop on one thread, and prints the time per request for each
//! plugin and instance mode.
//!
//! ```sh
//! plugin-calls DIR [--iterations N] [--rounds R] [--only CASE] [--inflight N] [--gap US]
//! ```
//!
//! `DIR` holds `noop@1.0.0.wasm` and `add-header@1.0.0.wasm` (as
//! `bench/plugins.sh` lays them out). Cases run interleaved, `R` rounds of
//! `N` requests each; the table shows each case's median round and its best
//! (the round least disturbed by anything else on the machine). `--only`
//! keeps the cases whose name contains `CASE` (for a profiler);
//! `--inflight N` holds `N` requests' instances at once, as a gateway does
//! while `N` requests wait on the upstream (default 1). `--gap US` pauses
//! between requests, as a gateway below saturation idles between them, so
//! each request starts with colder caches.
//!
//! Times are the thread's CPU time. With `--gap`, every row, the baseline
//! too, includes what the pauses themselves cost (a sleep and a wake-up).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use transom::config::{PluginRef, PluginsConfig};
use transom::plugin::{
    Binding, Counters, PluginEngine, PluginMetrics, Registry, RequestState, ResponseState, Services,
};

const CASES: [(&str, &str, &str); 4] = [
    ("noop", "reuse", ""),
    ("add-header", "reuse", HEADER_CONFIG),
    ("noop", "per-request", ""),
    ("add-header", "per-request", HEADER_CONFIG),
];
const HEADER_CONFIG: &str = r#"config = { request = { "x-a" = "1" }, response = { "x-b" = "2" } }"#;

fn request() -> RequestState {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    RequestState {
        method: Method::GET,
        path: "/bench".into(),
        query: None,
        headers,
        body: None,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        route: "bench".into(),
    }
}

fn response() -> ResponseState {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("content-length", HeaderValue::from_static("64"));
    ResponseState {
        status: StatusCode::OK,
        headers,
        body: None,
    }
}

/// `n` requests through `binding`, `inflight` at a time: their request
/// phases, then their response phases (when the plugin has one) in the
/// instances the request phases used, as a gateway with `inflight` requests
/// waiting on the upstream holds them.
async fn requests(
    binding: &Arc<Binding>,
    n: u32,
    inflight: u32,
    gap: Duration,
) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(inflight as usize);
    let mut done = 0;
    while done < n {
        pause(gap);
        let batch = inflight.min(n - done);
        for _ in 0..batch {
            held.push(binding.on_request(request()).await?.2);
        }
        for after in held.drain(..) {
            let mut resp = response();
            for edit in after.edits {
                edit.apply(&mut resp.headers);
            }
            if after.response_phase {
                binding.on_response(after.held, resp).await?;
            }
        }
        done += batch;
    }
    Ok(())
}

const USAGE: &str =
    "usage: plugin-calls DIR [--iterations N] [--rounds R] [--only CASE] [--inflight N] [--gap US]";

/// Idle for `gap` (blocking the thread, as an idle worker blocks in
/// `epoll_wait`).
fn pause(gap: Duration) {
    if !gap.is_zero() {
        std::thread::sleep(gap);
    }
}

/// The benchmark thread's CPU time.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Microseconds of CPU per request since `from` (a [`cpu_now`]).
fn per_request(from: Duration, n: u32) -> f64 {
    cpu_now().saturating_sub(from).as_secs_f64() * 1e6 / f64::from(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let (mut iterations, mut rounds) = (20_000u32, 5usize);
    let mut only: Option<String> = None;
    let mut inflight = 1u32;
    let mut gap = Duration::ZERO;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => iterations = args.next().context("--iterations N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds R")?.parse()?,
            "--only" => only = Some(args.next().context("--only CASE")?),
            "--inflight" => inflight = args.next().context("--inflight N")?.parse()?,
            "--gap" => gap = Duration::from_micros(args.next().context("--gap US")?.parse()?),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let dir = dir.context(USAGE)?;
    if iterations == 0 || rounds == 0 || inflight == 0 {
        bail!("--iterations, --rounds and --inflight must be at least 1");
    }

    let cfg: PluginsConfig = toml::from_str("")?;
    let engine = PluginEngine::new(&cfg)?;
    let registry = Registry::new(engine.clone(), &cfg, &dir);
    let report = registry.sync().await;
    if let Some((file, why)) = report.failed.first() {
        bail!("{}: {why}", file.display());
    }
    let services = Arc::new(Services {
        upstreams: Default::default(),
        keys: Default::default(),
        counters: Arc::new(Counters::default()),
        buckets: Default::default(),
        metrics: Arc::new(PluginMetrics::default()),
    });
    let mut bindings = Vec::new();
    let cases: Vec<_> = CASES
        .iter()
        .filter(|(name, mode, _)| {
            only.as_ref()
                .is_none_or(|o| format!("{name} {mode}").contains(o.as_str()))
        })
        .collect();
    if let (Some(o), true) = (&only, cases.is_empty()) {
        bail!(
            "--only {o:?} matches no case (cases: \"noop reuse\", \"add-header per-request\", ...)"
        );
    }
    for (name, mode, config) in cases.iter().copied() {
        let plugin = registry
            .get(name, "1.0.0")
            .with_context(|| format!("{name}@1.0.0.wasm is not in {}", dir.display()))?;
        let r: PluginRef = toml::from_str(&format!(
            "name = {name:?}\nversion = \"1.0.0\"\ninstance = {mode:?}\n{config}"
        ))?;
        let b = Arc::new(Binding::new(
            engine.clone(),
            "bench",
            plugin,
            &r,
            services.clone(),
            None,
        ));
        requests(&b, inflight, inflight, Duration::ZERO).await?; // warm: the first instances, the config parse
        bindings.push(b);
    }

    // Per case, the time per request of each round.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len() + 1];
    for _ in 0..rounds {
        // Baseline: building the states the host hands over, no plugin.
        let start = cpu_now();
        for i in 0..iterations {
            if i % inflight == 0 {
                pause(gap);
            }
            std::hint::black_box((request(), response()));
        }
        times[0].push(per_request(start, iterations));
        for (i, b) in bindings.iter().enumerate() {
            let start = cpu_now();
            requests(b, iterations, inflight, gap).await?;
            times[i + 1].push(per_request(start, iterations));
        }
    }

    println!(
        "\nplugin runtime per request, no network ({iterations} requests x {rounds} rounds, {inflight} in flight, {} us between, CPU per request, median and best round):",
        gap.as_micros(),
    );
    println!("{:<28} {:>10} {:>8}  rounds", "case", "us/req", "best");
    let label = |i: usize| match i {
        0 => "no plugin (states only)".to_string(),
        i => {
            let (name, mode, _) = cases[i - 1];
            format!("{name} {mode}")
        }
    };
    for (i, t) in times.iter_mut().enumerate() {
        let rounds_text = t
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        t.sort_by(f64::total_cmp);
        let (median, best) = (t[t.len() / 2], t[0]);
        println!(
            "{:<28} {median:>10.2} {best:>8.2}  [{rounds_text}]",
            label(i)
        );
    }
    Ok(())
}
