//! Bearer JWT → [`Identity`]: HS256 keys from the config (rotation by `kid`) and asymmetric keys from
//! a JWKS ([`super::jwks`]), each key pinned to one algorithm; expiry, issuer, audience and the tenant
//! claim checked. Pure: no I/O.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;

use super::jwks::JwksSource;
use super::{AuthError, Identity};
use crate::config::JwtSettings;

/// Algorithms a token may use; each key accepts exactly one of them.
const ACCEPTED: [Algorithm; 10] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Token verification with the algorithm pinned per key and every claim checked: HS256 keys from the
/// config, asymmetric keys from a JWKS ([`JwksSource`]).
///
/// The token is taken apart once here: the header and the claims are each decoded and parsed a single
/// time into typed structs, and the signature over the first two parts is checked with the pinned
/// algorithm: HS256 with a keyed HMAC state prepared once per key ([`HsKey`]), the asymmetric ones with
/// `jsonwebtoken::crypto::verify`. `exp` (required), `nbf`, `iat`, `iss` and `aud` are checked below.
pub struct JwtVerifier {
    single: Option<HsKey>,
    by_kid: HashMap<String, HsKey>,
    jwks: Option<Arc<JwksSource>>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
    leeway: u64,
    max_bytes: usize,
}

/// An HS256 secret as the HMAC state after its key block: each token's check clones it instead of
/// hashing the key's inner and outer pads again.
#[derive(Clone)]
struct HsKey(hmac::Hmac<sha2::Sha256>);

impl HsKey {
    fn new(secret: &[u8]) -> HsKey {
        use hmac::Mac;
        // HMAC takes a key of any length (a longer one is hashed first).
        HsKey(
            <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length")),
        )
    }

    /// Whether `sig64` (base64url, no padding) is this key's HMAC-SHA256 of `message`, compared in
    /// constant time.
    fn verify(&self, message: &[u8], sig64: &str) -> bool {
        use base64::Engine;
        use hmac::Mac;
        let mut sig = [0u8; 32];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(sig64, &mut sig) {
            Ok(32) => {}
            _ => return false,
        }
        let mut mac = self.0.clone();
        mac.update(message);
        mac.verify_slice(&sig).is_ok()
    }
}

/// The JOSE header fields the gateway reads. An `alg` outside [`Algorithm`] (such as `none`) fails to
/// parse.
#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: Algorithm,
    #[serde(default)]
    kid: Option<String>,
}

/// The claims the gateway reads, typed: parsing them is cheaper than building a map of every claim.
/// `user_id`, `tenant_id`, `exp`, `nbf`, `iat` and `iss` of the wrong type make the token invalid;
/// `email`, `role` and `jti` that are not strings are ignored (identity providers put other shapes there).
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    user_id: Option<String>,
    /// The subject: the user when `user_id` is absent (OAuth access tokens carry both).
    #[serde(default, deserialize_with = "string_or_none")]
    sub: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    /// An OAuth access token's client, and the scopes granted to it.
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    email: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    role: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    jti: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// A base64url part of a token, decoded; JOSE header and claims are JSON, so UTF-8 (found by fuzzing: a
/// header with invalid UTF-8 inside an ignored member was accepted).
fn b64(part: &str) -> Result<Vec<u8>, AuthError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(AuthError::Malformed);
    }
    Ok(bytes)
}

impl JwtVerifier {
    pub fn new(s: &JwtSettings, jwks: Option<Arc<JwksSource>>) -> JwtVerifier {
        let mut single = None;
        let mut by_kid = HashMap::new();
        for k in &s.keys {
            match &k.kid {
                None => single = Some(HsKey::new(&k.secret)),
                Some(kid) => {
                    by_kid.insert(kid.clone(), HsKey::new(&k.secret));
                }
            }
        }
        JwtVerifier {
            single,
            by_kid,
            jwks,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            tenant_claim: s.tenant_claim.clone(),
            leeway: s.leeway.as_secs(),
            max_bytes: s.max_token_bytes,
        }
    }

