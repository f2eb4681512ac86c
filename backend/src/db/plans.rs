//! `plans` (global), a tenant's plan, overrides and suspension, `usage` and `storage_usage`.

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::plans::Limits;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Plan {
    pub name: String,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

const COLS: &str = "name, requests_per_second, burst, concurrency_weight, monthly_requests, storage_bytes, max_upload_bytes, max_api_keys, max_users, updated_at";

#[tracing::instrument(level = "debug", name = "plans.list", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn list(pool: &PgPool) -> Result<Vec<Plan>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.list");
    sqlx::query_as::<_, Plan>(&format!(
        "SELECT {COLS} FROM plans ORDER BY requests_per_second, name"
    ))
    .fetch_all(pool)
    .await
}

#[tracing::instrument(level = "debug", name = "plans.get", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn get(c: &mut PgConnection, name: &str) -> Result<Option<Plan>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.get");
    sqlx::query_as::<_, Plan>(&format!("SELECT {COLS} FROM plans WHERE name = $1"))
        .bind(name)
        .fetch_optional(c)
        .await
}

/// Inserts plan `name`; `None` when a plan of that name exists.
#[tracing::instrument(level = "debug", name = "plans.create", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn create(
    c: &mut PgConnection,
    name: &str,
    l: &Limits,
) -> Result<Option<Plan>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.create");
    sqlx::query_as::<_, Plan>(&format!(
        "INSERT INTO plans (name, requests_per_second, burst, concurrency_weight, monthly_requests, storage_bytes, max_upload_bytes, max_api_keys, max_users) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING RETURNING {COLS}"
    ))
    .bind(name)
    .bind(l.requests_per_second)
    .bind(l.burst)
    .bind(l.concurrency_weight)
    .bind(l.monthly_requests)
    .bind(l.storage_bytes)
    .bind(l.max_upload_bytes)
    .bind(l.max_api_keys)
    .bind(l.max_users)
    .fetch_optional(c)
    .await
}

/// Replaces the limits of plan `name`; `None` when there is no such plan.
#[tracing::instrument(level = "debug", name = "plans.update", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn update(
    c: &mut PgConnection,
    name: &str,
    l: &Limits,
) -> Result<Option<Plan>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.update");
    sqlx::query_as::<_, Plan>(&format!(
        "UPDATE plans SET requests_per_second = $2, burst = $3, concurrency_weight = $4, monthly_requests = $5, \
         storage_bytes = $6, max_upload_bytes = $7, max_api_keys = $8, max_users = $9, updated_at = now() \
         WHERE name = $1 RETURNING {COLS}"
    ))
    .bind(name)
    .bind(l.requests_per_second)
    .bind(l.burst)
    .bind(l.concurrency_weight)
    .bind(l.monthly_requests)
    .bind(l.storage_bytes)
    .bind(l.max_upload_bytes)
    .bind(l.max_api_keys)
    .bind(l.max_users)
    .fetch_optional(c)
    .await
}

/// The labels of the tenants on plan `name` (`default`: also those on no plan of their own).
#[tracing::instrument(level = "debug", name = "plans.tenants_on", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn tenants_on(
    c: &mut PgConnection,
    name: &str,
    default: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.tenants_on");
    sqlx::query_scalar("SELECT subdomain FROM tenants WHERE plan = $1 OR ($2 AND plan IS NULL)")
        .bind(name)
        .bind(default)
        .fetch_all(c)
        .await
}

/// Puts a tenant on `plan` (`None`: the default plan) and bumps its policy version.
#[tracing::instrument(level = "debug", name = "plans.set_tenant_plan", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn set_tenant_plan(
    c: &mut PgConnection,
    tenant: Uuid,
    plan: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.set_tenant_plan");
    let r = sqlx::query("UPDATE tenants SET plan = $2, policy_version = policy_version + 1, updated_at = now() WHERE id = $1")
        .bind(tenant)
        .bind(plan)
        .execute(c)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Suspends (`true`) or resumes a tenant and bumps its policy version.
