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

/// Scopes a key may carry.
pub const SCOPES: &[&str] = &["files:read", "files:write", "users:read"];

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
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let prefix = hex::encode(&raw[..4]);
    let key = format!("ak_{prefix}_{}", hex::encode(&raw[4..]));
    let expires = b
        .expires_in_days
        .map(|d| OffsetDateTime::now_utc() + time::Duration::days(i64::from(d)));
    let mut tx = db::tenant_tx(&ctx.state.db, p.tenant.id).await?;
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

pub async fn list(ctx: &Ctx) -> ApiResult {
    let p = admin(ctx).await?;
    let mut tx = db::tenant_tx_read(&ctx.state, p.tenant.id).await?;
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
    let mut tx = db::tenant_tx(&ctx.state.db, p.tenant.id).await?;
    if !api_keys::revoke(&mut tx, id).await? {
        return Err(ApiError::NotFound("no such key".into()));
    }
    p.audit(ctx, &mut tx, "api_key_revoked", Some(&id.to_string()))
        .await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "revoked": id })))
}
