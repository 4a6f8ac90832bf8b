//! Protocols and limits over real sockets: HTTP/2 on either side, TLS
//! termination with ALPN, upgrades, `Expect: 100-continue`, response
//! compression, streaming of large bodies, size limits, malformed requests,
//! and the gateway's own 502/504 answers.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transom_tests::*;

const MIB: u64 = 1024 * 1024;

/// A gateway with one frontend `web` whose only route sends everything to
/// `up`; `frontend_extra` and `upstream_extra` are TOML lines added to the
/// frontend and upstream tables.
async fn simple_gateway(up: SocketAddr, upstream_extra: &str, frontend_extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[upstreams.up]
endpoints = ["{up}"]
{upstream_extra}

[frontends.web]
listen = "127.0.0.1:0"
{frontend_extra}

[[frontends.web.routes]]
upstream = "up"
"#
    ))
    .await
}

type StreamingBody = BoxBody<Bytes, std::io::Error>;

/// An HTTP/1.1 client whose request bodies may be streamed.
fn streaming_client() -> Client<HttpConnector, StreamingBody> {
    Client::builder(TokioExecutor::new()).build_http::<StreamingBody>()
}

/// A body of `total` bytes of `y`, produced in 64 KiB chunks as it is sent,
/// without a known length (so it goes out chunked).
fn generated_body(total: u64) -> StreamingBody {
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let n = total.div_ceil(chunk.len() as u64);
    let frames = (0..n).map(move |i| {
        let len = (total - i * chunk.len() as u64).min(chunk.len() as u64) as usize;
        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
    });
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// Read a response (or request) head up to and including the blank line.
/// Returns the head and whatever was read after it.
async fn read_head<R: AsyncRead + Unpin>(s: &mut R) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no complete head within 2s; got {:?}",
                    String::from_utf8_lossy(&buf)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a complete head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Read exactly `n` bytes, starting with `already` (bytes read earlier).
async fn read_exact_after<R: AsyncRead + Unpin>(
    s: &mut R,
    mut already: Vec<u8>,
    n: usize,
) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    while already.len() < n {
        let got = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
            .await
            .expect("timed out waiting for bytes")
            .unwrap();
        assert!(got > 0, "closed after {} of {n} bytes", already.len());
        already.extend_from_slice(&chunk[..got]);
    }
    already
}