#[tracing::instrument(level = "debug", name = "plans.set_suspended", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn set_suspended(
    c: &mut PgConnection,
    tenant: Uuid,
    suspended: bool,
) -> Result<bool, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.set_suspended");
    let r = sqlx::query(
        "UPDATE tenants SET suspended_at = CASE WHEN $2 THEN coalesce(suspended_at, now()) END, \
         policy_version = policy_version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(tenant)
    .bind(suspended)
    .execute(c)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The tenant's overrides (inside its tenant transaction): a JSON object of plan fields.
#[tracing::instrument(level = "debug", name = "plans.overrides", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn overrides(
    c: &mut PgConnection,
) -> Result<serde_json::Map<String, serde_json::Value>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.overrides");
    let v: Option<sqlx::types::Json<serde_json::Map<String, serde_json::Value>>> =
        sqlx::query_scalar(
            "SELECT overrides FROM plan_overrides WHERE tenant_id = app_tenant_id()",
        )
        .fetch_optional(c)
        .await?;
    Ok(v.map(|j| j.0).unwrap_or_default())
}

/// Replaces the tenant's overrides (inside its tenant transaction).
#[tracing::instrument(level = "debug", name = "plans.set_overrides", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn set_overrides(
    c: &mut PgConnection,
    tenant: Uuid,
    overrides: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.set_overrides");
    sqlx::query(
        "INSERT INTO plan_overrides (tenant_id, overrides) VALUES ($1, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET overrides = EXCLUDED.overrides, updated_at = now()",
    )
    .bind(tenant)
    .bind(sqlx::types::Json(overrides))
    .execute(c)
    .await?;
    Ok(())
}

/// Usage flush: every `(tenant, requests)` of `month` (its first day) raised to at least that count, in
/// one statement (the `usage_flush` policy admits it across tenants).
#[tracing::instrument(level = "debug", name = "usage.flush", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn flush_usage(
    pool: &PgPool,
    month: time::Date,
    tenants: &[Uuid],
    requests: &[i64],
) -> Result<(), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("usage.flush");
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.usage_flush', 'on', true)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO usage (tenant_id, month, requests) SELECT t, $1, r FROM unnest($2::uuid[], $3::bigint[]) AS u(t, r) \
         ON CONFLICT (tenant_id, month) DO UPDATE SET requests = greatest(usage.requests, EXCLUDED.requests), flushed_at = now()",
    )
    .bind(month)
    .bind(tenants)
    .bind(requests)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The counts Postgres holds for `month`, by tenant (what re-seeds Redis after it lost its counters).
#[tracing::instrument(level = "debug", name = "usage.of_month", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn usage_of_month(
    pool: &PgPool,
    month: time::Date,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("usage.of_month");
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.usage_flush', 'on', true)")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query_as("SELECT tenant_id, requests FROM usage WHERE month = $1")
        .bind(month)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The tenant's requests of `month` as last flushed (inside its tenant transaction).
#[tracing::instrument(level = "debug", name = "usage.requests", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn requests_of_month(
    c: &mut PgConnection,
    month: time::Date,
) -> Result<i64, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("usage.requests");
    Ok(sqlx::query_scalar(
        "SELECT requests FROM usage WHERE tenant_id = app_tenant_id() AND month = $1",
    )
    .bind(month)
    .fetch_optional(c)
    .await?
    .unwrap_or(0))
}

/// The tenant's stored and reserved bytes (inside its tenant transaction).
#[tracing::instrument(level = "debug", name = "storage_usage.get", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn storage(c: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("storage_usage.get");
    Ok(sqlx::query_as(
        "SELECT used_bytes, reserved_bytes FROM storage_usage WHERE tenant_id = app_tenant_id()",
    )
    .fetch_optional(c)
    .await?
    .unwrap_or((0, 0)))
}

/// Whether the tenant's storage figures exist (else they are counted from storage first).
#[tracing::instrument(level = "debug", name = "storage_usage.known", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn storage_known(pool: &PgPool, tenant: Uuid) -> Result<bool, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("storage_usage.known");
    let mut tx = super::tenant_tx(pool, tenant).await?;
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM storage_usage WHERE tenant_id = $1)")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(known)
}

