//! `tenants`: the registry itself (not tenant data, so not under row-level security).

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub subdomain: String,
    pub domain: Option<String>,
    pub is_active: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Its own plan; `None`: the default plan (`BACKEND_DEFAULT_PLAN`).
    pub plan: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub suspended_at: Option<OffsetDateTime>,
    /// Bumped by every change of its plan, overrides or suspension.
    pub policy_version: i64,
}

const COLS: &str =
    "id, name, subdomain, domain, is_active, created_at, plan, suspended_at, policy_version";

/// The active tenant a host names: `{subdomain}.{base}` for one of `bases`, or a tenant's own domain.
#[tracing::instrument(level = "debug", name = "tenants.by_host", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn by_host(
    pool: &PgPool,
    host: &str,
    bases: &[String],
) -> Result<Option<Tenant>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("tenants.by_host");
    let sub = host
        .split_once('.')
        .filter(|(_, rest)| bases.iter().any(|b| b == rest))
        .map(|(label, _)| label.to_string());
    sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {COLS} FROM tenants WHERE is_active AND (subdomain = $1 OR domain = $2) ORDER BY (subdomain = $1) DESC LIMIT 1"
    ))
    .bind(sub.unwrap_or_default())
    .bind(host)
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(level = "debug", name = "tenants.by_id", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("tenants.by_id");
    sqlx::query_as::<_, Tenant>(&format!("SELECT {COLS} FROM tenants WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

#[tracing::instrument(level = "debug", name = "tenants.by_subdomain", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn by_subdomain(pool: &PgPool, subdomain: &str) -> Result<Option<Tenant>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("tenants.by_subdomain");
    sqlx::query_as::<_, Tenant>(&format!("SELECT {COLS} FROM tenants WHERE subdomain = $1"))
        .bind(subdomain)
        .fetch_optional(pool)
        .await
}

#[tracing::instrument(level = "debug", name = "tenants.create", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn create(
    pool: &PgPool,
    name: &str,
    subdomain: &str,
    domain: Option<&str>,
) -> Result<Tenant, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("tenants.create");
    sqlx::query_as::<_, Tenant>(&format!(
        "INSERT INTO tenants (name, subdomain, domain) VALUES ($1, $2, $3) RETURNING {COLS}"
    ))
    .bind(name)
    .bind(subdomain)
    .bind(domain)
    .fetch_one(pool)
    .await
}

#[tracing::instrument(level = "debug", name = "tenants.list", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn list(pool: &PgPool) -> Result<Vec<Tenant>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("tenants.list");
    sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {COLS} FROM tenants ORDER BY created_at, subdomain"
    ))
    .fetch_all(pool)
    .await
}
