//! `bench-upstream`: a minimal, fast HTTP/1.1 origin for proxy benchmarks.
//!
//! Every request, whatever its method or path, is answered with `200 OK`,
//! `content-type: text/plain` and the same fixed body. Connections are
//! kept alive. The point is to make the upstream as cheap as possible so that
//! a benchmark through a proxy measures the proxy, not the origin.
//!
//! ```text
//! bench-upstream --listen 127.0.0.1:PORT [--body-size N] [--threads N]
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const DEFAULT_BODY_SIZE: usize = 64;
const DEFAULT_THREADS: usize = 1;
/// Upper bound on `--body-size`, to catch typos rather than to limit use.
const MAX_BODY_SIZE: usize = 64 * 1024 * 1024;
const MAX_THREADS: usize = 1024;

const USAGE: &str = "\
usage: bench-upstream --listen ADDR:PORT [--body-size N] [--threads N]

Answers every HTTP/1.1 request with 200, content-type: text/plain and a
fixed body.

options:
  --listen ADDR:PORT   socket address to listen on (required), e.g. 127.0.0.1:18080
  --body-size N        response body size in bytes (default 64)
  --threads N          tokio worker threads; 1 = current-thread runtime (default 1)
  -h, --help           print this help";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    body_size: usize,
    threads: usize,
}

/// Outcome of argument parsing that is not a runnable configuration.
#[derive(Debug)]
enum ArgsError {
    Help,
    Invalid(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
    let mut listen: Option<SocketAddr> = None;
    let mut body_size = DEFAULT_BODY_SIZE;
    let mut threads = DEFAULT_THREADS;

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(ArgsError::Help);
        }
        if !matches!(flag.as_str(), "--listen" | "--body-size" | "--threads") {
            return Err(ArgsError::Invalid(format!("unknown argument `{arg}`")));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| ArgsError::Invalid(format!("`{flag}` needs a value")))?,
        };
        match flag.as_str() {
            "--listen" => {
                let addr = value.parse::<SocketAddr>().map_err(|e| {
                    ArgsError::Invalid(format!(
                        "`--listen {value}`: {e} (expected ADDR:PORT, e.g. 127.0.0.1:18080)"
                    ))
                })?;
                listen = Some(addr);
            }
            "--body-size" => {
                body_size = parse_number(&flag, &value, 0, MAX_BODY_SIZE)?;
            }
            "--threads" => {
                threads = parse_number(&flag, &value, 1, MAX_THREADS)?;
            }
            _ => unreachable!("flag checked above"),
        }
    }

    let listen = listen.ok_or_else(|| ArgsError::Invalid("`--listen` is required".to_owned()))?;
    Ok(Args {
        listen,
        body_size,
        threads,
    })
}

fn parse_number(flag: &str, value: &str, min: usize, max: usize) -> Result<usize, ArgsError> {
    let n = value.parse::<usize>().map_err(|e| {
        ArgsError::Invalid(format!("`{flag} {value}`: {e} (expected a whole number)"))
    })?;
    if n < min || n > max {
        return Err(ArgsError::Invalid(format!(
            "`{flag} {value}`: must be between {min} and {max}"
        )));
    }
    Ok(n)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(msg)) => {
            eprintln!("bench-upstream: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-upstream: cannot start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("bench-upstream: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read local address: {e}"))?;
    eprintln!(
        "bench-upstream: listening on {local} (body {} bytes, {} thread{})",
        args.body_size,
        args.threads,
        if args.threads == 1 { "" } else { "s" }
    );

    let body = Bytes::from(make_body(args.body_size));
    let content_type = HeaderValue::from_static("text/plain");

    let mut builder = http1::Builder::new();
    builder.keep_alive(true);

    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE/ENFILE or a connection reset before accept.
                // Back off briefly instead of spinning or exiting.
                eprintln!("bench-upstream: accept error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small request/response exchanges: do not wait on Nagle.
        let _ = stream.set_nodelay(true);

        let body = body.clone();
        let content_type = content_type.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, content_type.clone());
                async move { Ok::<_, Infallible>(resp) }
            });
            // Errors here are client-side disconnects and parse errors; the
            // benchmark client closing its connections is normal.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A printable, newline-terminated body of exactly `size` bytes.
fn make_body(size: usize) -> Vec<u8> {
    const PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut body: Vec<u8> = PATTERN.iter().copied().cycle().take(size).collect();
    if let Some(last) = body.last_mut() {
        *last = b'\n';
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgsError> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    fn invalid(args: &[&str]) -> String {
        match parse(args) {
            Err(ArgsError::Invalid(msg)) => msg,
            Err(ArgsError::Help) => panic!("expected an error, got help"),
            Ok(a) => panic!("expected an error, got {a:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = parse(&["--listen", "127.0.0.1:8080"]).expect("valid");
        assert_eq!(a.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(a.body_size, DEFAULT_BODY_SIZE);
        assert_eq!(a.threads, DEFAULT_THREADS);
    }

    #[test]
    fn all_options_both_forms() {
        let a = parse(&["--listen=127.0.0.1:1", "--body-size", "0", "--threads=4"]).expect("valid");
        assert_eq!(a.listen.port(), 1);
        assert_eq!(a.body_size, 0);
        assert_eq!(a.threads, 4);
    }

    #[test]
    fn errors() {
        assert!(invalid(&[]).contains("--listen"));
        assert!(invalid(&["--listen"]).contains("needs a value"));
        assert!(invalid(&["--listen", "localhost"]).contains("ADDR:PORT"));
        assert!(invalid(&["--listen", "127.0.0.1:1", "--threads", "0"]).contains("between"));
        assert!(invalid(&["--listen", "127.0.0.1:1", "--body-size", "-1"]).contains("whole"));
        assert!(invalid(&["--listen", "127.0.0.1:1", "extra"]).contains("unknown"));
        assert!(matches!(parse(&["--help"]), Err(ArgsError::Help)));
    }

    #[test]
    fn body_has_requested_size() {
        assert!(make_body(0).is_empty());
        assert_eq!(make_body(1), b"\n");
        let b = make_body(64);
        assert_eq!(b.len(), 64);
        assert_eq!(b.last(), Some(&b'\n'));
    }
}
