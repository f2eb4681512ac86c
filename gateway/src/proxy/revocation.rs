//! Token revocation: a `jti` on the Redis denylist (written by the backend at logout, key
//! `aggios:denylist:jti:{jti}`) is refused. At most one Redis round trip per request, with answers cached
//! briefly in-process; a failing Redis is skipped for a while instead of being hammered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proxy::upstream::hash64;
use crate::shared_redis::SharedRedis;

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
/// How long a revoked answer is remembered (revocation is final; the token expires anyway).
const REVOKED_TTL: Duration = Duration::from_secs(300);

/// Checks `jti`s against Redis with a sharded in-process cache (no global lock on the hot path).
pub struct RevocationStore {
    redis: Arc<SharedRedis>,
    ttl: Duration,
    shards: Vec<Mutex<HashMap<String, (bool, Instant)>>>,
}

impl RevocationStore {
    pub fn new(redis: Arc<SharedRedis>, ttl: Duration) -> RevocationStore {
        RevocationStore {
            redis,
            ttl,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
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

    /// Whether `jti` is revoked: from the cache, else with one `EXISTS` round trip.
    pub async fn check(&self, jti: &str) -> Revocation {
        if let Some(revoked) = self.cached(jti) {
            return if revoked {
                Revocation::Revoked
            } else {
                Revocation::Valid
            };
        }
        let key = denylist_key(jti);
        let answer = self
            .redis
            .call(|mut conn| async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<bool>(&mut conn)
                    .await
            })
            .await;
        match answer {
            Ok(revoked) => {
                self.remember(jti, revoked);
                if revoked {
                    Revocation::Revoked
                } else {
                    Revocation::Valid
                }
            }
            Err(e) => {
                if !matches!(e, crate::shared_redis::StoreError::Open) {
                    tracing::warn!(error = %e, "revocation check failed");
                }
                Revocation::StoreError
            }
        }
    }
}
