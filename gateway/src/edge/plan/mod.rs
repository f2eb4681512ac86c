//! Tenants' plans at the edge: the effective policy of a tenant (its plan with the tenant's overrides,
//! whether it is suspended) from the backend's internal listener, cached in process and in Redis (shared
//! by every replica), one backend lookup per tenant at a time.
//!
//! A change reaches every replica without a reload: the backend drops the Redis entry and names the
//! tenant on `aggios:policy-changes`; each replica follows that channel ([`follow_changes`]) and drops
//! its in-process entry, so the next request fetches the new policy. A lost message costs at most
//! `cache_ttl` (the in-process entry lives a third of it, the Redis entry the rest); a replica whose
//! subscription broke drops everything when it subscribes again.
//!
//! Abuse: the tenant label comes from the Host a client chose. Unknown tenants are cached as absent
//! (they get the default plan); each shard holds at most [`SHARD_CAPACITY`] entries; at most
//! [`MAX_LOOKUPS`] backend lookups run at once, and a request that finds them all busy gets the
//! `on_policy_error` answer without asking: a flood of made-up tenant names costs the backend at most
//! that many requests at a time.

pub(in crate::edge) mod stage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contracts::plans::TenantPolicy;

use crate::config::plans::{OnPolicyError, PlanSettings};
use crate::support::hash64;
use crate::support::redis::SharedRedis;
use crate::support::single_flight::SingleFlight;
use crate::telemetry::metrics::metrics;

pub use contracts::redis_keys::{tenant_policy as cache_key, POLICY_CHANNEL};

const SHARDS: usize = 16;
/// Entries per shard before the shard is cleared.
pub const SHARD_CAPACITY: usize = 4096;
/// Backend lookups in flight at once (per replica).
pub const MAX_LOOKUPS: usize = 32;
/// How long a failed lookup's answer (the default plan, or a refusal) is kept before asking again.
const ERROR_TTL: Duration = Duration::from_secs(1);

use crate::support::redis::Cached;

/// Where a request's policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The tenant's own policy.
    Tenant,
    /// No such tenant: the default plan.
    Unknown,
    /// The policy could not be fetched: `on_policy_error`.
    Error,
}

/// A tenant's policy as a request sees it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub policy: Arc<TenantPolicy>,
    pub source: Source,
    /// The tenant's monthly counter for the month in which the policy was fetched (saves building the
    /// key per request; rebuilt when that month has ended).
    pub month: Option<Arc<MonthKey>>,
}

/// A tenant's monthly counter key and when its month ends (Unix seconds).
#[derive(Debug)]
pub struct MonthKey {
    pub key: String,
    pub ends: u64,
}

impl MonthKey {
    /// `tenant`'s counter for the month of `now` (Unix seconds).
    pub fn of(tenant: &str, now: u64) -> MonthKey {
        let (month, ends) = contracts::plans::month_of(now);
        MonthKey {
            key: contracts::redis_keys::monthly_requests(tenant, &month),
            ends,
        }
    }
}

type Entry = (Resolved, Instant);

/// The read-through policy store.
pub struct PolicyStore {
    settings: PlanSettings,
    redis: Option<Arc<SharedRedis>>,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    pending: SingleFlight<Result<Option<Arc<TenantPolicy>>, String>>,
    lookups: tokio::sync::Semaphore,
    /// Bumped by every invalidation: a lookup that began before one does not cache its answer.
    generation: AtomicU64,
    default: Arc<TenantPolicy>,
}

/// The policy applied without a tenant's own: the default plan's limits, nothing else granted.
fn default_policy(s: &PlanSettings) -> TenantPolicy {
    TenantPolicy {
        tenant: String::new(),
        plan: s.default.plan.clone(),
        version: 0,
        suspended: false,
        requests_per_second: s.default.rate.limit,
        burst: s.default.rate.burst,
        concurrency_weight: 1,
        monthly_requests: s.default.monthly_requests,
        storage_bytes: 0,
        max_upload_bytes: 0,
        max_api_keys: 0,
        max_users: 0,
    }
}

impl PolicyStore {
    pub fn new(settings: PlanSettings, redis: Option<Arc<SharedRedis>>) -> PolicyStore {
        PolicyStore {
            default: Arc::new(default_policy(&settings)),
            settings,
            redis,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pending: SingleFlight::default(),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            generation: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &PlanSettings {
        &self.settings
    }

    fn shard(&self, tenant: &str) -> &Mutex<HashMap<String, Entry>> {
        &self.shards[(hash64(tenant.as_bytes()) as usize) % SHARDS]
    }

    fn local_ttl(&self) -> Duration {
        (self.settings.cache_ttl / 3).max(Duration::from_millis(1))
    }

    fn cached(&self, tenant: &str) -> Option<Resolved> {
        let shard = self.shard(tenant).lock().unwrap_or_else(|p| p.into_inner());
        shard
            .get(tenant)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(r, _)| r.clone())
    }

    fn remember(&self, tenant: &str, r: &Resolved, ttl: Duration, generation: u64) {
        let mut shard = self.shard(tenant).lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the shard's lock: an invalidation after this point removes what is inserted.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if shard.len() >= SHARD_CAPACITY {
            shard.clear();
        }
        shard.insert(tenant.to_string(), (r.clone(), Instant::now() + ttl));
    }

