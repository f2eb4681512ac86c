//! Token revocation: a `jti` on the Redis denylist (written by the backend at logout, key
//! `aggios:denylist:jti:{jti}`) is refused. At most one Redis round trip per request, with answers cached
//! briefly in-process; a failing Redis is skipped for a while instead of being hammered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::config::RedisSettings;
use crate::proxy::upstream::hash64;

/// The denylist key the backend writes (contract between backend and gateway).
pub fn denylist_key(jti: &str) -> String {
    format!("aggios:denylist:jti:{jti}")
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Valid,
    Revoked,
    /// Redis did not answer in time (or is being skipped after failures).
    StoreError,
}

const SHARDS: usize = 32;
/// Entries per shard before the shard is cleared (bounds memory under a flood of distinct tokens).
const SHARD_CAPACITY: usize = 8192;
/// After a Redis failure, how long checks skip Redis and report a store error straight away.
const BREAKER: Duration = Duration::from_secs(1);
/// How long a revoked answer is remembered (revocation is final; the token expires anyway).
const REVOKED_TTL: Duration = Duration::from_secs(300);

/// Checks `jti`s against Redis with a sharded in-process cache (no global lock on the hot path).
pub struct RevocationStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    ttl: Duration,
    shards: Vec<Mutex<HashMap<String, (bool, Instant)>>>,
    started: Instant,
    broken_until_ms: AtomicU64,
}

impl RevocationStore {
    pub fn new(s: &RedisSettings) -> Result<RevocationStore, redis::RedisError> {
        Ok(RevocationStore {
            client: redis::Client::open(s.url.as_str())?,
            conn: OnceCell::new(),
            timeout: s.timeout,
            ttl: s.revocation_cache,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            started: Instant::now(),
            broken_until_ms: AtomicU64::new(0),
        })
    }

    fn shard(&self, jti: &str) -> &Mutex<HashMap<String, (bool, Instant)>> {
        &self.shards[(hash64(jti.as_bytes()) as usize) % SHARDS]
    }

    fn cached(&self, jti: &str) -> Option<bool> {
        let shard = self.shard(jti).lock().unwrap_or_else(|p| p.into_inner());
        shard
            .get(jti)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(revoked, _)| *revoked)
    }

    fn remember(&self, jti: &str, revoked: bool) {
        let ttl = if revoked { REVOKED_TTL } else { self.ttl };
        let mut shard = self.shard(jti).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= SHARD_CAPACITY {
            shard.clear();
        }
        shard.insert(jti.to_string(), (revoked, Instant::now() + ttl));
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether `jti` is revoked: from the cache, else with one `EXISTS` round trip.
    pub async fn check(&self, jti: &str) -> Revocation {
        if let Some(revoked) = self.cached(jti) {
            return if revoked {
                Revocation::Revoked
            } else {
                Revocation::Valid
            };
        }
        if self.now_ms() < self.broken_until_ms.load(Ordering::Relaxed) {
            return Revocation::StoreError;
        }
        let call = async {
            let conn = self
                .conn
                .get_or_try_init(|| async {
                    let cfg = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(self.timeout.max(Duration::from_millis(200)))
                        .set_response_timeout(self.timeout);
                    ConnectionManager::new_with_config(self.client.clone(), cfg).await
                })
                .await?;
            let mut conn = conn.clone();
            redis::cmd("EXISTS")
                .arg(denylist_key(jti))
                .query_async::<bool>(&mut conn)
                .await
        };
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(1)) * 4, call).await {
            Ok(Ok(revoked)) => {
                self.remember(jti, revoked);
                if revoked {
                    Revocation::Revoked
                } else {
                    Revocation::Valid
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "revocation check failed");
                self.broken_until_ms.store(
                    self.now_ms() + BREAKER.as_millis() as u64,
                    Ordering::Relaxed,
                );
                Revocation::StoreError
            }
            Err(_) => {
                self.broken_until_ms.store(
                    self.now_ms() + BREAKER.as_millis() as u64,
                    Ordering::Relaxed,
                );
                Revocation::StoreError
            }
        }
    }
}
