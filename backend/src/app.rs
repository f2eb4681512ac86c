//! Bind, serve (HTTP/1.1 and h2c), graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::auth::TokenKeys;
use crate::config::Config;

/// What every handler shares.
pub struct AppState {
    pub db: PgPool,
    /// The read replica (`DATABASE_READ_URL`), used for read-only queries with the primary as fallback.
    pub read_db: Option<PgPool>,
    /// Unix time (ms) until which the replica is considered down.
    pub replica_down_until_ms: std::sync::atomic::AtomicU64,
    redis_client: redis::Client,
    redis: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    pub tokens: TokenKeys,
    pub refresh_ttl: Duration,
    pub base_domains: Vec<String>,
    /// Bounds concurrent Argon2id work (19 MiB and tens of ms of CPU each) to the cores there are.
    pub hashing: tokio::sync::Semaphore,
    pub storage: crate::storage::Storage,
    pub max_file_bytes: u64,
    /// Content types `/api/files` serves inline (others as attachments).
    pub inline_types: Vec<String>,
    /// Peers whose `X-Aggios-Client-Ip` is believed.
    pub trusted_gateways: Vec<ipnet::IpNet>,
    /// The internal listener's own small pool: a flood of key lookups cannot take the public API's
    /// connections, nor the public API starve the gateway's lookups.
    pub internal_db: sqlx::PgPool,
    /// The on-demand TLS asks' own pool (`/internal/tenant-domains/{host}`): clients choose the names a
    /// gateway asks about, so a flood of them can take neither the API-key lookups' connections nor
    /// the public API's.
    pub asks_db: sqlx::PgPool,
    /// Requests being handled right now, on this state's listeners (also `backend_http_requests_in_flight`).
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// `Config::fault_panic_path` (fault injection for tests).
    pub fault_panic_path: Option<String>,
}

/// Connections of the internal listener's pool (API-key lookups, tenant-domain asks).
pub const INTERNAL_POOL_SIZE: u32 = 4;

/// Connections of the tenant-domain asks' pool.
pub const ASKS_POOL_SIZE: u32 = 2;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("DATABASE_URL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("S3_ENDPOINT/STORAGE_DIR: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("DATABASE_URL connects as a role that bypasses row-level security (superuser or BYPASSRLS); use the application role that `backend migrate` creates")]
    BypassesRls,
}

impl AppState {
    /// Connects to Postgres and Redis (lazily, so a service started while they are down serves 503s and
    /// recovers by itself) and refuses a database role that would make row-level security moot.
    pub async fn new(config: &Config) -> Result<Arc<AppState>, StartError> {
        let db = crate::db::connect(&config.database_url, 16, config.db_slow_query)?;
        match crate::db::bypasses_rls(&db).await {
            Ok(true) => return Err(StartError::BypassesRls),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Postgres not reachable at start; serving 503 until it is")
            }
        }
        let redis_client = redis::Client::open(config.redis_url.as_str())?;
        let read_db = match &config.database_read_url {
            Some(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_millis(500))
                    .connect_lazy_with(crate::db::options(url, config.db_slow_query)?);
                Some(pool)
            }
            None => None,
        };
        Ok(Arc::new(AppState {
            db,
            redis_client,
            redis: tokio::sync::OnceCell::new(),
            read_db,
            replica_down_until_ms: std::sync::atomic::AtomicU64::new(0),
            tokens: TokenKeys::new(&config.jwt_secret, config.access_ttl),
            refresh_ttl: config.refresh_ttl,
            base_domains: config.base_domains.clone(),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            storage: crate::storage::Storage::new(&config.storage)?,
            max_file_bytes: config.max_file_bytes,
            inline_types: config.inline_types.clone(),
            trusted_gateways: config.trusted_gateways.clone(),
            internal_db: crate::db::connect(
                &config.database_url,
                INTERNAL_POOL_SIZE,
                config.db_slow_query,
            )?,
            asks_db: crate::db::connect(
                &config.database_url,
                ASKS_POOL_SIZE,
                config.db_slow_query,
            )?,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            fault_panic_path: config.fault_panic_path.clone(),
        }))
    }
}

impl AppState {
    /// A Redis connection. Connected on first use rather than at start, so the service starts (and serves
    /// what does not need Redis) while Redis is down, and recovers by itself when it returns.
    pub async fn redis(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let init = self.redis.get_or_try_init(|| async {
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(1))
                .set_response_timeout(Duration::from_secs(2))
                .set_number_of_retries(1)
                .set_max_delay(200);
            redis::aio::ConnectionManager::new_with_config(self.redis_client.clone(), cfg).await
        });
        // The manager's own retry schedule can take long against a dead server; a request never waits
        // more than this for a first connection.
        match tokio::time::timeout(Duration::from_secs(2), init).await {
            Ok(conn) => Ok(conn?.clone()),
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "timed out connecting to Redis",
            ))),
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then lets in-flight requests finish (up to 30 s).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    internal: bool,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer): (_, SocketAddr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let svc = hyper::service::service_fn(move |req| crate::http::handle(state.clone(), peer, internal, req));
                let conn = auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within 30 s");
    }
}
