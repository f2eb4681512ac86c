//! Credentials: Argon2id password hashes, HS256 access tokens, opaque refresh tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest clock leeway past `exp` that any verifier accepts: this service's (30 s) and the gateway's
/// `[auth.jwt] leeway` (validated to at most this). Revoked tokens stay denylisted this long past `exp`.
pub const MAX_VERIFIER_LEEWAY_SECS: u64 = 120;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Access-token claims (shared/DESIGN.md, "Identity on the wire"), as the gateway reads them too.
pub use contracts::claims::AccessClaims as Claims;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// OWASP's Argon2id recommendation: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies a password against a PHC string; false on any mismatch or malformed hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash of a random password, verified against when the email is unknown so that both paths cost one
/// Argon2id verification.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&Uuid::new_v4().to_string()).unwrap_or_default())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Issues and verifies HS256 access tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &[u8], ttl: Duration) -> TokenKeys {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
        }
    }

    /// A signed token for these identity fields.
    pub fn issue(
        &self,
        user_id: Uuid,
        email: &str,
        tenant: &str,
        role: &str,
    ) -> Result<(String, Claims), String> {
        let iat = now();
        let claims = Claims {
            user_id,
            email: email.to_string(),
            tenant_id: tenant.to_string(),
            role: role.to_string(),
            iat,
            exp: iat + self.ttl.as_secs(),
            jti: Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&Header::new(JwtAlg::HS256), &claims, &self.encoding)
            .map(|t| (t, claims))
            .map_err(|e| e.to_string())
    }

    /// Verifies signature (HS256 only), expiry (no leeway beyond 30 s) and claim types.
    /// (A denylisted token stays denylisted for [`MAX_VERIFIER_LEEWAY_SECS`] past its `exp`.)
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Invalid);
        }
        let mut v = Validation::new(JwtAlg::HS256);
        v.leeway = 30;
        v.set_required_spec_claims(&["exp", "iat"]);
        v.validate_nbf = true;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &v) {
            Ok(data) if data.claims.iat <= now() + 30 => Ok(data.claims),
            Ok(_) => Err(TokenError::Invalid),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// A new opaque refresh token (`rt_` + 256 random bits, URL-safe) and its SHA-256 (what is stored).
pub fn new_refresh_token() -> (String, Vec<u8>) {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = format!("rt_{}", hex::encode(raw));
    let hash = token_hash(&token);
    (token, hash)
}

/// SHA-256 of a token: refresh tokens are high-entropy, so a fast hash is enough and lookups stay cheap.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_verify_and_reject_tampering() {
        let keys = TokenKeys::new(&[7u8; 32], Duration::from_secs(60));
        let (t, claims) = keys
            .issue(Uuid::new_v4(), "a@b.c", "acme", "member")
            .expect("issue");
        assert_eq!(keys.verify(&t), Ok(claims));
        let other = TokenKeys::new(&[8u8; 32], Duration::from_secs(60));
        assert_eq!(other.verify(&t), Err(TokenError::Invalid));
        let mut parts: Vec<&str> = t.split('.').collect();
        parts[2] = "AAAA";
        assert_eq!(keys.verify(&parts.join(".")), Err(TokenError::Invalid));
        assert_eq!(keys.verify("garbage"), Err(TokenError::Invalid));
        // alg: none
        let none = format!(
            "{}.{}.",
            base64_url(r#"{"alg":"none","typ":"JWT"}"#),
            t.split('.').nth(1).unwrap_or("")
        );
        assert_eq!(keys.verify(&none), Err(TokenError::Invalid));
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, ha) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), ha);
        assert_eq!(a.len(), 67);
    }
}