    /// Drops `tenant`'s entry (`*`: every entry): its next request fetches the policy again.
    pub fn invalidate(&self, tenant: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if tenant == "*" {
            for s in &self.shards {
                s.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        } else {
            self.shard(tenant)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(tenant);
        }
    }

    /// The policy in process for `tenant`, without any I/O (the admin listener's view).
    pub fn peek(&self, tenant: &str) -> Option<Resolved> {
        self.cached(tenant)
    }

    fn resolved(&self, found: Option<Arc<TenantPolicy>>) -> Resolved {
        match found {
            Some(policy) => Resolved {
                month: Some(Arc::new(MonthKey::of(
                    &policy.tenant,
                    crate::support::unix_now() as u64,
                ))),
                policy,
                source: Source::Tenant,
            },
            None => Resolved {
                policy: Arc::clone(&self.default),
                source: Source::Unknown,
                month: None,
            },
        }
    }

    /// `tenant`'s policy: in process, else in Redis, else from the backend. `Err(())` when it cannot be
    /// fetched and `on_policy_error = "refuse"`.
    pub async fn resolve(&self, tenant: &str) -> Result<Resolved, ()> {
        if let Some(r) = self.cached(tenant) {
            return match r.source {
                Source::Error if self.settings.on_policy_error == OnPolicyError::Refuse => Err(()),
                _ => Ok(r),
            };
        }
        let generation = self.generation.load(Ordering::Acquire);
        let m = metrics();
        if let Some(found) = self.read_redis(tenant).await {
            m.plan_lookups.with_label_values(&["redis"]).inc();
            let r = self.resolved(found);
            self.remember(tenant, &r, self.local_ttl(), generation);
            return Ok(r);
        }
        // Callers for one tenant share one lookup; distinct tenants take a permit each.
        let fetched = self
            .pending
            .run(tenant, || async {
                let _permit = self
                    .lookups
                    .try_acquire()
                    .map_err(|_| "too many policy lookups in flight".to_string())?;
                self.ask_backend(tenant).await
            })
            .await;
        match fetched {
            Ok(found) => {
                m.plan_lookups.with_label_values(&["backend"]).inc();
                let r = self.resolved(found.clone());
                self.remember(tenant, &r, self.local_ttl(), generation);
                self.store_in_redis(tenant, found.as_deref(), generation)
                    .await;
                Ok(r)
            }
            Err(e) => {
                m.plan_lookups.with_label_values(&["error"]).inc();
                tracing::warn!(tenant, error = %e, on_policy_error = ?self.settings.on_policy_error, "tenant policy unavailable");
                let r = Resolved {
                    policy: Arc::clone(&self.default),
                    source: Source::Error,
                    month: None,
                };
                self.remember(tenant, &r, ERROR_TTL, generation);
                match self.settings.on_policy_error {
                    OnPolicyError::Default => Ok(r),
                    OnPolicyError::Refuse => Err(()),
                }
            }
        }
    }

    /// The Redis entry: `Some(None)` for a tenant cached as absent, `None` when there is no usable entry.
    async fn read_redis(&self, tenant: &str) -> Option<Option<Arc<TenantPolicy>>> {
        let redis = self.redis.as_ref()?;
        let key = cache_key(tenant);
        match redis.get_cached::<TenantPolicy>(key).await {
            Ok(Some(Cached::Present(p))) if p.tenant == tenant => Some(Some(Arc::new(p))),
            Ok(Some(Cached::Absent { .. })) => Some(None),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "policy cache unavailable; asking the backend");
                None
            }
        }
    }

    async fn store_in_redis(&self, tenant: &str, found: Option<&TenantPolicy>, generation: u64) {
        let Some(redis) = &self.redis else { return };
        // An invalidation arrived while the backend answered: that answer may predate the change.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let ttl = self
            .settings
            .cache_ttl
            .saturating_sub(self.local_ttl())
            .as_millis()
            .max(1) as u64;
        let stored = redis.set_cached(cache_key(tenant), found, ttl).await;
        if let Err(e) = stored {
            tracing::debug!(error = %e, "could not cache a tenant policy");
        }
    }

    /// The backend's answer for `tenant` (`None`: no such active tenant).
    async fn ask_backend(&self, tenant: &str) -> Result<Option<Arc<TenantPolicy>>, String> {
        if !contracts::is_label(tenant) {
            return Ok(None);
        }
        let url = self.settings.lookup_url.replace("{tenant}", tenant);
        let (status, body) = crate::support::http_client::get(&url, self.settings.lookup_timeout)
            .await
            .map_err(|e| e.to_string())?;
        match status {
            200 => serde_json::from_slice::<TenantPolicy>(&body)
                .map(|p| Some(Arc::new(p)))
                .map_err(|e| format!("unreadable policy: {e}")),
            404 => Ok(None),
            s => Err(format!("policy lookup answered {s}")),
        }
    }
}
