//! The caller's credential: a bearer JWT ([`jwt`], keys from [`jwks`]), an API key ([`api_key`]) or a
//! client certificate ([`client_cert`]) →
//! [`Identity`], a revoked token refused ([`revocation`]), and the binding of the identity's tenant to
//! the host's ([`bind_tenant`]). Verification is pure (no I/O), so the attack table is unit-testable
//! and its cost benchmarkable without a server.

pub mod api_key;
pub mod client_cert;
pub mod jwks;
mod jwt;
pub mod revocation;
mod stage;

pub use jwt::JwtVerifier;

use crate::config::AuthPolicy;

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub tenant: String,
    pub email: Option<String>,
    pub role: Option<String>,
    pub jti: Option<String>,
    /// `iat`: compared with the user's "tokens issued before" marker (see `revocation`).
    pub iat: Option<u64>,
    /// An OAuth access token's client (`client_id`): the integration acting, for the user `user_id`
    /// (or for itself, with client credentials). `None` for the platform's own user tokens.
    pub client_id: Option<String>,
    /// An OAuth access token's granted scopes (`scope`, space-separated).
    pub scope: Option<String>,
}

impl Identity {
    /// Whether this identity may use a route that requires `scopes`: an OAuth token only on a route
    /// that names scopes (the others are users' sessions), with every one of them granted; a user's own
    /// token (no client) is not limited by scopes.
    pub fn grants(&self, scopes: &[String]) -> bool {
        match (&self.client_id, &self.scope) {
            (None, _) => true,
            (Some(_), _) if scopes.is_empty() => false,
            (Some(_), granted) => {
                let granted = granted.as_deref().unwrap_or_default();
                scopes.iter().all(|s| granted.split(' ').any(|g| g == s))
            }
        }
    }
}

/// Why a request was refused. Each reason is a bounded metric label and the JSON `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer token is required")]
    MissingToken,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is larger than allowed")]
    TooLarge,
    #[error("the token's algorithm is not accepted")]
    WrongAlgorithm,
    #[error("the token names a key that is not configured")]
    UnknownKid,
    #[error("the token names no key, and several are configured")]
    MissingKid,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's claims are missing or of the wrong type")]
    InvalidClaims,
    #[error("the token or API key belongs to another tenant")]
    TenantMismatch,
    #[error("the token was revoked")]
    Revoked,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("the API key has expired")]
    ApiKeyExpired,
    #[error("the API key or token lacks a scope this route requires")]
    InsufficientScope,
    #[error("this route requires a client certificate")]
    ClientCertRequired,
    #[error("the client certificate is not valid for this route")]
    ClientCertInvalid,
    #[error("the client certificate names no tenant")]
    ClientCertNoTenant,
    #[error("the client certificate belongs to another tenant")]
    ClientCertOtherTenant,
}

