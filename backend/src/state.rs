//! What every handler shares: the state built once at start from the [`Config`].

use std::sync::Arc;
use std::time::Duration;

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::db::Pools;

/// What every handler shares.
pub struct AppState {
    /// The database pools (primary, read replica, the internal listener's, the asks').
    pub db: Pools,
    redis_client: redis::Client,
    redis: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    pub tokens: TokenKeys,
    pub refresh_ttl: Duration,
    pub base_domains: Vec<String>,
    /// The plan of tenants without one of their own.
    pub default_plan: String,
    /// Bounds concurrent Argon2id work (19 MiB and tens of ms of CPU each) to the cores there are.
    pub hashing: tokio::sync::Semaphore,
    pub storage: crate::storage::Storage,
    pub max_file_bytes: u64,
    /// Content types `/api/files` serves inline (others as attachments).
    pub inline_types: Vec<String>,
    /// Peers whose `X-Aggios-Client-Ip` is believed.
    pub trusted_gateways: Vec<ipnet::IpNet>,
    /// Requests being handled right now, on this state's listeners (also `backend_http_requests_in_flight`).
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// `Config::fault_panic_path` (fault injection for tests).
    pub fault_panic_path: Option<String>,
    /// Set at SIGTERM: `/readyz` answers 503 (health checks take this replica out) while requests are
    /// still served for `Config::shutdown_drain`.
    pub draining: std::sync::atomic::AtomicBool,
    /// OAuth2 settings and the token-signing keys.
    pub oauth: crate::config::OAuthConfig,
    pub oauth_keys: crate::oauth::keys::KeyRing,
}

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
        let db = Pools::connect(config)?;
        match crate::db::bypasses_rls(&db.primary).await {
            Ok(true) => return Err(StartError::BypassesRls),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Postgres not reachable at start; serving 503 until it is")
            }
        }
        let redis_client = redis::Client::open(config.redis_url.as_str())?;
        Ok(Arc::new(AppState {
            db,
            redis_client,
            redis: tokio::sync::OnceCell::new(),
            tokens: TokenKeys::new(&config.jwt_secret, config.access_ttl),
            refresh_ttl: config.refresh_ttl,
            base_domains: config.base_domains.clone(),
            default_plan: config.default_plan.clone(),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            storage: crate::storage::Storage::new(&config.storage)?,
            max_file_bytes: config.max_file_bytes,
            inline_types: config.inline_types.clone(),
            trusted_gateways: config.trusted_gateways.clone(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            fault_panic_path: config.fault_panic_path.clone(),
            draining: std::sync::atomic::AtomicBool::new(false),
            oauth: config.oauth.clone(),
            oauth_keys: crate::oauth::keys::KeyRing::new(Duration::from_secs(
                crate::oauth::MAX_ACCESS_TTL_SECS,
            )),
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
