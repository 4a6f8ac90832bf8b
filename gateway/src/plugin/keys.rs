//! Key sets for token verification (`[keys.NAME]`): loaded and parsed once
//! when the config is applied (or fetched from an upstream and cached, for
//! `jwks_from`), used natively (aws-lc) when a plugin calls `verify-jwt`.
//! Cryptography stays in the host: it is an order of magnitude faster than
//! inside WebAssembly, and keys never enter a sandbox.
//!
//! The verifier refuses, before any signature check: `alg: none` (any
//! casing) and algorithms the key set does not pin, tokens that carry their
//! own key or point at one (`jwk`, `jku`, `x5u`, `x5c`: never fetched, never
//! trusted), `crit` extensions (none are understood), and `kid`s outside the
//! set. Then the signature, `exp` (required) and `nbf`, with the set's
//! leeway.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{JwksFrom, KeySetConfig};
use crate::upstream::Upstream;

/// Longest token accepted (bytes).
const MAX_TOKEN: usize = 8 * 1024;
/// Largest JWKS document fetched.
const MAX_JWKS: usize = 1024 * 1024;
/// Limit for one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Header parameters that carry or point at a key; a token never chooses
/// its own key.
const KEY_PARAMS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Keys with their `kid` (when they have one).
type Keys = Vec<(Option<String>, DecodingKey)>;

/// A loaded key set.
pub struct KeySet {
    config: KeySetConfig,
    keys: Arc<Keys>,
    remote: Option<Arc<Remote>>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
}

/// A JWKS document fetched from an upstream: cached, refreshed after
/// `refresh`, and on an unknown `kid` at most once per `min_interval`.
struct Remote {
    from: JwksFrom,
    upstream: Option<Arc<Upstream>>,
    keys: ArcSwap<Keys>,
    times: Mutex<FetchTimes>,
    /// Held while fetching: concurrent verifications wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct FetchTimes {
    attempted: Option<Instant>,
    fetched: Option<Instant>,
    error: Option<String>,
}