/// The value of `name` in a raw head, case-insensitively.
fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn h2_client_to_h1_upstream() {
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, "", "").await;
    let addr = gw.addr("web").await;
    let c = h2_client();

    let r = send(
        &c,
        request("GET", addr, "/h2/get?q=1")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.version,
        Version::HTTP_2,
        "the client spoke HTTP/2 to the gateway"
    );
    let j = r.json();
    assert_eq!(
        j["version"], "HTTP/1.1",
        "the upstream is spoken to in HTTP/1.1"
    );
    assert_eq!(j["path"], "/h2/get");
    assert_eq!(j["query"], "q=1");
    assert_eq!(
        j["headers"]["host"],
        addr.to_string(),
        "host comes from :authority"
    );

    let r = send(
        &c,
        request("POST", addr, "/h2/post")
            .body(Full::new(Bytes::from("hello")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(r.json()["body_len"], 5);
}

#[tokio::test]
async fn h1_client_to_h2_upstream() {
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, r#"protocol = "http2""#, "").await;
    let addr = gw.addr("web").await;
    let c = client();

    let r = send(
        &c,
        request("GET", addr, "/x")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(
        r.json()["version"],
        "HTTP/2.0",
        "the upstream is spoken to in HTTP/2"
    );

    let r = send(
        &c,
        request("POST", addr, "/x")
            .body(Full::new(Bytes::from(vec![7u8; 3000])))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["body_len"], 3000);
}

fn tls_connector(roots: rustls::RootCertStore, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// `GET path` over HTTP/1.1 on an established TLS stream.
async fn h1_get(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    path: &str,
) -> http::Response<hyper::body::Incoming> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
        .send_request(
            Request::get(path)
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap()
}

async fn tls_connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(2), connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

#[tokio::test]
async fn tls_termination_h2_and_h1() {
    let up = TestUpstream::start("up").await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = TempDir::new();
    dir.write("cert.pem", &ck.cert.pem());
    dir.write("key.pem", &ck.signing_key.serialize_pem());
    let config = dir.write(
        "transom.toml",
        &format!(
            r#"
[upstreams.up]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[[frontends.web.routes]]
upstream = "up"
"#,
            up.addr
        ),
    );
    let gw = TestGateway::start_in(dir, config).await.unwrap();
    let addr = gw.addr("web").await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();

    // HTTP/2 by ALPN.
    let tls = tls_connect(addr, &tls_connector(roots.clone(), b"h2"))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("https://localhost/tls/h2")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["path"], "/tls/h2");
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");
    assert_eq!(j["version"], "HTTP/1.1");

    // HTTP/1.1 by ALPN.
    let tls = tls_connect(addr, &tls_connector(roots.clone(), b"http/1.1"))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = h1_get(tls, "/tls/h1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_11);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["path"], "/tls/h1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");

    // A client that does not trust the certificate fails its handshake, and
    // one that speaks cleartext HTTP is dropped; neither hurts the listener.
    let untrusted = tls_connector(rustls::RootCertStore::empty(), b"h2");
    let Err(err) = tls_connect(addr, &untrusted).await else {
        panic!("an untrusted certificate must be refused");
    };
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "unexpected error: {err}"
    );
    let (_, closed) = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(closed, "a cleartext request on a TLS listener is dropped");

    let tls = tls_connect(addr, &tls_connector(roots, b"http/1.1"))
        .await
        .unwrap();
    let resp = h1_get(tls, "/after").await;
    assert_eq!(
        resp.status(),
        200,
        "the listener still serves after failed handshakes"
    );
}

#[tokio::test]
async fn websocket_style_upgrade_passes_through() {
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, "", "").await;
    let addr = gw.addr("web").await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, rest) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "head: {head:?}");
    assert_eq!(
        head_header(&head, "upgrade"),
        Some("echo"),
        "head: {head:?}"
    );
    assert!(
        head_header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "head: {head:?}"
    );
    assert!(
        rest.is_empty(),
        "nothing follows the 101 head until we write"
    );

    // The upgraded connection echoes, in both directions, several times.
    for msg in [
        &b"ping-1"[..],
        b"a somewhat longer second message",
        &[0u8, 1, 2, 255, 254][..],
    ] {
        s.write_all(msg).await.unwrap();
        let back = read_exact_after(&mut s, Vec::new(), msg.len()).await;
        assert_eq!(back, msg);
    }
    // Closing our side ends the tunnel: the gateway closes its side too.
    s.shutdown().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("the tunnel is closed after the client closes")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn expect_100_continue() {
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, "", "").await;
    let addr = gw.addr("web").await;

    let body = b"hello, continued world";
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The body is not sent until the interim response arrives.
    let (head, rest) = read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 100 Continue\r\n"),
        "head: {head:?}"
    );
    assert!(rest.is_empty());
    s.write_all(body).await.unwrap();

    let (head, rest) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "head: {head:?}");
    let len: usize = head_header(&head, "content-length")
        .unwrap_or_else(|| panic!("no content-length in {head:?}"))
        .parse()
        .unwrap();
    let resp_body = read_exact_after(&mut s, rest, len).await;
    let j: serde_json::Value = serde_json::from_slice(&resp_body).unwrap();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["body_len"], body.len());
    assert!(
        j["headers"].get("expect").is_none(),
        "expect is not forwarded"
    );

    // A declared body over the limit gets its final answer instead of 100.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "head: {head:?}");
}

async fn decompress(encoding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
    let mut out = Vec::new();
    match encoding {
        "gzip" => GzipDecoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(data).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(data).read_to_end(&mut out).await,
        other => panic!("unknown encoding {other}"),
    }
    .unwrap_or_else(|e| panic!("{encoding} body does not decode: {e}"));
    out
}

#[tokio::test]
async fn compression_by_accept_encoding() {
    let up = TestUpstream::start("up").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.up]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
match = {{ path_prefix = "/bytes" }}
upstream = "up"
compress = true