impl AuthError {
    /// 401, or 403 when the token is valid but for another tenant.
    pub fn status(self) -> u16 {
        match self {
            AuthError::TenantMismatch
            | AuthError::InsufficientScope
            | AuthError::ClientCertNoTenant
            | AuthError::ClientCertOtherTenant => 403,
            _ => 401,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed => "malformed_token",
            AuthError::TooLarge => "token_too_large",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::MissingKid => "missing_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::InvalidClaims => "invalid_claims",
            AuthError::TenantMismatch => "tenant_mismatch",
            AuthError::Revoked => "token_revoked",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::ApiKeyExpired => "api_key_expired",
            AuthError::InsufficientScope => "insufficient_scope",
            AuthError::ClientCertRequired => "client_cert_required",
            AuthError::ClientCertInvalid => "client_cert_invalid",
            AuthError::ClientCertNoTenant => "client_cert_no_tenant",
            AuthError::ClientCertOtherTenant => "tenant_mismatch",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750); none for a client certificate's refusal (TLS has no
    /// HTTP challenge).
    pub fn www_authenticate(self) -> Option<String> {
        Some(match self {
            AuthError::ClientCertRequired
            | AuthError::ClientCertInvalid
            | AuthError::ClientCertNoTenant
            | AuthError::ClientCertOtherTenant => return None,
            AuthError::MissingToken => "Bearer realm=\"aggios\"".to_string(),
            AuthError::TenantMismatch | AuthError::InsufficientScope => format!("Bearer realm=\"aggios\", error=\"insufficient_scope\", error_description=\"{self}\""),
            other => format!("Bearer realm=\"aggios\", error=\"invalid_token\", error_description=\"{other}\""),
        })
    }
}

/// Applies a route's policy to a verified identity: with `jwt_tenant` on a tenant host, the token's tenant
/// must be the host's.
pub fn bind_tenant(
    policy: AuthPolicy,
    identity: &Identity,
    host_tenant: Option<&str>,
) -> Result<(), AuthError> {
    match (policy, host_tenant) {
        (
            AuthPolicy::JwtTenant
            | AuthPolicy::ApiKey
            | AuthPolicy::JwtOrApiKey
            | AuthPolicy::ClientCert,
            Some(host),
        ) if host != identity.tenant => Err(AuthError::TenantMismatch),
        _ => Ok(()),
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let h = header.ok_or(AuthError::MissingToken)?;
    let s = std::str::from_utf8(h).map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = s.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(tenant: &str, client: Option<&str>, scope: Option<&str>) -> Identity {
        Identity {
            user_id: "u".into(),
            tenant: tenant.into(),
            email: None,
            role: None,
            jti: None,
            iat: None,
            client_id: client.map(str::to_string),
            scope: scope.map(str::to_string),
        }
    }

    /// Every refusal's status, metric label (a contract: shared/DESIGN.md) and challenge.
    #[test]
    fn each_refusal_has_its_status_label_and_challenge() {
        use AuthError::*;
        let invalid = |e: AuthError| {
            format!("Bearer realm=\"aggios\", error=\"invalid_token\", error_description=\"{e}\"")
        };
        let scope = |e: AuthError| {
            format!(
                "Bearer realm=\"aggios\", error=\"insufficient_scope\", error_description=\"{e}\""
            )
        };
        let table: [(AuthError, u16, &str, Option<String>); 19] = [
            (
                MissingToken,
                401,
                "missing_token",
                Some("Bearer realm=\"aggios\"".into()),
            ),
            (Malformed, 401, "malformed_token", Some(invalid(Malformed))),
            (TooLarge, 401, "token_too_large", Some(invalid(TooLarge))),
            (
                WrongAlgorithm,
                401,
                "wrong_algorithm",
                Some(invalid(WrongAlgorithm)),
            ),
            (UnknownKid, 401, "unknown_kid", Some(invalid(UnknownKid))),
            (MissingKid, 401, "missing_kid", Some(invalid(MissingKid))),
            (
                BadSignature,
                401,
                "bad_signature",
                Some(invalid(BadSignature)),
            ),
            (Expired, 401, "token_expired", Some(invalid(Expired))),
            (
                NotYetValid,
                401,
                "token_not_yet_valid",
                Some(invalid(NotYetValid)),
            ),
            (
                InvalidClaims,
                401,
                "invalid_claims",
                Some(invalid(InvalidClaims)),
            ),
            (
                TenantMismatch,
                403,
                "tenant_mismatch",
                Some(scope(TenantMismatch)),
            ),
            (Revoked, 401, "token_revoked", Some(invalid(Revoked))),
            (
                InvalidApiKey,
                401,
                "invalid_api_key",
                Some(invalid(InvalidApiKey)),
            ),
            (
                ApiKeyExpired,
                401,
                "api_key_expired",
                Some(invalid(ApiKeyExpired)),
            ),
            (
                InsufficientScope,
                403,
                "insufficient_scope",
                Some(scope(InsufficientScope)),
            ),
            (ClientCertRequired, 401, "client_cert_required", None),
            (ClientCertInvalid, 401, "client_cert_invalid", None),
            (ClientCertNoTenant, 403, "client_cert_no_tenant", None),
            (ClientCertOtherTenant, 403, "tenant_mismatch", None),
        ];
        for (e, status, reason, challenge) in table {
            assert_eq!(
                (e.status(), e.reason(), e.www_authenticate()),
                (status, reason, challenge),
                "{e:?}"
            );
        }
    }

    #[test]
    fn the_tenant_is_bound_where_the_policy_says() {
        let acme = identity("acme", None, None);
        for policy in [
            AuthPolicy::JwtTenant,
            AuthPolicy::ApiKey,
            AuthPolicy::JwtOrApiKey,
            AuthPolicy::ClientCert,
        ] {
            assert_eq!(bind_tenant(policy, &acme, Some("acme")), Ok(()));
            assert_eq!(
                bind_tenant(policy, &acme, Some("globex")),
                Err(AuthError::TenantMismatch),
                "{policy:?}"
            );
            // A host without a tenant: any tenant's credential.
            assert_eq!(bind_tenant(policy, &acme, None), Ok(()));
        }
        for policy in [AuthPolicy::None, AuthPolicy::Jwt] {
            assert_eq!(bind_tenant(policy, &acme, Some("globex")), Ok(()));
        }
    }

    #[test]
    fn scopes_limit_integrations_only() {
        let need = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A user's own token: not limited by scopes.
        assert!(identity("t", None, None).grants(&need(&["files:write"])));
        assert!(identity("t", None, None).grants(&[]));
        // An integration: only on routes that name scopes, with each of them granted.
        let app = identity("t", Some("app"), Some("files:read users:read"));
        assert!(!app.grants(&[]));
        assert!(app.grants(&need(&["files:read"])));
        assert!(app.grants(&need(&["users:read", "files:read"])));
        assert!(!app.grants(&need(&["files:read", "files:write"])));
        assert!(!app.grants(&need(&["files"])), "a prefix is no scope");
        assert!(!identity("t", Some("app"), None).grants(&need(&["files:read"])));
    }

    #[test]
    fn the_bearer_token_of_a_header() {
        assert_eq!(bearer(None), Err(AuthError::MissingToken));
        assert_eq!(bearer(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(Some(b"Basic abc")), Err(AuthError::MissingToken));
        assert_eq!(bearer(Some(b"Bearer ")), Err(AuthError::MissingToken));
        assert_eq!(bearer(Some(b"Bearer")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some(b"Bearer \xff")), Err(AuthError::Malformed));
    }
}
