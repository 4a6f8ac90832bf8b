//! Checks that span fields or files: references between routes and
//! upstreams, address syntax, limits hyper enforces, TLS files that must
//! parse. Relative file paths are resolved against the file that names them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::locate::Seg;
use super::{Config, Origins};

type Problem = (usize, Vec<Seg>, String);

struct Ctx<'a> {
    problems: Vec<Problem>,
    file: usize,
    base: Vec<Seg>,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn err(&mut self, rel: &[Seg], msg: impl Into<String>) {
        let mut path = self.base.clone();
        path.extend_from_slice(rel);
        self.problems.push((self.file, path, msg.into()));
    }
}

fn k(s: &str) -> Seg {
    Seg::key(s)
}

/// Validate `config` in place; returns every problem found.
pub(super) fn validate(config: &mut Config, origins: &Origins) -> Vec<Problem> {
    let mut problems = Vec::new();
    let dirs: Vec<PathBuf> = config
        .files
        .iter()
        .map(|f| f.path.parent().map(Path::to_path_buf).unwrap_or_default())
        .collect();
    let upstream_names: BTreeSet<String> = config.upstreams.keys().cloned().collect();
    let plugins = config.plugins.clone();
    let key_names: BTreeSet<String> = config.keys.keys().cloned().collect();
    for (name, ks) in &config.keys {
        let file = origins.keys.get(name).copied().unwrap_or(0);
        let base = vec![k("keys"), k(name)];
        let at = |f: &str| {
            let mut v = base.clone();
            v.push(k(f));
            v
        };
        let sources = [
            ks.pem.is_some(),
            ks.secret_file.is_some(),
            ks.jwks.is_some(),
            ks.jwks_from.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            problems.push((
                file,
                base.clone(),
                "set exactly one of pem, secret_file, jwks and jwks_from".into(),
            ));
            continue;
        }
        if let Some(from) = &ks.jwks_from {
            let mut at_from = at("jwks_from");
            if !upstream_names.contains(&from.upstream) {
                at_from.push(k("upstream"));
                problems.push((
                    file,
                    at_from.clone(),
                    format!(
                        "unknown upstream {:?}; define it as [upstreams.{}]",
                        from.upstream, from.upstream
                    ),
                ));
            } else if !from.path.starts_with('/')
                || from.path.parse::<http::uri::PathAndQuery>().is_err()
            {
                at_from.push(k("path"));
                problems.push((file, at_from, "a path starting with '/'".into()));
            }
        }
        if ks.kid.is_some() && (ks.jwks.is_some() || ks.jwks_from.is_some()) {
            problems.push((
                file,
                at("kid"),
                "a JWKS names its own keys; kid is for pem and secret_file".into(),
            ));
        }
        if ks.leeway.get() > std::time::Duration::from_secs(300) {
            problems.push((file, at("leeway"), "at most 5 minutes".into()));
        }
        if let Err((field, why)) = crate::plugin::keys::KeySet::load(ks) {
            problems.push((file, at(field), why));
        }
    }
    if let Some(p) = &plugins {
        let file = origins.plugins.unwrap_or(0);
        if let Some(dir) = &p.dir
            && !dir.is_dir()
        {
            problems.push((
                file,
                vec![k("plugins"), k("dir")],
                format!("{} is not a directory", dir.display()),
            ));
        }
        if p.max_instances == 0 {
            problems.push((
                file,
                vec![k("plugins"), k("max_instances")],
                "must be at least 1".into(),
            ));
        }
    }

    for (name, up) in config.upstreams.iter_mut() {
        let file = origins.upstreams.get(name).copied().unwrap_or(0);
        let mut cx = Ctx {
            problems: Vec::new(),
            file,
            base: vec![k("upstreams"), k(name)],
            dir: &dirs[file],
        };
        check_name(&mut cx, name);
        if up.endpoints.is_empty() {
            cx.err(&[k("endpoints")], "an upstream needs at least one endpoint");
        }
        let mut seen = BTreeSet::new();
        for (i, ep) in up.endpoints.iter().enumerate() {
            if let Err(e) = check_authority(ep.address()) {
                cx.err(&[k("endpoints"), Seg::Index(i)], e);
            } else if !seen.insert(ep.address().to_string()) {
                cx.err(
                    &[k("endpoints"), Seg::Index(i)],
                    format!("endpoint {} is listed twice", ep.address()),
                );
            }
            if !(1..=1000).contains(&ep.weight()) {
                cx.err(
                    &[k("endpoints"), Seg::Index(i), k("weight")],
                    "weight must be between 1 and 1000",
                );
            }
        }
        if up.connect_timeout.get().is_zero() {
            cx.err(&[k("connect_timeout")], "must be greater than zero");
        }
        if up.request_timeout.get().is_zero() {
            cx.err(&[k("request_timeout")], "must be greater than zero");
        }
        if up.retries.attempts > 10 {
            cx.err(&[k("retries"), k("attempts")], "at most 10 retries");
        }
        if let Some(h) = &up.health {
            if !h.path.starts_with('/') {
                cx.err(&[k("health"), k("path")], "must start with '/'");
            }
            if h.interval.get().is_zero() {
                cx.err(&[k("health"), k("interval")], "must be greater than zero");
            }
            if h.timeout.get().is_zero() {
                cx.err(&[k("health"), k("timeout")], "must be greater than zero");
            }
            if h.unhealthy_after == 0 {
                cx.err(&[k("health"), k("unhealthy_after")], "must be at least 1");
            }
            if h.healthy_after == 0 {
                cx.err(&[k("health"), k("healthy_after")], "must be at least 1");
            }
        }
        if up.circuit_breaker.consecutive_failures == 0 {
            cx.err(
                &[k("circuit_breaker"), k("consecutive_failures")],
                "must be at least 1",
            );
        }
        if let Some(tls) = &mut up.tls {
            tls.ca = cx.dir.join(&tls.ca);
            if let Err(e) = crate::tls::load_certs(&tls.ca) {
                cx.err(&[k("tls"), k("ca")], e.to_string());
            }
        }
        problems.extend(cx.problems);
    }

    let mut listens: HashMap<std::net::SocketAddr, String> = HashMap::new();
    if let Some(admin) = &config.admin {
        listens.insert(admin.listen, "[admin]".to_string());
    }
    for (name, fe) in config.frontends.iter_mut() {
        let file = origins.frontends.get(name).copied().unwrap_or(0);
        let mut cx = Ctx {
            problems: Vec::new(),
            file,
            base: vec![k("frontends"), k(name)],
            dir: &dirs[file],
        };
        check_name(&mut cx, name);
        if fe.listen.port() != 0 {
            if let Some(other) = listens.get(&fe.listen) {
                cx.err(
                    &[k("listen")],
                    format!("{} is already used by {other}", fe.listen),
                );
            } else {
                listens.insert(fe.listen, format!("frontend {name:?}"));
            }
        }
        if let Some(tls) = &mut fe.tls {
            tls.cert = cx.dir.join(&tls.cert);
            tls.key = cx.dir.join(&tls.key);
            if let Err(e) = crate::tls::load_certs(&tls.cert) {
                cx.err(&[k("tls"), k("cert")], e.to_string());
            }
            if let Err(e) = crate::tls::load_key(&tls.key) {
                cx.err(&[k("tls"), k("key")], e.to_string());
            }
        }
        let l = &fe.limits;
        if l.max_connections == 0 {
            cx.err(&[k("limits"), k("max_connections")], "must be at least 1");
        }
        if l.max_concurrent_requests == Some(0) {
            cx.err(
                &[k("limits"), k("max_concurrent_requests")],
                "must be at least 1",
            );
        }
        if let Some(fp) = &fe.plugins {
            if let Some(dir) = &fp.dir
                && !dir.is_dir()
            {
                cx.err(
                    &[k("plugins"), k("dir")],
                    format!("{} is not a directory", dir.display()),
                );
            }
            if let Some(m) = fp.max_memory
                && m.bytes() < 1 << 20
            {
                cx.err(&[k("plugins"), k("max_memory")], "must be at least 1MiB");
            }
            if plugins.is_none() {
                cx.err(
                    &[k("plugins")],
                    "frontend plugins need a [plugins] section (engine limits)",
                );
            }
        }
        let plugin_dir: Option<std::path::PathBuf> = fe
            .plugins
            .as_ref()
            .and_then(|p| p.dir.clone())
            .or_else(|| plugins.as_ref().and_then(|p| p.dir.clone()));
        if l.max_header_bytes.bytes() < 8192 || l.max_header_bytes.bytes() > 1 << 20 {
            cx.err(
                &[k("limits"), k("max_header_bytes")],
                "must be between 8KiB and 1MiB",
            );
        }
        for (field, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("idle_timeout", l.idle_timeout),
        ] {
            if d.get().is_zero() {
                cx.err(&[k("limits"), k(field)], "must be greater than zero");
            }
        }
        for route in fe.routes.iter_mut() {
            for p in route.plugins.iter_mut() {
                for d in p.dirs.iter_mut() {
                    d.host = cx.dir.join(&d.host);
                }
            }
        }
        let mut route_names = BTreeSet::new();
        for (i, route) in fe.routes.iter().enumerate() {
            let r = |rest: &[Seg]| {
                let mut v = vec![k("routes"), Seg::Index(i)];
                v.extend_from_slice(rest);
                v
            };
            let rname = route.name.clone().unwrap_or_else(|| format!("route-{i}"));
            if !route_names.insert(rname.clone()) {
                cx.err(
                    &r(&[k("name")]),
                    format!("route name {rname:?} is used twice"),
                );
            }
            let m = &route.matcher;
            if let Some(p) = &m.path_prefix
                && !p.starts_with('/')
            {
                cx.err(&r(&[k("match"), k("path_prefix")]), "must start with '/'");
            }
            if let Some(p) = &m.path {
                if !p.starts_with('/') {
                    cx.err(&r(&[k("match"), k("path")]), "must start with '/'");
                }
                if m.path_prefix.is_some() {
                    cx.err(
                        &r(&[k("match"), k("path")]),
                        "set either path or path_prefix, not both",
                    );
                }
            }
            for (j, method) in m.methods.iter().enumerate() {
                if http::Method::from_bytes(method.as_bytes()).is_err()
                    || method.to_ascii_uppercase() != *method
                {
                    cx.err(
                        &r(&[k("match"), k("methods"), Seg::Index(j)]),
                        format!(
                            "{method:?} is not an HTTP method (write it in capitals, e.g. \"GET\")"
                        ),
                    );
                }
            }
            if let Some(h) = &m.host
                && (h.is_empty() || h.contains(['/', ' ']))
            {
                cx.err(&r(&[k("match"), k("host")]), "not a host name");
            }
            for (hn, hv) in &m.headers {
                if http::HeaderName::from_bytes(hn.as_bytes()).is_err() {
                    cx.err(
                        &r(&[k("match"), k("headers"), k(hn)]),
                        "not a valid header name",
                    );
                }
                if http::HeaderValue::from_str(hv).is_err() {
                    cx.err(
                        &r(&[k("match"), k("headers"), k(hn)]),
                        "not a valid header value",
                    );
                }
            }
            if let Some(p) = &route.strip_prefix
                && !p.starts_with('/')
            {
                cx.err(&r(&[k("strip_prefix")]), "must start with '/'");
            }
            match (&route.upstream, &route.split) {
                (None, None) => cx.err(
                    &r(&[]),
                    "a route needs `upstream = \"NAME\"` or `split = [...]`",
                ),
                (Some(_), Some(_)) => {
                    cx.err(&r(&[k("split")]), "set either upstream or split, not both")
                }
                (Some(u), None) => {
                    if !upstream_names.contains(u) {
                        cx.err(&r(&[k("upstream")]), unknown_upstream(u, &upstream_names));
                    }
                }
                (None, Some(split)) => {
                    if split.is_empty() {
                        cx.err(&r(&[k("split")]), "split needs at least one upstream");
                    }
                    for (j, t) in split.iter().enumerate() {
                        if !upstream_names.contains(&t.upstream) {
                            cx.err(
                                &r(&[k("split"), Seg::Index(j), k("upstream")]),
                                unknown_upstream(&t.upstream, &upstream_names),
                            );
                        }
                        if t.weight == 0 || t.weight > 10_000 {
                            cx.err(
                                &r(&[k("split"), Seg::Index(j), k("weight")]),
                                "weight must be between 1 and 10000",
                            );
                        }
                    }
                }
            }
            if let Some(c) = &route.canary {
                if !upstream_names.contains(&c.upstream) {
                    cx.err(
                        &r(&[k("canary"), k("upstream")]),
                        unknown_upstream(&c.upstream, &upstream_names),
                    );
                }
                if http::HeaderName::from_bytes(c.header.as_bytes()).is_err() {
                    cx.err(&r(&[k("canary"), k("header")]), "not a valid header name");
                }
            }
            if let Some(t) = route.timeout
                && t.get().is_zero()
            {
                cx.err(&r(&[k("timeout")]), "must be greater than zero");
            }
            for (j, p) in route.plugins.iter().enumerate() {
                let at = |field: &str| r(&[k("plugins"), Seg::Index(j), k(field)]);
                let Some(pc) = &plugins else {
                    cx.err(
                        &r(&[k("plugins"), Seg::Index(j)]),
                        "routes use plugins, but no [plugins] section says where they are",
                    );
                    break;
                };
                if !crate::plugin::valid_name(&p.name) {
                    cx.err(
                        &at("name"),
                        format!(
                            "{:?} is not a plugin name (lower-case letters, digits and '-')",
                            p.name
                        ),
                    );
                    continue;
                }
                if semver::Version::parse(&p.version).is_err() {
                    cx.err(
                        &at("version"),
                        format!("{:?} is not an exact version like \"1.2.0\"", p.version),
                    );
                    continue;
                }
                let _ = pc;
                let Some(dir) = &plugin_dir else {
                    cx.err(
                        &r(&[k("plugins"), Seg::Index(j)]),
                        "routes use plugins, but neither [plugins].dir nor this frontend's plugins.dir says where they are",
                    );
                    break;
                };
                let file = dir.join(format!("{}@{}.wasm", p.name, p.version));
                if !file.is_file() {
                    cx.err(
                        &at("version"),
                        format!(
                            "plugin {}@{} is not in {}",
                            p.name,
                            p.version,
                            dir.display()
                        ),
                    );
                }
                if p.timeout.get().is_zero() {
                    cx.err(&at("timeout"), "must be greater than zero");
                }
                for (g, u) in p.upstreams.iter().enumerate() {
                    if !upstream_names.contains(u) {
                        cx.err(
                            &r(&[k("plugins"), Seg::Index(j), k("upstreams"), Seg::Index(g)]),
                            unknown_upstream(u, &upstream_names),
                        );
                    }
                }
                for (g, d) in p.dirs.iter().enumerate() {
                    if !d.host.is_dir() {
                        cx.err(
                            &r(&[
                                k("plugins"),
                                Seg::Index(j),
                                k("dirs"),
                                Seg::Index(g),
                                k("host"),
                            ]),
                            format!("{} is not a directory", d.host.display()),
                        );
                    }
                    if !d.guest.starts_with('/') {
                        cx.err(
                            &r(&[
                                k("plugins"),
                                Seg::Index(j),
                                k("dirs"),
                                Seg::Index(g),
                                k("guest"),
                            ]),
                            "must be an absolute path like \"/data\"",
                        );
                    }
                }
                for (g, key) in p.keys.iter().enumerate() {
                    if !key_names.contains(key) {
                        cx.err(
                            &r(&[k("plugins"), Seg::Index(j), k("keys"), Seg::Index(g)]),
                            format!("unknown key set {key:?}; define it as [keys.{key}]"),
                        );
                    }
                }
                if p.memory.bytes() < 1 << 20 || p.memory > pc.max_memory {
                    cx.err(
                        &at("memory"),
                        format!(
                            "must be between 1MiB and [plugins] max_memory ({})",
                            pc.max_memory
                        ),
                    );
                }
            }
            if let Some(super::CompressSetting::Settings(c)) = &route.compress
                && c.algorithms.is_empty()
            {
                cx.err(
                    &r(&[k("compress"), k("algorithms")]),
                    "name at least one of \"zstd\", \"br\", \"gzip\"",
                );
            }
        }
        problems.extend(cx.problems);
    }
    problems
}

fn unknown_upstream(name: &str, known: &BTreeSet<String>) -> String {
    let list: Vec<&str> = known.iter().map(String::as_str).collect();
    if list.is_empty() {
        format!("unknown upstream {name:?}: no upstreams are defined")
    } else {
        format!("unknown upstream {name:?} (defined: {})", list.join(", "))
    }
}

fn check_name(cx: &mut Ctx<'_>, name: &str) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        cx.err(
            &[],
            format!("name {name:?} may only use letters, digits, '-' and '_'"),
        );
    }
}

/// `host:port` with a non-empty host and a numeric port.
fn check_authority(addr: &str) -> Result<(), String> {
    let bad = || format!("{addr:?} is not a host:port address");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("{addr:?}: port 0 is not a valid endpoint port"));
    }
    addr.parse::<http::uri::Authority>().map_err(|_| bad())?;
    Ok(())
}
