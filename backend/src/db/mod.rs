//! Typed queries, one file per table. Every query on tenant data runs inside [`tenant_tx`], which sets
//! `app.tenant_id` for that transaction only, so row-level security scopes it and a pooled connection
//! never carries one tenant's setting into another request.

pub mod api_keys;
pub mod audit;
pub mod oauth;
pub mod plans;
pub mod primary;
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
    /// Unix time (ms) until which the primary is considered away (it refused a fresh read).
    primary_away_until_ms: std::sync::atomic::AtomicU64,
    /// The internal listener's own small pool: a flood of key lookups cannot take the public API's
    /// connections, nor the public API starve the gateway's lookups.
    pub internal: PgPool,
    /// The on-demand TLS asks' own pool (`/internal/tenant-domains/{host}`): clients choose the names a
    /// gateway asks about, so a flood of them can take neither the API-key lookups' connections nor
    /// the public API's.
    pub asks: PgPool,
    /// The hosts of a multi-host `DATABASE_URL` and the writable one the three pools above use.
    pub primary_hosts: Option<std::sync::Arc<primary::Primary>>,
}

/// Connections of the primary pool.
pub const PRIMARY_POOL_SIZE: u32 = 16;
/// Connections of the internal listener's pool (API-key lookups).
pub const INTERNAL_POOL_SIZE: u32 = 4;
/// Connections of the tenant-domain asks' pool.
pub const ASKS_POOL_SIZE: u32 = 2;

