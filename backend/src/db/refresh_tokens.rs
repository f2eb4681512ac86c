//! `refresh_tokens`: stored as SHA-256 hashes, grouped in rotation families.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshToken {
    pub id: Uuid,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

#[tracing::instrument(level = "debug", name = "refresh_tokens.insert", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn insert(
    c: &mut PgConnection,
    user_id: Uuid,
    tenant_id: Uuid,
    hash: &[u8],
    family_id: Uuid,
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("refresh_tokens.insert");
    sqlx::query("INSERT INTO refresh_tokens (user_id, tenant_id, token_hash, family_id, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(user_id)
        .bind(tenant_id)
        .bind(hash)
        .bind(family_id)
        .bind(expires_at)
        .execute(c)
        .await?;
    Ok(())
}

/// The token with this hash, locked for the rest of the transaction (two refreshes with one token
/// cannot both rotate it).
#[tracing::instrument(level = "debug", name = "refresh_tokens.by_hash_for_update", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn by_hash_for_update(
    c: &mut PgConnection,
    hash: &[u8],
) -> Result<Option<RefreshToken>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("refresh_tokens.by_hash_for_update");
    sqlx::query_as::<_, RefreshToken>(
        "SELECT id, user_id, family_id, expires_at, revoked_at FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(c)
    .await
}

#[tracing::instrument(level = "debug", name = "refresh_tokens.revoke", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn revoke(c: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("refresh_tokens.revoke");
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(c)
    .await?;
    Ok(())
}

/// Revokes every live token of a user (deactivated, demoted or deleted); returns their hashes.
#[tracing::instrument(level = "debug", name = "refresh_tokens.revoke_user", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn revoke_user(c: &mut PgConnection, user_id: Uuid) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("refresh_tokens.revoke_user");
    sqlx::query_scalar("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING token_hash")
        .bind(user_id)
        .fetch_all(c)
        .await
}

/// Revokes every live token of a family; returns their hashes (to drop from the Redis mirror).
#[tracing::instrument(level = "debug", name = "refresh_tokens.revoke_family", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn revoke_family(
    c: &mut PgConnection,
    family_id: Uuid,
) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("refresh_tokens.revoke_family");
    sqlx::query_scalar("UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL RETURNING token_hash")
        .bind(family_id)
        .fetch_all(c)
        .await
}
