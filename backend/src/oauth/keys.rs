//! The platform's OAuth token-signing keys (Ed25519, `EdDSA`), shared by every backend replica through
//! Postgres, and their rotation:
//!
//! - `backend oauth-key rotate` adds a key that is **published at once and signs from `signs_from`**
//!   (`OAUTH_KEY_PUBLISH_AHEAD_SECS` later, default 10 min: longer than any verifier's JWKS refresh), so
//!   every gateway holds it before its first token;
//! - a key no longer signing (a newer one's `signs_from` has passed) **stays published until the last
//!   token it signed has expired** (the longest access-token lifetime plus the verifiers' leeway), then
//!   leaves the set by itself;
//! - `backend oauth-key retire KID` removes a (compromised) key at once: its tokens are refused here from
//!   the next reload and at the edge from the next JWKS refresh.
//!
//! A service that finds no key creates the first (under an advisory lock, so that replicas starting
//! together agree on one). Each replica re-reads the set at most every [`RELOAD`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AccessClaims;
use crate::db::oauth::{self as db, KeyRow};

/// How long a replica serves the key set it read before reading it again.
pub const RELOAD: Duration = Duration::from_secs(5);

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("no signing key is usable")]
    NoKey,
    #[error("signing: {0}")]
    Sign(String),
}

/// One key, ready to sign and verify.
pub struct Key {
    pub kid: String,
    /// Unix seconds from which it signs.
    pub signs_from: i64,
    pub public_x: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The keys not retired, oldest `signs_from` first, as read at `at`.
struct Loaded {
    keys: Vec<Key>,
    at: Instant,
}

/// The key set of this replica, re-read from Postgres at most every [`RELOAD`].
pub struct KeyRing {
    loaded: std::sync::RwLock<Option<Arc<Loaded>>>,
    reload: tokio::sync::Mutex<()>,
    /// A key superseded longer ago than this has no live token left (longest TTL + verifier leeway).
    outlives_supersession: i64,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// PKCS#8 v1 (RFC 8410) of an Ed25519 private key: this prefix, then the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new key: its `kid` (the RFC 7638 thumbprint of its public JWK), PKCS#8 private key and public `x`.
pub fn generate() -> (String, Vec<u8>, String) {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    (thumbprint(&x), der, x)
}

/// RFC 7638 thumbprint of an Ed25519 public key (base64url SHA-256 of its canonical JWK).
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

impl Key {
    fn from_row(r: &KeyRow) -> Option<Key> {
        let decoding = DecodingKey::from_ed_components(&r.public_x).ok()?;
        Some(Key {
            kid: r.kid.clone(),
            signs_from: r.signs_from.unix_timestamp(),
            public_x: r.public_x.clone(),
            encoding: EncodingKey::from_ed_der(&r.private_der),
            decoding,
        })
    }
}

impl Loaded {
    /// The key signing now: the newest whose `signs_from` has passed.
    fn signing(&self, now: i64) -> Option<&Key> {
        self.keys.iter().rev().find(|k| k.signs_from <= now)
    }

    /// When `k` stopped signing (the next key's `signs_from`, once passed).
    fn superseded_at(&self, k: &Key, now: i64) -> Option<i64> {
        self.keys
            .iter()
            .filter(|n| n.signs_from > k.signs_from && n.signs_from <= now)
            .map(|n| n.signs_from)
            .min()
    }

    /// The keys a verifier accepts now: each not retired, and not superseded longer ago than a token
    /// lives.
    fn published(&self, now: i64, outlives: i64) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(move |k| {
            self.superseded_at(k, now)
                .is_none_or(|at| now < at.saturating_add(outlives))
        })
    }
}

impl KeyRing {
    /// `max_access_ttl`: the longest access-token lifetime this platform issues.
    pub fn new(max_access_ttl: Duration) -> KeyRing {
        KeyRing {
            loaded: std::sync::RwLock::new(None),
            reload: tokio::sync::Mutex::new(()),
            outlives_supersession: (max_access_ttl.as_secs()
                + crate::auth::MAX_VERIFIER_LEEWAY_SECS) as i64,
        }
    }

