//! Key sets for token verification (`[keys.NAME]`): loaded and parsed once
//! when the config is applied, used natively (aws-lc) when a plugin calls
//! `verify-jwt`. Cryptography stays in the host: it is an order of magnitude
//! faster than inside WebAssembly, and keys never enter a sandbox.

use std::str::FromStr;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::KeySetConfig;

/// Longest token accepted (bytes).
const MAX_TOKEN: usize = 8 * 1024;

/// A loaded key set.
pub struct KeySet {
    /// Keys with their `kid` (JWKS) or none (a single PEM or secret).
    keys: Vec<(Option<String>, DecodingKey)>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
}

impl KeySet {
    /// Load the files of `cfg`. Errors name the field at fault.
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
        let read = |field: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| (field, format!("cannot read {}: {e}", path.display())))
        };
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
            vec![(None, key)]
        } else if let Some(path) = &cfg.secret_file {
            if !matches!(
                algorithms[0],
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            ) {
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
            vec![(None, DecodingKey::from_secret(&secret))]
        } else if let Some(path) = &cfg.jwks {
            let text = read("jwks", path)?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                (
                    "jwks",
                    format!("{}: not a JWKS document: {e}", path.display()),
                )
            })?;
            let mut keys = Vec::new();
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| ("jwks", format!("{}: unusable key: {e}", path.display())))?;
                keys.push((jwk.common.key_id.clone(), key));
            }
            if keys.is_empty() {
                return Err(("jwks", format!("{}: no keys", path.display())));
            }
            keys
        } else {
            return Err(("pem", "set exactly one of pem, secret_file and jwks".into()));
        };
        Ok(KeySet {
            keys,
            algorithms,
            leeway: cfg.leeway.get().as_secs(),
        })
    }

    /// Verify `token`; its claims as JSON on success. Checks the signature
    /// with a configured key and a pinned algorithm, `exp` (required) and
    /// `nbf`; rejects `none`, unknown `kid`s and oversized tokens.
    pub fn verify(&self, token: &str) -> Result<String, String> {
        if token.len() > MAX_TOKEN {
            return Err("token too large".into());
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let key = match (&header.kid, self.keys.len()) {
            (Some(kid), _) => self
                .keys
                .iter()
                .find(|(k, _)| k.as_deref() == Some(kid.as_str()))
                .or_else(|| self.keys.iter().find(|(k, _)| k.is_none()))
                .ok_or_else(|| format!("unknown key id {kid:?}"))?,
            (None, 1) => &self.keys[0],
            (None, _) => {
                return Err("token has no key id (kid) and the key set has several keys".into());
            }
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.1, &v)
            .map_err(|e| format!("invalid token: {e}"))?;
        Ok(data.claims.to_string())
    }
}
