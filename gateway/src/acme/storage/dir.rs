//! Where ACME state lives: a directory (one gateway instance). The account's credentials are kept per
//! directory URL, so pointing the gateway at another CA creates a new account without losing the old.
//!
//! ```text
//! {storage}/accounts/{sha256(directory url)[..16]}.json   account credentials (0600)
//! {storage}/certs/{name}.crt                              PEM chain, leaf first
//! {storage}/certs/{name}.key                              PEM private key (0600)
//! ```
//! Every file is written to a temporary name and renamed, so a crash never leaves half a file; the key
//! is renamed before the chain, so a chain on disk always has its key.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A storage operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("shared storage: {0}")]
    Shared(String),
    #[error("storage encryption: {0}")]
    Crypto(&'static str),
}

/// A stored certificate: the PEM chain and the PEM key.
pub struct StoredCert {
    pub chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A storage directory.
#[derive(Debug, Clone)]
pub struct DirStorage {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl DirStorage {
    pub fn new(root: &Path) -> DirStorage {
        DirStorage {
            root: root.to_path_buf(),
        }
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(directory.as_bytes()));
        self.root
            .join("accounts")
            .join(format!("{}.json", &digest[..16]))
    }

    fn cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        // Names are validated DNS names; `*` is the one character a file name should not carry.
        let file = name.replace('*', "_wildcard_");
        let dir = self.root.join("certs");
        (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        )
    }

    /// The stored account credentials for `directory`, if any.
    pub fn account(
        &self,
        directory: &str,
    ) -> Result<Option<instant_acme::AccountCredentials>, StorageError> {
        let path = self.account_path(directory);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StorageError::Json {
                        path: path.display().to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Keeps the account credentials for `directory` (private: they hold the account key).
    pub fn save_account(
        &self,
        directory: &str,
        credentials: &instant_acme::AccountCredentials,
    ) -> Result<(), StorageError> {
        let path = self.account_path(directory);
        let json = serde_json::to_vec_pretty(credentials).map_err(|source| StorageError::Json {
            path: path.display().to_string(),
            source,
        })?;
        write_atomic(&path, &json, true)
    }

    /// Forgets the account for `directory` (the CA no longer knows it; a new one is registered).
    pub fn forget_account(&self, directory: &str) -> Result<(), StorageError> {
        let path = self.account_path(directory);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// The stored chain and key for `name`, if both are there.
    pub fn cert(&self, name: &str) -> Result<Option<StoredCert>, StorageError> {
        let (crt, key) = self.cert_paths(name);
        let read = |p: &Path| match std::fs::read(p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(p)(e)),
        };
        Ok(read(&crt)?
            .zip(read(&key)?)
            .map(|(chain_pem, key_pem)| StoredCert { chain_pem, key_pem }))
    }

    /// Keeps a new chain and key for `name` (the key first).
    pub fn save_cert(
        &self,
        name: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), StorageError> {
        let (crt, key) = self.cert_paths(name);
        write_atomic(&key, key_pem, true)?;
        write_atomic(&crt, chain_pem, false)
    }
}

/// [`crate::support::fs::write_atomic`], its failure as a storage error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), StorageError> {
    crate::support::fs::write_atomic(path, bytes, private).map_err(|e| StorageError::Io {
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #23 point 10: a leftover world-readable `NAME.tmp` (from a crash, or planted) does not make the
    /// next private key world-readable. Before the fix the key was written through that very file,
    /// whose mode was set only when it was created.
    #[cfg(unix)]
    #[test]
    fn a_leftover_temporary_file_does_not_weaken_a_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("a.example.test.key");
        for leftover in [
            key.with_extension("tmp"),
            dir.path().join(".a.example.test.key.tmp"),
        ] {
            std::fs::write(&leftover, b"old").expect("leftover");
            std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        write_atomic(&key, b"SECRET KEY", true).expect("write");
        let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key's mode");
        assert_eq!(std::fs::read(&key).expect("read"), b"SECRET KEY");
        // No temporary file of ours is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.ends_with(".tmp") && n != "a.example.test.tmp" && n != ".a.example.test.key.tmp"
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn certs_round_trip_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DirStorage::new(dir.path());
        assert!(s.cert("a.example.test").expect("read").is_none());
        s.save_cert("a.example.test", b"CHAIN", b"KEY")
            .expect("save");
        let c = s.cert("a.example.test").expect("read").expect("present");
        assert_eq!(
            (&c.chain_pem[..], &c.key_pem[..]),
            (&b"CHAIN"[..], &b"KEY"[..])
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("certs/a.example.test.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
    }
}
