//! The `transom` command: `run`, `check` and `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use transom::{Config, Gateway, Options};

// The request path allocates small, short-lived objects on one thread after
// another; mimalloc's thread-local free lists handle that best.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "transom", version, about = "A programmable API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Root config file.
    #[arg(long, short, default_value = "transom.toml")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Do not write one access-log line per request.
    #[arg(long)]
    no_access_log: bool,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Do not watch the config files and plugin directory; reload on SIGHUP only.
    #[arg(long)]
    no_watch: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the config, reloading it on change and on SIGHUP.
    Run(RunArgs),
    /// Validate the config (and its includes) and print a summary.
    Check {
        /// Root config file.
        #[arg(long, short, default_value = "transom.toml")]
        config: PathBuf,
    },
    /// Start the demo services and serve the demo config.
    Demo(DemoArgs),
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Sign a JWT (for trying routes that authenticate; `--demo` signs with
    /// the showcase's demo key).
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Sign with the demo key of `examples/bff` (RS256, kid "demo"), issuer
    /// "https://id.transom.example".
    #[arg(long, conflicts_with = "key")]
    demo: bool,
    /// PEM private key (RSA, EC or Ed25519), or an HMAC secret file.
    #[arg(long, required_unless_present = "demo")]
    key: Option<PathBuf>,
    /// Algorithm, e.g. RS256, ES256, EdDSA, HS256.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// Key id (`kid`) to put in the header.
    #[arg(long)]
    kid: Option<String>,
    /// Subject (`sub`).
    #[arg(long)]
    sub: String,
    /// Audience (`aud`).
    #[arg(long)]
    aud: Option<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    iss: Option<String>,
    /// Lifetime, e.g. "1h".
    #[arg(long, default_value = "1h")]
    ttl: humantime::Duration,
    /// Extra claims as NAME=VALUE (a JSON value, or else a string).
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
}

/// The showcase's demo signing key. It is public, in the repository: it
/// only ever signs demo tokens for the demo key set.
const DEMO_KEY: &str = include_str!("../../examples/bff/keys/demo-private.pem");
/// The demo issuer.
const DEMO_ISSUER: &str = "https://id.transom.example";

