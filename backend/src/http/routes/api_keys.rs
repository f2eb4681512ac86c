//! `GET|POST /api/api-keys`, `DELETE /api/api-keys/{id}` (tenant admins). A key is `ak_{prefix}_{secret}`;
//! only its SHA-256 is stored, and the full key is shown once, in the creation response.

use http::StatusCode;
use hyper::body::Incoming;
use rand::RngCore;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::token_hash;
use crate::db::{self, api_keys};
use crate::http::auth::admin;
use crate::http::{json, read_json, ApiError, ApiResult, Ctx};

/// Scopes a key may carry (the same as an OAuth client's).
pub use crate::domain::SCOPES;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Lifetime in days; none = until revoked.
    expires_in_days: Option<u32>,
}

pub async fn create(ctx: &Ctx, body: Incoming) -> ApiResult {
    let p = admin(ctx).await?;
    let b: CreateBody = read_json(body).await?;
    let mut errors = Vec::new();
    if b.name.trim().is_empty() || b.name.len() > 100 {
        errors.push(("name", "must be 1 to 100 characters".to_string()));
    }
    if let Some(bad) = b.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        errors.push((
            "scopes",
            format!("unknown scope `{bad}`; known: {}", SCOPES.join(", ")),
        ));
    }
    if b.expires_in_days == Some(0) {
        errors.push(("expires_in_days", "must be at least 1".to_string()));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // The shape is the contract's: PREFIX_LEN + SECRET_LEN hex digits are 32 random bytes.
    let mut raw = [0u8; (contracts::api_key::PREFIX_LEN + contracts::api_key::SECRET_LEN) / 2];
    rand::thread_rng().fill_bytes(&mut raw);
    let prefix = hex::encode(&raw[..contracts::api_key::PREFIX_LEN / 2]);
    let key = format!(
        "{}{prefix}_{}",
        contracts::api_key::MARK,
        hex::encode(&raw[contracts::api_key::PREFIX_LEN / 2..])
    );
    debug_assert!(contracts::api_key::split(&key).is_some());
    let expires = b
        .expires_in_days
        .map(|d| OffsetDateTime::now_utc() + time::Duration::days(i64::from(d)));
    let plan = crate::http::routes::plans::limits_of(ctx, &p.tenant).await?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    let keys_now = db::plans::count_live(&mut tx, db::plans::Counted::ApiKeys).await?;
    if keys_now >= i64::from(plan.max_api_keys) {
        return Err(ApiError::PlanLimit(format!(
            "the `{}` plan allows {} live API keys",
            plan.plan, plan.max_api_keys
        )));
    }
    let created = api_keys::create(
        &mut tx,
        p.tenant.id,
        b.name.trim(),
        &prefix,
        &token_hash(&key),
        &b.scopes,
        expires,
    )
    .await?;
    p.audit(
        ctx,
        &mut tx,
        "api_key_created",
        Some(&created.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "api_key": created, "key": key }),
    ))
}

/// The gateway's Redis cache entry of a key (contract between backend and gateway).
pub use contracts::redis_keys::api_key as api_key_cache_key;

/// `GET /internal/api-keys/{prefix}` (internal listener): the record the gateway checks a presented key
/// against. 404 for an unknown, revoked or expired key, or one whose tenant is inactive.
pub async fn lookup(ctx: &Ctx, prefix: &str) -> ApiResult {
    let gone = || ApiError::NotFound("no such live key".into());
    if !contracts::api_key::is_prefix(prefix) {
        return Err(gone());
    }
    let rec = api_keys::lookup(&ctx.state.db.internal, prefix)
        .await?
        .filter(|k| k.revoked_at.is_none())
        .filter(|k| k.expires_at.is_none_or(|e| e > OffsetDateTime::now_utc()))
        .ok_or_else(gone)?;
    let tenant = crate::db::tenants::by_id(&ctx.state.db.internal, rec.tenant_id)
        .await?
        .filter(|t| t.is_active)
        .ok_or_else(gone)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "id": rec.id,
            "tenant": tenant.subdomain,
            "tenant_id": tenant.id,
            "key_sha256": hex::encode(&rec.key_hash),
            "scopes": rec.scopes,
            "expires_at": rec.expires_at.map(|e| e.unix_timestamp()),
        }),
    ))
}

pub async fn list(ctx: &Ctx) -> ApiResult {
    let p = admin(ctx).await?;
    let mut tx = ctx.state.db.tenant_tx_read(p.tenant.id).await?;
    let keys = api_keys::list(&mut tx).await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "api_keys": keys }),
    ))
}

pub async fn revoke(ctx: &Ctx, id: &str) -> ApiResult {
    let p = admin(ctx).await?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound("no such key".into()))?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    let Some(prefix) = api_keys::revoke(&mut tx, id).await? else {
        return Err(ApiError::NotFound("no such key".into()));
    };
    p.audit(ctx, &mut tx, "api_key_revoked", Some(&id.to_string()))
        .await?;
    tx.commit().await?;
    // The gateway's shared cache of this key: dropping it makes the revocation effective at once on every
    // replica (their short in-process caches aside). Its TTL bounds the delay if Redis is unreachable now.
    if let Ok(mut redis) = ctx.state.redis().await {
        let dropped: Result<(), _> =
            redis::AsyncCommands::del(&mut redis, api_key_cache_key(&prefix)).await;
        if let Err(e) = dropped {
            tracing::warn!(error = %e, "could not drop the revoked key from the gateway cache");
        }
    }
    Ok(json(StatusCode::OK, &serde_json::json!({ "revoked": id })))
}
