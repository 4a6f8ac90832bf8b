//! Plugins end to end: real `.wasm` components built from `plugins/`, loaded
//! from a plugin directory, pinned by routes, running in both instance modes,
//! hot-reloaded, and contained when they misbehave.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use transom_tests::*;

/// A gateway whose routes are given as TOML, with a plugin directory
/// holding the listed (stem, id) files.
async fn gateway(up: &TestUpstream, plugins: &[(&str, &str)], routes: &str) -> TestGateway {
    let dir = TempDir::new();
    for (stem, id) in plugins {
        install_plugin(&dir.path().join("plugins"), stem, id);
    }
    let root = dir.write("transom.toml", &config(up, routes));
    TestGateway::start_in(dir, root).await.unwrap()
}

fn config(up: &TestUpstream, routes: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[plugins]
dir = "plugins"

[upstreams.u]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"
{routes}
"#,
        up.addr
    )
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = request(method, addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        &client(),
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn add_header_sets_request_and_response_headers() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        &[("add_header", "add-header@1.0.0")],
        r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "add-header", version = "1.0.0", config = { request = { "x-team" = "web" }, response = { "x-served-by" = "transom" } } }]
"#,
    )
    .await;
    let r = call(
        gw.addr("web").await,
        "GET",
        "/x",
        &[("x-team", "spoofed")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-team"],
        "web",
        "replaced, not appended"
    );
    assert_eq!(r.header("x-served-by"), Some("transom"));
}

const KIT: &[(&str, &str)] = &[("fixture_kit", "kit@1.0.0")];

#[tokio::test]
async fn headers_are_set_removed_renamed_and_the_path_rewritten() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        KIT,
        r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "kit", version = "1.0.0", config = { set = { "x-added" = "1" }, remove = ["cookie"], rename = { "x-old" = "x-new" }, path = "/rewritten" } }]
"#,
    )
    .await;
    let r = call(
        gw.addr("web").await,
        "GET",
        "/orig?q=1",
        &[("cookie", "secret"), ("x-old", "v")],
        "",
    )
    .await;
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(h["x-added"], "1");
    assert!(h.get("cookie").is_none());
    assert!(h.get("x-old").is_none());
    assert_eq!(h["x-new"], "v");
    assert_eq!(j["path"], "/rewritten");
    assert_eq!(j["query"], "q=1");
}

#[tokio::test]
async fn a_query_only_rewrite_reaches_the_upstream_and_an_untouched_uri_stays_exact() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        &[("transform", "transform@1.0.0")],
        r#"
[[frontends.web.routes]]
match = { path_prefix = "/q" }
upstream = "u"
plugins = [{ name = "transform", version = "1.0.0", config = { request = { query = { set = { page = "2" } } } } }]

[[frontends.web.routes]]
match = { path_prefix = "/same" }
upstream = "u"
plugins = [{ name = "transform", version = "1.0.0", config = { request = { headers = { set = { "x-t" = "1" } } } } }]
"#,
    )
    .await;
    let addr = gw.addr("web").await;
    // Path unchanged, query changed: the new query must be forwarded.
    let j = call(addr, "GET", "/q/items?page=1&x=%41", &[], "")
        .await
        .json();
    assert_eq!(j["path"], "/q/items");
    assert_eq!(j["query"], "page=2&x=%41");
    // Neither changed: forwarded byte for byte.
    let j = call(addr, "GET", "/same/a%2Fb?z=%7E&&y", &[], "")
        .await
        .json();
    assert_eq!(j["path"], "/same/a%2Fb");
    assert_eq!(j["query"], "z=%7E&&y");
    assert_eq!(j["headers"]["x-t"], "1");
}

#[tokio::test]
async fn a_plugin_answer_short_circuits_the_chain_and_the_upstream() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        &[
            ("fixture_kit", "kit@1.0.0"),
            ("add_header", "add-header@1.0.0"),
        ],
        r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [
  { name = "add-header", version = "1.0.0", config = { response = { "x-first" = "saw the answer" } } },
  { name = "kit", version = "1.0.0", config = { deny_if = "x-deny" } },
  { name = "add-header", version = "1.0.0", config = { request = { "x-second" = "ran" }, response = { "x-third" = "ran" } } },
]
"#,
    )
    .await;
    let addr = gw.addr("web").await;
    let r = call(addr, "GET", "/", &[("x-deny", "1")], "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["denied_by"], "kit");
    assert_eq!(r.header("x-kit"), Some("denied"));
    // The answer went back through the response phase of the plugin before
    // the one that answered, and not through the one after it.
    assert_eq!(r.header("x-first"), Some("saw the answer"));
    assert_eq!(r.header("x-third"), None);
    assert!(r.header("x-request-id").is_some());
    assert_eq!(up.requests(), 0, "the upstream never saw it");
    // Without the header both plugins run, in order.
    let r = call(addr, "GET", "/", &[], "").await;
    assert_eq!(r.json()["headers"]["x-second"], "ran");
}