[[frontends.web.routes]]
match = {{ path_prefix = "/small" }}
upstream = "up"
compress = {{ min_size = "4KiB" }}
"#,
        up.addr
    ))
    .await;
    let addr = gw.addr("web").await;
    let c = client();
    let get_with = |path: &str, accept: Option<&str>| {
        let mut b = request("GET", addr, path);
        if let Some(a) = accept {
            b = b.header("accept-encoding", a);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };

    let expected = vec![b'x'; 100_000];
    for (accept, token, magic) in [
        ("gzip", "gzip", &[0x1f, 0x8b][..]),
        ("br", "br", &[][..]),
        ("zstd", "zstd", &[0x28, 0xb5, 0x2f, 0xfd][..]),
        // Several accepted: the configured order (zstd, br, gzip) decides.
        ("gzip, br", "br", &[][..]),
    ] {
        let r = send(&c, get_with("/bytes/100000", Some(accept)))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            Some(token),
            "accept-encoding: {accept}"
        );
        assert!(
            r.headers.get_all("vary").iter().any(|v| v
                .to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("accept-encoding")),
            "vary: accept-encoding is set"
        );
        assert!(r.body.starts_with(magic), "{token} magic bytes");
        assert!(
            r.body.len() < 10_000,
            "{token}: {} bytes is not compressed",
            r.body.len()
        );
        assert!(
            decompress(token, &r.body).await == expected,
            "{token} decodes to the original"
        );
    }

    // Without accept-encoding (or with only identity) nothing is compressed.
    for accept in [None, Some("identity")] {
        let r = send(&c, get_with("/bytes/100000", accept)).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            None,
            "accept-encoding: {accept:?}"
        );
        assert_eq!(r.body.len(), 100_000);
    }

    // A body with a known length under min_size is sent as it is.
    let r = send(&c, get_with("/small/x", Some("gzip"))).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert!(r.body.len() < 4096);
    assert_eq!(r.json()["path"], "/small/x");
}

/// Samples this process's resident memory from a plain thread until
/// stopped, and reports the highest value seen: catches a body buffered
/// whole even if it is freed (and returned to the OS) right after.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    peak.fetch_max(rss_bytes(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        PeakRss {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst).max(rss_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_100_mib_with_bounded_memory() {
    const TOTAL: u64 = 100 * MIB;
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, "", r#"limits = { max_request_body = "200MiB" }"#).await;
    let addr = gw.addr("web").await;
    assert!(rss_bytes() > 0, "RSS must be measurable for this test");

    // Upload: streamed by the client, counted (not kept) by the upstream.
    let c = streaming_client();
    let before = rss_bytes();
    let sampler = PeakRss::start();
    let req = Request::post(format!("http://{addr}/sink"))
        .body(generated_body(TOTAL))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let peak = sampler.finish();
    assert_eq!(String::from_utf8_lossy(&body), TOTAL.to_string());
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 60 * MIB,
        "uploading 100 MiB grew RSS by {} MiB",
        growth / MIB
    );

    // Download: streamed by the upstream, counted (not kept) here.
    let before = rss_bytes();
    let sampler = PeakRss::start();
    let resp = c
        .request(
            Request::get(format!("http://{addr}/bytes/{TOTAL}"))
                .body(BodyExt::boxed(Empty::new().map_err(|never| match never {})))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            received += d.len() as u64;
        }
    }
    let peak = sampler.finish();
    assert_eq!(received, TOTAL);
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 60 * MIB,
        "downloading 100 MiB grew RSS by {} MiB",
        growth / MIB
    );
}

#[tokio::test]
async fn body_over_limit_is_413() {
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, "", r#"limits = { max_request_body = "1KiB" }"#).await;
    let addr = gw.addr("web").await;

    // Under the limit: served.
    let r = send(
        &client(),
        request("POST", addr, "/ok")
            .body(Full::new(Bytes::from(vec![1u8; 1024])))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 1024);

    // Declared too large: refused before anything reaches the upstream.
    let before = up.requests();
    let r = send(
        &client(),
        request("POST", addr, "/big")
            .body(Full::new(Bytes::from(vec![1u8; 2048])))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    let j = r.json();
    assert_eq!(j["error"], "request body larger than 1024 bytes");
    assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(up.requests(), before, "the upstream never saw the request");

    // Streamed without a length: refused once the limit is crossed.
    let req = Request::post(format!("http://{addr}/chunked"))
        .body(generated_body(4096))
        .unwrap();
    let resp = streaming_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["error"], "request body larger than 1024 bytes");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, "", r#"limits = { max_header_bytes = "8KiB" }"#).await;
    let addr = gw.addr("web").await;
    let head_with = |size: usize| {
        format!(
            "GET /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        )
    };

    // A 4 KiB header fits.
    let (resp, closed) = raw(addr, head_with(4 * 1024).as_bytes(), Duration::from_secs(2)).await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "resp: {:?}",
        &resp[..resp.len().min(200)]
    );
    assert!(closed);

    // A 16 KiB one does not.
    let (resp, closed) = raw(
        addr,
        head_with(16 * 1024).as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "resp: {resp:?}");
    assert!(closed, "the connection is closed after a 431");
}

