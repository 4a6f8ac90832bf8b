//! `hyper-proxy`: the floor for a reverse proxy built on tokio and hyper.
//!
//! It forwards every request, untouched, to one upstream over one keep-alive
//! connection per client connection, and streams the response back: no
//! routing, no header rewriting, no pool shared between connections, no
//! timeouts, no logging, no metrics. Nobody should deploy it. `bench/proxy.sh`
//! measures it next to transom and nginx, so that the gap between transom
//! and nginx splits into what transom adds on top of hyper and tokio, and
//! what hyper and tokio themselves cost.
//!
//! ```text
//! hyper-proxy --listen ADDR:PORT --upstream ADDR:PORT
//! ```
//! One worker thread (a current-thread runtime), like one nginx worker.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

// The same allocator as transom's binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: hyper-proxy --listen ADDR:PORT --upstream ADDR:PORT";

/// The upstream connection of one client connection, opened on its first
/// request. hyper serves a connection's requests one at a time, so the lock
/// is never contended.
type Upstream = Arc<Mutex<Option<client::SendRequest<Incoming>>>>;

async fn forward(
    upstream: SocketAddr,
    conn: Upstream,
    req: Request<Incoming>,
) -> anyhow::Result<Response<Incoming>> {
    let mut slot = conn.lock().await;
    let open = match slot.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    if !open {
        let tcp = TcpStream::connect(upstream).await?;
        tcp.set_nodelay(true)?;
        let (send, driver) = client::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(driver);
        *slot = Some(send);
    }
    let send = slot.as_mut().context("upstream connection")?;
    Ok(send.send_request(req).await?)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream): (Option<SocketAddr>, Option<SocketAddr>) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = Some(args.next().context(USAGE)?.parse()?),
            "--upstream" => upstream = Some(args.next().context(USAGE)?.parse()?),
            _ => bail!("unexpected argument {a:?}\n{USAGE}"),
        }
    }
    let (listen, upstream) = (listen.context(USAGE)?, upstream.context(USAGE)?);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            loop {
                let (tcp, _) = listener.accept().await?;
                tcp.set_nodelay(true)?;
                let conn: Upstream = Arc::new(Mutex::new(None));
                tokio::spawn(async move {
                    let svc = service_fn(move |req| forward(upstream, conn.clone(), req));
                    // A client that goes away mid-request is not an error
                    // worth reporting in a benchmark.
                    let _ = server::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        })
}