#[tokio::test]
async fn response_headers_set_in_the_request_phase_apply_at_the_plugins_place_without_a_second_call()
 {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        &[
            ("fixture_kit", "kit@1.0.0"),
            ("add_header", "add-header@1.0.0"),
            ("transform", "transform@1.0.0"),
        ],
        r#"
[[frontends.web.routes]]
match = { path_prefix = "/kit-last" }
upstream = "u"
plugins = [
  { name = "kit", version = "1.0.0", config = { response_set = { "x-who" = "kit" } } },
  { name = "add-header", version = "1.0.0", instance = "per-request", config = { response = { "x-who" = "add-header", "x-also" = "1" } } },
]

[[frontends.web.routes]]
match = { path_prefix = "/add-header-last" }
upstream = "u"
plugins = [
  { name = "add-header", version = "1.0.0", config = { response = { "x-who" = "add-header" } } },
  { name = "kit", version = "1.0.0", config = { response_set = { "x-who" = "kit" } } },
  { name = "transform", version = "1.0.0", config = { request = { headers = { set = { "x-t" = "1" } } } } },
]

[[frontends.web.routes]]
match = { path_prefix = "/framing" }
upstream = "u"
plugins = [{ name = "kit", version = "1.0.0", config = { deny_if = "x-deny" } }, { name = "add-header", version = "1.0.0", config = { response = { "content-length" = "0" } } }]
"#,
    )
    .await;
    let addr = gw.addr("web").await;
    // Framing headers stay the gateway's, from the request phase too.
    let r = call(addr, "GET", "/framing", &[], "").await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("add-header@1.0.0"), "{}", r.text());
    assert_eq!(up.requests(), 0);
    for _ in 0..2 {
        // The response phase runs last plugin first: add-header's headers
        // land before kit's response phase on the first route, after it
        // on the second.
        let r = call(addr, "GET", "/kit-last", &[], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-who"), Some("kit"));
        assert_eq!(r.header("x-also"), Some("1"));
        let r = call(addr, "GET", "/add-header-last", &[], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-who"), Some("add-header"));
        assert_eq!(r.json()["headers"]["x-t"], "1");
    }
    // add-header sets its response headers from the request phase and
    // transform (no response rules) skips its response phase: one call per
    // request each. kit has a response phase: two.
    let listing = get(gw.gw.admin_addr().unwrap(), "/plugins").await.json();
    let calls = |name: &str| {
        listing["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {listing}"))["calls"]
            .clone()
    };
    assert_eq!(calls("add-header"), 4 + 1, "{listing}");
    assert_eq!(calls("transform"), 2, "{listing}");
    assert_eq!(calls("kit"), 8 + 1, "{listing}");
}

#[tokio::test]
async fn response_phase_rewrites_status_headers_and_body() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        KIT,
        r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "kit", version = "1.0.0", body = true, config = { response_set = { "x-shaped" = "yes" }, response_status = 299, upper_body = true } }]
"#,
    )
    .await;
    let r = call(gw.addr("web").await, "GET", "/abc", &[], "").await;
    assert_eq!(r.status, 299);
    assert_eq!(r.header("x-shaped"), Some("yes"));
    assert!(r.text().contains("\"PATH\":\"/ABC\""), "{}", r.text());
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn per_route_config_reaches_the_plugin_and_two_versions_serve_side_by_side() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        &[("fixture_kit", "kit@1.0.0"), ("fixture_kit", "kit@2.0.0")],
        r#"
[[frontends.web.routes]]
match = { path_prefix = "/v1" }
upstream = "u"
plugins = [{ name = "kit", version = "1.0.0", config = { echo_config = true, response_set = { "x-version" = "1" } } }]