#[tokio::test]
async fn malformed_request_gets_400_and_close() {
    let up = TestUpstream::start("up").await;
    let gw = simple_gateway(up.addr, "", "").await;
    let addr = gw.addr("web").await;
    let before = up.requests();
    let (resp, closed) = raw(addr, b"GARBAGE\r\n\r\n", Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "resp: {resp:?}");
    assert!(closed, "the connection is closed after a 400");
    assert_eq!(up.requests(), before);
    // The listener is fine afterwards.
    assert_eq!(get(addr, "/x").await.status, 200);
}

#[tokio::test]
async fn upstream_timeout_gives_504_in_time() {
    let up = TestUpstream::start("up").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.up]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
upstream = "up"
timeout = "200ms"
"#,
        up.addr
    ))
    .await;
    let addr = gw.addr("web").await;
    let started = Instant::now();
    let r = get(addr, "/sleep/2000").await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, 504);
    let j = r.json();
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("did not answer in time"),
        "error: {}",
        j["error"]
    );
    assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed <= Duration::from_millis(1500),
        "answered after {elapsed:?}"
    );
    // A fast request on the same route is not affected.
    assert_eq!(get(addr, "/sleep/10").await.status, 200);
}

#[tokio::test]
async fn each_request_on_a_connection_gets_its_routes_deadline() {
    // The requests of one client connection reuse one deadline timer: it
    // must move to a shorter deadline as well as to a longer one, and work
    // again after it fired.
    let up = TestUpstream::start("up").await;
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.up]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
match = {{ path_prefix = "/patient" }}
strip_prefix = "/patient"
upstream = "up"
timeout = "5s"

[[frontends.web.routes]]
upstream = "up"
timeout = "200ms"
"#,
        up.addr
    ))
    .await;
    let addr = gw.addr("web").await;
    let client = client();
    let get_on = |path: &str| {
        let req = request("GET", addr, path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&client, req)
    };
    assert_eq!(get_on("/patient/sleep/400").await.unwrap().status, 200);
    let started = Instant::now();
    assert_eq!(get_on("/sleep/2000").await.unwrap().status, 504);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed <= Duration::from_millis(1500),
        "answered after {elapsed:?}"
    );
    assert_eq!(get_on("/patient/sleep/400").await.unwrap().status, 200);
    assert_eq!(get_on("/sleep/10").await.unwrap().status, 200);
}

#[tokio::test]
async fn connect_failure_gives_502() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = TestGateway::start(&format!(
        r#"
[upstreams.dead]
endpoints = ["{dead}"]
retries = {{ attempts = 0 }}

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
upstream = "dead"
"#
    ))
    .await;
    let addr = gw.addr("web").await;
    let started = Instant::now();
    let r = get(addr, "/x").await;
    assert_eq!(r.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused connections fail fast"
    );
    let j = r.json();
    let err = j["error"].as_str().unwrap();
    assert!(err.contains("connect"), "error: {err}");
    assert!(
        err.contains(&dead.to_string()),
        "the endpoint is named: {err}"
    );
    assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
}

#[tokio::test]
async fn upgraded_tunnel_is_closed_at_shutdown() {
    let up = TestUpstream::start("up").await;
    let gw = TestGateway::start(&format!(
        r#"
[server]
shutdown_grace = "100ms"

[upstreams.up]
endpoints = ["{}"]

[frontends.web]
listen = "127.0.0.1:0"

[[frontends.web.routes]]
upstream = "up"
"#,
        up.addr
    ))
    .await;
    let addr = gw.addr("web").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "head: {head:?}");
    s.write_all(b"ping").await.unwrap();
    assert_eq!(read_exact_after(&mut s, Vec::new(), 4).await, b"ping");

    // Past the grace period, what is left open is closed: tunnels included.
    gw.gw.shutdown().await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the tunnel is still open after shutdown: {read:?}"
    );
}
