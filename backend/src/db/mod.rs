//! Typed queries, one file per table. Every query on tenant data runs inside [`tenant_tx`], which sets
//! `app.tenant_id` for that transaction only, so row-level security scopes it and a pooled connection
//! never carries one tenant's setting into another request.

pub mod api_keys;
pub mod audit;
pub mod plans;
pub mod refresh_tokens;
pub mod tenants;
pub mod users;

use sqlx::postgres::PgConnectOptions;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// The migrations embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A transaction scoped to `tenant` by row-level security.
pub async fn tenant_tx(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The service's database pools: the primary, the read replica with the time until which it is taken
/// for down, and the internal listener's two small pools.
pub struct Pools {
    pub primary: PgPool,
    /// The read replica (`DATABASE_READ_URL`), used for read-only queries with the primary as fallback.
    pub replica: Option<PgPool>,
    /// Unix time (ms) until which the replica is considered down.
    replica_down_until_ms: std::sync::atomic::AtomicU64,
    /// The internal listener's own small pool: a flood of key lookups cannot take the public API's
    /// connections, nor the public API starve the gateway's lookups.
    pub internal: PgPool,
    /// The on-demand TLS asks' own pool (`/internal/tenant-domains/{host}`): clients choose the names a
    /// gateway asks about, so a flood of them can take neither the API-key lookups' connections nor
    /// the public API's.
    pub asks: PgPool,
}

/// Connections of the primary pool.
pub const PRIMARY_POOL_SIZE: u32 = 16;
/// Connections of the internal listener's pool (API-key lookups).
pub const INTERNAL_POOL_SIZE: u32 = 4;
/// Connections of the tenant-domain asks' pool.
pub const ASKS_POOL_SIZE: u32 = 2;

impl Pools {
    /// The pools of `config` (lazy: nothing connects before the first query).
    pub fn connect(config: &crate::config::Config) -> Result<Pools, sqlx::Error> {
        let slow = config.db_slow_query;
        let replica = match &config.database_read_url {
            Some(url) => Some(
                PgPoolOptions::new()
                    .max_connections(PRIMARY_POOL_SIZE)
                    .acquire_timeout(std::time::Duration::from_millis(500))
                    .connect_lazy_with(options(url, slow)?),
            ),
            None => None,
        };
        Ok(Pools {
            primary: connect(&config.database_url, PRIMARY_POOL_SIZE, slow)?,
            replica,
            replica_down_until_ms: std::sync::atomic::AtomicU64::new(0),
            internal: connect(&config.database_url, INTERNAL_POOL_SIZE, slow)?,
            asks: connect(&config.database_url, ASKS_POOL_SIZE, slow)?,
        })
    }

    /// A tenant-scoped, read-only transaction on the read replica when one is set and answers, else on
    /// the primary.
    pub async fn tenant_tx_read(
        &self,
        tenant: Uuid,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        use std::sync::atomic::Ordering;
        if let Some(read) = &self.replica {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            // A replica that just failed is skipped for a while instead of costing every read a timeout.
            if now >= self.replica_down_until_ms.load(Ordering::Relaxed) {
                match read_tx(read, tenant).await {
                    Ok(tx) => return Ok(tx),
                    Err(e) => {
                        self.replica_down_until_ms
                            .store(now + REPLICA_RETRY_MS, Ordering::Relaxed);
                        tracing::warn!(error = %e, "read replica unavailable; reading from the primary");
                    }
                }
            }
        }
        tenant_tx(&self.primary, tenant).await
    }
}

/// How long a failed read replica is skipped before it is tried again.
pub const REPLICA_RETRY_MS: u64 = 5_000;

async fn read_tx(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// A pool that fails fast when Postgres is down (requests get 503) and reconnects by itself. Statements
/// slower than `slow` are logged at WARN by sqlx (target `sqlx::query`): the statement's SQL with its
/// placeholders, rows and elapsed time, never the bound values.
pub fn connect(url: &str, max: u32, slow: std::time::Duration) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .test_before_acquire(true)
        .connect_lazy_with(options(url, slow)?))
}

/// A pool for the command-line tasks (`tenant create`, `user create`): one task, no request waiting on
/// it, so it waits up to 30 s for its connection instead of failing fast (a stack just started may take
/// seconds to answer its first connection).
pub fn connect_patient(url: &str, slow: std::time::Duration) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(30))
        .connect_lazy_with(options(url, slow)?))
}

/// Connection options of `url` with the slow-statement log at `slow`.
pub fn options(url: &str, slow: std::time::Duration) -> Result<PgConnectOptions, sqlx::Error> {
    use sqlx::ConnectOptions;
    Ok(url
        .parse::<PgConnectOptions>()?
        .log_statements(log::LevelFilter::Trace)
        .log_slow_statements(log::LevelFilter::Warn, slow))
}

/// Whether the connected role bypasses row-level security (a superuser or BYPASSRLS role).
pub async fn bypasses_rls(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
        .fetch_one(pool)
        .await
}

/// Runs the migrations as the owner, then creates the application role of `app_url` when missing and
/// grants it only data access: no ownership, no BYPASSRLS.
pub async fn migrate(owner_url: &str, app_url: &str) -> anyhow::Result<()> {
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .connect(owner_url)
        .await?;
    MIGRATOR.run(&owner).await?;
    let app = url::Url::parse(app_url)?;
    let owner_user = url::Url::parse(owner_url)?.username().to_string();
    let role = app.username().to_string();
    if role.is_empty() || role == owner_user {
        tracing::warn!("DATABASE_URL uses the owner role: row-level security is not enforced against the table owner's superuser powers; use a separate application role");
        return Ok(());
    }
    if !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!("DATABASE_URL: role name `{role}` must be letters, digits or _");
    }
    let password = percent_encoding::percent_decode_str(app.password().unwrap_or(""))
        .decode_utf8_lossy()
        .replace('\'', "''");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&role)
            .fetch_one(&owner)
            .await?;
    if !exists {
        let create = format!("CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '{password}'");
        if let Err(e) = sqlx::query(&create).execute(&owner).await {
            // Another migrator may have created it between the check and here.
            let dup = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42710" || c == "23505");
            if !dup {
                return Err(e.into());
            }
        }
    }
    for stmt in [
        format!("GRANT USAGE ON SCHEMA public TO \"{role}\""),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO \"{role}\""
        ),
        format!("REVOKE ALL ON _sqlx_migrations FROM \"{role}\""),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO \"{role}\""),
        format!("GRANT EXECUTE ON FUNCTION app_tenant_id() TO \"{role}\""),
    ] {
        sqlx::query(&stmt).execute(&owner).await?;
    }
    owner.close().await;
    Ok(())
}