[[frontends.web.routes]]
match = { path_prefix = "/v2" }
upstream = "u"
plugins = [{ name = "kit", version = "2.0.0", config = { echo_config = true, response_set = { "x-version" = "2" }, nested = { a = [1, 2] } } }]
"#,
    )
    .await;
    let addr = gw.addr("web").await;
    let r1 = call(addr, "GET", "/v1", &[], "").await;
    assert_eq!(r1.header("x-version"), Some("1"));
    let cfg: serde_json::Value = serde_json::from_str(r1.header("x-kit-config").unwrap()).unwrap();
    assert_eq!(cfg["response_set"]["x-version"], "1");
    // The second route's config has a key the kit does not know: it fails
    // loudly, naming the plugin version, instead of being ignored.
    let r2 = call(addr, "GET", "/v2", &[], "").await;
    assert_eq!(r2.status, 500);
    assert!(
        r2.json()["error"].as_str().unwrap().contains("kit@2.0.0"),
        "{}",
        r2.text()
    );
    let reg = gw.gw.plugins().await.unwrap();
    let ids: Vec<String> = reg.list().iter().map(|p| p.id.to_string()).collect();
    assert_eq!(ids, vec!["kit@1.0.0", "kit@2.0.0"]);
}

#[tokio::test]
async fn per_request_instances_share_nothing_reused_ones_keep_state() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        &[("fixture_counter", "counter@1.0.0")],
        r#"
[[frontends.web.routes]]
match = { path_prefix = "/fresh" }
upstream = "u"
plugins = [{ name = "counter", version = "1.0.0", instance = "per-request" }]

[[frontends.web.routes]]
match = { path_prefix = "/reuse" }
upstream = "u"
plugins = [{ name = "counter", version = "1.0.0", instance = "reuse" }]
"#,
    )
    .await;
    let addr = gw.addr("web").await;
    for _ in 0..5 {
        assert_eq!(
            call(addr, "GET", "/fresh", &[], "")
                .await
                .header("x-instance-calls"),
            Some("1")
        );
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = call(addr, "GET", "/reuse", &[], "").await;
        seen.push(
            r.header("x-instance-calls")
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        vec![1, 2, 3, 4, 5],
        "one pooled instance served them all in turn"
    );
}

const ABUSE_ROUTES: &str = r#"
[[frontends.web.routes]]
match = { path_prefix = "/ok" }
upstream = "u"
plugins = [{ name = "add-header", version = "1.0.0", config = { request = { "x-fine" = "1" } } }]
"#;

