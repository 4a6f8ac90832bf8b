//! The `transom` binary itself: `check` output and exit codes, and a real
//! process draining an in-flight request on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_transom");

#[test]
fn check_accepts_the_demo_config_with_a_summary() {
    let out = Command::new(BIN)
        .args(["check", "--config", "../examples/basic/transom.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (3 files, 2 frontends, 5 routes, 3 upstreams)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("frontend web on 127.0.0.1:8080"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_and_field_and_exits_1() {
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            "../tests/ui/invalid/unknown_upstream.toml",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown_upstream.toml:13:12: frontends.web.routes[1].upstream: unknown upstream \"orders\""),
        "{stderr}"
    );
}

/// A one-connection-at-a-time upstream that answers after `delay`.
fn slow_upstream(delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                std::thread::sleep(delay);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow",
                );
            });
        }
    });
    port
}

/// Start the binary with `args` and `config`; returns once `port` accepts.
fn run_gateway(args: &[&str], config: &std::path::Path, port: u16) -> std::process::Child {
    let child = Command::new(BIN)
        .args(args)
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn sigterm_lets_the_in_flight_request_finish() {
    let upstream = slow_upstream(Duration::from_millis(800));
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("transom-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("transom.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshutdown_grace = \"5s\"\n[upstreams.u]\nendpoints = [\"127.0.0.1:{upstream}\"]\n\
             [frontends.web]\nlisten = \"127.0.0.1:{port}\"\n[[frontends.web.routes]]\nupstream = \"u\"\n"
        ),
    )
    .unwrap();
    let mut child = run_gateway(&["run", "--config"], &config, port);
    let slow = std::thread::spawn(move || http_get(port));
    std::thread::sleep(Duration::from_millis(200));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let reply = slow.join().unwrap().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("slow"), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_the_config() {
    let upstream = slow_upstream(Duration::from_millis(0));
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("transom-cli-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("transom.toml");
    let write = |prefix: &str| {
        std::fs::write(
            &config,
            format!(
                "[upstreams.u]\nendpoints = [\"127.0.0.1:{upstream}\"]\n\
                 [frontends.web]\nlisten = \"127.0.0.1:{port}\"\n[[frontends.web.routes]]\n\
                 match = {{ path_prefix = \"{prefix}\" }}\nupstream = \"u\"\n"
            ),
        )
        .unwrap();
    };
    write("/old");
    let mut child = run_gateway(&["run", "--no-watch", "--config"], &config, port);
    let get = |path: &str| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(get("/new").starts_with("HTTP/1.1 404"));
    write("/new");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        get("/new").starts_with("HTTP/1.1 404"),
        "no watcher: nothing changes by itself"
    );
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get("/new").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_demo_signs_a_token_the_demo_key_set_accepts() {
    let out = Command::new(BIN)
        .args([
            "token",
            "--demo",
            "--sub",
            "alice",
            "--aud",
            "mobile",
            "--ttl",
            "5m",
            "--claim",
            "scope=\"read\"",
            "--claim",
            "level=3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    let pem = std::fs::read("../examples/bff/keys/demo-public.pem").unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("demo"));
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["mobile"]);
    v.set_issuer(&["https://id.transom.example"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_rsa_pem(&pem).unwrap(),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["scope"], "read");
    assert_eq!(data.claims["level"], 3);
    let ttl = data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300);

    // without --demo a key is required
    let out = Command::new(BIN)
        .args(["token", "--sub", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
