//! Asymmetric token keys (RS256/PS256…, ES256/ES384, EdDSA) from a JWKS document, read from a file or
//! fetched from a URL, and refreshed in the background. The last good set is kept when a refresh fails
//! (network error, bad JSON, no usable key), so an identity provider's outage never locks users out.
//!
//! Each key's algorithm is pinned when the set is loaded — from its `alg`, else from its type and curve —
//! and a token must use exactly that algorithm: an HS256 token naming an RSA key's `kid` (the classic
//! key-confusion attack) is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Where a key set comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksOrigin {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for JwksOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksOrigin::File(p) => write!(f, "{}", p.display()),
            JwksOrigin::Url(u) => f.write_str(u),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("not a JWKS document: {0}")]
    Json(String),
    #[error("no usable signing key (skipped: {0})")]
    NoKeys(String),
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("answered HTTP {0}")]
    Status(u16),
}

/// One usable key.
pub struct PinnedKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// A loaded set, by `kid`.
#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, PinnedKey>,
}

/// The algorithm a JWK is pinned to, or why it is skipped.
fn pinned_alg(jwk: &Jwk) -> Result<Algorithm, String> {
    let declared = jwk
        .common
        .key_algorithm
        .map(|a| {
            Algorithm::from_str(&a.to_string())
                .map_err(|_| format!("alg {a} is not a signature algorithm"))
        })
        .transpose()?;
    let alg = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err("symmetric (oct) keys do not belong in a JWKS".into())
        }
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(a)) => a,
        (AlgorithmParameters::EllipticCurve(p), d) => {
            let by_curve = match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                ref c => return Err(format!("curve {c:?} is not supported")),
            };
            match d {
                Some(a) if a != by_curve => {
                    return Err(format!("alg {a:?} does not match curve {:?}", p.curve))
                }
                _ => by_curve,
            }
        }
        (AlgorithmParameters::OctetKeyPair(p), d) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} is not supported", p.curve));
            }
            match d {
                Some(a) if a != Algorithm::EdDSA => {
                    return Err(format!("alg {a:?} does not match an Ed25519 key"))
                }
                _ => Algorithm::EdDSA,
            }
        }
    };
    let family_ok = matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (AlgorithmParameters::EllipticCurve(_), _)
            | (AlgorithmParameters::OctetKeyPair(_), _)
    );
    if !family_ok {
        return Err(format!("alg {alg:?} does not fit an RSA key"));
    }
    Ok(alg)
}

/// Parses a JWKS document into the keys it can verify with. Keys without `kid`, for encryption only, or
/// of an unsupported kind are skipped (and named in the error when nothing is left).
pub fn parse(bytes: &[u8]) -> Result<KeySet, JwksError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
    let mut out = KeySet::default();
    let mut skipped = Vec::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            skipped.push("a key without kid".to_string());
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            skipped.push(format!("{kid}: an encryption key"));
            continue;
        }
        let alg = match pinned_alg(jwk) {
            Ok(a) => a,
            Err(why) => {
                skipped.push(format!("{kid}: {why}"));
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                out.by_kid.insert(kid, PinnedKey { alg, key });
            }
            Err(e) => skipped.push(format!("{kid}: {e}")),
        }
    }
    if out.by_kid.is_empty() {
        return Err(JwksError::NoKeys(if skipped.is_empty() {
            "the set is empty".into()
        } else {
            skipped.join("; ")
        }));
    }
    for s in &skipped {
        tracing::warn!(key = %s, "JWKS key skipped");
    }
    Ok(out)
}

/// A key set and its refresh schedule. Shared across config reloads (by origin), so a reload keeps the
/// keys already fetched.
pub struct JwksSource {
    pub origin: JwksOrigin,
    keys: ArcSwap<KeySet>,
    next_refresh: Mutex<Instant>,
    refresh: Mutex<Duration>,
}

