//! `[auth.jwt]` and `[auth.api_keys]`, validated: keys by `kid`, JWKS sources, claim checks, key lookups.

use super::duration::parse_duration;
use super::file::JwtFile;
use super::{duration_or, positive, Diagnostic};
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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

/// Largest token accepted before any parsing (bytes) unless `max_token_bytes` says otherwise.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The largest `leeway` accepted (the backend's denylist outlives `exp` by this much).
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(120);
/// Clock leeway for `exp`, `nbf` and `iat` unless `leeway` says otherwise.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// One HS256 key. Its secret never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct JwtKey {
    /// `None`: the single key of a set without `kid`s.
    pub kid: Option<String>,
    pub secret: Vec<u8>,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Where asymmetric keys come from, and how often they are re-read.
#[derive(Debug, Clone, PartialEq)]
pub struct JwksSpec {
    pub origin: JwksOrigin,
    pub refresh: Duration,
}

/// JWKS refresh interval unless `jwks_refresh` says otherwise.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Validated `[auth.api_keys]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeySettings {
    /// The backend's lookup, with `{prefix}` in it.
    pub lookup_url: String,
    /// A revoked or expired key stops working within this time.
    pub cache_ttl: Duration,
    pub lookup_timeout: Duration,
    /// Refused keys a client may present per minute; then its key checks get 429 before any lookup.
    pub failures_per_minute: u32,
}

pub const DEFAULT_API_KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Refused API keys per client and minute unless `failures_per_minute` says otherwise.
pub const DEFAULT_API_KEY_FAILURES_PER_MINUTE: u32 = 20;
pub const DEFAULT_API_KEY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Validated `[auth.jwt]`.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// HS256 keys (may be empty when a JWKS is configured).
    pub keys: Vec<JwtKey>,
    pub jwks: Option<JwksSpec>,
    pub tenant_claim: String,
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub max_token_bytes: usize,
}

/// What a route does when the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Serve as if the check passed (availability first), counted in a metric.
    Open,
    /// Refuse with 503.
    Closed,
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    None,
    /// A valid token.
    Jwt,
    /// A valid token whose tenant is the host's tenant (or, on a host without a tenant, any tenant).
    JwtTenant,
    /// A valid API key of the host's tenant carrying the route's scopes.
    ApiKey,
    /// Either: an API key when one is presented, else a token bound to the host's tenant.
    JwtOrApiKey,
    /// A client certificate, verified against the route's `client_auth.ca`, whose tenant (named in
    /// its URI SAN, `client_auth.tenant_uri`) is the host's tenant: a tenant's integration.
    ClientCert,
}

impl AuthPolicy {
    /// Whether a request this policy admits was proven to belong to the host's tenant.
    pub fn binds_tenant(self) -> bool {
        matches!(
            self,
            AuthPolicy::JwtTenant
                | AuthPolicy::ApiKey
                | AuthPolicy::JwtOrApiKey
                | AuthPolicy::ClientCert
        )
    }
}

