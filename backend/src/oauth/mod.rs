//! OAuth2 for third-party integrations: what the endpoints (`http/routes/oauth.rs`) decide, kept pure
//! here so that every rule is unit-tested: scopes, PKCE (S256 only), redirect URIs, client
//! authentication's parsing, the access token's claims, and the RFC's error codes. The signing keys and
//! their rotation are in [`keys`].

pub mod keys;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Scopes a client may be granted (the API keys' scopes: one vocabulary for every integration).
pub use crate::domain::SCOPES;

/// Grant types a client may be registered for.
pub const GRANT_TYPES: &[&str] = &["authorization_code", "client_credentials", "refresh_token"];

/// The longest an access token lives (the bound; `OAUTH_ACCESS_TOKEN_TTL_SECS` may be shorter).
pub const MAX_ACCESS_TTL_SECS: u64 = 15 * 60;
/// An authorization code is exchanged within this time or never.
pub const CODE_TTL_SECS: i64 = 60;

/// An error of the token, revocation or introspection endpoint (RFC 6749 §5.2, RFC 7009, RFC 7662):
/// the `error` code, its description, and the status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
    pub status: u16,
}

impl OAuthError {
    pub fn invalid_request(d: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_request", d, 400)
    }
    /// 401: the client could not be authenticated (unknown, disabled, wrong secret, none given).
    pub fn invalid_client(d: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_client", d, 401)
    }
    pub fn invalid_grant(d: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_grant", d, 400)
    }
    pub fn unauthorized_client(d: impl Into<String>) -> OAuthError {
        OAuthError::new("unauthorized_client", d, 400)
    }
    pub fn unsupported_grant_type(d: impl Into<String>) -> OAuthError {
        OAuthError::new("unsupported_grant_type", d, 400)
    }
    pub fn invalid_scope(d: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_scope", d, 400)
    }
    fn new(code: &'static str, d: impl Into<String>, status: u16) -> OAuthError {
        OAuthError {
            code,
            description: d.into(),
            status,
        }
    }
}

/// The scopes of a `scope` parameter (space-separated, RFC 6749 §3.3), each known and allowed to the
/// client; `None` asks for every scope the client has. Duplicates are dropped; the order is the
/// client's.
pub fn granted_scopes(
    requested: Option<&str>,
    allowed: &[String],
) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(allowed.to_vec());
    };
    if requested.len() > 1024 {
        return Err(OAuthError::invalid_scope("the scope parameter is too long"));
    }
    let asked: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
    if let Some(bad) = asked.iter().find(|s| !SCOPES.contains(s)) {
        return Err(OAuthError::invalid_scope(format!(
            "unknown scope `{}`",
            printable(bad)
        )));
    }
    if let Some(bad) = asked.iter().find(|s| !allowed.iter().any(|a| a == *s)) {
        return Err(OAuthError::invalid_scope(format!(
            "scope `{bad}` is not allowed to this client"
        )));
    }
    Ok(allowed
        .iter()
        .filter(|a| asked.contains(&a.as_str()))
        .cloned()
        .collect())
}

/// A client-supplied value as it may appear in an error description: printable ASCII, at most 64 chars.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Whether `verifier` (RFC 7636 §4.1: 43–128 unreserved characters) hashes to `challenge` with S256.
/// `plain` is not supported: a challenge is always the verifier's SHA-256, base64url.
pub fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    if !is_pkce_value(verifier) {
        return false;
    }
    let digest = Sha256::digest(verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    subtle::ConstantTimeEq::ct_eq(computed.as_bytes(), challenge.as_bytes()).into()
}