    /// Verifies `token` (without the `Bearer ` prefix).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.max_bytes {
            return Err(AuthError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(sig64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: JoseHeader =
            serde_json::from_slice(&b64(h64)?).map_err(|_| AuthError::Malformed)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthError::WrongAlgorithm);
        }
        let jwks = self.jwks.as_ref().map(|j| j.keys());
        let jwks_key = match (&jwks, header.kid.as_deref()) {
            (Some(set), Some(kid)) => set.by_kid.get(kid),
            _ => None,
        };
        // The signed message is the first two parts as sent.
        let message = &token[..h64.len() + 1 + p64.len()];
        let valid = if header.alg == Algorithm::HS256 {
            if jwks_key.is_some() {
                // An HMAC token naming a public key: the key-confusion attack.
                return Err(AuthError::WrongAlgorithm);
            }
            let key = match (&self.single, header.kid.as_deref()) {
                (Some(k), _) => k,
                (None, Some(kid)) => self.by_kid.get(kid).ok_or(AuthError::UnknownKid)?,
                (None, None) if self.by_kid.is_empty() => return Err(AuthError::WrongAlgorithm),
                (None, None) => return Err(AuthError::MissingKid),
            };
            key.verify(message.as_bytes(), sig64)
        } else {
            let kid = header.kid.as_deref().ok_or(AuthError::MissingKid)?;
            let pinned = match jwks_key {
                Some(p) => p,
                None if self.by_kid.contains_key(kid) => return Err(AuthError::WrongAlgorithm),
                None => return Err(AuthError::UnknownKid),
            };
            if pinned.alg != header.alg {
                return Err(AuthError::WrongAlgorithm);
            }
            jsonwebtoken::crypto::verify(sig64, message.as_bytes(), &pinned.key, header.alg)
                .unwrap_or(false)
        };
        if !valid {
            return Err(AuthError::BadSignature);
        }
        let payload = b64(p64)?;
        let c: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::InvalidClaims)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match c.exp {
            None => return Err(AuthError::InvalidClaims),
            Some(exp) if exp.saturating_add(self.leeway) < now => return Err(AuthError::Expired),
            Some(_) => {}
        }
        if c.nbf.is_some_and(|nbf| nbf > now + self.leeway) {
            return Err(AuthError::NotYetValid);
        }
        if c.iat.is_some_and(|iat| iat > now + self.leeway) {
            return Err(AuthError::InvalidClaims);
        }
        if let Some(want) = &self.issuer {
            if c.iss.as_ref() != Some(want) {
                return Err(AuthError::InvalidClaims);
            }
        }
        if let Some(want) = &self.audience {
            let ok = match &c.aud {
                Some(Audience::One(a)) => a == want,
                Some(Audience::Many(list)) => list.iter().any(|a| a == want),
                None => false,
            };
            if !ok {
                return Err(AuthError::InvalidClaims);
            }
        }
        let tenant = if self.tenant_claim == contracts::claims::TENANT_ID {
            c.tenant_id
        } else {
            // Another tenant claim name: read it from a map (slower, but only for such configs).
            let mut m: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&payload).map_err(|_| AuthError::InvalidClaims)?;
            match m.remove(&self.tenant_claim) {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(_) => return Err(AuthError::InvalidClaims),
                None => None,
            }
        };
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(Identity {
            user_id: nonempty(c.user_id)
                .or_else(|| nonempty(c.sub))
                .ok_or(AuthError::InvalidClaims)?,
            tenant: nonempty(tenant).ok_or(AuthError::InvalidClaims)?,
            email: nonempty(c.email),
            role: nonempty(c.role),
            jti: nonempty(c.jti),
            iat: c.iat,
            client_id: nonempty(c.client_id),
            scope: c.scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthPolicy;
    use crate::config::JwtKey;
    use crate::edge::auth::{bearer, bind_tenant};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    const K1: &[u8] = b"0123456789abcdef0123456789abcdef-one";
    const K2: &[u8] = b"0123456789abcdef0123456789abcdef-two";

    fn settings(keys: Vec<JwtKey>) -> JwtSettings {
        JwtSettings {
            keys,
            tenant_claim: "tenant_id".into(),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            max_token_bytes: 8192,
            jwks: None,
        }
    }

    fn verifier(keys: Vec<JwtKey>) -> JwtVerifier {
        JwtVerifier::new(&settings(keys), None)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn sign(kid: Option<&str>, key: &[u8], claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        encode(&h, &claims, &EncodingKey::from_secret(key)).expect("sign")
    }

    fn good() -> serde_json::Value {
        json!({ "user_id": "u1", "tenant_id": "acme", "email": "a@acme.test", "role": "admin", "iat": now(), "exp": now() + 600, "jti": "j1" })
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    /// A crash of the `jwt` fuzz target, kept: a correctly signed token whose header is not UTF-8.
    #[test]
    fn a_header_that_is_not_utf8_is_malformed() {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = e.encode(b"{\"alg\":\"HS256\",\"typ\":\"JW\xd4\"}");
        let claims = e.encode(serde_json::to_vec(&good()).expect("claims"));
        let message = format!("{header}.{claims}");
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(K1),
            Algorithm::HS256,
        )
        .expect("sign");
        let v = verifier(vec![JwtKey {
            kid: None,
            secret: K1.to_vec(),
        }]);
        assert_eq!(
            v.verify(&format!("{message}.{sig}")),
            Err(AuthError::Malformed)
        );
    }

    /// The token the backend issues (`contracts::claims::AccessClaims`) is the token read here: every
    /// identity field comes through.
    #[test]
    fn the_backends_claims_verify_with_every_field() {
        let c = contracts::claims::AccessClaims {
            user_id: contracts::claims::Uuid::from_u128(7),
            email: "ann@acme.test".into(),
            tenant_id: "acme".into(),
            role: "admin".into(),
            iat: now(),
            exp: now() + 600,
            jti: "jti-1".into(),
        };
        let token = sign(None, K1, serde_json::to_value(&c).expect("claims"));
        let id = verifier(vec![JwtKey {
            kid: None,
            secret: K1.to_vec(),
        }])
        .verify(&token)
        .expect("verified");
        assert_eq!(id.user_id, c.user_id.to_string());
        assert_eq!(id.tenant, c.tenant_id);
        assert_eq!(id.email.as_deref(), Some(c.email.as_str()));
        assert_eq!(id.role.as_deref(), Some(c.role.as_str()));
        assert_eq!(id.jti.as_deref(), Some(c.jti.as_str()));
        assert_eq!(id.iat, Some(c.iat));
    }

    /// An OAuth access token (the backend's authorization server): `sub` instead of `user_id`, and the
    /// client and scopes it was granted, which a route's `scopes` then bind.
    #[test]
    fn oauth_tokens_carry_their_client_and_scopes_and_routes_bind_them() {
        let v = verifier(vec![JwtKey {
            kid: None,
            secret: K1.to_vec(),
        }]);
        let mut c = good();
        let m = c.as_object_mut().expect("obj");
        m.remove("user_id");
        m.insert("sub".into(), json!("3f1c0000-0000-0000-0000-000000000001"));
        m.insert("client_id".into(), json!("oc_abc"));
        m.insert("scope".into(), json!("files:read users:read"));
        let id = v.verify(&sign(None, K1, c)).expect("verified");
        assert_eq!(id.user_id, "3f1c0000-0000-0000-0000-000000000001");
        assert_eq!(id.client_id.as_deref(), Some("oc_abc"));
        assert!(id.grants(&["files:read".into()]));
        assert!(id.grants(&["files:read".into(), "users:read".into()]));
        assert!(!id.grants(&["files:write".into()]));
        assert!(!id.grants(&["files".into()]), "whole scopes only");
        // The platform's own user token is not limited by scopes.
        let user = v.verify(&sign(None, K1, good())).expect("verified");
        assert_eq!(user.client_id, None);
        assert!(user.grants(&["files:write".into()]));
        // A client token without any scope grants nothing scoped.
        let mut c = good();
        c["client_id"] = json!("oc_abc");
        let bare = v.verify(&sign(None, K1, c)).expect("verified");
        assert!(!bare.grants(&["files:read".into()]));
        // A route that names no scopes is a users' route: no OAuth token there.
        assert!(!bare.grants(&[]));
        assert!(!id.grants(&[]));
    }

    #[test]
    fn attack_table() {
        let v = verifier(vec![JwtKey {
            kid: None,
            secret: K1.to_vec(),
        }]);
        let ok = sign(None, K1, good());
        assert_eq!(v.verify(&ok).map(|i| i.tenant), Ok("acme".to_string()));
        let parts: Vec<&str> = ok.split('.').collect();
        let mut c = good();
        c["tenant_id"] = json!("globex");
        let tampered = format!("{}.{}.{}", parts[0], b64(&c.to_string()), parts[2]);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        let hs512 = {
            let h = Header::new(Algorithm::HS512);
            encode(&h, &good(), &EncodingKey::from_secret(K1)).expect("sign")
        };
        let cases: Vec<(&str, String, AuthError)> = vec![
            ("alg none", none, AuthError::Malformed),
            ("other HMAC alg", hs512, AuthError::WrongAlgorithm),
            (
                "wrong secret",
                sign(None, K2, good()),
                AuthError::BadSignature,
            ),
            ("tampered payload", tampered, AuthError::BadSignature),
            (
                "expired",
                sign(None, K1, {
                    let mut c = good();
                    c["exp"] = json!(now() - 120);
                    c
                }),
                AuthError::Expired,
            ),
            (
                "nbf in the future",
                sign(None, K1, {
                    let mut c = good();
                    c["nbf"] = json!(now() + 600);
                    c
                }),
                AuthError::NotYetValid,
            ),
            (
                "iat in the future",
                sign(None, K1, {
                    let mut c = good();
                    c["iat"] = json!(now() + 600);
                    c
                }),
                AuthError::InvalidClaims,
            ),
            (
                "missing exp",
                sign(None, K1, {
                    let mut c = good();
                    c.as_object_mut().expect("obj").remove("exp");
                    c
                }),
                AuthError::InvalidClaims,
            ),
            (
                "missing tenant",
                sign(None, K1, {
                    let mut c = good();
                    c.as_object_mut().expect("obj").remove("tenant_id");
                    c
                }),
                AuthError::InvalidClaims,
            ),
            (
                "numeric tenant",
                sign(None, K1, {
                    let mut c = good();
                    c["tenant_id"] = json!(42);
                    c
                }),
                AuthError::InvalidClaims,
            ),
            (
                "missing user",
                sign(None, K1, {
                    let mut c = good();
                    c.as_object_mut().expect("obj").remove("user_id");
                    c
                }),
                AuthError::InvalidClaims,
            ),
            ("garbage", "not.a.jwt".to_string(), AuthError::Malformed),
            ("two parts", "abc.def".to_string(), AuthError::Malformed),
            (
                "empty signature",
                format!("{}.{}.", parts[0], parts[1]),
                AuthError::BadSignature,
            ),
            (
                "oversize",
                format!("{}.{}.{}", parts[0], "a".repeat(9000), parts[2]),
                AuthError::TooLarge,
            ),
        ];
        for (what, token, want) in cases {
            assert_eq!(v.verify(&token), Err(want), "{what}");
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/keys/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture")
    }

    fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        encode(&h, &good(), key).expect("sign")
    }

    #[test]
    fn jwks_keys_are_pinned_to_their_algorithm() {
        let path = format!(
            "{}/tests/fixtures/keys/jwks.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let src = Arc::new(JwksSource::new(
            crate::edge::auth::jwks::JwksOrigin::File(path.into()),
            Duration::from_secs(300),
        ));
        let v = JwtVerifier::new(
            &settings(vec![JwtKey {
                kid: None,
                secret: K1.to_vec(),
            }]),
            Some(src),
        );
        let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).expect("rsa");
        let ec = EncodingKey::from_ec_pem(&fixture("ec.pk8.pem")).expect("ec");
        let ed = EncodingKey::from_ed_pem(&fixture("ed.pem")).expect("ed");
        let rsa_pub = fixture("rsa.pub.pem");
        assert!(v
            .verify(&sign_with(Algorithm::RS256, Some("rsa-1"), &rsa))
            .is_ok());
        assert!(v
            .verify(&sign_with(Algorithm::ES256, Some("ec-1"), &ec))
            .is_ok());
        assert!(v
            .verify(&sign_with(Algorithm::EdDSA, Some("ed-1"), &ed))
            .is_ok());
        assert!(
            v.verify(&sign(None, K1, good())).is_ok(),
            "HS256 still works"
        );
        let cases: Vec<(&str, String, AuthError)> = vec![
            (
                "HS256 signed with the RSA public key, naming the RSA kid",
                sign_with(
                    Algorithm::HS256,
                    Some("rsa-1"),
                    &EncodingKey::from_secret(&rsa_pub),
                ),
                AuthError::WrongAlgorithm,
            ),
            (
                "HS256 signed with the RSA public key, no kid",
                sign_with(Algorithm::HS256, None, &EncodingKey::from_secret(&rsa_pub)),
                AuthError::BadSignature,
            ),
            (
                "RS256 naming the EC key",
                sign_with(Algorithm::RS256, Some("ec-1"), &rsa),
                AuthError::WrongAlgorithm,
            ),
            (
                "RS512 with the RS256 key",
                sign_with(Algorithm::RS512, Some("rsa-1"), &rsa),
                AuthError::WrongAlgorithm,
            ),
            (
                "ES256 with a forged signature",
                {
                    let t = sign_with(Algorithm::ES256, Some("ec-1"), &ec);
                    let (signed, _) = t.rsplit_once('.').expect("token");
                    format!("{signed}.{}", "A".repeat(86))
                },
                AuthError::BadSignature,
            ),
            (
                "unknown kid",
                sign_with(Algorithm::RS256, Some("rsa-9"), &rsa),
                AuthError::UnknownKid,
            ),
            (
                "asymmetric token without kid",
                sign_with(Algorithm::RS256, None, &rsa),
                AuthError::MissingKid,
            ),
        ];
        for (what, token, want) in cases {
            assert_eq!(v.verify(&token), Err(want), "{what}");
        }
    }

    #[test]
    fn issuer_audience_and_tenant_claim() {
        let mut st = settings(vec![JwtKey {
            kid: None,
            secret: K1.to_vec(),
        }]);
        st.issuer = Some("https://login.test/".into());
        st.audience = Some("aggios-api".into());
        let v = JwtVerifier::new(&st, None);
        let with = |iss: serde_json::Value, aud: serde_json::Value| {
            let mut c = good();
            c["iss"] = iss;
            c["aud"] = aud;
            sign(None, K1, c)
        };
        assert!(v
            .verify(&with(json!("https://login.test/"), json!("aggios-api")))
            .is_ok());
        assert!(v
            .verify(&with(
                json!("https://login.test/"),
                json!(["x", "aggios-api"])
            ))
            .is_ok());
        for (iss, aud) in [
            (json!("https://evil.test/"), json!("aggios-api")),
            (json!("https://login.test/"), json!("other")),
            (json!("https://login.test/"), json!(["other"])),
            (json!("https://login.test/"), json!([])),
            (json!("https://login.test/"), json!(null)),
            (json!(null), json!("aggios-api")),
        ] {
            assert_eq!(
                v.verify(&with(iss.clone(), aud.clone())),
                Err(AuthError::InvalidClaims),
                "{iss} {aud}"
            );
        }
        let mut st = settings(vec![JwtKey {
            kid: None,
            secret: K1.to_vec(),
        }]);
        st.tenant_claim = "org".into();
        let v = JwtVerifier::new(&st, None);
        let mut c = good();
        c["org"] = json!("initech");
        assert_eq!(
            v.verify(&sign(None, K1, c)).map(|i| i.tenant),
            Ok("initech".into())
        );
        let mut c = good();
        c["org"] = json!(7);
        assert_eq!(v.verify(&sign(None, K1, c)), Err(AuthError::InvalidClaims));
    }

    #[test]
    fn rotation_by_kid() {
        let v = verifier(vec![
            JwtKey {
                kid: Some("old".into()),
                secret: K1.to_vec(),
            },
            JwtKey {
                kid: Some("new".into()),
                secret: K2.to_vec(),
            },
        ]);
        assert!(v.verify(&sign(Some("old"), K1, good())).is_ok());
        assert!(v.verify(&sign(Some("new"), K2, good())).is_ok());
        assert_eq!(
            v.verify(&sign(Some("new"), K1, good())),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(&sign(Some("gone"), K1, good())),
            Err(AuthError::UnknownKid)
        );
        assert_eq!(
            v.verify(&sign(None, K1, good())),
            Err(AuthError::MissingKid)
        );
    }

    #[test]
    fn tenant_binding_and_bearer_parsing() {
        let id = Identity {
            user_id: "u".into(),
            tenant: "acme".into(),
            email: None,
            role: None,
            jti: None,
            iat: None,
            client_id: None,
            scope: None,
        };
        assert_eq!(
            bind_tenant(AuthPolicy::JwtTenant, &id, Some("acme")),
            Ok(())
        );
        assert_eq!(
            bind_tenant(AuthPolicy::JwtTenant, &id, Some("globex")),
            Err(AuthError::TenantMismatch)
        );
        assert_eq!(bind_tenant(AuthPolicy::JwtTenant, &id, None), Ok(()));
        assert_eq!(bind_tenant(AuthPolicy::Jwt, &id, Some("globex")), Ok(()));
        assert_eq!(bearer(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::MissingToken));
        assert_eq!(bearer(Some(b"Basic xyz")), Err(AuthError::MissingToken));
        assert_eq!(bearer(Some(b"Bearer")), Err(AuthError::Malformed));
    }

    /// `max_token_bytes` is the largest token accepted, not the first refused.
    #[test]
    fn a_token_of_exactly_max_token_bytes_is_read() {
        let token = sign(None, K1, good());
        let keys = || {
            vec![JwtKey {
                kid: None,
                secret: K1.to_vec(),
            }]
        };
        let mut s = settings(keys());
        s.max_token_bytes = token.len();
        assert!(JwtVerifier::new(&s, None).verify(&token).is_ok());
        s.max_token_bytes = token.len() - 1;
        assert_eq!(
            JwtVerifier::new(&s, None).verify(&token),
            Err(AuthError::TooLarge)
        );
    }

    /// `exp`, `nbf` and `iat` at their bounds with the leeway: `exp + leeway == now` is still valid,
    /// `nbf == now + leeway` and `iat == now + leeway` are already valid, one second more is not. The
    /// clock is read around each check and the check retried when a second boundary fell in between.
    #[test]
    fn time_claims_at_their_bounds() {
        let key = || {
            vec![JwtKey {
                kid: None,
                secret: K1.to_vec(),
            }]
        };
        let v = verifier(key()); // leeway 30 s
        let at = |f: &dyn Fn(u64) -> serde_json::Value| -> Result<Identity, AuthError> {
            for _ in 0..20 {
                let t = now();
                let r = v.verify(&sign(None, K1, f(t)));
                if now() == t {
                    return r;
                }
            }
            panic!("the clock never held still for one check");
        };
        let claims = |exp: u64, nbf: Option<u64>, iat: Option<u64>| {
            let mut c = json!({ "user_id": "u1", "tenant_id": "acme", "exp": exp });
            if let Some(n) = nbf {
                c["nbf"] = n.into();
            }
            if let Some(i) = iat {
                c["iat"] = i.into();
            }
            c
        };
        assert!(at(&|t| claims(t - 30, None, None)).is_ok());
        assert_eq!(at(&|t| claims(t - 31, None, None)), Err(AuthError::Expired));
        assert!(at(&|t| claims(t + 600, Some(t + 30), None)).is_ok());
        assert!(at(&|t| claims(t + 600, Some(t + 10), None)).is_ok());
        assert_eq!(
            at(&|t| claims(t + 600, Some(t + 31), None)),
            Err(AuthError::NotYetValid)
        );
        assert!(at(&|t| claims(t + 600, None, Some(t + 30))).is_ok());
        assert!(at(&|t| claims(t + 600, None, Some(t + 10))).is_ok());
        assert_eq!(
            at(&|t| claims(t + 600, None, Some(t + 31))),
            Err(AuthError::InvalidClaims)
        );
    }

    /// Which refusal a token gets when its key does not fit: HS256 with no HS key configured at all is
    /// the wrong algorithm (not a missing kid), and an asymmetric algorithm naming an HS key's kid is
    /// algorithm confusion (not an unknown kid).
    #[test]
    fn a_key_of_the_wrong_kind_is_the_wrong_algorithm() {
        let none = verifier(vec![]);
        assert_eq!(
            none.verify(&sign(None, K1, good())),
            Err(AuthError::WrongAlgorithm)
        );
        let hs = verifier(vec![JwtKey {
            kid: Some("k1".into()),
            secret: K1.to_vec(),
        }]);
        let rs_naming_hs = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(&good().to_string()),
            b64("sig")
        );
        assert_eq!(hs.verify(&rs_naming_hs), Err(AuthError::WrongAlgorithm));
        let rs_naming_other = rs_naming_hs.replacen(
            &b64(r#"{"alg":"RS256","kid":"k1"}"#),
            &b64(r#"{"alg":"RS256","kid":"k9"}"#),
            1,
        );
        assert_eq!(hs.verify(&rs_naming_other), Err(AuthError::UnknownKid));
        // With several kids and none named: a missing kid.
        let two = verifier(vec![
            JwtKey {
                kid: Some("k1".into()),
                secret: K1.to_vec(),
            },
            JwtKey {
                kid: Some("k2".into()),
                secret: K2.to_vec(),
            },
        ]);
        assert_eq!(
            two.verify(&sign(None, K1, good())),
            Err(AuthError::MissingKid)
        );
    }
}
