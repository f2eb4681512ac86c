//! The global tier: every global policy of a request decided atomically by one Lua script in one Redis
//! round trip (`EVALSHA`; on `NOSCRIPT`, e.g. after `SCRIPT FLUSH` or a fail-over, the script is loaded
//! again and the call retried). Keys are hash-tagged per counter and expire once their bucket is full.

use std::sync::Arc;

use super::gcra::{Decision, Gcra};
use crate::shared_redis::{SharedRedis, StoreError};

/// The script's source (also read by the tests).
pub const SCRIPT: &str = include_str!("script.lua");

/// The Redis key of a counter: `{…}` is the hash tag, so a counter lives on one cluster slot.
pub fn redis_key(counter: &str) -> String {
    let mut k = String::with_capacity(counter.len() + 12);
    k.push_str("aggios:rl:{");
    k.push_str(counter);
    k.push('}');
    k
}

pub struct GlobalStore {
    redis: Arc<SharedRedis>,
    script: Arc<redis::Script>,
}

impl GlobalStore {
    pub fn new(redis: Arc<SharedRedis>) -> GlobalStore {
        GlobalStore {
            redis,
            script: Arc::new(redis::Script::new(SCRIPT)),
        }
    }

    /// Whether Redis is being skipped after a failure (the fallback decides meanwhile).
    pub fn is_open(&self) -> bool {
        self.redis.is_open()
    }

    /// Decides every `(counter key, parameters)` of one request in one round trip. On a cluster, counters
    /// live on different slots, so each is decided by its own call, all in parallel (one round trip of
    /// latency); there a request refused by one policy may still count against another.
    pub async fn decide(&self, items: &[(String, Gcra)]) -> Result<Vec<Decision>, StoreError> {
        if self.redis.is_cluster() && items.len() > 1 {
            let calls = items
                .iter()
                .map(|it| self.decide_together(std::slice::from_ref(it)));
            let mut out = Vec::with_capacity(items.len());
            for r in futures_util::future::join_all(calls).await {
                out.extend(r?);
            }
            return Ok(out);
        }
        self.decide_together(items).await
    }

    /// One script call for all of `items` (their keys must share a slot on a cluster).
    async fn decide_together(&self, items: &[(String, Gcra)]) -> Result<Vec<Decision>, StoreError> {
        let script = Arc::clone(&self.script);
        let keys: Vec<String> = items.iter().map(|(k, _)| redis_key(k)).collect();
        let args: Vec<u64> = items
            .iter()
            .flat_map(|(_, g)| [g.interval_us, g.tolerance_us])
            .collect();
        let reply: Vec<i64> = self
            .redis
            .call(|mut conn| async move {
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(*a);
                }
                inv.invoke_async(&mut conn).await
            })
            .await?;
        parse_reply(&reply, items.len()).ok_or_else(|| {
            StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "unexpected rate limit script reply",
            )))
        })
    }
}

fn parse_reply(reply: &[i64], n: usize) -> Option<Vec<Decision>> {
    if reply.len() != 1 + 4 * n {
        return None;
    }
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Some(
        reply[1..]
            .chunks_exact(4)
            .map(|c| Decision {
                allowed: c[0] == 1,
                tat_us: 0,
                remaining: u(c[1]),
                retry_after_us: u(c[2]),
                reset_us: u(c[3]),
            })
            .collect(),
    )
}
