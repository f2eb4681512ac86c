//! Bearer token → [`Principal`]. The backend verifies every access token itself (defence in depth) and
//! takes the tenant only from it; identity headers set by the gateway are never trusted alone.

use redis::AsyncCommands;
use uuid::Uuid;

use super::{ApiError, Ctx};
use crate::auth::TokenError;
use crate::db::tenants;

/// The verified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Uuid,
    pub email: String,
    pub tenant: tenants::Tenant,
    pub role: String,
    pub jti: String,
    pub exp: u64,
}

impl Principal {
    /// Records `action` in the audit log as done by this principal, inside the caller's transaction.
    pub async fn audit(
        &self,
        ctx: &Ctx,
        tx: &mut sqlx::PgConnection,
        action: &str,
        target: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let ip = ctx.client_ip();
        crate::db::audit::record(
            tx,
            &crate::db::audit::Entry {
                tenant_id: self.tenant.id,
                user_id: Some(self.user_id),
                action,
                target,
                ip: Some(&ip),
                request_id: &ctx.request_id,
            },
        )
        .await
    }

    pub fn is_admin(&self) -> bool {
        self.role == "admin" || self.role == "platform_admin"
    }
    pub fn is_platform_admin(&self) -> bool {
        self.role == "platform_admin"
    }
}

/// Redis key of a revoked access token.
/// `aggios:user_nbf:{user_id}`: Unix seconds; every token of the user issued at or before it is refused
/// (written when the user is deactivated, demoted or deleted; read by the gateway too).
pub use contracts::redis_keys::user_not_before as user_not_before_key;

/// Refuses every live access token of `user_id` (here and at the gateway) from now on, for as long as
/// one could still be accepted.
pub async fn revoke_user_tokens(ctx: &Ctx, user_id: Uuid) -> Result<(), ApiError> {
    let mut redis = ctx.state.redis().await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let ttl = ctx.state.tokens.ttl.as_secs() + crate::auth::MAX_VERIFIER_LEEWAY_SECS;
    let _: () = redis
        .set_ex(user_not_before_key(&user_id.to_string()), now, ttl)
        .await?;
    Ok(())
}

pub use contracts::redis_keys::denylist_jti as denylist_key;

/// 401 `token_revoked` when the token `jti` is on the denylist, or its subject's "tokens issued before"
/// marker covers its `iat`; one Redis round trip for both.
async fn refuse_revoked(ctx: &Ctx, jti: &str, subject: &str, iat: u64) -> Result<(), ApiError> {
    let mut redis = ctx.state.redis().await?;
    let (revoked, not_before): (bool, Option<u64>) = redis::pipe()
        .exists(denylist_key(jti))
        .get(user_not_before_key(subject))
        .query_async(&mut redis)
        .await?;
    if revoked || not_before.is_some_and(|nbf| iat <= nbf) {
        return Err(ApiError::Unauthorized(
            "token_revoked",
            "the access token was revoked".into(),
        ));
    }
    Ok(())
}

/// Verifies the `Authorization: Bearer` token, its revocation and its tenant.
pub async fn principal(ctx: &Ctx) -> Result<Principal, ApiError> {
    let header = ctx
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "missing_token",
                "an Authorization: Bearer token is required".into(),
            )
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .ok_or_else(|| {
            ApiError::Unauthorized("invalid_token", "malformed Authorization header".into())
        })?;
    let claims = ctx.state.tokens.verify(token.trim()).map_err(|e| match e {
        TokenError::Expired => {
            ApiError::Unauthorized("token_expired", "the access token has expired".into())
        }
        TokenError::Invalid => {
            ApiError::Unauthorized("invalid_token", "the access token is invalid".into())
        }
    })?;
    refuse_revoked(ctx, &claims.jti, &claims.user_id.to_string(), claims.iat).await?;
    // The tenant's current status, from the primary; while it is away (a failover), from the replica,
    // so that token-authenticated reads keep working.
    let db = &ctx.state.db;
    let tenant = match db.fresh_pool() {
        (pool, true) => tenants::by_subdomain(pool, &claims.tenant_id).await?,
        (primary, false) => match tenants::by_subdomain(primary, &claims.tenant_id).await {
            Err(e) if crate::db::is_unavailable(&e) && db.replica.is_some() => {
                db.primary_failed(&e);
                tenants::by_subdomain(db.fresh_pool().0, &claims.tenant_id).await?
            }
            other => other?,
        },
    };
    let tenant = tenant.filter(|t| t.is_active).ok_or_else(|| {
        ApiError::Unauthorized(
            "invalid_token",
            "the token's tenant does not exist or is inactive".into(),
        )
    })?;
    // A suspended tenant is refused at the edge; here again (defence in depth). Platform admins keep
    // access, so that one of a suspended tenant can still resume it.
    if tenant.suspended_at.is_some() && claims.role != "platform_admin" {
        return Err(ApiError::TenantSuspended);
    }
    Ok(Principal {
        user_id: claims.user_id,
        email: claims.email,
        tenant,
        role: claims.role,
        jti: claims.jti,
        exp: claims.exp,
    })
}

/// The presented API key (`X-API-Key: ak_…` or `Authorization: Bearer ak_…`), if any.
fn presented_api_key(ctx: &Ctx) -> Option<&str> {
    if let Some(k) = ctx.headers.get("x-api-key") {
        return Some(k.to_str().unwrap_or("").trim());
    }
    let token = bearer_token(ctx)?;
    token.starts_with(contracts::api_key::MARK).then_some(token)
}