/// Starts the tenant's storage figures at `used` bytes (what it stored before quotas were counted),
/// unless another request did first.
#[tracing::instrument(level = "debug", name = "storage_usage.init", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn init_storage(pool: &PgPool, tenant: Uuid, used: i64) -> Result<(), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("storage_usage.init");
    let mut tx = super::tenant_tx(pool, tenant).await?;
    sqlx::query("INSERT INTO storage_usage (tenant_id, used_bytes) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING")
        .bind(tenant)
        .bind(used)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Reserves `bytes` for an upload when used + reserved + `bytes` stays within `quota`, atomically (the
/// row is locked by the update): whether it was reserved.
#[tracing::instrument(level = "debug", name = "storage_usage.reserve", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn reserve(
    pool: &PgPool,
    tenant: Uuid,
    bytes: i64,
    quota: i64,
) -> Result<bool, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("storage_usage.reserve");
    let mut tx = super::tenant_tx(pool, tenant).await?;
    sqlx::query(
        "INSERT INTO storage_usage (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    let r = sqlx::query(
        "UPDATE storage_usage SET reserved_bytes = reserved_bytes + $2 \
         WHERE tenant_id = $1 AND used_bytes + reserved_bytes + $2 <= $3",
    )
    .bind(tenant)
    .bind(bytes)
    .bind(quota)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

/// Ends a reservation of `reserved` bytes: `stored` bytes are now used (0 when the upload failed) and
/// `freed` bytes no longer are (the object it replaced).
#[tracing::instrument(level = "debug", name = "storage_usage.settle", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn settle(
    pool: &PgPool,
    tenant: Uuid,
    reserved: i64,
    stored: i64,
    freed: i64,
) -> Result<(), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("storage_usage.settle");
    let mut tx = super::tenant_tx(pool, tenant).await?;
    sqlx::query(
        "INSERT INTO storage_usage (tenant_id, used_bytes, reserved_bytes) VALUES ($1, greatest($3 - $4, 0), 0) \
         ON CONFLICT (tenant_id) DO UPDATE SET reserved_bytes = greatest(storage_usage.reserved_bytes - $2, 0), \
         used_bytes = greatest(storage_usage.used_bytes + $3 - $4, 0)",
    )
    .bind(tenant)
    .bind(reserved)
    .bind(stored)
    .bind(freed)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A tenant's effective limits: its plan (`default_plan` when it has none) with its overrides applied;
/// the plan's name beside them. `None` when the plan does not exist.
#[tracing::instrument(level = "debug", name = "plans.effective", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn effective(
    pool: &PgPool,
    tenant: &super::tenants::Tenant,
    default_plan: &str,
) -> Result<Option<(String, Limits)>, sqlx::Error> {
    let name = tenant.plan.as_deref().unwrap_or(default_plan);
    let mut tx = super::tenant_tx(pool, tenant.id).await?;
    let Some(plan) = get(&mut tx, name).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    let raw = overrides(&mut tx).await?;
    tx.commit().await?;
    // Stored overrides were checked when written; one that no longer parses is skipped, not fatal.
    let fields = crate::plans::parse_fields(&raw, "overrides.").unwrap_or_else(|e| {
        tracing::warn!(tenant = %tenant.subdomain, error = %e, "ignoring a stored plan override");
        Vec::new()
    });
    Ok(Some((plan.name, plan.limits.with(&fields))))
}

/// Counts rows of a tenant table (inside the tenant's transaction): `users` or live `api_keys`. The
/// count is taken under a per-tenant lock held until the transaction ends, so two creations cannot both
/// see room for one.
#[tracing::instrument(level = "debug", name = "plans.count", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn count_live(c: &mut PgConnection, what: Counted) -> Result<i64, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("plans.count");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(app_tenant_id()::text || $1, 0))")
        .bind(match what {
            Counted::Users => ":users",
            Counted::ApiKeys => ":api_keys",
        })
        .execute(&mut *c)
        .await?;
    let sql = match what {
        Counted::Users => "SELECT count(*) FROM users WHERE is_active",
        Counted::ApiKeys => {
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
        }
    };
    sqlx::query_scalar(sql).fetch_one(c).await
}

/// What a plan caps by count.
#[derive(Debug, Clone, Copy)]
pub enum Counted {
    Users,
    ApiKeys,
}
