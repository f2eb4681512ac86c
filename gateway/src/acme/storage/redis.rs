//! ACME state in Redis, shared by every gateway replica: the account, the certificates (private keys
//! sealed with AES-256-GCM under `[tls.acme] storage_key_env`, bound to their Redis key), pending
//! challenge answers (so any replica answers any challenge), a lock with a lease per name (so exactly
//! one replica orders it; a replica that dies mid-order loses the lease and another finishes), and a
//! version counter that replicas watch to load certificates ordered elsewhere.
//!
//! ```text
//! aggios:acme:account:{sha256(directory)[..16]}  sealed account credentials
//! aggios:acme:cert:{name}                        hash: chain (PEM), key (sealed PEM), serial, tenant
//! aggios:acme:names                              set of names with a certificate
//! aggios:acme:version                            incremented on every certificate write
//! aggios:acme:lock:{name}                        owner replica id, with a lease (PX)
//! aggios:acme:http01:{token}                     key authorization (expires)
//! aggios:acme:alpn:{name}                        sealed challenge certificate and key (expires)
//! ```

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use redis::AsyncCommands;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use super::dir::{StorageError, StoredCert};
use crate::config::RedisSettings;
use crate::support::redis::SharedRedis;

/// Per-call timeout of ACME storage calls (off the request path: generous, and a breaker of its own,
/// so that a slow store never trips the rate limiter's).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a pending challenge answer is kept.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The Redis side of ACME storage.
pub struct RedisStorage {
    redis: SharedRedis,
    key: LessSafeKey,
    rng: SystemRandom,
    /// This replica, as lock owner.
    replica: String,
}

impl std::fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn redis_err(e: crate::support::redis::StoreError) -> StorageError {
    StorageError::Shared(e.to_string())
}

/// A held lock: renewed in the background while it lives, released when dropped.
pub struct LockGuard {
    storage: Arc<RedisStorage>,
    name: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
        let storage = Arc::clone(&self.storage);
        let name = std::mem::take(&mut self.name);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { storage.unlock(&name).await });
        }
    }
}

/// Extends the lease only if this replica still owns the lock.
const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
/// Deletes the lock only if this replica owns it.
const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

