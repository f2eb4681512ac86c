//! API keys of third-party integrations (`X-API-Key: ak_…` or `Authorization: Bearer ak_…`).
//!
//! A key is `ak_{prefix}_{secret}`; the backend's `api_keys` table holds its SHA-256, tenant, scopes and
//! expiry. The gateway finds the record by prefix — in its in-process cache, else in Redis (shared by all
//! replicas), else from the backend's internal lookup (then written to Redis) — and compares hashes in
//! constant time. A revoked or expired key stops working within `cache_ttl`: the Redis entry lives
//! `cache_ttl - local_ttl`, the in-process one `local_ttl`, and the backend deletes the Redis entry when
//! a key is revoked, so usually only the in-process entry delays it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeySettings;
use crate::edge::auth::{AuthError, Identity};
use crate::support::hash64;
use crate::support::redis::SharedRedis;
use crate::support::single_flight::SingleFlight;

/// The Redis entry of a key's record (the backend deletes it on revocation).
pub use contracts::redis_keys::api_key as cache_key;

/// What the backend's lookup answers, and what Redis caches (`{"absent":true}` for an unknown key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub key_sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

type Cached = crate::support::redis::Cached<KeyRecord>;

/// The prefix of a key of the right shape (`contracts::api_key`); `None` when the key has another shape.
pub fn parse(key: &str) -> Option<&str> {
    contracts::api_key::split(key).map(|(prefix, _)| prefix)
}

/// Why a key could not be checked at all (as opposed to being refused).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the key lookup failed: {0}")]
    Backend(String),
}

const SHARDS: usize = 16;
const SHARD_CAPACITY: usize = 4096;

type Entry = (Option<Arc<KeyRecord>>, Instant);

/// The read-through key store.
pub struct ApiKeyStore {
    settings: ApiKeySettings,
    redis: Option<Arc<SharedRedis>>,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    /// Concurrent lookups of one prefix are one backend request (only cache misses come here).
    pending: SingleFlight<Result<Option<Arc<KeyRecord>>, String>>,
    /// Refused keys per client address in the current minute.
    failures: Vec<Mutex<HashMap<std::net::IpAddr, (u32, Instant)>>>,
}