/// RFC 7636's `code-verifier` alphabet and length (an S256 challenge is 43 such characters).
pub fn is_pkce_value(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Why a redirect URI cannot be registered.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let u = url::Url::parse(uri).map_err(|e| format!("`{}` is not a URI: {e}", printable(uri)))?;
    if u.fragment().is_some() {
        return Err("a redirect URI may not have a fragment (RFC 6749 §3.1.2)".into());
    }
    if uri.len() > 512 {
        return Err("a redirect URI may be at most 512 characters".into());
    }
    match u.scheme() {
        "https" => Ok(()),
        // RFC 8252 §7.3: native apps listen on a loopback IP literal over plain HTTP.
        "http" if is_loopback_literal(&u) => Ok(()),
        "http" => Err("plain http is allowed only for loopback IP literals (RFC 8252 §7.3)".into()),
        // RFC 8252 §7.1: private-use schemes in reverse-domain form, such as `com.example.app:/cb`.
        s if s.contains('.') => Ok(()),
        s => Err(format!(
            "scheme `{s}` is not allowed: https, a loopback http URI or a reverse-domain private-use scheme"
        )),
    }
}

fn is_loopback_literal(u: &url::Url) -> bool {
    matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
        || matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
}

/// Whether a presented `redirect_uri` is a registered one: exactly equal; for a loopback IP literal
/// registered without a port, any port (RFC 8252 §7.3: the app picks its port at run time).
pub fn redirect_uri_matches(presented: &str, registered: &str) -> bool {
    if presented == registered {
        return true;
    }
    let (Ok(p), Ok(r)) = (url::Url::parse(presented), url::Url::parse(registered)) else {
        return false;
    };
    r.scheme() == "http"
        && is_loopback_literal(&r)
        && r.port().is_none()
        && p.scheme() == "http"
        && p.host() == r.host()
        && p.path() == r.path()
        && p.query() == r.query()
        && p.fragment().is_none()
}

/// `redirect_uri` with the response parameters appended to its query.
pub fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut u = match url::Url::parse(redirect_uri) {
        Ok(u) => u,
        Err(_) => return redirect_uri.to_string(),
    };
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    u.to_string()
}

/// A new client id: `oc_` and 24 hex digits.
pub fn new_client_id() -> String {
    let mut raw = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("oc_{}", hex::encode(raw))
}

/// A new high-entropy secret (`prefix` and 256 random bits as hex): client secrets, codes, refresh
/// tokens.
pub fn new_secret(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("{prefix}{}", hex::encode(raw))
}

/// The client credentials a request presents: HTTP Basic (RFC 6749 §2.3.1, each part form-encoded) or
/// `client_id` (+ `client_secret`) in the body. Both at once, or two different ids, is a bad request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub client_id: String,
    pub secret: Option<String>,
    /// Presented with HTTP Basic: a failure answers `WWW-Authenticate: Basic`.
    pub basic: bool,
}

pub fn client_auth(
    authorization: Option<&str>,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<ClientAuth, OAuthError> {
    let basic = authorization
        .and_then(|h| {
            h.strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
        })
        .map(str::trim);
    match (basic, form_id, form_secret) {
        (Some(b), _, Some(_)) if !b.is_empty() => Err(OAuthError::invalid_request(
            "the client authenticated twice (Basic and client_secret)",
        )),
        (Some(b), form_id, None) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            let (id, secret) = raw
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let id = decode(id);
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                ));
            }
            Ok(ClientAuth {
                client_id: id,
                secret: Some(decode(secret)),
                basic: true,
            })
        }
        (None, Some(id), secret) if !id.is_empty() => Ok(ClientAuth {
            client_id: id.to_string(),
            secret: secret.map(str::to_string),
            basic: false,
        }),
        _ => Err(OAuthError::invalid_client("no client authentication")),
    }
}

/// The claims of an OAuth access token (EdDSA-signed). `sub` is the user who consented, or the client
/// itself for `client_credentials`; `user_id` repeats it for verifiers that read the platform's claims.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub user_id: String,
    pub tenant_id: String,
    pub client_id: String,
    pub scope: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

