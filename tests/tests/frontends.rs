//! Each frontend is its own gateway: its own config file, plugin directory,
//! plugin memory budget and in-flight limit. One team's broken file,
//! runaway plugin or flood of requests does not reach another frontend.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use transom_tests::*;

fn root(up: &TestUpstream, extra: &str) -> String {
    format!(
        r#"
include = ["frontends/*.toml"]

[admin]
listen = "127.0.0.1:0"

[upstreams.u]
endpoints = ["{}"]
{extra}
"#,
        up.addr
    )
}

fn frontend(name: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"
[frontends.{name}]
listen = "127.0.0.1:0"
{extra}

[[frontends.{name}.routes]]
match = {{ path_prefix = "{prefix}" }}
upstream = "u"
"#
    )
}

#[tokio::test]
async fn a_broken_frontend_file_is_rejected_while_another_files_change_goes_live() {
    let up = TestUpstream::start("u").await;
    let dir = TempDir::new();
    let config = dir.write("transom.toml", &root(&up, ""));
    dir.write("frontends/web.toml", &frontend("web", "/old", ""));
    dir.write("frontends/mobile.toml", &frontend("mobile", "/m", ""));
    let gw = TestGateway::start_in(dir, config).await.unwrap();
    let (web, mobile) = (gw.addr("web").await, gw.addr("mobile").await);
    assert_eq!(get(web, "/old/a").await.status, 200);
    assert_eq!(get(web, "/new/a").await.status, 404);

    // One reload sees both: web's team moved its route, mobile's team broke
    // its file.
    gw.dir
        .write("frontends/web.toml", &frontend("web", "/new", ""));
    gw.dir.write(
        "frontends/mobile.toml",
        "[frontends.mobile\nlisten = \"x\"\n",
    );
    assert!(gw.gw.reload().await.unwrap(), "web's change applied");
    assert_eq!(get(web, "/new/a").await.status, 200, "web's change is live");
    assert_eq!(get(web, "/old/a").await.status, 404);
    assert_eq!(
        get(mobile, "/m/a").await.status,
        200,
        "mobile keeps its last good file"
    );
    let admin = gw.gw.admin_addr().unwrap();
    let metrics = get(admin, "/metrics").await.text();
    assert!(
        metrics.contains("transom_config_reloads_total{result=\"partial\"} 1"),
        "{metrics}"
    );

    // A file that parses but does not validate (a route to an unknown
    // upstream) is held back the same way, while web changes again.
    gw.dir.write(
        "frontends/mobile.toml",
        &frontend("mobile", "/m", "").replace("upstream = \"u\"", "upstream = \"nope\""),
    );
    gw.dir
        .write("frontends/web.toml", &frontend("web", "/newer", ""));
    assert!(gw.gw.reload().await.unwrap());
    assert_eq!(get(web, "/newer/a").await.status, 200);
    assert_eq!(get(mobile, "/m/a").await.status, 200);

    // Fixed, mobile's change goes live too.
    gw.dir
        .write("frontends/mobile.toml", &frontend("mobile", "/m2", ""));
    assert!(gw.gw.reload().await.unwrap());
    assert_eq!(get(mobile, "/m2/a").await.status, 200);
    assert_eq!(get(mobile, "/m/a").await.status, 404);

    // A broken root file has no previous version to fall back to per file:
    // the whole reload is refused and everything keeps serving.
    gw.dir.write("transom.toml", "include = [");
    assert!(gw.gw.reload().await.is_err());
    assert_eq!(get(web, "/newer/a").await.status, 200);
    assert_eq!(get(mobile, "/m2/a").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_one_frontends_limit_gets_503_and_leaves_the_other_alone() {
    let up = TestUpstream::start("u").await;
    let dir = TempDir::new();
    let config = dir.write("transom.toml", &root(&up, ""));
    dir.write("frontends/web.toml", &frontend("web", "/", ""));
    dir.write(
        "frontends/mobile.toml",
        &frontend("mobile", "/", "limits = { max_concurrent_requests = 4 }"),
    );
    let gw = TestGateway::start_in(dir, config).await.unwrap();
    let (web, mobile) = (gw.addr("web").await, gw.addr("mobile").await);

    // 32 slow mobile requests at once: 4 get through, the rest are refused
    // at once.
    let c = client();
    let flood: Vec<_> = (0..32)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let req = request("GET", mobile, "/sleep/400")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let started = Instant::now();
                let r = send(&c, req).await.unwrap();
                (
                    r.status,
                    r.header("retry-after").map(str::to_string),
                    started.elapsed(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile web answers, fast.
    for _ in 0..20 {
        let started = Instant::now();
        let r = get(web, "/a").await;
        assert_eq!(r.status, 200);
        assert!(started.elapsed() < Duration::from_millis(200));
    }
    let mut served = 0;
    let mut refused = 0;
    for f in flood {
        let (status, retry, took) = f.await.unwrap();
        match status.as_u16() {
            200 => served += 1,
            503 => {
                refused += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert!(took < Duration::from_millis(300), "refused at once");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(served, 4, "exactly the limit got through");
    assert_eq!(refused, 28);
    // The permits come back: mobile serves again.
    assert_eq!(get(mobile, "/a").await.status, 200);
}

fn plugin_frontend(name: &str, extra: &str, routes: &str) -> String {
    format!(
        r#"
[frontends.{name}]
listen = "127.0.0.1:0"
{extra}
{routes}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_mobile_plugin_stays_inside_mobiles_budget_and_web_does_not_notice() {
    let up = TestUpstream::start("u").await;
    let dir = TempDir::new();
    // Two teams, two plugin directories; the same plugin file deployed
    // under different versions in each.
    install_plugin(
        &dir.path().join("plugins/web"),
        "add_header",
        "add-header@1.0.0",
    );
    install_plugin(
        &dir.path().join("plugins/mobile"),
        "add_header",
        "add-header@2.0.0",
    );
    install_plugin(
        &dir.path().join("plugins/mobile"),
        "fixture_abuse",
        "abuse@6.6.6",
    );
    let config = dir.write(
        "transom.toml",
        &root(&up, "\n[plugins]\nmax_memory = \"64MiB\"\n"),
    );
    dir.write(
        "frontends/web.toml",
        &plugin_frontend(
            "web",
            r#"plugins = { dir = "../plugins/web" }"#,
            r#"
[[frontends.web.routes]]
upstream = "u"
plugins = [{ name = "add-header", version = "1.0.0", config = { request = { "x-team" = "web" } } }]
"#,
        ),
    );
    dir.write(
        "frontends/mobile.toml",
        &plugin_frontend(
            "mobile",
            r#"plugins = { dir = "../plugins/mobile", max_memory = "24MiB" }"#,
            r#"
[[frontends.mobile.routes]]
match = { path_prefix = "/bomb" }
upstream = "u"
plugins = [{ name = "abuse", version = "6.6.6", memory = "64MiB", timeout = "2s", config = { mode = "memory" } }]

[[frontends.mobile.routes]]
match = { path_prefix = "/loop" }
upstream = "u"
plugins = [{ name = "abuse", version = "6.6.6", timeout = "300ms", config = { mode = "loop" } }]

[[frontends.mobile.routes]]
upstream = "u"
plugins = [{ name = "add-header", version = "2.0.0", config = { request = { "x-team" = "mobile" } } }]
"#,
        ),
    );
    let gw = TestGateway::start_in(dir, config).await.unwrap();
    let (web, mobile) = (gw.addr("web").await, gw.addr("mobile").await);
    assert_eq!(get(web, "/a").await.json()["headers"]["x-team"], "web");
    assert_eq!(
        get(mobile, "/a").await.json()["headers"]["x-team"],
        "mobile"
    );

    // Web under steady load the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let load = {
        let (stop, ok, bad, slowest) = (stop.clone(), ok.clone(), bad.clone(), slowest.clone());
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let req = request("GET", web, "/a")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let started = Instant::now();
                match send(&c, req).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
                let took = started.elapsed();
                let mut s = slowest.lock().unwrap();
                *s = (*s).max(took);
            }
        })
    };

    // The memory bomb may grow to 64 MiB per instance, but mobile's plugins
    // share 24 MiB: the frontend's budget stops it.
    let r = get(mobile, "/bomb").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("budget"), "{}", r.text());
    assert!(r.text().contains("abuse@6.6.6"), "{}", r.text());
    // Loops are cut at their deadline, and yield while they run.
    let loops: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(mobile, "/loop").await.status }))
        .collect();
    for l in loops {
        assert_eq!(l.await.unwrap(), 504);
    }
    // Mobile's other route is fine, and its memory came back.
    assert_eq!(get(mobile, "/a").await.status, 200);
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(bad.load(Ordering::SeqCst), 0, "web failed requests");
    assert!(ok.load(Ordering::SeqCst) > 20);
    let slowest = *slowest.lock().unwrap();
    assert!(
        slowest < Duration::from_millis(200),
        "web's slowest request took {slowest:?} while mobile's plugins ran away"
    );
    let admin = gw.gw.admin_addr().unwrap();
    let listing = get(admin, "/plugins").await.json();
    let budget = &listing["memory_budgets"]["mobile"];
    assert_eq!(budget["limit_bytes"], 24 << 20);
    assert!(
        budget["used_bytes"].as_u64().unwrap() < 8 << 20,
        "the bomb's memory was given back: {budget}"
    );
    // Each team's plugins are listed with where they are used.
    let plugins = listing["plugins"].as_array().unwrap();
    let used_by = |name: &str, version: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == name && p["version"] == version)
            .map(|p| p["used_by"].clone())
            .unwrap()
    };
    assert_eq!(
        used_by("add-header", "1.0.0"),
        serde_json::json!(["web/route-0"])
    );
    assert_eq!(
        used_by("add-header", "2.0.0"),
        serde_json::json!(["mobile/route-2"])
    );
}

#[tokio::test]
async fn a_frontend_sees_only_its_own_plugin_directory() {
    let up = TestUpstream::start("u").await;
    let dir = TempDir::new();
    install_plugin(
        &dir.path().join("plugins/web"),
        "add_header",
        "add-header@1.0.0",
    );
    std::fs::create_dir_all(dir.path().join("plugins/mobile")).unwrap();
    let config = dir.write("transom.toml", &root(&up, "\n[plugins]\n"));
    dir.write(
        "frontends/web.toml",
        &plugin_frontend("web", r#"plugins = { dir = "../plugins/web" }"#, ""),
    );
    dir.write(
        "frontends/mobile.toml",
        &plugin_frontend(
            "mobile",
            r#"plugins = { dir = "../plugins/mobile" }"#,
            r#"
[[frontends.mobile.routes]]
upstream = "u"
plugins = [{ name = "add-header", version = "1.0.0" }]
"#,
        ),
    );
    let err = match transom::Config::load(&config) {
        Ok(_) => panic!("mobile pins a plugin that is only in web's directory"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("mobile.toml"), "{err}");
    assert!(err.contains("add-header@1.0.0 is not in"), "{err}");
    assert!(err.contains("plugins/mobile"), "{err}");
}
