//! The global tier: the global policies of a request decided atomically by one Lua script in one Redis
//! round trip (`EVALSHA`; on `NOSCRIPT`, e.g. after `SCRIPT FLUSH` or a fail-over, the script is loaded
//! again and the call retried). Keys are hash-tagged per counter and expire once their bucket is full.
//!
//! Requests for the same counters that arrive while a call for them is in flight are coalesced: the next
//! call carries all of them (`n`), and Redis decides exactly how many fit. Each request still gets its own
//! decision from Redis, made on Redis's clock, within at most two round trips; under load one call answers
//! many requests instead of one each.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::gcra::{Decision, Gcra};
use crate::support::hash64;
use crate::support::redis::{SharedRedis, StoreError};

/// The script's source (also read by the tests).
pub const SCRIPT: &str = include_str!("script.lua");

/// Largest batch sent in one call (a bound on the reply and on the script's run time).
const MAX_BATCH: usize = 1024;
const SHARDS: usize = 32;

/// The Redis key of a counter: `{…}` is the hash tag, so a counter lives on one cluster slot.
pub fn redis_key(counter: &str) -> String {
    let mut k = String::with_capacity(counter.len() + 12);
    k.push_str("aggios:rl:{");
    k.push_str(counter);
    k.push('}');
    k
}

/// What one call answers for one counter.
#[derive(Debug, Clone, Copy)]
struct KeyReply {
    fit: u64,
    remaining: u64,
    retry_after_us: u64,
    reset_us: u64,
}

/// What a batch's call answered: `k` of its requests are allowed, in arrival order.
#[derive(Debug, Clone)]
struct BatchReply {
    k: u64,
    keys: Vec<KeyReply>,
}

type Waiter = oneshot::Sender<Result<(usize, Arc<BatchReply>), String>>;

/// Requests waiting for the next call on one set of counters.
struct Batch {
    items: Arc<Vec<(String, Gcra)>>,
    waiting: Vec<Waiter>,
}

pub struct GlobalStore {
    redis: Arc<SharedRedis>,
    script: Arc<redis::Script>,
    /// In-flight batches by signature (counters and parameters), sharded: no global lock.
    batches: Vec<Mutex<HashMap<String, Batch>>>,
}

impl GlobalStore {
    pub fn new(redis: Arc<SharedRedis>) -> GlobalStore {
        GlobalStore {
            redis,
            script: Arc::new(redis::Script::new(SCRIPT)),
            batches: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Decides every `(counter key, parameters)` of one request. On a cluster, counters live on different
    /// slots, so each is decided by its own call, all in parallel (one round trip of latency); there a
    /// request refused by one policy may still count against another.
    pub async fn decide(
        self: &Arc<Self>,
        items: &[(String, Gcra)],
    ) -> Result<Vec<Decision>, StoreError> {
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

    /// Joins (or starts) the batch of these counters and waits for its decision.
    async fn decide_together(
        self: &Arc<Self>,
        items: &[(String, Gcra)],
    ) -> Result<Vec<Decision>, StoreError> {
        if self.redis.is_open() {
            return Err(StoreError::Open);
        }
        let mut sig = String::with_capacity(64);
        for (k, g) in items {
            // Writing to a String cannot fail.
            let _ = write!(sig, "{k}\u{1f}{}/{}\u{1e}", g.interval_us, g.tolerance_us);
        }
        let (tx, rx) = oneshot::channel();
        let shard = &self.batches[(hash64(sig.as_bytes()) as usize) % SHARDS];
        let start = {
            let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
            match m.get_mut(&sig) {
                Some(b) => {
                    b.waiting.push(tx);
                    false
                }
                None => {
                    m.insert(
                        sig.clone(),
                        Batch {
                            items: Arc::new(items.to_vec()),
                            waiting: vec![tx],
                        },
                    );
                    true
                }
            }
        };
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.drain(sig).await });
        }
        match rx.await {
            Ok(Ok((i, reply))) => Ok(decisions_for(i, &reply)),
            Ok(Err(e)) => Err(StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "rate limit call failed",
                e,
            )))),
            Err(_) => Err(StoreError::Open),
        }
    }

    /// Sends calls for the batch `sig` until nobody waits on it any more.
    async fn drain(self: Arc<Self>, sig: String) {
        let shard = &self.batches[(hash64(sig.as_bytes()) as usize) % SHARDS];
        loop {
            let (items, waiting) = {
                let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
                let Some(b) = m.get_mut(&sig) else { return };
                if b.waiting.is_empty() {
                    m.remove(&sig);
                    return;
                }
                let take = b.waiting.len().min(MAX_BATCH);
                (
                    Arc::clone(&b.items),
                    b.waiting.drain(..take).collect::<Vec<_>>(),
                )
            };
            match self.call(&items, waiting.len() as u64).await {
                Ok(reply) => {
                    let reply = Arc::new(reply);
                    for (i, w) in waiting.into_iter().enumerate() {
                        let _ = w.send(Ok((i, Arc::clone(&reply))));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for w in waiting {
                        let _ = w.send(Err(msg.clone()));
                    }
                }
            }
        }
    }

    /// One script call deciding `n` requests on `items`.
    async fn call(&self, items: &[(String, Gcra)], n: u64) -> Result<BatchReply, StoreError> {
        let script = Arc::clone(&self.script);
        // A counter's key is a full Redis key (a tenant's month), a GCRA policy's a counter name.
        let keys: Vec<String> = items
            .iter()
            .map(|(k, g)| {
                if g.is_counter() {
                    k.clone()
                } else {
                    redis_key(k)
                }
            })
            .collect();
        let mut args: Vec<u64> = Vec::with_capacity(1 + 2 * items.len());
        args.push(n);
        for (_, g) in items {
            args.push(g.interval_us);
            args.push(g.tolerance_us);
        }
        let reply: Vec<u8> = self
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
        reply_numbers(&reply)
            .and_then(|numbers| parse_reply(&numbers, items.len()))
            .ok_or_else(|| {
                StoreError::Redis(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected rate limit script reply",
                )))
            })
    }
}