impl Pools {
    /// The pools of `config` (lazy: nothing connects before the first query). With several hosts in
    /// `DATABASE_URL`, a watcher task follows the one that accepts writes (see [`primary`]).
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
        let hosts = host_options(&config.database_url, slow)?;
        let watched = (hosts.len() > 1).then(|| primary::Primary::new(hosts.clone()));
        let pool = |max: u32| match &watched {
            Some(p) => {
                let p = p.clone();
                pool_options(max)
                    .before_acquire(move |_, meta| {
                        let fresh = !p.is_stale(meta.age);
                        Box::pin(async move { Ok(fresh) })
                    })
                    .connect_lazy_with(hosts[0].clone())
            }
            None => pool_options(max).connect_lazy_with(hosts[0].clone()),
        };
        let pools = Pools {
            primary: pool(PRIMARY_POOL_SIZE),
            replica,
            replica_down_until_ms: std::sync::atomic::AtomicU64::new(0),
            primary_away_until_ms: std::sync::atomic::AtomicU64::new(0),
            internal: pool(INTERNAL_POOL_SIZE),
            asks: pool(ASKS_POOL_SIZE),
            primary_hosts: watched,
        };
        if let Some(p) = &pools.primary_hosts {
            p.spawn_watch(vec![
                pools.primary.clone(),
                pools.internal.clone(),
                pools.asks.clone(),
            ]);
        }
        Ok(pools)
    }

    /// A tenant-scoped, read-only transaction on the read replica when one is set and answers, else on
    /// the primary.
    pub async fn tenant_tx_read(
        &self,
        tenant: Uuid,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        if let Some(read) = self.read_pool() {
            match read_tx(read, tenant).await {
                Ok(tx) => return Ok(tx),
                Err(e) => self.replica_failed(&e),
            }
        }
        tenant_tx(&self.primary, tenant).await
    }

    /// The read replica, for a read that tolerates its lag, unless none is set or it failed in the last
    /// [`REPLICA_RETRY_MS`]: the caller reads from the primary then (and calls [`Pools::replica_failed`]
    /// when the replica fails it). While the primary is away (a failover), such reads keep working.
    pub fn read_pool(&self) -> Option<&PgPool> {
        use std::sync::atomic::Ordering;
        let read = self.replica.as_ref()?;
        // A replica that just failed is skipped for a while instead of costing every read a timeout.
        (now_ms() >= self.replica_down_until_ms.load(Ordering::Relaxed)).then_some(read)
    }

    /// A tenant-scoped transaction for a read that must see the latest committed state (a user's
    /// current role, a tenant's status): on the primary; while the primary is away (a failover: nothing
    /// can be committed then, so the replica is as fresh as anything), on the read replica.
    pub async fn tenant_tx_fresh(
        &self,
        tenant: Uuid,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match self.fresh_replica() {
            Some(replica) => read_tx(replica, tenant).await,
            None => match tenant_tx(&self.primary, tenant).await {
                Err(e) if is_unavailable(&e) && self.replica.is_some() => {
                    self.primary_failed(&e);
                    match self.replica.as_ref() {
                        Some(replica) => read_tx(replica, tenant).await,
                        None => Err(e),
                    }
                }
                other => other,
            },
        }
    }

    /// A whole fresh read in `tenant`'s scope (see [`Pools::tenant_tx_fresh`]): when the primary goes
    /// away under it — the transaction began, then a query or the commit failed because the server is
    /// stopping — the read runs again on the replica, so that a read in flight when a failover begins
    /// is not lost either.
    pub async fn fresh_read<T>(
        &self,
        tenant: Uuid,
        read: impl for<'c> Fn(
            &'c mut sqlx::PgConnection,
        ) -> futures_util::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let first = async {
            let mut tx = self.tenant_tx_fresh(tenant).await?;
            let value = read(&mut tx).await?;
            tx.commit().await?;
            Ok(value)
        }
        .await;
        match (first, self.replica.as_ref()) {
            (Err(e), Some(replica)) if is_unavailable(&e) => {
                self.primary_failed(&e);
                let mut tx = read_tx(replica, tenant).await?;
                let value = read(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
            (first, _) => first,
        }
    }

    /// The pool for a fresh read outside a tenant's scope (see [`Pools::tenant_tx_fresh`]) and whether
    /// it is the replica standing in for an away primary.
    pub fn fresh_pool(&self) -> (&PgPool, bool) {
        match self.fresh_replica() {
            Some(replica) => (replica, true),
            None => (&self.primary, false),
        }
    }

    /// The replica when the primary is away (the failover watcher says so, or it refused a fresh read in
    /// the last [`PRIMARY_AWAY_MS`]) and a replica is set.
    fn fresh_replica(&self) -> Option<&PgPool> {
        let replica = self.replica.as_ref()?;
        let watched_away = self.primary_hosts.as_ref().is_some_and(|p| p.is_away());
        let failed_lately = now_ms()
            < self
                .primary_away_until_ms
                .load(std::sync::atomic::Ordering::Relaxed);
        (watched_away || failed_lately).then_some(replica)
    }

    /// Marks the primary away for [`PRIMARY_AWAY_MS`] after a fresh read failed with `e` (when a replica
    /// can stand in).
    pub fn primary_failed(&self, e: &sqlx::Error) {
        if self.replica.is_some() && is_unavailable(e) {
            self.primary_away_until_ms.store(
                now_ms() + PRIMARY_AWAY_MS,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::warn!(error = %e, "database primary unavailable; fresh reads from the replica");
        }
    }

    /// Takes the replica out of reads for [`REPLICA_RETRY_MS`] after it failed with `e`.
    pub fn replica_failed(&self, e: &sqlx::Error) {
        self.replica_down_until_ms.store(
            now_ms() + REPLICA_RETRY_MS,
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::warn!(error = %e, "read replica unavailable; reading from the primary");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long fresh reads go to the replica after the primary refused one.
pub const PRIMARY_AWAY_MS: u64 = 1_000;

/// Whether `e` says the server could not be reached (rather than that the query was wrong).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        // admin_shutdown, crash_shutdown, cannot_connect_now: a server going down or starting.
        .is_some_and(|c| matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
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
    Ok(pool_options(max).connect_lazy_with(options(url, slow)?))
}

fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .test_before_acquire(true)
}

/// A pool for the command-line tasks (`tenant create`, `user create`): one task, no request waiting on
/// it, so it waits up to 30 s for its connection instead of failing fast (a stack just started may take
/// seconds to answer its first connection). With several hosts in `url`, the one that accepts writes.
pub async fn connect_patient(url: &str, slow: std::time::Duration) -> Result<PgPool, sqlx::Error> {
    let wait = std::time::Duration::from_secs(30);
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(wait)
        .connect_lazy_with(writable_host(url, slow, wait).await?))
}

/// The options of the host of `url` that accepts writes: the only one, or the first of several that
/// does within `wait`.
pub async fn writable_host(
    url: &str,
    slow: std::time::Duration,
    wait: std::time::Duration,
) -> Result<PgConnectOptions, sqlx::Error> {
    let mut hosts = host_options(url, slow)?;
    if hosts.len() == 1 {
        return Ok(hosts.remove(0));
    }
    primary::Primary::new(hosts)
        .find_patiently(wait)
        .await
        .ok_or_else(|| {
            sqlx::Error::Configuration(
                format!("no host of the URL accepted writes within {wait:?}").into(),
            )
        })
}

/// Connection options for each host of `url` (one, or libpq's `host1,host2` list).
pub fn host_options(
    url: &str,
    slow: std::time::Duration,
) -> Result<Vec<PgConnectOptions>, sqlx::Error> {
    primary::split_hosts(url)
        .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?
        .iter()
        .map(|u| options(u, slow))
        .collect()
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
    // With several hosts, the one that accepts writes; the role and password are the same on each.
    let slow = std::time::Duration::from_millis(crate::config::DEFAULT_DB_SLOW_QUERY_MS);
    let owner_host = writable_host(owner_url, slow, std::time::Duration::from_secs(30)).await?;
    // A one-shot job started as soon as Postgres says it is ready: it waits up to 2 minutes for its first
    // connection, saying why each try failed (the compose run once saw 30 s of "pool timed out" and no
    // cause).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let owner = loop {
        match PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(owner_host.clone())
            .await
        {
            Ok(pool) => break pool,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "migrate: the database is not answering yet; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    MIGRATOR.run(&owner).await?;
    let first = |u: &str| -> anyhow::Result<url::Url> {
        let one = primary::split_hosts(u)?.swap_remove(0);
        Ok(url::Url::parse(&one)?)
    };
    let app = first(app_url)?;
    let owner_user = first(owner_url)?.username().to_string();
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
