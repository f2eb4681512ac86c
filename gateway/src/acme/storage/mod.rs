//! The storage an ACME order uses — a directory ([`dir`]) for one gateway, or Redis shared
//! by the replicas ([`redis`]) — and the order lock that comes with it. Apart from both, so
//! that neither names the other.

pub mod dir;
pub mod redis;

use std::sync::Arc;

use dir::{DirStorage, StorageError, StoredCert};
use redis::{LockGuard, RedisStorage};

/// The storage an ACME order uses: a directory, or Redis shared by the replicas.
#[derive(Clone, Debug)]
pub enum Storage {
    Dir(DirStorage),
    Redis(Arc<RedisStorage>),
}

/// The outcome of asking for the order lock of a name.
pub enum Lock {
    /// No lock is needed (a directory serves one instance).
    Free,
    /// This replica holds it until the guard drops.
    Held(LockGuard),
    /// Another replica is ordering the name.
    Busy,
}

impl Storage {
    pub async fn account(
        &self,
        directory: &str,
    ) -> Result<Option<instant_acme::AccountCredentials>, StorageError> {
        match self {
            Storage::Dir(d) => d.account(directory),
            Storage::Redis(r) => r.account(directory).await,
        }
    }

    pub async fn save_account(
        &self,
        directory: &str,
        credentials: &instant_acme::AccountCredentials,
    ) -> Result<(), StorageError> {
        match self {
            Storage::Dir(d) => d.save_account(directory, credentials),
            Storage::Redis(r) => r.save_account(directory, credentials).await,
        }
    }

    pub async fn forget_account(&self, directory: &str) -> Result<(), StorageError> {
        match self {
            Storage::Dir(d) => d.forget_account(directory),
            Storage::Redis(r) => r.forget_account(directory).await,
        }
    }

    /// The stored certificate for `name` and the tenant that owns it (on-demand names), when its
    /// serial differs from `known` (what this process serves already).
    pub async fn cert_if_new(
        &self,
        name: &str,
        known: Option<&str>,
    ) -> Result<Option<(StoredCert, Option<String>)>, StorageError> {
        match self {
            // A directory is written by this process only: read it when nothing is served yet.
            Storage::Dir(d) if known.is_none() => Ok(d.cert(name)?.map(|c| (c, None))),
            Storage::Dir(_) => Ok(None),
            Storage::Redis(r) => {
                let serial = r.serial(name).await?;
                if serial.is_none() || serial.as_deref() == known {
                    return Ok(None);
                }
                r.cert(name).await
            }
        }
    }

    pub async fn save_cert(
        &self,
        name: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
        serial: &str,
        tenant: Option<&str>,
    ) -> Result<(), StorageError> {
        match self {
            Storage::Dir(d) => d.save_cert(name, chain_pem, key_pem),
            Storage::Redis(r) => r.save_cert(name, chain_pem, key_pem, serial, tenant).await,
        }
    }

    /// The lock for ordering `name`, held for `lease` past its last heartbeat.
    pub async fn lock(&self, name: &str, lease: std::time::Duration) -> Result<Lock, StorageError> {
        match self {
            Storage::Dir(_) => Ok(Lock::Free),
            Storage::Redis(r) => Ok(match r.lock(name, lease).await? {
                Some(g) => Lock::Held(g),
                None => Lock::Busy,
            }),
        }
    }
}