#[derive(Subcommand)]
enum PluginCommand {
    /// Say whether a file is a valid Transom plugin, and what it exports.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// The showcase's root config.
    #[arg(long, short, default_value = "examples/bff/transom.toml")]
    config: PathBuf,
    /// The plugins workspace, built and installed into each frontend's
    /// plugin directory before the gateway starts.
    #[arg(long, default_value = "plugins")]
    plugins: PathBuf,
    /// Do not build the plugins; install what is already built.
    #[arg(long)]
    no_build: bool,
    /// Slow a demo service down, e.g. `--latency recommendations=80ms`.
    #[arg(long, value_name = "SERVICE=DURATION")]
    latency: Vec<String>,
    /// Make a demo service fail a share of requests, e.g. `--failure-rate recommendations=0.3`.
    #[arg(long, value_name = "SERVICE=RATE")]
    failure_rate: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run(args) => {
            init_tracing(args.log_format);
            exit(runtime(args.threads).and_then(|rt| {
                rt.block_on(serve(
                    args.config,
                    !args.no_access_log,
                    !args.no_watch,
                    None,
                ))
            }))
        }
        Command::Plugin(PluginCommand::Check { file }) => plugin_check(&file),
        Command::Token(args) => exit(token(args).map(|t| println!("{t}"))),
        Command::Demo(args) => {
            init_tracing(args.log_format);
            exit(demo_setup(&args).and_then(|knobs| {
                runtime(None)
                    .and_then(|rt| rt.block_on(serve(args.config, true, true, Some(knobs))))
            }))
        }
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transom: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            print!("{}", summary(&c));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

fn plugin_check(file: &Path) -> ExitCode {
    let result = runtime(Some(1)).and_then(|rt| {
        rt.block_on(async {
            let cfg = transom::config::PluginsConfig {
                dir: None,
                cache: None,
                max_instances: 4,
                max_memory: transom::config::ByteSize::mib(64),
            };
            let engine = transom::plugin::PluginEngine::new(&cfg)?;
            Ok::<_, anyhow::Error>(transom::plugin::check_file(&engine, file).await?)
        })
    });
    match result {
        Ok(r) => {
            let mut phases = Vec::new();
            if r.phases.contains(transom::plugin::Phases::REQUEST) {
                phases.push("request");
            }
            if r.phases.contains(transom::plugin::Phases::RESPONSE) {
                phases.push("response");
            }
            println!("{}: valid Transom plugin", file.display());
            match &r.id {
                Some(id) => println!("  name:    {id}"),
                None => println!("  name:    (rename it NAME@VERSION.wasm to deploy it)"),
            }
            println!("  exports: {}", r.exports.join(", "));
            println!(
                "  phases:  {}",
                if phases.is_empty() {
                    "none".to_string()
                } else {
                    phases.join(", ")
                }
            );
            println!("  imports: {}", r.imports.join(", "));
            println!("  checked in {:.0} ms", r.load_time.as_secs_f64() * 1000.0);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: not a valid Transom plugin: {e:#}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::str::FromStr;
    let (alg, kid, iss, pem) = if args.demo {
        (
            Algorithm::RS256,
            Some(args.kid.unwrap_or_else(|| "demo".into())),
            Some(args.iss.unwrap_or_else(|| DEMO_ISSUER.into())),
            DEMO_KEY.as_bytes().to_vec(),
        )
    } else {
        let path = args.key.context("--key is required without --demo")?;
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let alg = Algorithm::from_str(&args.alg)
            .map_err(|_| anyhow::anyhow!("{:?} is not a JWT algorithm", args.alg))?;
        (alg, args.kid, args.iss, bytes)
    };
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let mut secret = pem;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            EncodingKey::from_secret(&secret)
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
        _ => EncodingKey::from_rsa_pem(&pem)?,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), args.sub.into());
    if let Some(aud) = args.aud {
        claims.insert("aud".into(), aud.into());
    }
    if let Some(iss) = iss {
        claims.insert("iss".into(), iss.into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + args.ttl.as_secs()).into());
    for c in args.claims {
        let (name, value) = c
            .split_once('=')
            .with_context(|| format!("--claim {c:?}: write NAME=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
        claims.insert(name.to_string(), value);
    }
    let mut header = Header::new(alg);
    header.kid = kid;
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let routes: usize = c.frontends.values().map(|f| f.routes.len()).sum();
    let _ = writeln!(
        s,
        "{}: ok ({} file{}, {} frontend{}, {} route{}, {} upstream{})",
        c.root.display(),
        c.files.len(),
        plural(c.files.len()),
        c.frontends.len(),
        plural(c.frontends.len()),
        routes,
        plural(routes),
        c.upstreams.len(),
        plural(c.upstreams.len())
    );
    for (name, f) in &c.frontends {
        let tls = if f.tls.is_some() { " (tls)" } else { "" };
        let _ = writeln!(s, "frontend {name} on {}{tls}", f.listen);
        for (i, r) in f.routes.iter().enumerate() {
            let rname = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
            let m = &r.matcher;
            let what = m
                .path
                .clone()
                .or_else(|| m.path_prefix.clone().map(|p| format!("{p}*")))
                .unwrap_or_else(|| "*".into());
            let target = match (&r.upstream, &r.split) {
                (Some(u), _) => u.clone(),
                (None, Some(split)) => split
                    .iter()
                    .map(|t| format!("{}:{}", t.upstream, t.weight))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => "-".into(),
            };
            let _ = writeln!(s, "  {rname:<16} {what:<24} -> {target}");
        }
    }
    for (name, u) in &c.upstreams {
        let eps: Vec<&str> = u.endpoints.iter().map(|e| e.address()).collect();
        let _ = writeln!(
            s,
            "upstream {name}: {} ({:?}, {:?})",
            eps.join(", "),
            u.balance,
            u.protocol
        );
    }
    s
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One worker thread runs everything on the main thread (no work stealing,
/// no cross-thread wake-ups); more use tokio's multi-threaded scheduler.
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(b.enable_all().build()?)
}

type DemoKnobs = Vec<(transom::demo::Kind, std::time::Duration, f64)>;

/// Build the plugins, install them into the showcase's plugin directories,
/// and read the service knobs.
fn demo_setup(args: &DemoArgs) -> anyhow::Result<DemoKnobs> {
    use transom::demo::Kind;
    let mut knobs: DemoKnobs = Vec::new();
    fn knob(knobs: &mut DemoKnobs, kind: transom::demo::Kind) -> usize {
        match knobs.iter().position(|(k, _, _)| *k == kind) {
            Some(i) => i,
            None => {
                knobs.push((kind, std::time::Duration::ZERO, 0.0));
                knobs.len() - 1
            }
        }
    }
    for l in &args.latency {
        let (svc, d) = l
            .split_once('=')
            .with_context(|| format!("--latency {l:?}: write SERVICE=DURATION"))?;
        let kind = Kind::parse(svc).with_context(|| format!("no demo service {svc:?}"))?;
        let d: humantime::Duration = d.parse().with_context(|| format!("--latency {l:?}"))?;
        let i = knob(&mut knobs, kind);
        knobs[i].1 = d.into();
    }
    for f in &args.failure_rate {
        let (svc, r) = f
            .split_once('=')
            .with_context(|| format!("--failure-rate {f:?}: write SERVICE=RATE"))?;
        let kind = Kind::parse(svc).with_context(|| format!("no demo service {svc:?}"))?;
        let r: f64 = r.parse().with_context(|| format!("--failure-rate {f:?}"))?;
        let i = knob(&mut knobs, kind);
        knobs[i].2 = r;
    }

    if !args.no_build {
        build_plugins(&args.plugins)?;
    }
    let built = args.plugins.join("target/wasm32-wasip2/release");
    let example = args.config.parent().unwrap_or(Path::new("."));
    let installed = transom::demo::install_plugins(example, &args.plugins, &built)
        .map_err(|e| anyhow::anyhow!("installing the showcase's plugins: {e}"))?;
    eprintln!(
        "installed {} plugin files into the frontends' directories",
        installed.len()
    );
    Ok(knobs)
}

/// `cargo build --release --target wasm32-wasip2` of the plugins workspace,
/// adding the target with rustup when it is missing.
fn build_plugins(dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = || {
        eprintln!(
            "building the plugins in {} for wasm32-wasip2 ...",
            dir.display()
        );
        std::process::Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .env_remove("CARGO_TARGET_DIR")
            .output()
    };
    let out = build().context("running cargo")?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
        eprintln!("adding the wasm32-wasip2 target with rustup ...");
        let added = std::process::Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status()
            .context(
                "running rustup (install the target with `rustup target add wasm32-wasip2`)",
            )?;
        anyhow::ensure!(added.success(), "`rustup target add wasm32-wasip2` failed");
        let out = build().context("running cargo")?;
        if out.status.success() {
            return Ok(());
        }
        anyhow::bail!(
            "building the plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    anyhow::bail!("building the plugins failed:\n{stderr}")
}

async fn serve(
    config: PathBuf,
    access_log: bool,
    watch: bool,
    demo: Option<DemoKnobs>,
) -> anyhow::Result<()> {
    if let Some(knobs) = &demo {
        transom::demo::start(knobs)
            .await
            .context("starting the demo services")?;
    }
    let gw = Gateway::start(&config, Options { access_log })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot start with {}", config.display()))?;
    if watch && let Err(e) = transom::reload::watch(std::sync::Arc::downgrade(&gw)) {
        tracing::warn!(error = %e, "config file watching is off; SIGHUP still reloads");
    }
    if demo.is_some() {
        print_demo_help(&gw).await;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config and plugins");
                if !matches!(gw.reload().await, Ok(true)) {
                    let _ = gw.reload_plugins().await;
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    gw.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn print_demo_help(gw: &Gateway) {
    let addr = |name: &'static str| async move {
        gw.frontend_addr(name)
            .await
            .map(|a| a.to_string())
            .unwrap_or_else(|| "(not running)".into())
    };
    let (web, mobile, partner) = (
        addr("web").await,
        addr("mobile").await,
        addr("partner").await,
    );
    let token = |sub: &str, aud: &str| {
        token(TokenArgs {
            demo: true,
            key: None,
            alg: "RS256".into(),
            kid: None,
            sub: sub.into(),
            aud: Some(aud.into()),
            iss: None,
            ttl: std::time::Duration::from_secs(8 * 3600).into(),
            claims: Vec::new(),
        })
        .unwrap_or_else(|e| format!("(cannot sign: {e})"))
    };
    println!("\nTransom BFF showcase is running.");
    for s in transom::demo::SERVICES {
        println!("  service {:<16} http://{}", s.kind.name(), s.addr);
    }
    println!("  frontend web             http://{web}");
    println!("  frontend mobile          http://{mobile}");
    println!("  frontend partner         http://{partner}");
    println!("\nTry (tokens signed with the demo key, valid 8 hours):");
    println!("  MOBILE={}", token("alice", "mobile"));
    println!("  WEB={}", token("alice", "web"));
    println!("  PARTNER={}", token("acme", "partner"));
    println!();
    println!(
        "  curl -s http://{mobile}/home -H \"authorization: Bearer $MOBILE\"            # small payload, one round trip"
    );
    println!(
        "  curl -s http://{web}/home -H \"authorization: Bearer $WEB\"                  # the same data, rich"
    );
    println!(
        "  curl -si -X OPTIONS http://{web}/home -H 'origin: http://localhost:3000' -H 'access-control-request-method: GET'"
    );
    println!(
        "  curl -s http://{partner}/v1/products -H \"authorization: Bearer $PARTNER\"   # contract v1"
    );
    println!(
        "  curl -s http://{partner}/v2/products -H \"authorization: Bearer $PARTNER\"   # contract v2, side by side"
    );
    println!(
        "  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' http://{partner}/v2/products -H \"authorization: Bearer $PARTNER\"; done; echo   # 429 past the burst"
    );
    println!(
        "  curl -si http://{mobile}/home                                            # 401 with WWW-Authenticate"
    );
    println!(
        "  curl -s -X PUT 'http://127.0.0.1:7401/_knobs?failure_rate=1'                # recommendations down: /home is partial"
    );
    if let Some(admin) = gw.admin_addr() {
        println!("  curl -s http://{admin}/plugins");
        println!("  curl -s http://{admin}/metrics | grep transom_requests");
    }
    println!("\nMint other tokens: cargo run -p transom -- token --demo --sub bob --aud mobile");
    println!(
        "Edit examples/bff/frontends/*.toml and the gateway reloads that frontend. Ctrl-C stops.\n"
    );
}
