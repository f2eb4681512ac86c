//! `api_keys`: third-party integration keys, stored as SHA-256 hashes; shown in full once at creation.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const COLS: &str = "id, name, prefix, scopes, expires_at, revoked_at, created_at";

#[tracing::instrument(level = "debug", name = "api_keys.create", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn create(
    c: &mut PgConnection,
    tenant_id: Uuid,
    name: &str,
    prefix: &str,
    hash: &[u8],
    scopes: &[String],
    expires_at: Option<OffsetDateTime>,
) -> Result<ApiKey, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("api_keys.create");
    sqlx::query_as::<_, ApiKey>(&format!(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash, scopes, expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLS}"
    ))
    .bind(tenant_id)
    .bind(name)
    .bind(prefix)
    .bind(hash)
    .bind(scopes)
    .bind(expires_at)
    .fetch_one(c)
    .await
}

#[tracing::instrument(level = "debug", name = "api_keys.list", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn list(c: &mut PgConnection) -> Result<Vec<ApiKey>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("api_keys.list");
    sqlx::query_as::<_, ApiKey>(&format!(
        "SELECT {COLS} FROM api_keys ORDER BY created_at, name"
    ))
    .fetch_all(c)
    .await
}

/// Revokes a key; its prefix, or `None` when there is no such live key (in this tenant).
#[tracing::instrument(level = "debug", name = "api_keys.revoke", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn revoke(c: &mut PgConnection, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("api_keys.revoke");
    sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING prefix",
    )
    .bind(id)
    .fetch_optional(c)
    .await
}

/// What a presented key is checked against: found by its prefix, across tenants.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub key_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// The key with `prefix`, whatever its tenant (row-level security admits exactly this row through the
/// `api_key_lookup` policy).
#[tracing::instrument(level = "debug", name = "api_keys.lookup", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn lookup(pool: &sqlx::PgPool, prefix: &str) -> Result<Option<KeyRecord>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("api_keys.lookup");
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.api_key_prefix', $1, true)")
        .bind(prefix)
        .execute(&mut *tx)
        .await?;
    let rec = sqlx::query_as::<_, KeyRecord>(
        "SELECT id, tenant_id, key_hash, scopes, expires_at, revoked_at FROM api_keys WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rec)
}