/// How long a failed fetch waits before the next try (shorter than the refresh interval).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl JwksSource {
    /// A source; a file is read now, a URL on the first refresh (until then it has no keys).
    pub fn new(origin: JwksOrigin, refresh: Duration) -> JwksSource {
        let src = JwksSource {
            origin,
            keys: ArcSwap::from_pointee(KeySet::default()),
            next_refresh: Mutex::new(Instant::now()),
            refresh: Mutex::new(refresh),
        };
        if let JwksOrigin::File(_) = src.origin {
            if let Err(e) = src.load_file() {
                tracing::error!(source = %src.origin, error = %e, "JWKS not loaded");
            }
        }
        src
    }

    pub fn set_refresh(&self, every: Duration) {
        *self.refresh.lock().unwrap_or_else(|p| p.into_inner()) = every;
    }

    /// The current keys (one atomic load).
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    fn load_file(&self) -> Result<usize, JwksError> {
        let JwksOrigin::File(p) = &self.origin else {
            return Ok(0);
        };
        let bytes = std::fs::read(p)
            .map_err(|e| JwksError::Read(p.display().to_string(), e.to_string()))?;
        let set = parse(&bytes)?;
        let n = set.by_kid.len();
        self.keys.store(Arc::new(set));
        Ok(n)
    }

    /// Whether a refresh is due; claims it (a second caller gets `false` until the refresh is over).
    pub fn claim_due(&self) -> bool {
        let mut next = self.next_refresh.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now < *next {
            return false;
        }
        *next = now + FETCH_TIMEOUT * 2;
        true
    }

    /// Re-reads the file or fetches the URL; on failure the previous keys stay.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let result = match &self.origin {
            JwksOrigin::File(_) => self.load_file(),
            JwksOrigin::Url(u) => match crate::http_client::get(u, FETCH_TIMEOUT).await {
                Ok((200, body)) => parse(&body).map(|set| {
                    let n = set.by_kid.len();
                    self.keys.store(Arc::new(set));
                    n
                }),
                Ok((s, _)) => Err(JwksError::Status(s)),
                Err(e) => Err(JwksError::Fetch(e.to_string())),
            },
        };
        let wait = match &result {
            Ok(_) => *self.refresh.lock().unwrap_or_else(|p| p.into_inner()),
            Err(_) => {
                RETRY_AFTER_FAILURE.min(*self.refresh.lock().unwrap_or_else(|p| p.into_inner()))
            }
        };
        *self.next_refresh.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + wait;
        match &result {
            Ok(n) => tracing::debug!(source = %self.origin, keys = n, "JWKS refreshed"),
            Err(e) => {
                tracing::warn!(source = %self.origin, error = %e, "JWKS refresh failed; keeping the last good keys")
            }
        }
        result
    }
}

/// The sources in use, by origin (not on the request path).
#[derive(Default)]
pub struct JwksRegistry {
    sources: Mutex<HashMap<JwksOrigin, Arc<JwksSource>>>,
}

impl JwksRegistry {
    /// The source of `origin`, created on first use.
    pub fn source(&self, origin: &JwksOrigin, refresh: Duration) -> Arc<JwksSource> {
        let mut m = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let src = m
            .entry(origin.clone())
            .or_insert_with(|| Arc::new(JwksSource::new(origin.clone(), refresh)));
        src.set_refresh(refresh);
        Arc::clone(src)
    }

    pub fn all(&self) -> Vec<Arc<JwksSource>> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_set_pins_each_key() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/jwks.json"
        ))
        .expect("fixture");
        let set = parse(&bytes).expect("parse");
        let alg = |k: &str| set.by_kid.get(k).map(|p| p.alg);
        assert_eq!(alg("rsa-1"), Some(Algorithm::RS256));
        assert_eq!(alg("ec-1"), Some(Algorithm::ES256));
        assert_eq!(alg("ed-1"), Some(Algorithm::EdDSA));
    }

    #[test]
    fn unusable_sets_are_refused() {
        assert!(matches!(parse(b"{"), Err(JwksError::Json(_))));
        assert!(matches!(
            parse(br#"{"keys":[]}"#),
            Err(JwksError::NoKeys(_))
        ));
        let oct = br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;
        assert!(matches!(parse(oct), Err(JwksError::NoKeys(m)) if m.contains("symmetric")));
        let rsa_as_es =
            br#"{"keys":[{"kty":"RSA","kid":"r","alg":"ES256","n":"AQAB","e":"AQAB"}]}"#;
        assert!(matches!(parse(rsa_as_es), Err(JwksError::NoKeys(_))));
    }
}