/// The window of `failures_per_minute`.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl ApiKeyStore {
    pub fn new(settings: ApiKeySettings, redis: Option<Arc<SharedRedis>>) -> ApiKeyStore {
        ApiKeyStore {
            settings,
            redis,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pending: SingleFlight::default(),
            failures: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn failure_shard(
        &self,
        ip: std::net::IpAddr,
    ) -> &Mutex<HashMap<std::net::IpAddr, (u32, Instant)>> {
        let h = match ip {
            std::net::IpAddr::V4(a) => hash64(&a.octets()),
            std::net::IpAddr::V6(a) => hash64(&a.octets()),
        };
        &self.failures[(h as usize) % SHARDS]
    }

    /// When `ip` has used up its refused-key budget: the seconds until the window ends.
    pub fn over_budget(&self, ip: std::net::IpAddr) -> Option<u64> {
        // One budget per IPv6 /64 (a client holds the whole /64).
        let ip = crate::support::client_budget_key(ip);
        let shard = self
            .failure_shard(ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (count, since) = shard.get(&ip)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= self.settings.failures_per_minute).then(|| left.as_secs().max(1))
    }

    /// Counts a refused key against `ip`.
    pub fn charge_failure(&self, ip: std::net::IpAddr) {
        let ip = crate::support::client_budget_key(ip);
        let mut shard = self
            .failure_shard(ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= SHARD_CAPACITY {
            shard.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = shard.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// The failure budget, for the `RateLimit-Policy` field.
    pub fn failures_per_minute(&self) -> u32 {
        self.settings.failures_per_minute
    }

    fn shard(&self, prefix: &str) -> &Mutex<HashMap<String, Entry>> {
        &self.shards[(hash64(prefix.as_bytes()) as usize) % SHARDS]
    }

    fn local_ttl(&self) -> Duration {
        (self.settings.cache_ttl / 3).min(Duration::from_secs(5))
    }

    fn cached(&self, prefix: &str) -> Option<Option<Arc<KeyRecord>>> {
        let shard = self.shard(prefix).lock().unwrap_or_else(|p| p.into_inner());
        shard
            .get(prefix)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(r, _)| r.clone())
    }

    fn remember(&self, prefix: &str, rec: Option<Arc<KeyRecord>>) {
        let mut shard = self.shard(prefix).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= SHARD_CAPACITY {
            shard.clear();
        }
        shard.insert(prefix.to_string(), (rec, Instant::now() + self.local_ttl()));
    }

    /// The record of `prefix` (`None`: no live key has it).
    async fn record(&self, prefix: &str) -> Result<Option<Arc<KeyRecord>>, LookupError> {
        if let Some(r) = self.cached(prefix) {
            return Ok(r);
        }
        let key = cache_key(prefix);
        if let Some(redis) = &self.redis {
            match redis.get_cached::<KeyRecord>(key.clone()).await {
                Ok(Some(Cached::Present(r))) => {
                    let r = Some(Arc::new(r));
                    self.remember(prefix, r.clone());
                    return Ok(r);
                }
                Ok(Some(Cached::Absent { .. })) => {
                    self.remember(prefix, None);
                    return Ok(None);
                }
                // No entry, or an unreadable one: ask the backend and overwrite it.
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "api key cache unavailable; asking the backend")
                }
            }
        }
        // One backend lookup per prefix at a time: a burst for the same key waits for the first.
        let looked_up = self.pending.run(prefix, || self.lookup(prefix)).await;
        let rec = looked_up.map_err(LookupError::Backend)?;
        self.remember(prefix, rec.clone());
        if let Some(redis) = &self.redis {
            let ttl = self
                .settings
                .cache_ttl
                .saturating_sub(self.local_ttl())
                .as_millis()
                .max(1) as u64;
            if let Err(e) = redis.set_cached(key, rec.as_deref(), ttl).await {
                tracing::debug!(error = %e, "could not cache an api key record");
            }
        }
        Ok(rec)
    }

    /// The backend's answer for `prefix`.
    async fn lookup(&self, prefix: &str) -> Result<Option<Arc<KeyRecord>>, String> {
        let url = self.settings.lookup_url.replace("{prefix}", prefix);
        let (status, body) = crate::support::http_client::get(&url, self.settings.lookup_timeout)
            .await
            .map_err(|e| e.to_string())?;
        match status {
            200 => serde_json::from_slice::<KeyRecord>(&body)
                .map(|r| Some(Arc::new(r)))
                .map_err(|e| format!("unreadable record: {e}")),
            404 => Ok(None),
            s => Err(format!("lookup answered {s}")),
        }
    }

    /// Checks a presented key: `Ok(Err(_))` is a refusal, `Err(_)` means the store could not answer.
    pub async fn verify(
        &self,
        presented: &str,
    ) -> Result<Result<(Identity, Arc<KeyRecord>), AuthError>, LookupError> {
        let Some(prefix) = parse(presented) else {
            return Ok(Err(AuthError::InvalidApiKey));
        };
        let Some(rec) = self.record(prefix).await? else {
            return Ok(Err(AuthError::InvalidApiKey));
        };
        Ok(check(presented, &rec).map(|id| (id, rec)))
    }
}

/// Compares a presented key with its record (hash in constant time, then expiry).
pub fn check(presented: &str, rec: &KeyRecord) -> Result<Identity, AuthError> {
    let digest = Sha256::digest(presented.as_bytes());
    let Ok(stored) = hex::decode(&rec.key_sha256) else {
        return Err(AuthError::InvalidApiKey);
    };
    if stored.len() != digest.len() || !bool::from(digest.as_slice().ct_eq(&stored)) {
        return Err(AuthError::InvalidApiKey);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if rec.expires_at.is_some_and(|e| e <= now) {
        return Err(AuthError::ApiKeyExpired);
    }
    Ok(Identity {
        user_id: rec.id.clone(),
        tenant: rec.tenant.clone(),
        email: None,
        role: Some("api_key".to_string()),
        jti: None,
        iat: None,
        client_id: None,
        scope: None,
    })
}

/// Whether a key's scopes cover everything a route requires.
pub fn has_scopes(rec: &KeyRecord, required: &[String]) -> bool {
    required.iter().all(|r| rec.scopes.iter().any(|s| s == r))
}

/// The API key a request presents, if any: `X-API-Key`, or a bearer token starting with `ak_`.
pub fn presented(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.to_str().unwrap_or("").trim());
    }
    let h = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(contracts::api_key::MARK))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (String, KeyRecord) {
        let k = format!("ak_0a1b2c3d_{}", "e".repeat(56));
        let rec = KeyRecord {
            id: "k1".into(),
            tenant: "acme".into(),
            key_sha256: hex::encode(Sha256::digest(k.as_bytes())),
            scopes: vec!["files:read".into()],
            expires_at: None,
        };
        (k, rec)
    }

    #[test]
    fn keys_are_checked_by_hash_expiry_and_scope() {
        let (k, rec) = key();
        assert_eq!(parse(&k), Some("0a1b2c3d"));
        assert_eq!(check(&k, &rec).map(|i| i.tenant), Ok("acme".into()));
        let mut other = k.clone();
        other.replace_range(k.len() - 1.., "f");
        assert_eq!(check(&other, &rec), Err(AuthError::InvalidApiKey));
        let expired = KeyRecord {
            expires_at: Some(1),
            ..rec.clone()
        };
        assert_eq!(check(&k, &expired), Err(AuthError::ApiKeyExpired));
        assert!(has_scopes(&rec, &["files:read".into()]));
        assert!(!has_scopes(&rec, &["files:write".into()]));
        for bad in [
            "ak_",
            "ak_0a1b2c3d",
            "ak_xyz_abc",
            "bk_0a1b2c3d_00",
            "ak_0a1b2c3d_00",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn presented_key_comes_from_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("authorization", "Bearer eyJ.a.b".parse().expect("hv"));
        assert_eq!(presented(&h), None, "a JWT is not a key");
        h.insert("authorization", "Bearer ak_1_2".parse().expect("hv"));
        assert_eq!(presented(&h), Some("ak_1_2"));
        h.insert("x-api-key", "ak_3_4".parse().expect("hv"));
        assert_eq!(presented(&h), Some("ak_3_4"), "X-API-Key wins");
    }

    #[test]
    fn cached_entries_round_trip() {
        let (_, rec) = key();
        let bytes = serde_json::to_vec(&Cached::Present(rec.clone())).expect("json");
        assert!(
            matches!(serde_json::from_slice::<Cached>(&bytes), Ok(Cached::Present(r)) if r == rec)
        );
        let bytes = serde_json::to_vec(&Cached::Absent { absent: true }).expect("json");
        assert!(matches!(
            serde_json::from_slice::<Cached>(&bytes),
            Ok(Cached::Absent { .. })
        ));
    }
}