fn abuse_route(mode: &str, instance: &str) -> String {
    format!(
        r#"
[[frontends.web.routes]]
match = {{ path_prefix = "/{mode}-{instance}" }}
upstream = "u"
plugins = [{{ name = "abuse", version = "6.6.6", timeout = "100ms", memory = "16MiB", instance = "{instance}", config = {{ mode = "{mode}" }} }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_their_own_requests_only() {
    let up = TestUpstream::start("u").await;
    let modes = [
        "loop",
        "memory",
        "recursion",
        "panic",
        "huge-output",
        "error",
    ];
    let mut routes = ABUSE_ROUTES.to_string();
    // A route nobody calls, with a short timeout: it sets the deadline tick.
    routes.push_str(
        r#"
[[frontends.web.routes]]
match = { path_prefix = "/strict" }
upstream = "u"
plugins = [{ name = "add-header", version = "1.0.0", timeout = "20ms" }]
"#,
    );
    for m in modes {
        for inst in ["reuse", "per-request"] {
            routes.push_str(&abuse_route(m, inst));
        }
    }
    let gw = gateway(
        &up,
        &[
            ("fixture_abuse", "abuse@6.6.6"),
            ("add_header", "add-header@1.0.0"),
        ],
        &routes,
    )
    .await;
    let addr = gw.addr("web").await;

    // A neighbour keeps answering under load the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let neighbour = {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let req = request("GET", addr, "/ok")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match send(&c, req).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let rss_before = rss_bytes();

    for inst in ["reuse", "per-request"] {
        for (mode, status, needle) in [
            ("loop", 504, "time limit"),
            ("memory", 500, "memory limit"),
            ("recursion", 500, "stack overflow"),
            ("panic", 500, "panicked on purpose"),
            ("huge-output", 500, "at most 16384 are allowed"),
            ("error", 500, "refused on purpose"),
        ] {
            for _ in 0..2 {
                let started = Instant::now();
                let r = call(addr, "GET", &format!("/{mode}-{inst}"), &[], "").await;
                let took = started.elapsed();
                assert_eq!(r.status, status, "{mode}/{inst}: {}", r.text());
                let err = r.json()["error"].as_str().unwrap().to_string();
                assert!(
                    err.contains("abuse@6.6.6"),
                    "{mode}/{inst}: error names the plugin: {err}"
                );
                assert!(err.contains(needle), "{mode}/{inst}: {err}");
                assert!(took < Duration::from_secs(2), "{mode}/{inst} took {took:?}");
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    neighbour.await.unwrap();
    assert_eq!(
        up.requests(),
        ok.load(Ordering::SeqCst),
        "no abusive request reached the upstream"
    );
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "the neighbour route never failed"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 20,
        "the neighbour kept being served"
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "memory grew by {} MiB", grown >> 20);
    let reg = gw.gw.plugins().await.unwrap();
    let abuse = reg.get("abuse", "6.6.6").unwrap();
    assert_eq!(
        abuse.errors.load(Ordering::Relaxed),
        24,
        "every failure counted"
    );
    let admin = gw.gw.admin_addr().unwrap();
    let metrics = get(admin, "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("transom_plugin_errors_total{plugin=\"abuse\",version=\"6.6.6\",dir=")
            && l.ends_with("} 24")),
        "{metrics}"
    );
    let listing = get(admin, "/plugins").await.json();
    let entry = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "abuse")
        .unwrap()
        .clone();
    assert_eq!(entry["errors"], 24);
    assert_eq!(entry["used_by"].as_array().unwrap().len(), 12);
    // deadlines are checked every tenth of the shortest timeout in use
    assert_eq!(listing["deadline_tick_ms"], 2.0, "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_goes_live_under_load_without_a_failed_request() {
    let up = TestUpstream::start("u").await;
    let route = |v: &str| {
        format!(
            r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{{ name = "x", version = "{v}", config = {{ response_set = {{ "x-version" = "{v}" }} }} }}]
"#
        )
    };
    let gw = gateway(&up, &[("fixture_kit", "x@1.0.0")], &route("1.0.0")).await;
    transom::reload::watch(Arc::downgrade(&gw.gw)).unwrap();
    let addr = gw.addr("web").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (failed, newest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, failed, newest) = (stop.clone(), failed.clone(), newest.clone());
        tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let req = request("GET", addr, "/")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match send(&c, req).await {
                    Ok(r) if r.status == 200 => {
                        if r.header("x-version") == Some("1.1.0") {
                            newest.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Deploy: drop in the new version, remove the old file, re-pin the route.
    let plugins = gw.dir.path().join("plugins");
    install_plugin(&plugins, "fixture_kit", "x@1.1.0");
    let written = Instant::now();
    gw.dir.write("transom.toml", &config(&up, &route("1.1.0")));
    let live = eventually(Duration::from_secs(3), || async {
        newest.load(Ordering::SeqCst) > 0
    })
    .await;
    let took = written.elapsed();
    std::fs::remove_file(plugins.join("x@1.0.0.wasm")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::SeqCst);
    let total = load.await.unwrap();
    assert!(live, "1.1.0 never served");
    assert!(
        took < Duration::from_secs(1),
        "new version live after {took:?}"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests during the deploy ({total} sent)"
    );
    assert_eq!(
        call(addr, "GET", "/", &[], "").await.header("x-version"),
        Some("1.1.0")
    );
    let reg = gw.gw.plugins().await.unwrap();
    assert!(
        reg.get("x", "1.0.0").is_none(),
        "the removed file was unloaded"
    );
}

#[tokio::test]
async fn a_corrupt_plugin_file_is_rejected_and_nothing_else_changes() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        &[("add_header", "add-header@1.0.0")],
        r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "add-header", version = "1.0.0", config = { request = { "x-a" = "1" } } }]
"#,
    )
    .await;
    let addr = gw.addr("web").await;
    let plugins = gw.dir.path().join("plugins");
    std::fs::write(
        plugins.join("broken@1.0.0.wasm"),
        b"\0asm\x0d\x00\x01\x00garbage",
    )
    .unwrap();
    std::fs::write(plugins.join("add-header@1.0.0.wasm.bak"), b"ignored").unwrap();
    // Replacing a live version with garbage keeps the loaded one serving.
    std::fs::write(plugins.join("add-header@1.0.0.wasm"), b"not wasm at all").unwrap();
    assert!(
        !gw.gw.reload_plugins().await.unwrap(),
        "nothing live changed"
    );
    let r = call(addr, "GET", "/", &[], "").await;
    assert_eq!(r.json()["headers"]["x-a"], "1");
    let reg = gw.gw.plugins().await.unwrap();
    let rejected: Vec<String> = reg
        .failures()
        .iter()
        .map(|(f, e)| format!("{}: {e}", f.display()))
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected.iter().any(|r| r.contains("broken@1.0.0.wasm")),
        "{rejected:?}"
    );
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("add-header@1.0.0.wasm") && r.contains("not a WebAssembly file")),
        "{rejected:?}"
    );
}

#[tokio::test]
async fn a_pin_to_a_missing_version_is_refused_with_its_location() {
    let up = TestUpstream::start("u").await;
    let gw = gateway(
        &up,
        KIT,
        r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "kit", version = "1.0.0" }]