/// Reads a secret from `*_env` (the environment) or `*_file`; secrets never sit in the config file.
pub(super) fn secret(
    env: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
    at: Option<Range<usize>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<u8>> {
    let value = match (env, file) {
        (Some(e), None) => match std::env::var(e.get_ref()) {
            Ok(v) if !v.is_empty() => v.into_bytes(),
            _ => {
                diags.push(Diagnostic::at(
                    e,
                    format!("environment variable `{}` is not set", e.get_ref()),
                ));
                return None;
            }
        },
        (None, Some(f)) => match std::fs::read(f.get_ref()) {
            Ok(v) => v.trim_ascii_end().to_vec(),
            Err(err) => {
                diags.push(Diagnostic::at(
                    f,
                    format!("cannot read `{}`: {err}", f.get_ref()),
                ));
                return None;
            }
        },
        (Some(e), Some(_)) => {
            diags.push(Diagnostic::at(
                e,
                "set either secret_env or secret_file, not both",
            ));
            return None;
        }
        (None, None) => {
            diags.push(Diagnostic::new(at, "a key needs secret_env or secret_file"));
            return None;
        }
    };
    if value.len() < 32 {
        let span = env.as_ref().or(file.as_ref()).map(Spanned::span);
        diags.push(Diagnostic::new(
            span,
            "an HS256 secret must be at least 32 bytes",
        ));
        return None;
    }
    Some(value)
}

pub(super) fn validate_jwks(
    config_path: &Path,
    j: &JwtFile,
    diags: &mut Vec<Diagnostic>,
) -> Option<JwksSpec> {
    let refresh = duration_or(&j.jwks_refresh, DEFAULT_JWKS_REFRESH, diags);
    let origin = match (&j.jwks_file, &j.jwks_url) {
        (Some(f), None) => {
            // Relative to the working directory, like every other path in the file.
            let p = PathBuf::from(f.get_ref());
            match std::fs::read(&p) {
                Ok(bytes) => {
                    if let Err(e) = crate::support::jwks::parse(&bytes) {
                        diags.push(Diagnostic::at(
                            f,
                            format!("jwks_file `{}`: {e}", f.get_ref()),
                        ));
                    }
                }
                Err(e) => diags.push(Diagnostic::at(
                    f,
                    format!("cannot read jwks_file `{}`: {e}", f.get_ref()),
                )),
            }
            JwksOrigin::File(p)
        }
        (None, Some(u)) => {
            let s = u.get_ref();
            if !(s.starts_with("https://") || s.starts_with("http://"))
                || s.parse::<http::Uri>().is_err()
            {
                diags.push(Diagnostic::at(u, "jwks_url must be an http(s) URL"));
            }
            JwksOrigin::Url(s.clone())
        }
        (Some(f), Some(_)) => {
            diags.push(Diagnostic::at(
                f,
                "set either jwks_file or jwks_url, not both",
            ));
            return None;
        }
        (None, None) => {
            if let Some(r) = &j.jwks_refresh {
                diags.push(Diagnostic::at(
                    r,
                    "jwks_refresh needs jwks_file or jwks_url",
                ));
            }
            return None;
        }
    };
    let _ = config_path;
    Some(JwksSpec { origin, refresh })
}

pub(super) fn validate_jwt(
    config_path: &Path,
    j: &JwtFile,
    diags: &mut Vec<Diagnostic>,
) -> JwtSettings {
    let jwks = validate_jwks(config_path, j, diags);
    let mut keys = Vec::new();
    let hs_configured = j.secret_env.is_some() || j.secret_file.is_some() || !j.keys.is_empty();
    if !hs_configured {
        if j.jwks_file.is_none() && j.jwks_url.is_none() {
            diags.push(Diagnostic::new(
                None,
                "[auth.jwt] needs keys: secret_env, secret_file, keys, jwks_file or jwks_url",
            ));
        }
    } else if j.keys.is_empty() {
        if let Some(s) = secret(&j.secret_env, &j.secret_file, None, diags) {
            keys.push(JwtKey {
                kid: None,
                secret: s,
            });
        }
    } else {
        if let Some(e) = j.secret_env.as_ref().or(j.secret_file.as_ref()) {
            diags.push(Diagnostic::at(
                e,
                "with `keys`, put every secret in a key (with its kid)",
            ));
        }
        let mut seen = HashSet::new();
        for k in &j.keys {
            if !seen.insert(k.kid.get_ref().clone()) {
                diags.push(Diagnostic::at(
                    &k.kid,
                    format!("duplicate kid `{}`", k.kid.get_ref()),
                ));
            }
            if let Some(s) = secret(&k.secret_env, &k.secret_file, Some(k.kid.span()), diags) {
                keys.push(JwtKey {
                    kid: Some(k.kid.get_ref().clone()),
                    secret: s,
                });
            }
        }
    }
    JwtSettings {
        keys,
        jwks,
        tenant_claim: j.tenant_claim.as_ref().map_or_else(
            || contracts::claims::TENANT_ID.to_string(),
            |c| c.get_ref().clone(),
        ),
        leeway: match &j.leeway {
            None => DEFAULT_JWT_LEEWAY,
            Some(l) => match parse_duration(l.get_ref()) {
                // The backend keeps a revoked token's jti denylisted this long past `exp`: a longer
                // leeway would let a revoked token back in.
                Ok(d) if d > MAX_JWT_LEEWAY => {
                    diags.push(Diagnostic::at(
                        l,
                        "leeway must be at most 2m (revoked tokens are denylisted until exp + 2m)",
                    ));
                    DEFAULT_JWT_LEEWAY
                }
                Ok(d) => d,
                Err(e) => {
                    diags.push(Diagnostic::at(l, e));
                    DEFAULT_JWT_LEEWAY
                }
            },
        },
        issuer: j.issuer.as_ref().map(|v| v.get_ref().clone()),
        audience: j.audience.as_ref().map(|v| v.get_ref().clone()),
        max_token_bytes: positive(
            &j.max_token_bytes,
            DEFAULT_MAX_TOKEN_BYTES as u64,
            "max_token_bytes",
            diags,
        ) as usize,
    }
}

/// Validates `[auth.api_keys]`.
pub(super) fn validate_api_keys(
    a: &super::file::ApiKeysFile,
    diags: &mut Vec<Diagnostic>,
) -> ApiKeySettings {
    ApiKeySettings {
        lookup_url: {
            let u = a.lookup_url.get_ref();
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.contains("{prefix}")
                && u.replace("{prefix}", "0").parse::<http::Uri>().is_ok();
            if !ok {
                diags.push(Diagnostic::at(
                    &a.lookup_url,
                    "lookup_url must be an http(s) URL containing `{prefix}`",
                ));
            }
            u.clone()
        },
        cache_ttl: {
            let ttl = duration_or(&a.cache_ttl, DEFAULT_API_KEY_CACHE_TTL, diags);
            if ttl > Duration::from_secs(300) {
                if let Some(t) = &a.cache_ttl {
                    diags.push(Diagnostic::at(
                        t,
                        "cache_ttl is how long a revoked key keeps working; at most 5m",
                    ));
                }
            }
            ttl
        },
        lookup_timeout: duration_or(&a.timeout, DEFAULT_API_KEY_LOOKUP_TIMEOUT, diags),
        failures_per_minute: positive(
            &a.failures_per_minute,
            u64::from(DEFAULT_API_KEY_FAILURES_PER_MINUTE),
            "failures_per_minute",
            diags,
        )
        .min(u64::from(u32::MAX)) as u32,
    }
}