    async fn current(&self, pool: &sqlx::PgPool) -> Result<Arc<Loaded>, sqlx::Error> {
        let fresh =
            |l: &Option<Arc<Loaded>>| l.as_ref().filter(|l| l.at.elapsed() < RELOAD).cloned();
        if let Some(l) = fresh(&self.loaded.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(l);
        }
        // One reload at a time; the others wait for it and take its result.
        let _one = self.reload.lock().await;
        if let Some(l) = fresh(&self.loaded.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(l);
        }
        let mut rows = db::live_keys(pool).await?;
        if !rows.iter().any(|r| r.signs_from.unix_timestamp() <= now()) {
            db::ensure_signing_key(pool, generate).await?;
            rows = db::live_keys(pool).await?;
        }
        let keys = rows.iter().filter_map(Key::from_row).collect();
        let l = Arc::new(Loaded {
            keys,
            at: Instant::now(),
        });
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Some(l.clone());
        Ok(l)
    }

    /// Signs `claims` with the key signing now.
    pub async fn sign(
        &self,
        pool: &sqlx::PgPool,
        claims: &AccessClaims,
    ) -> Result<String, KeyError> {
        let loaded = self.current(pool).await?;
        let key = loaded.signing(now()).ok_or(KeyError::NoKey)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Verifies an access token against the published keys: signature (EdDSA only), `exp` (30 s
    /// leeway), `iat` not in the future. `Ok(None)`: not one of ours (another algorithm, unknown key,
    /// bad signature, expired).
    pub async fn verify(
        &self,
        pool: &sqlx::PgPool,
        token: &str,
    ) -> Result<Option<AccessClaims>, sqlx::Error> {
        if token.len() > 8192 {
            return Ok(None);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(None);
        };
        let (Algorithm::EdDSA, Some(kid)) = (header.alg, header.kid.as_deref()) else {
            return Ok(None);
        };
        let loaded = self.current(pool).await?;
        let t = now();
        let Some(key) = loaded
            .published(t, self.outlives_supersession)
            .find(|k| k.kid == kid)
        else {
            return Ok(None);
        };
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 30;
        v.set_required_spec_claims(&["exp", "iat", "sub"]);
        v.validate_aud = false;
        Ok(
            jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &v)
                .ok()
                .map(|d| d.claims)
                .filter(|c| c.iat as i64 <= t + 30),
        )
    }

    /// The JWKS document (RFC 7517) of the published keys.
    pub async fn jwks(&self, pool: &sqlx::PgPool) -> Result<serde_json::Value, sqlx::Error> {
        let loaded = self.current(pool).await?;
        let keys: Vec<serde_json::Value> = loaded
            .published(now(), self.outlives_supersession)
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": k.public_x, "kid": k.kid,
                    "alg": "EdDSA", "use": "sig",
                })
            })
            .collect();
        Ok(serde_json::json!({ "keys": keys }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(signs_from: i64) -> Key {
        let (kid, der, x) = generate();
        Key {
            kid,
            signs_from,
            encoding: EncodingKey::from_ed_der(&der),
            decoding: DecodingKey::from_ed_components(&x).expect("x"),
            public_x: x,
        }
    }

    #[test]
    fn a_generated_key_signs_what_its_public_half_verifies() {
        let k = key(0);
        assert_eq!(k.kid.len(), 43, "a base64url SHA-256");
        let claims = serde_json::json!({"sub": "x", "exp": now() + 60, "iat": now()});
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(k.kid.clone());
        let t = jsonwebtoken::encode(&h, &claims, &k.encoding).expect("sign");
        let v = Validation::new(Algorithm::EdDSA);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&t, &k.decoding, &v).is_ok());
        let other = key(0);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&t, &other.decoding, &v).is_err());
    }

    /// The rotation schedule: a new key is published before it signs; the old one signs until then and
    /// stays published until its last token has expired, then leaves the set.
    #[test]
    fn rotation_publishes_ahead_and_keeps_the_old_key_while_its_tokens_live() {
        let t0 = 1_000_000;
        let outlives = 900 + 120;
        let l = Loaded {
            keys: vec![key(t0), key(t0 + 600)],
            at: Instant::now(),
        };
        let (old, new) = (&l.keys[0].kid, &l.keys[1].kid);
        let published = |t| {
            l.published(t, outlives)
                .map(|k| k.kid.clone())
                .collect::<Vec<_>>()
        };
        // Before the new key's time: both published, the old one signs.
        assert_eq!(published(t0 + 10), vec![old.clone(), new.clone()]);
        assert_eq!(&l.signing(t0 + 10).expect("key").kid, old);
        // From it: the new one signs, the old one is still published.
        assert_eq!(&l.signing(t0 + 600).expect("key").kid, new);
        assert_eq!(published(t0 + 600 + outlives - 1).len(), 2);
        // Once the old key's last token has expired, it is gone.
        assert_eq!(published(t0 + 600 + outlives), vec![new.clone()]);
        // Nothing signs before the first key's time.
        assert!(l.signing(t0 - 1).is_none());
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 8037, appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