impl RedisStorage {
    /// A store on `[redis]` with its own connection; `key` seals private keys.
    pub fn new(settings: &RedisSettings, key: &[u8; 32]) -> Result<RedisStorage, StorageError> {
        let mut s = settings.clone();
        s.timeout = CALL_TIMEOUT;
        let redis =
            SharedRedis::new(&s.endpoint()).map_err(|e| StorageError::Shared(e.to_string()))?;
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| StorageError::Crypto("storage key"))?;
        let rng = SystemRandom::new();
        let mut id = [0u8; 8];
        rng.fill(&mut id)
            .map_err(|_| StorageError::Crypto("random replica id"))?;
        Ok(RedisStorage {
            redis,
            key: LessSafeKey::new(unbound),
            rng,
            replica: hex::encode(id),
        })
    }

    fn account_key(directory: &str) -> String {
        let digest = hex::encode(Sha256::digest(directory.as_bytes()));
        format!("aggios:acme:account:{}", &digest[..16])
    }

    fn cert_key(name: &str) -> String {
        format!("aggios:acme:cert:{name}")
    }

    /// Seals `plain`, bound to `context` (the Redis key it is stored under): base64(nonce ‖ sealed).
    fn seal(&self, context: &str, plain: &[u8]) -> Result<String, StorageError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StorageError::Crypto("nonce"))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| StorageError::Crypto("seal"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(B64.encode(out))
    }

    /// Opens what [`RedisStorage::seal`] made for the same `context`.
    fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, StorageError> {
        let raw = B64
            .decode(sealed)
            .map_err(|_| StorageError::Crypto("sealed value is not base64"))?;
        if raw.len() < NONCE_LEN {
            return Err(StorageError::Crypto("sealed value too short"));
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| StorageError::Crypto("nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| {
                StorageError::Crypto("cannot open a sealed value (wrong storage key, or tampered)")
            })?;
        Ok(plain.to_vec())
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        let key = key.to_string();
        self.redis
            .call(|mut c| async move { c.get::<_, Option<String>>(key).await })
            .await
            .map_err(redis_err)
    }

    pub async fn account(
        &self,
        directory: &str,
    ) -> Result<Option<instant_acme::AccountCredentials>, StorageError> {
        let key = Self::account_key(directory);
        let Some(sealed) = self.get(&key).await? else {
            return Ok(None);
        };
        let json = self.open(&key, &sealed)?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|source| StorageError::Json { path: key, source })
    }

    /// Stores the account unless another replica stored one first (then that one is returned).
    pub async fn save_account(
        &self,
        directory: &str,
        credentials: &instant_acme::AccountCredentials,
    ) -> Result<(), StorageError> {
        let key = Self::account_key(directory);
        let json = serde_json::to_vec(credentials).map_err(|source| StorageError::Json {
            path: key.clone(),
            source,
        })?;
        let sealed = self.seal(&key, &json)?;
        self.redis
            .call(|mut c| async move { c.set::<_, _, ()>(key, sealed).await })
            .await
            .map_err(redis_err)
    }

    pub async fn forget_account(&self, directory: &str) -> Result<(), StorageError> {
        let key = Self::account_key(directory);
        self.redis
            .call(|mut c| async move { c.del::<_, ()>(key).await })
            .await
            .map_err(redis_err)
    }

    /// The stored certificate for `name`, with its serial and owning tenant.
    pub async fn cert(
        &self,
        name: &str,
    ) -> Result<Option<(StoredCert, Option<String>)>, StorageError> {
        let key = Self::cert_key(name);
        let k = key.clone();
        let fields: std::collections::HashMap<String, String> = self
            .redis
            .call(|mut c| async move { c.hgetall(k).await })
            .await
            .map_err(redis_err)?;
        let (Some(chain), Some(sealed)) = (fields.get("chain"), fields.get("key")) else {
            return Ok(None);
        };
        let key_pem = self.open(&key, sealed)?;
        Ok(Some((
            StoredCert {
                chain_pem: chain.clone().into_bytes(),
                key_pem,
            },
            fields.get("tenant").cloned(),
        )))
    }

    /// The serial of the stored certificate for `name`.
    pub async fn serial(&self, name: &str) -> Result<Option<String>, StorageError> {
        let key = Self::cert_key(name);
        self.redis
            .call(|mut c| async move { c.hget::<_, _, Option<String>>(key, "serial").await })
            .await
            .map_err(redis_err)
    }

    pub async fn save_cert(
        &self,
        name: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
        serial: &str,
        tenant: Option<&str>,
    ) -> Result<(), StorageError> {
        let key = Self::cert_key(name);
        let sealed = self.seal(&key, key_pem)?;
        let chain = String::from_utf8_lossy(chain_pem).into_owned();
        let mut fields = vec![
            ("chain", chain),
            ("key", sealed),
            ("serial", serial.to_string()),
        ];
        if let Some(t) = tenant {
            fields.push(("tenant", t.to_string()));
        }
        let n = name.to_string();
        self.redis
            .call(|mut c| async move {
                c.hset_multiple::<_, _, _, ()>(&key, &fields).await?;
                c.sadd::<_, _, ()>("aggios:acme:names", n).await?;
                c.incr::<_, _, ()>("aggios:acme:version", 1).await
            })
            .await
            .map_err(redis_err)
    }

    /// The certificate version counter (changes whenever any replica stores a certificate).
    pub async fn version(&self) -> Result<u64, StorageError> {
        self.redis
            .call(|mut c| async move { c.get::<_, Option<u64>>("aggios:acme:version").await })
            .await
            .map(Option::unwrap_or_default)
            .map_err(redis_err)
    }

    /// Every name with a stored certificate.
    pub async fn names(&self) -> Result<Vec<String>, StorageError> {
        self.redis
            .call(|mut c| async move { c.smembers::<_, Vec<String>>("aggios:acme:names").await })
            .await
            .map_err(redis_err)
    }

    /// Takes the lock for ordering `name`, or `None` while another replica holds it.
    pub async fn lock(
        self: &Arc<Self>,
        name: &str,
        lease: Duration,
    ) -> Result<Option<LockGuard>, StorageError> {
        let key = format!("aggios:acme:lock:{name}");
        let me = self.replica.clone();
        let ms = lease.as_millis().max(1) as u64;
        let k = key.clone();
        let taken: Option<String> = self
            .redis
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(redis_err)?;
        if taken.is_none() {
            return Ok(None);
        }
        let this = Arc::clone(self);
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let (k, me) = (key.clone(), this.replica.clone());
                let renewed = this
                    .redis
                    .call(|mut c| async move {
                        redis::Script::new(RENEW)
                            .key(k)
                            .arg(me)
                            .arg(ms)
                            .invoke_async::<i64>(&mut c)
                            .await
                    })
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!(lock = %key, "lost the ACME order lock");
                    return;
                }
            }
        });
        Ok(Some(LockGuard {
            storage: Arc::clone(self),
            name: name.to_string(),
            heartbeat,
        }))
    }

    async fn unlock(&self, name: &str) {
        let key = format!("aggios:acme:lock:{name}");
        let me = self.replica.clone();
        let _ = self
            .redis
            .call(|mut c| async move {
                redis::Script::new(RELEASE)
                    .key(key)
                    .arg(me)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
    }

    pub async fn set_http01(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), StorageError> {
        let key = format!("aggios:acme:http01:{token}");
        let value = key_authorization.to_string();
        let secs = CHALLENGE_TTL.as_secs();
        self.redis
            .call(|mut c| async move { c.set_ex::<_, _, ()>(key, value, secs).await })
            .await
            .map_err(redis_err)
    }

    pub async fn http01(&self, token: &str) -> Result<Option<String>, StorageError> {
        self.get(&format!("aggios:acme:http01:{token}")).await
    }

    /// Publishes a TLS-ALPN-01 certificate (DER) and its PKCS#8 key for other replicas.
    pub async fn set_alpn(
        &self,
        name: &str,
        cert_der: &[u8],
        key_der: &[u8],
    ) -> Result<(), StorageError> {
        let key = format!("aggios:acme:alpn:{name}");
        let plain = serde_json::json!({ "cert": B64.encode(cert_der), "key": B64.encode(key_der) })
            .to_string();
        let sealed = self.seal(&key, plain.as_bytes())?;
        let secs = CHALLENGE_TTL.as_secs();
        self.redis
            .call(|mut c| async move { c.set_ex::<_, _, ()>(key, sealed, secs).await })
            .await
            .map_err(redis_err)
    }

    /// A TLS-ALPN-01 certificate (DER) and key (PKCS#8 DER) that a replica published for `name`.
    pub async fn alpn(&self, name: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StorageError> {
        let key = format!("aggios:acme:alpn:{name}");
        let Some(sealed) = self.get(&key).await? else {
            return Ok(None);
        };
        let plain = self.open(&key, &sealed)?;
        let v: serde_json::Value =
            serde_json::from_slice(&plain).map_err(|source| StorageError::Json {
                path: key.clone(),
                source,
            })?;
        let field = |f: &str| {
            v[f].as_str()
                .and_then(|s| B64.decode(s).ok())
                .ok_or(StorageError::Crypto("challenge certificate"))
        };
        Ok(Some((field("cert")?, field("key")?)))
    }

    /// Withdraws the challenge answers of an order.
    pub async fn clear_challenges(&self, name: &str, tokens: &[String]) {
        let mut keys = vec![format!("aggios:acme:alpn:{name}")];
        keys.extend(tokens.iter().map(|t| format!("aggios:acme:http01:{t}")));
        for k in keys {
            let _ = self
                .redis
                .call(|mut c| async move { c.del::<_, ()>(k).await })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(key: [u8; 32]) -> RedisStorage {
        let settings = RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            cluster: false,
            ca_pem: None,
            timeout: Duration::from_millis(5),
            revocation_cache: Duration::from_secs(1),
        };
        RedisStorage::new(&settings, &key).expect("storage")
    }

    #[test]
    fn sealed_values_open_only_with_the_key_and_the_same_context() {
        let s = storage([7; 32]);
        let sealed = s
            .seal("aggios:acme:cert:a", b"-----BEGIN PRIVATE KEY-----")
            .expect("seal");
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            s.open("aggios:acme:cert:a", &sealed).expect("open"),
            b"-----BEGIN PRIVATE KEY-----"
        );
        // Moved to another name's key: refused.
        assert!(s.open("aggios:acme:cert:b", &sealed).is_err());
        // Another storage key: refused.
        assert!(storage([8; 32])
            .open("aggios:acme:cert:a", &sealed)
            .is_err());
        // Tampered: refused.
        let mut raw = B64.decode(&sealed).expect("b64");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(s.open("aggios:acme:cert:a", &B64.encode(raw)).is_err());
    }
}