/// The token of the `Authorization: Bearer …` header, if any.
fn bearer_token(ctx: &Ctx) -> Option<&str> {
    let h = ctx
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))?
        .trim();
    Some(token)
}

/// The caller of an endpoint that integrations may call: a user's token, or an API key carrying `scope`.
/// The key is verified here again (hash in constant time, expiry, revocation, tenant active), whatever the
/// gateway decided.
pub async fn caller(ctx: &Ctx, scope: &str) -> Result<Principal, ApiError> {
    let Some(key) = presented_api_key(ctx) else {
        if let Some(token) = oauth_token(ctx) {
            return oauth_caller(ctx, token, scope).await;
        }
        return principal(ctx).await;
    };
    let invalid = || ApiError::Unauthorized("invalid_api_key", "the API key is not valid".into());
    let (prefix, _) = contracts::api_key::split(key).ok_or_else(invalid)?;
    let rec = crate::db::api_keys::lookup(&ctx.state.db.primary, prefix)
        .await?
        .ok_or_else(invalid)?;
    let presented = crate::auth::token_hash(key);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        presented.as_slice(),
        rec.key_hash.as_slice(),
    )) {
        return Err(invalid());
    }
    if rec.revoked_at.is_some() {
        return Err(ApiError::Unauthorized(
            "api_key_revoked",
            "the API key was revoked".into(),
        ));
    }
    if rec
        .expires_at
        .is_some_and(|e| e <= time::OffsetDateTime::now_utc())
    {
        return Err(ApiError::Unauthorized(
            "api_key_expired",
            "the API key has expired".into(),
        ));
    }
    if !rec.scopes.iter().any(|s| s == scope) {
        return Err(ApiError::Forbidden(format!(
            "the API key lacks the `{scope}` scope"
        )));
    }
    let tenant = tenants::by_id(&ctx.state.db.primary, rec.tenant_id)
        .await?
        .filter(|t| t.is_active)
        .ok_or_else(invalid)?;
    if tenant.suspended_at.is_some() {
        return Err(ApiError::TenantSuspended);
    }
    Ok(Principal {
        user_id: rec.id,
        email: String::new(),
        tenant,
        role: "api_key".into(),
        jti: String::new(),
        exp: 0,
    })
}

/// The presented bearer token when it is an OAuth access token (signed with `EdDSA`, the OAuth keys'
/// algorithm; the platform's own tokens are HS256).
fn oauth_token(ctx: &Ctx) -> Option<&str> {
    let token = bearer_token(ctx)?;
    let header = jsonwebtoken::decode_header(token).ok()?;
    (header.alg == jsonwebtoken::Algorithm::EdDSA).then_some(token)
}

/// The caller of an OAuth access token, verified here again whatever the gateway decided: signature
/// with a published key, expiry, the denylist, the tenant active, the client still registered and
/// enabled, the consenting user still active, and `scope` granted.
async fn oauth_caller(ctx: &Ctx, token: &str, scope: &str) -> Result<Principal, ApiError> {
    let invalid = || ApiError::Unauthorized("invalid_token", "the access token is invalid".into());
    let claims = ctx
        .state
        .oauth_keys
        .verify(&ctx.state.db.primary, token)
        .await?
        .ok_or_else(invalid)?;
    refuse_revoked(ctx, &claims.jti, &claims.sub, claims.iat).await?;
    let tenant = tenants::by_subdomain(ctx.state.db.fresh_pool().0, &claims.tenant_id)
        .await?
        .filter(|t| t.is_active)
        .ok_or_else(invalid)?;
    if tenant.suspended_at.is_some() {
        return Err(ApiError::TenantSuspended);
    }
    let mut tx = ctx.state.db.tenant_tx_fresh(tenant.id).await?;
    let client = crate::db::oauth::client_by_client_id(&mut tx, &claims.client_id)
        .await?
        .filter(|c| c.disabled_at.is_none())
        .ok_or_else(invalid)?;
    let user_id = if claims.sub == claims.client_id {
        client.id
    } else {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| invalid())?;
        crate::db::users::get(&mut tx, id)
            .await?
            .filter(|u| u.is_active)
            .ok_or_else(invalid)?;
        id
    };
    tx.commit().await?;
    if !claims.scopes().any(|s| s == scope) {
        return Err(ApiError::Forbidden(format!(
            "the access token lacks the `{scope}` scope"
        )));
    }
    Ok(Principal {
        user_id,
        email: String::new(),
        tenant,
        role: "oauth".into(),
        jti: claims.jti,
        exp: claims.exp,
    })
}

/// The caller, who must be a platform admin now (the role read again from the database).
pub async fn platform_admin(ctx: &Ctx) -> Result<Principal, ApiError> {
    let p = admin(ctx).await?;
    if !p.is_platform_admin() {
        return Err(ApiError::Forbidden("platform admins only".into()));
    }
    Ok(p)
}

/// The caller, who must be an admin of its tenant (or a platform admin) now: the role is read again
/// from the database, whatever the token says.
pub async fn admin(ctx: &Ctx) -> Result<Principal, ApiError> {
    let mut p = principal(ctx).await?;
    let user_id = p.user_id;
    let current = ctx
        .state
        .db
        .fresh_read(p.tenant.id, |c| Box::pin(crate::db::users::get(c, user_id)))
        .await?;
    match current {
        Some(u) if u.is_active => p.role = u.role,
        _ => {
            return Err(ApiError::Unauthorized(
                "token_revoked",
                "the user is no longer active".into(),
            ))
        }
    }
    if !p.is_admin() {
        return Err(ApiError::Forbidden("tenant admins only".into()));
    }
    Ok(p)
}
