//! The one Redis connection a gateway process shares between token revocation, API-key lookups and
//! global rate limits: multiplexed, reconnecting by itself, created on first use, and skipped for a moment
//! after a failure (a circuit breaker) so a dead Redis costs no request a timeout. A single server (with a
//! password and TLS when the URL says so) or a Redis Cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

/// A lookup's answer as the gateway caches it in Redis (API-key records, tenant policies): the record, or
/// `{"absent":true}` when the backend knows no such thing (absence is cached too).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Cached<T> {
    Absent { absent: bool },
    Present(T),
}

/// After a failure, how long calls skip Redis (then one call probes it).
pub const BREAKER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is being skipped after a recent failure")]
    Open,
}

/// A connection to a single server or to a cluster; cheap to clone (both are multiplexed handles).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// Where a [`SharedRedis`] connects (from `[redis]`, see `config::RedisSettings::endpoint`).
#[derive(Clone)]
pub struct Endpoint {
    /// One URL, or with `cluster`, the seed nodes' URLs separated by commas.
    pub url: String,
    pub cluster: bool,
    /// A CA (PEM) to trust for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Per-call timeout.
    pub timeout: Duration,
}

pub struct SharedRedis {
    target: Target,
    /// A client for Pub/Sub (a dedicated connection): the server, or a cluster's first seed node
    /// (cluster Pub/Sub messages reach every node).
    pubsub: Option<redis::Client>,
    conn: OnceCell<Conn>,
    /// Per-call timeout.
    pub timeout: Duration,
    started: Instant,
    broken_until_ms: AtomicU64,
}

impl SharedRedis {
    pub fn new(s: &Endpoint) -> Result<SharedRedis, redis::RedisError> {
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: s.ca_pem.clone(),
        };
        let pubsub = {
            let first = s.url.split(',').next().unwrap_or("").trim();
            if s.ca_pem.is_some() {
                redis::Client::build_with_tls(first, certs()).ok()
            } else {
                redis::Client::open(first).ok()
            }
        };
        let target = if s.cluster {
            let nodes: Vec<&str> = s.url.split(',').map(str::trim).collect();
            let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(s.timeout.max(Duration::from_millis(250)));
            if s.ca_pem.is_some() {
                b = b.certs(certs());
            }
            Target::Cluster(b.build()?)
        } else if s.ca_pem.is_some() {
            Target::Single(redis::Client::build_with_tls(s.url.as_str(), certs())?)
        } else {
            Target::Single(redis::Client::open(s.url.as_str())?)
        };
        Ok(SharedRedis {
            target,
            pubsub,
            conn: OnceCell::new(),
            timeout: s.timeout,
            started: Instant::now(),
            broken_until_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A client for a Pub/Sub connection of its own.
    pub fn pubsub_client(&self) -> Option<redis::Client> {
        self.pubsub.clone()
    }

    /// Whether this is a Redis Cluster (keys of different slots cannot share a script call).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Whether calls are being skipped after a failure.
    pub fn is_open(&self) -> bool {
        self.now_ms() < self.broken_until_ms.load(Ordering::Relaxed)
    }

    fn trip(&self) {
        self.broken_until_ms.store(
            self.now_ms() + BREAKER.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// `GET key` as bytes (`None`: no such key).
    pub async fn get_bytes(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(|mut c| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }

    /// A lookup's answer cached at `key` ([`Cached`]): `Ok(None)` when there is no usable entry (none,
    /// or one that does not parse: the caller asks again and overwrites it).
    pub async fn get_cached<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
    ) -> Result<Option<Cached<T>>, StoreError> {
        Ok(self
            .get_bytes(key)
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Caches a lookup's answer (`None`: "no such thing") at `key` for `ttl_ms`.
    pub async fn set_cached<T: serde::Serialize>(
        &self,
        key: String,
        found: Option<&T>,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let value = match found {
            Some(v) => serde_json::to_vec(&Cached::Present(v)),
            None => serde_json::to_vec(&Cached::<&T>::Absent { absent: true }),
        };
        match value {
            Ok(value) => self.set_px(key, value, ttl_ms).await,
            Err(_) => Ok(()),
        }
    }

    /// `SET key value PX ttl_ms`.
    pub async fn set_px(&self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<(), StoreError> {
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Runs `f` on the shared connection within the per-call timeout; a failure opens the breaker.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        if self.is_open() {
            return Err(StoreError::Open);
        }
        // The first call also connects, which may take longer than one command; once connected, the
        // handle is taken without a timer.
        let connect_timeout = self.timeout.max(Duration::from_millis(250));
        let conn = match self.conn.get() {
            Some(c) => c.clone(),
            None => self.connect(connect_timeout).await?,
        };
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if !is_script_missing(&e) {
                    self.trip();
                }
                Err(e.into())
            }
            Err(_) => {
                self.trip();
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    /// Connects on first use (a failure opens the breaker).
    async fn connect(&self, connect_timeout: Duration) -> Result<Conn, StoreError> {
        match tokio::time::timeout(
            connect_timeout,
            self.conn.get_or_try_init(|| async {
                match &self.target {
                    Target::Single(client) => {
                        // Responses are timed by `call` (one timer per call, not two).
                        let cfg = redis::aio::ConnectionManagerConfig::new()
                            .set_connection_timeout(connect_timeout)
                            .set_number_of_retries(1);
                        ConnectionManager::new_with_config(client.clone(), cfg)
                            .await
                            .map(Conn::Single)
                    }
                    Target::Cluster(client) => {
                        client.get_async_connection().await.map(Conn::Cluster)
                    }
                }
            }),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c.clone()),
            Ok(Err(e)) => {
                self.trip();
                Err(e.into())
            }
            Err(_) => {
                self.trip();
                Err(StoreError::Timeout(connect_timeout))
            }
        }
    }
}

/// `NOSCRIPT`: the script cache was flushed (or a fail-over); not a failure of Redis itself.
pub fn is_script_missing(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::NoScriptError
}
