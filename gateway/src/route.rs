//! Routing: first match in file order on path, host, headers and method.
//! A request whose path matches some route but whose method matches none gets
//! 405 with `Allow`; otherwise 404.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prometheus_client::metrics::counter::Counter;

use crate::config::{CompressConfig, CompressSetting, FrontendConfig};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// A route ready to serve.
pub struct Route {
    /// Position in its router, for [`Router::route`].
    pub index: usize,
    /// Name in logs and metrics.
    pub name: Arc<str>,
    matcher: Matcher,
    /// Prefix removed before forwarding.
    pub strip_prefix: Option<String>,
    target: Target,
    canary: Option<(HeaderName, HeaderValue, Arc<Upstream>)>,
    /// Deadline for the upstream's response head (overrides the upstream's).
    pub timeout: Option<Duration>,
    /// Response compression, when enabled.
    pub compress: Option<CompressConfig>,
    /// Request counters by status class.
    pub counters: [Counter; 5],
    /// The route's plugins.
    pub chain: crate::filter::Chain,
}

struct Matcher {
    path_prefix: Option<String>,
    path: Option<String>,
    methods: Vec<Method>,
    host: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

enum Target {
    Single(Arc<Upstream>),
    Split(Vec<(Arc<Upstream>, u32)>, u32),
}

/// The outcome of routing.
pub enum RouteMatch<'a> {
    /// This route serves the request.
    Found(&'a Route),
    /// Routes match the path, but only for these methods.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matches.
    NotFound,
}

/// The routes of one frontend.
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Build the routes of `frontend`, resolving upstream names in `upstreams`.
    /// Names were validated on load; a route naming a missing upstream is skipped.
    pub fn new(
        frontend_name: &str,
        frontend: &FrontendConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        metrics: &Metrics,
        mut chains: Vec<crate::filter::Chain>,
    ) -> Router {
        let mut routes = Vec::new();
        chains.resize_with(frontend.routes.len(), Default::default);
        for ((i, rc), chain) in frontend.routes.iter().enumerate().zip(chains) {
            let name = rc.name.clone().unwrap_or_else(|| format!("route-{i}"));
            let target = match (&rc.upstream, &rc.split) {
                (Some(u), _) => match upstreams.get(u) {
                    Some(u) => Target::Single(u.clone()),
                    None => continue,
                },
                (None, Some(split)) => {
                    let legs: Vec<_> = split
                        .iter()
                        .filter_map(|t| upstreams.get(&t.upstream).map(|u| (u.clone(), t.weight)))
                        .collect();
                    let total = legs.iter().map(|(_, w)| *w).sum();
                    if legs.is_empty() {
                        continue;
                    }
                    Target::Split(legs, total)
                }
                (None, None) => continue,
            };
            let canary = rc.canary.as_ref().and_then(|c| {
                Some((
                    HeaderName::from_bytes(c.header.as_bytes()).ok()?,
                    HeaderValue::from_str(&c.value).ok()?,
                    upstreams.get(&c.upstream)?.clone(),
                ))
            });
            let m = &rc.matcher;
            let matcher = Matcher {
                path_prefix: m.path_prefix.as_ref().map(|p| normalize_prefix(p)),
                path: m.path.clone(),
                methods: m
                    .methods
                    .iter()
                    .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                    .collect(),
                host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            HeaderName::from_bytes(k.as_bytes()).ok()?,
                            HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect(),
            };
            let compress = match &rc.compress {
                None | Some(CompressSetting::Enabled(false)) => None,
                Some(CompressSetting::Enabled(true)) => Some(CompressConfig::default()),
                Some(CompressSetting::Settings(c)) => Some(c.clone()),
            };
            routes.push(Route {
                index: routes.len(),
                counters: metrics.route_counters(frontend_name, &name),
                name: name.into(),
                matcher,
                strip_prefix: rc.strip_prefix.as_ref().map(|p| normalize_prefix(p)),
                target,
                canary,
                timeout: rc.timeout.map(|t| t.get()),
                compress,
                chain,
            });
        }
        Router { routes }
    }

    /// The first route that matches.
    pub fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> RouteMatch<'_> {
        let mut allowed: Vec<Method> = Vec::new();
        for route in &self.routes {
            let m = &route.matcher;
            if let Some(p) = &m.path
                && path != p
            {
                continue;
            }
            if let Some(prefix) = &m.path_prefix
                && !has_prefix(path, prefix)
            {
                continue;
            }
            if let Some(want) = &m.host {
                let Some(host) = host else { continue };
                if !host_matches(want, host) {
                    continue;
                }
            }
            if !m
                .headers
                .iter()
                .all(|(k, v)| headers.get_all(k).iter().any(|have| have == v))
            {
                continue;
            }
            if m.methods.is_empty() || m.methods.contains(method) {
                return RouteMatch::Found(route);
            }
            for meth in &m.methods {
                if !allowed.contains(meth) {
                    allowed.push(meth.clone());
                }
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed(allowed)
        }
    }

    /// The route at `index` (see [`Route::index`]).
    pub fn route(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when the frontend has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Route {
    /// The upstream for this request: the canary if its header matches, else
    /// the single upstream or a weighted pick from the split.
    pub fn upstream(&self, headers: &HeaderMap) -> &Arc<Upstream> {
        if let Some((name, value, up)) = &self.canary
            && headers.get(name) == Some(value)
        {
            return up;
        }
        match &self.target {
            Target::Single(u) => u,
            Target::Split(legs, total) => {
                let mut r = fastrand::u32(..(*total).max(1));
                for (u, w) in legs {
                    if r < *w {
                        return u;
                    }
                    r -= w;
                }
                &legs[legs.len() - 1].0
            }
        }
    }

    /// The path to forward, with `strip_prefix` applied.
    pub fn forward_path<'p>(&self, path: &'p str) -> &'p str {
        match &self.strip_prefix {
            Some(prefix) if has_prefix(path, prefix) => {
                let rest = &path[prefix.len().min(path.len())..];
                if rest.is_empty() { "/" } else { rest }
            }
            _ => path,
        }
    }
}

/// `/api/` and `/api` mean the same prefix; `/` stays `/`.
fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

/// Prefix match at a segment boundary.
fn has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

fn host_matches(want: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').as_bytes();
    match want.strip_prefix("*.") {
        Some(suffix) => {
            let suffix = suffix.as_bytes();
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host[host.len() - suffix.len() - 1] == b'.'
        }
        None => host.eq_ignore_ascii_case(want.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_segment_aware() {
        assert!(has_prefix("/api", "/api"));
        assert!(has_prefix("/api/users", "/api"));
        assert!(!has_prefix("/apix", "/api"));
        assert!(has_prefix("/anything", "/"));
    }

    #[test]
    fn wildcard_hosts() {
        assert!(host_matches("*.example.com", "m.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "mexample.com"));
        assert!(host_matches("api.example.com", "API.example.com"));
    }
}
