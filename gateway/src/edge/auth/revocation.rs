//! Token revocation: a `jti` on the Redis denylist (written by the backend at logout, key
//! `aggios:denylist:jti:{jti}`) is refused, and so is every token of a user issued at or before the
//! user's marker `aggios:user_nbf:{user_id}` (written by the backend when the user is deactivated,
//! demoted or deleted). Both keys are read in one round trip per request, with answers cached briefly
//! in-process; a failing Redis is skipped for a while instead of being hammered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::hash64;
use crate::support::redis::SharedRedis;

/// The denylist key the backend writes, and the user's "tokens issued at or before" marker.
pub use contracts::redis_keys::{
    denylist_jti as denylist_key, user_not_before as user_not_before_key,
};

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

    /// Whether the token `jti` of `user_id`, issued at `iat`, is revoked: from the cache, else with one
    /// round trip (`EXISTS` on the denylist and `GET` of the user's marker, pipelined).
    pub async fn check(&self, jti: &str, user_id: &str, iat: Option<u64>) -> Revocation {
        if let Some(revoked) = self.cached(jti) {
            return if revoked {
                Revocation::Revoked
            } else {
                Revocation::Valid
            };
        }
        let key = denylist_key(jti);
        let marker = user_not_before_key(user_id);
        let answer = self
            .redis
            .call(|conn| async move {
                // Two keys of different slots (a cluster): two commands on the multiplexed
                // connection, written back to back, so one round trip of latency.
                let (mut a, mut b) = (conn.clone(), conn);
                let mut exists = redis::cmd("EXISTS");
                exists.arg(key);
                let mut get = redis::cmd("GET");
                get.arg(marker);
                let (listed, not_before) = tokio::join!(
                    exists.query_async::<bool>(&mut a),
                    get.query_async::<Option<u64>>(&mut b)
                );
                Ok((listed?, not_before?))
            })
            .await;
        match answer {
            Ok((listed, not_before)) => {
                // A token without `iat` cannot show it was issued after the marker.
                let revoked =
                    listed || not_before.is_some_and(|nbf| iat.is_none_or(|iat| iat <= nbf));
                self.remember(jti, revoked);
                if revoked {
                    Revocation::Revoked
                } else {
                    Revocation::Valid
                }
            }
            Err(e) => {
                if !matches!(e, crate::support::redis::StoreError::Open) {
                    tracing::warn!(error = %e, "revocation check failed");
                }
                Revocation::StoreError
            }
        }
    }
}