/// The integers of the script's reply (decimal, separated by single spaces); `None` if any is not one.
pub fn reply_numbers(reply: &[u8]) -> Option<Vec<i64>> {
    reply
        .split(|b| *b == b' ')
        .map(|n| std::str::from_utf8(n).ok()?.parse::<i64>().ok())
        .collect()
}

fn parse_reply(reply: &[i64], n: usize) -> Option<BatchReply> {
    if reply.len() != 1 + 4 * n {
        return None;
    }
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Some(BatchReply {
        k: u(reply[0]),
        keys: reply[1..]
            .chunks_exact(4)
            .map(|c| KeyReply {
                fit: u(c[0]),
                remaining: u(c[1]),
                retry_after_us: u(c[2]),
                reset_us: u(c[3]),
            })
            .collect(),
    })
}

/// The decisions of the `i`-th request of a batch, one per counter.
fn decisions_for(i: usize, reply: &BatchReply) -> Vec<Decision> {
    let i = i as u64;
    let allowed = i < reply.k;
    reply
        .keys
        .iter()
        .map(|key| Decision {
            // Per policy: whether this policy alone admits the request (for its metric); the request
            // passes only when every policy does (`allowed` of the batch).
            allowed: i < key.fit,
            tat_us: 0,
            remaining: if allowed {
                key.remaining + (reply.k - 1 - i)
            } else {
                0
            },
            retry_after_us: if allowed { 0 } else { key.retry_after_us },
            reset_us: key.reset_us,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reply_is_spread_in_arrival_order() {
        let reply = BatchReply {
            k: 2,
            keys: vec![KeyReply {
                fit: 2,
                remaining: 0,
                retry_after_us: 500,
                reset_us: 9_000,
            }],
        };
        let d: Vec<Decision> = (0..3).map(|i| decisions_for(i, &reply)[0]).collect();
        assert!(d[0].allowed && d[1].allowed && !d[2].allowed);
        assert_eq!((d[0].remaining, d[1].remaining, d[2].remaining), (1, 0, 0));
        assert_eq!(d[2].retry_after_us, 500);
        assert!(parse_reply(&[1, 1, 0, 0, 5], 1).is_some());
        assert_eq!(reply_numbers(b"2 3 0 17 900"), Some(vec![2, 3, 0, 17, 900]));
        assert_eq!(reply_numbers(b"2 x"), None);
        assert_eq!(reply_numbers(b""), None);
        assert!(parse_reply(&[1, 1, 0], 1).is_none());
    }
}