impl KeySet {
    /// Load the files of `cfg`. Errors name the field at fault. A
    /// `jwks_from` set starts empty: [`KeySet::attach`] gives it its
    /// upstream, and the first verification fetches the document.
    pub fn load(cfg: &KeySetConfig) -> Result<KeySet, (&'static str, String)> {
        if cfg.algorithms.is_empty() {
            return Err((
                "algorithms",
                "name at least one algorithm, e.g. [\"RS256\"]".into(),
            ));
        }
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            let alg = Algorithm::from_str(a)
                .map_err(|_| ("algorithms", format!("{a:?} is not a JWT algorithm")))?;
            algorithms.push(alg);
        }
        let family = algorithms[0].family();
        if algorithms.iter().any(|a| a.family() != family) {
            return Err((
                "algorithms",
                "all algorithms of a key set must use the same kind of key".into(),
            ));
        }
        let hmac = matches!(
            algorithms[0],
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let read = |field: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| (field, format!("cannot read {}: {e}", path.display())))
        };
        let mut remote = None;
        let keys = if let Some(path) = &cfg.pem {
            let pem = read("pem", path)?;
            let key = match algorithms[0] {
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => {
                    return Err((
                        "algorithms",
                        "a PEM public key cannot verify HMAC algorithms; use secret_file".into(),
                    ));
                }
            }
            .map_err(|e| {
                (
                    "pem",
                    format!("{}: not a usable public key: {e}", path.display()),
                )
            })?;
            vec![(cfg.kid.clone(), key)]
        } else if let Some(path) = &cfg.secret_file {
            if !hmac {
                return Err((
                    "algorithms",
                    "a secret verifies only HS256, HS384 or HS512".into(),
                ));
            }
            let mut secret = read("secret_file", path)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err((
                    "secret_file",
                    "an HMAC secret must have at least 32 bytes".into(),
                ));
            }
            vec![(cfg.kid.clone(), DecodingKey::from_secret(&secret))]
        } else if let Some(path) = &cfg.jwks {
            if hmac {
                return Err(("algorithms", "a JWKS holds public keys, not HMAC".into()));
            }
            let text = read("jwks", path)?;
            let keys =
                parse_jwks(&text).map_err(|e| ("jwks", format!("{}: {e}", path.display())))?;
            if keys.is_empty() {
                return Err(("jwks", format!("{}: no usable keys", path.display())));
            }
            keys
        } else if let Some(from) = &cfg.jwks_from {
            if hmac {
                return Err(("algorithms", "a JWKS holds public keys, not HMAC".into()));
            }
            remote = Some(Arc::new(Remote {
                from: from.clone(),
                upstream: None,
                keys: ArcSwap::from_pointee(Vec::new()),
                times: Mutex::new(FetchTimes::default()),
                fetching: tokio::sync::Mutex::new(()),
            }));
            Vec::new()
        } else {
            return Err((
                "pem",
                "set exactly one of pem, secret_file, jwks and jwks_from".into(),
            ));
        };
        Ok(KeySet {
            config: cfg.clone(),
            keys: Arc::new(keys),
            remote,
            algorithms,
            leeway: cfg.leeway.get().as_secs(),
        })
    }

    /// Give a `jwks_from` set the upstream it fetches from.
    pub fn attach(&mut self, upstreams: &BTreeMap<String, Arc<Upstream>>) {
        if let Some(remote) = &mut self.remote
            && let Some(r) = Arc::get_mut(remote)
        {
            r.upstream = upstreams.get(&r.from.upstream).cloned();
        }
    }

    /// Whether this set was built from `cfg` with the same upstream (so a
    /// reload can keep it, with its fetched keys).
    pub fn same(&self, cfg: &KeySetConfig, upstreams: &BTreeMap<String, Arc<Upstream>>) -> bool {
        if self.config != *cfg {
            return false;
        }
        match (&self.remote, &cfg.jwks_from) {
            (Some(r), Some(from)) => match (&r.upstream, upstreams.get(&from.upstream)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            },
            (None, None) => true,
            _ => false,
        }
    }

    /// Verify `token`; its claims as JSON on success.
    pub async fn verify(&self, token: &str) -> Result<String, String> {
        if token.len() > MAX_TOKEN {
            return Err("token too large".into());
        }
        check_header(token)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let kid = header.kid.as_deref();
        let key = match &self.remote {
            None => lookup(&self.keys, kid)?,
            Some(remote) => {
                let keys = remote.keys(false).await;
                match lookup(&keys, kid) {
                    Ok(k) => k,
                    // An unknown kid may be a key the provider just rotated in.
                    Err(_) if kid.is_some() => lookup(&*remote.keys(true).await, kid)?,
                    Err(e) => return Err(e),
                }
            }
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .map_err(|e| format!("invalid token: {e}"))?;
        Ok(data.claims.to_string())
    }
}

/// Checks on the raw header that `decode_header` does not make: it ignores
/// parameters it does not know, and we refuse some of them.
fn check_header(token: &str) -> Result<(), String> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token: it must have three segments".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| "malformed token: the header is not base64url".to_string())?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|_| "malformed token: the header is not a JSON object".to_string())?;
    if let Some(alg) = header.get("alg").and_then(|a| a.as_str())
        && alg.eq_ignore_ascii_case("none")
    {
        return Err("unsigned tokens (alg none) are not accepted".into());
    }
    if header.contains_key("crit") {
        return Err(
            "the token has critical header extensions (crit) this gateway does not understand"
                .into(),
        );
    }
    if let Some(p) = KEY_PARAMS.iter().find(|p| header.contains_key(**p)) {
        return Err(format!(
            "the token carries or points at its own key ({p}); keys come only from the gateway's configuration"
        ));
    }
    Ok(())
}