"#,
    )
    .await;
    let bad = config(
        &up,
        r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "kit", version = "9.9.9" }]
"#,
    );
    let err = gw.rewrite(&bad).await.unwrap_err().to_string();
    assert!(err.contains("transom.toml:"), "{err}");
    assert!(
        err.contains("frontends.web.routes[0].plugins[0].version: plugin kit@9.9.9 is not in"),
        "{err}"
    );
    assert_eq!(
        call(gw.addr("web").await, "GET", "/", &[], "").await.status,
        200,
        "old config serves"
    );
}

#[tokio::test]
async fn restart_loads_plugins_from_the_precompiled_cache() {
    let up = TestUpstream::start("u").await;
    let routes = r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "add-header", version = "1.0.0" }]
"#;
    let dir = TempDir::new();
    install_plugin(
        &dir.path().join("plugins"),
        "add_header",
        "add-header@1.0.0",
    );
    let root = dir.write("transom.toml", &config(&up, routes));
    let first = transom::Gateway::start(&root, transom::Options { access_log: false })
        .await
        .unwrap();
    let cold = first
        .plugins()
        .await
        .unwrap()
        .get("add-header", "1.0.0")
        .unwrap();
    assert!(!cold.from_cache);
    first.shutdown().await;
    drop(first);
    let second = transom::Gateway::start(&root, transom::Options { access_log: false })
        .await
        .unwrap();
    let warm = second
        .plugins()
        .await
        .unwrap()
        .get("add-header", "1.0.0")
        .unwrap();
    assert!(warm.from_cache, "loaded from the cache");
    assert!(
        warm.load_time < cold.load_time,
        "cache {:?} vs compile {:?}",
        warm.load_time,
        cold.load_time
    );
    second.shutdown().await;
}

#[tokio::test]
async fn plugin_check_reports_phases_and_contract_version() {
    let cfg = transom::config::PluginsConfig {
        dir: None,
        cache: None,
        max_instances: 4,
        max_memory: transom::config::ByteSize::mib(64),
    };
    let engine = transom::plugin::PluginEngine::new(&cfg).unwrap();
    let r = transom::plugin::check_file(&engine, &plugin_wasm("add_header"))
        .await
        .unwrap();
    assert_eq!(r.exports, vec!["transom:plugin/filter@0.1.0"]);
    assert_eq!(r.phases, transom::plugin::Phases::REQUEST);
    let r = transom::plugin::check_file(&engine, &plugin_wasm("fixture_kit"))
        .await
        .unwrap();
    assert_eq!(
        r.phases,
        transom::plugin::Phases::REQUEST | transom::plugin::Phases::RESPONSE
    );
    let r = transom::plugin::check_file(&engine, &plugin_wasm("fixture_noop"))
        .await
        .unwrap();
    assert_eq!(r.phases, transom::plugin::Phases::REQUEST);
    let dir = TempDir::new();
    let bogus = dir.write("bogus@1.0.0.wasm", "hello");
    let err = transom::plugin::check_file(&engine, &bogus)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a WebAssembly file"), "{err}");
}

#[tokio::test]
async fn the_sandbox_grants_env_and_directories_only_when_asked() {
    let up = TestUpstream::start("u").await;
    let dir = TempDir::new();
    install_plugin(&dir.path().join("plugins"), "fixture_kit", "kit@1.0.0");
    dir.write("data/motto.txt", "granted\n");
    // The gateway's own environment never leaks in.
    let root = dir.write(
        "transom.toml",
        &config(
            &up,
            r#"
[[frontends.web.routes]]
match = { path_prefix = "/closed" }
upstream = "u"
plugins = [{ name = "kit", version = "1.0.0", config = { read_env = "HOME", read_file = "/data/motto.txt" } }]

[[frontends.web.routes]]
match = { path_prefix = "/open" }
upstream = "u"
plugins = [{ name = "kit", version = "1.0.0", env = { MOTTO = "hi" }, dirs = [{ host = "data", guest = "/data" }], config = { read_env = "MOTTO", read_file = "/data/motto.txt" } }]
"#,
        ),
    );
    let gw = TestGateway::start_in(dir, root).await.unwrap();
    let addr = gw.addr("web").await;
    let closed = call(addr, "GET", "/closed", &[], "").await;
    assert_eq!(closed.header("x-env"), Some("<unset>"));
    assert!(
        closed.header("x-file").unwrap().starts_with("<error"),
        "{:?}",
        closed.header("x-file")
    );
    let open = call(addr, "GET", "/open", &[], "").await;
    assert_eq!(open.header("x-env"), Some("hi"));
    assert_eq!(open.header("x-file"), Some("granted"));
}
