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
use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{JwksFrom, KeySetConfig};
use crate::upstream::Upstream;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
type Keys = Vec<Key>;

/// One key: for HMAC the secret, for public keys the key parsed once per
/// pinned algorithm (aws-lc would otherwise parse the DER on every
/// verification, which costs about as much as the verification itself).
struct Key {
    kid: Option<String>,
    kind: KeyKind,
}

enum KeyKind {
    Hmac(DecodingKey),
    Public(Vec<(Algorithm, Arc<ParsedPublicKey>)>),
}

impl Key {
    /// `key` prepared for `algorithms`; `None` when it fits none of them.
    fn new(kid: Option<String>, key: DecodingKey, algorithms: &[Algorithm]) -> Option<Key> {
        use jsonwebtoken::DecodingKeyKind;
        if algorithms
            .iter()
            .any(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
        {
            return Some(Key {
                kid,
                kind: KeyKind::Hmac(key),
            });
        }
        let der;
        let bytes: &[u8] = match key.kind() {
            DecodingKeyKind::SecretOrDer(b) => b,
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                der = rsa_public_key_der(n, e);
                &der
            }
        };
        let parsed: Vec<(Algorithm, Arc<ParsedPublicKey>)> = algorithms
            .iter()
            .filter_map(|a| {
                let alg = verification_algorithm(*a)?;
                ParsedPublicKey::new(alg, bytes)
                    .ok()
                    .map(|k| (*a, Arc::new(k)))
            })
            .collect();
        (!parsed.is_empty()).then_some(Key {
            kid,
            kind: KeyKind::Public(parsed),
        })
    }
}

/// aws-lc's verification algorithm for a JWT `alg` (the same choices as
/// jsonwebtoken's aws-lc backend).
fn verification_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    use aws_lc_rs::signature as s;
    Some(match alg {
        Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &s::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &s::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &s::ED25519,
        _ => return None,
    })
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
/// (RFC 8017) from a JWK's big-endian `n` and `e`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let v: &[u8] = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[0],
        };
        let pad = v[0] & 0x80 != 0;
        out.push(0x02);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.push(0x30);
    len(&mut out, body.len());
    out.extend(body);
    out
}

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
    algorithms: Vec<Algorithm>,
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
            let key = Key::new(cfg.kid.clone(), key, &algorithms).ok_or((
                "pem",
                format!("{}: the key does not fit the algorithms", path.display()),
            ))?;
            vec![key]
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
            vec![Key {
                kid: cfg.kid.clone(),
                kind: KeyKind::Hmac(DecodingKey::from_secret(&secret)),
            }]
        } else if let Some(path) = &cfg.jwks {
            if hmac {
                return Err(("algorithms", "a JWKS holds public keys, not HMAC".into()));
            }
            let text = read("jwks", path)?;
            let keys = parse_jwks(&text, &algorithms)
                .map_err(|e| ("jwks", format!("{}: {e}", path.display())))?;
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
                algorithms: algorithms.clone(),
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
        let keys: Arc<Keys> = match &self.remote {
            None => self.keys.clone(),
            Some(remote) => {
                let keys = remote.keys(false).await;
                // An unknown kid may be a key the provider just rotated in.
                if kid.is_some() && lookup(&keys, kid).is_err() {
                    remote.keys(true).await
                } else {
                    keys
                }
            }
        };
        let key = &keys[lookup(&keys, kid)?];
        match &key.kind {
            KeyKind::Hmac(secret) => {
                let mut v = Validation::new(header.alg);
                v.algorithms = vec![header.alg];
                v.leeway = self.leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = false;
                v.set_required_spec_claims(&["exp"]);
                let data = jsonwebtoken::decode::<serde_json::Value>(token, secret, &v)
                    .map_err(|e| format!("invalid token: {e}"))?;
                Ok(data.claims.to_string())
            }
            KeyKind::Public(parsed) => {
                let (_, public) = parsed
                    .iter()
                    .find(|(a, _)| *a == header.alg)
                    .ok_or_else(|| format!("the key does not verify {:?}", header.alg))?;
                let (message, signature) = token
                    .rsplit_once('.')
                    .ok_or_else(|| "malformed token".to_string())?;
                let signature = B64
                    .decode(signature)
                    .map_err(|_| "malformed token: the signature is not base64url".to_string())?;
                public
                    .verify_sig(message.as_bytes(), &signature)
                    .map_err(|_| "invalid token: InvalidSignature".to_string())?;
                let payload = message.split('.').nth(1).unwrap_or_default();
                self.claims(payload)
            }
        }
    }

    /// The claims of a verified token, after the time checks: `exp`
    /// required, `exp` and `nbf` with the set's leeway.
    fn claims(&self, payload: &str) -> Result<String, String> {
        let bytes = B64
            .decode(payload)
            .map_err(|_| "malformed token: the payload is not base64url".to_string())?;
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
            .map_err(|_| "malformed token: the payload is not a JSON object".to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let leeway = self.leeway as f64;
        let time = |name: &str| -> Result<Option<f64>, String> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| format!("invalid token: {name} is not a number")),
            }
        };
        match time("exp")? {
            None => return Err("invalid token: Missing required claim: exp".into()),
            Some(exp) if exp < now - leeway => return Err("invalid token: ExpiredSignature".into()),
            Some(_) => {}
        }
        if let Some(nbf) = time("nbf")?
            && nbf > now + leeway
        {
            return Err("invalid token: ImmatureSignature".into());
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
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
    let bytes = B64
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

/// The key a token names (its index): by `kid`, or the only key when it
/// names none.
fn lookup(keys: &Keys, kid: Option<&str>) -> Result<usize, String> {
    match kid {
        Some(kid) => keys
            .iter()
            .position(|k| k.kid.as_deref() == Some(kid))
            .ok_or_else(|| format!("unknown key id {kid:?}")),
        None => match keys.len() {
            1 => Ok(0),
            0 => Err("no keys are available".into()),
            _ => Err("the token names no key (kid) and the key set has several".into()),
        },
    }
}

/// The signing keys of a JWKS document that fit `algorithms` (encryption
/// keys and keys of other types are skipped).
fn parse_jwks(text: &[u8], algorithms: &[Algorithm]) -> Result<Keys, String> {
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        keys.extend(Key::new(jwk.common.key_id.clone(), key, algorithms));
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
        let keys = parse_jwks(&bytes, &self.algorithms)?;
        if keys.is_empty() {
            return Err("the JWKS document has no signing keys".into());
        }
        Ok(keys)
    }
}