/// The key a token names: by `kid`, or the only key when it names none.
fn lookup(keys: &Keys, kid: Option<&str>) -> Result<DecodingKey, String> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|(k, _)| k.as_deref() == Some(kid))
            .map(|(_, key)| key.clone())
            .ok_or_else(|| format!("unknown key id {kid:?}")),
        None => match keys.as_slice() {
            [(_, key)] => Ok(key.clone()),
            [] => Err("no keys are available".into()),
            _ => Err("the token names no key (kid) and the key set has several".into()),
        },
    }
}

/// The signing keys of a JWKS document (encryption keys are skipped).
fn parse_jwks(text: &[u8]) -> Result<Keys, String> {
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        keys.push((jwk.common.key_id.clone(), key));
    }
    Ok(keys)
}

impl Remote {
    /// The current keys, fetched first when there are none yet, when they
    /// are older than `refresh`, or (with `unknown_kid`) when a token named
    /// a key we do not have, but never more often than `min_interval`.
    async fn keys(self: &Arc<Self>, unknown_kid: bool) -> Arc<Keys> {
        if !self.due(unknown_kid) {
            return self.keys.load_full();
        }
        let have = !self.keys.load().is_empty();
        if have && !unknown_kid {
            // Stale but usable: refresh in the background.
            let me = self.clone();
            tokio::spawn(async move {
                let _guard = me.fetching.lock().await;
                if me.due(false) {
                    me.fetch().await;
                }
            });
            return self.keys.load_full();
        }
        let _guard = self.fetching.lock().await;
        if self.due(unknown_kid) {
            self.fetch().await;
        }
        self.keys.load_full()
    }

    fn due(&self, unknown_kid: bool) -> bool {
        let t = self.times.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let may = t
            .attempted
            .is_none_or(|a| now.duration_since(a) >= self.from.min_interval.get());
        let stale = t
            .fetched
            .is_none_or(|f| now.duration_since(f) >= self.from.refresh.get());
        may && (stale || unknown_kid)
    }

    async fn fetch(&self) {
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attempted = Some(Instant::now());
        let result = self.get().await;
        let mut t = self.times.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(keys) => {
                tracing::info!(upstream = %self.from.upstream, path = %self.from.path, keys = keys.len(), "JWKS fetched");
                self.keys.store(Arc::new(keys));
                t.fetched = Some(Instant::now());
                t.error = None;
            }
            Err(e) => {
                tracing::warn!(upstream = %self.from.upstream, path = %self.from.path, error = %e, "JWKS fetch failed; keeping the keys we have");
                t.error = Some(e);
            }
        }
    }

    async fn get(&self) -> Result<Keys, String> {
        use http_body_util::BodyExt;
        let upstream = self
            .upstream
            .as_ref()
            .ok_or_else(|| format!("upstream {:?} is not available", self.from.upstream))?;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        if let Ok(h) = http::HeaderValue::from_str(&self.from.upstream) {
            headers.insert(http::header::HOST, h);
        }
        let out = crate::upstream::Outbound {
            method: http::Method::GET,
            path_and_query: self
                .from
                .path
                .parse()
                .map_err(|_| format!("invalid path {:?}", self.from.path))?,
            headers,
            body: None,
        };
        let answer = upstream
            .send(out, FETCH_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.response.status();
        if !status.is_success() {
            return Err(format!("the JWKS endpoint answered {status}"));
        }
        let body = http_body_util::Limited::new(answer.response.into_body(), MAX_JWKS);
        let bytes = tokio::time::timeout(FETCH_TIMEOUT, body.collect())
            .await
            .map_err(|_| "timed out reading the JWKS document".to_string())?
            .map_err(|e| format!("reading the JWKS document: {e}"))?
            .to_bytes();
        let keys = parse_jwks(&bytes)?;
        if keys.is_empty() {
            return Err("the JWKS document has no signing keys".into());
        }
        Ok(keys)
    }
}
