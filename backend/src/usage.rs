//! The monthly request counts: the gateways count them exactly in Redis (in their rate-limit script's
//! call); this task copies them to Postgres `usage` every `USAGE_FLUSH_SECS` (≤ 10 s), and raises a
//! Redis counter that is below what Postgres holds (Redis lost it: a restart without persistence, a
//! fail-over) back to that floor. A Redis loss so costs at most one flush window of counts.

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;
use contracts::redis_keys::monthly_requests;

/// Raises KEYS[1] to at least ARGV[1] (keeping it when higher), sets its expiry to ARGV[2] seconds when
/// it has none, and returns its value and whether it was raised.
const RAISE: &str = r"
local v = tonumber(redis.call('GET', KEYS[1])) or 0
local floor = tonumber(ARGV[1])
local raised = 0
if v < floor then
  redis.call('SET', KEYS[1], floor, 'KEEPTTL')
  v = floor
  raised = 1
end
if v > 0 and redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {v, raised}
";

/// How long a month's counter outlives its month in Redis (the gateway's script sets the same).
pub const COUNTER_TTL_SECS: u64 = 40 * 86_400;

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Tenants whose count was written to Postgres.
    pub written: usize,
    /// Counters raised back to Postgres's count (Redis had lost them).
    pub restored: usize,
}

/// Why a flush did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Copies this month's counters of every active tenant from Redis to Postgres, and back where Redis
/// holds less.
pub async fn flush_once(state: &AppState) -> Result<Flushed, FlushError> {
    let (month, label) = crate::http::routes::plans::this_month();
    let tenants: Vec<_> = crate::db::tenants::list(&state.db.primary)
        .await?
        .into_iter()
        .filter(|t| t.is_active)
        .collect();
    if tenants.is_empty() {
        return Ok(Flushed::default());
    }
    let floors: std::collections::HashMap<uuid::Uuid, i64> =
        crate::db::plans::usage_of_month(&state.db.primary, month)
            .await?
            .into_iter()
            .collect();
    let mut redis = state.redis().await?;
    let mut pipe = redis::pipe();
    for t in &tenants {
        let floor = floors.get(&t.id).copied().unwrap_or(0);
        pipe.cmd("EVAL")
            .arg(RAISE)
            .arg(1)
            .arg(monthly_requests(&t.subdomain, &label))
            .arg(floor)
            .arg(COUNTER_TTL_SECS);
    }
    // One round trip for every tenant (EVAL rather than EVALSHA: no NOSCRIPT retry path to keep).
    let values: Vec<(i64, i64)> = pipe.query_async(&mut redis).await?;
    let mut ids = Vec::new();
    let mut counts = Vec::new();
    let mut restored = 0;
    for (t, (v, raised)) in tenants.iter().zip(values) {
        let floor = floors.get(&t.id).copied().unwrap_or(0);
        if raised == 1 {
            restored += 1;
            tracing::warn!(tenant = %t.subdomain, count = floor, "Redis had lost this month's request count; restored from Postgres");
        }
        if v > floor {
            ids.push(t.id);
            counts.push(v);
        }
    }
    if !ids.is_empty() {
        crate::db::plans::flush_usage(&state.db.primary, month, &ids, &counts).await?;
    }
    tracing::debug!(written = ids.len(), restored, "usage flushed");
    Ok(Flushed {
        written: ids.len(),
        restored,
    })
}

/// Flushes every `every` until the process ends; a failed flush is logged and retried next time.
pub async fn run(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = flush_once(&state).await {
            tracing::warn!(error = %e, "usage flush failed; retrying at the next tick");
        }
    }
}
