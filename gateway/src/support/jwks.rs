//! The JWKS document format (RFC 7517): a key set parsed into usable verification keys, each pinned to
//! one algorithm — from its `alg`, else from its type and curve — so that a token naming a key's `kid`
//! with another algorithm (the classic key-confusion attack) is refused. Pure: the config checks a
//! `jwks_file` with it at load, and `edge::auth::jwks` loads and refreshes sets with it.

use std::collections::HashMap;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

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