impl AccessClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["files:read".into(), "files:write".into()]
    }

    #[test]
    fn scopes_are_known_allowed_and_default_to_the_clients() {
        assert_eq!(granted_scopes(None, &allowed()), Ok(allowed()));
        assert_eq!(granted_scopes(Some("  "), &allowed()), Ok(allowed()));
        assert_eq!(
            granted_scopes(Some("files:write files:read files:read"), &allowed()),
            Ok(allowed())
        );
        assert_eq!(
            granted_scopes(Some("files:read"), &allowed()),
            Ok(vec!["files:read".to_string()])
        );
        let e = granted_scopes(Some("files:read admin"), &allowed()).expect_err("unknown");
        assert_eq!(e.code, "invalid_scope");
        assert!(e.description.contains("unknown scope `admin`"), "{e}");
        let e = granted_scopes(Some("users:read"), &allowed()).expect_err("not allowed");
        assert_eq!(e.code, "invalid_scope");
        assert!(e.description.contains("not allowed"), "{e}");
        assert!(granted_scopes(Some(&"a ".repeat(600)), &allowed()).is_err());
    }

    #[test]
    fn pkce_is_s256_of_a_well_formed_verifier() {
        // RFC 7636, appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_s256_matches(verifier, challenge));
        assert!(!pkce_s256_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"
        ));
        // `plain`: the verifier as its own challenge is refused.
        assert!(!pkce_s256_matches(verifier, verifier));
        assert!(!pkce_s256_matches("short", challenge));
        assert!(!pkce_s256_matches(&format!("{verifier}!"), challenge));
        assert!(!pkce_s256_matches(&"a".repeat(129), challenge));
        assert!(is_pkce_value(challenge));
    }

    #[test]
    fn redirect_uris_registered_and_matched() {
        assert!(check_redirect_uri("https://app.example/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]:8080/cb").is_ok());
        assert!(check_redirect_uri("com.example.app:/cb").is_ok());
        assert!(check_redirect_uri("http://app.example/cb").is_err());
        assert!(check_redirect_uri("https://app.example/cb#frag").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("not a uri").is_err());
        assert!(redirect_uri_matches(
            "https://app.example/cb",
            "https://app.example/cb"
        ));
        for bad in [
            "https://app.example/cb/",
            "https://app.example/cb?x=1",
            "https://APP.example/cb2",
            "https://app.example.evil/cb",
            "http://app.example/cb",
        ] {
            assert!(
                !redirect_uri_matches(bad, "https://app.example/cb"),
                "{bad}"
            );
        }
        // RFC 8252 §7.3: any port on a loopback literal registered without one.
        assert!(redirect_uri_matches(
            "http://127.0.0.1:53124/cb",
            "http://127.0.0.1/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1:53124/other",
            "http://127.0.0.1/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1:1/cb",
            "http://127.0.0.1:2/cb"
        ));
        assert_eq!(
            redirect_with(
                "https://app.example/cb?x=1",
                &[("code", "a b"), ("state", "s&t")]
            ),
            "https://app.example/cb?x=1&code=a+b&state=s%26t"
        );
    }

    #[test]
    fn client_authentication_is_basic_or_body_never_both() {
        use base64::engine::general_purpose::STANDARD;
        let basic = format!("Basic {}", STANDARD.encode("oc_1:s%3Acret"));
        assert_eq!(
            client_auth(Some(&basic), None, None),
            Ok(ClientAuth {
                client_id: "oc_1".into(),
                secret: Some("s:cret".into()),
                basic: true
            })
        );
        assert_eq!(
            client_auth(None, Some("oc_1"), Some("x")).map(|c| c.secret),
            Ok(Some("x".to_string()))
        );
        assert_eq!(
            client_auth(None, Some("oc_1"), None).map(|c| c.secret),
            Ok(None)
        );
        assert_eq!(
            client_auth(Some(&basic), None, Some("x")).map_err(|e| e.code),
            Err("invalid_request")
        );
        assert_eq!(
            client_auth(Some(&basic), Some("oc_2"), None).map_err(|e| e.code),
            Err("invalid_request")
        );
        assert_eq!(
            client_auth(Some("Basic !!!"), None, None).map_err(|e| e.code),
            Err("invalid_client")
        );
        assert_eq!(
            client_auth(None, None, None).map_err(|e| e.status),
            Err(401)
        );
    }
}
