//! Object storage behind one small interface. Keys are always `{tenant_uuid}/{path}`: a tenant can
//! name any path it likes, never one outside its own prefix.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayload, WriteMultipart,
};
use uuid::Uuid;

use crate::config::StorageConfig;

/// An object's bytes as they arrive from storage.
pub type ObjectStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("invalid path: {0}")]
    InvalidPath(&'static str),
    #[error("presigned URLs need S3 storage")]
    PresignUnsupported,
    #[error("storage: {0}")]
    Backend(String),
    /// The disk (or quota) is full.
    #[error("storage full: {0}")]
    Full(String),
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound,
            other if is_full(&other) => StorageError::Full(other.to_string()),
            other => StorageError::Backend(other.to_string()),
        }
    }
}

/// Whether an error comes from a full disk or quota (ENOSPC, EDQUOT) somewhere in its chain.
fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(28 | 122))
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A stored object's description.
#[derive(Debug, serde::Serialize)]
pub struct ObjectInfo {
    pub path: String,
    pub size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub last_modified: time::OffsetDateTime,
}

pub struct Storage {
    store: Arc<dyn ObjectStore>,
    s3: Option<Arc<AmazonS3>>,
    /// Local files cannot carry a content type; it is kept in a sidecar object under this prefix.
    local: bool,
}

/// A validated object path inside a tenant (`a/b.png`): no empty, `.` or `..` segments, no backslash,
/// no control characters, at most 1024 bytes.
pub fn check_path(path: &str) -> Result<(), StorageError> {
    if path.is_empty() || path.len() > 1024 {
        return Err(StorageError::InvalidPath("path must be 1 to 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(StorageError::InvalidPath("absolute paths are not allowed"));
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return Err(StorageError::InvalidPath(
            "backslashes and control characters are not allowed",
        ));
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with(".meta"))
    {
        return Err(StorageError::InvalidPath(
            "empty, `.` and `..` segments are not allowed",
        ));
    }
    Ok(())
}

pub(crate) fn key(tenant: Uuid, path: &str) -> Result<Path, StorageError> {
    check_path(path)?;
    Path::parse(format!("{tenant}/{path}"))
        .map_err(|_| StorageError::InvalidPath("not a valid object path"))
}

fn meta_key(tenant: Uuid, path: &str) -> Result<Path, StorageError> {
    Path::parse(format!(".meta/{tenant}/{path}"))
        .map_err(|_| StorageError::InvalidPath("not a valid object path"))
}

impl Storage {
    pub fn new(config: &StorageConfig) -> Result<Storage, StorageError> {
        match config {
            StorageConfig::Local { dir } => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StorageError::Backend(format!("STORAGE_DIR {}: {e}", dir.display()))
                })?;
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(StorageError::from)?;
                Ok(Storage {
                    store: Arc::new(fs),
                    s3: None,
                    local: true,
                })
            }
            StorageConfig::S3 {
                endpoint,
                bucket,
                access_key_id,
                secret_access_key,
                region,
            } => {
                let s3 = AmazonS3Builder::new()
                    .with_endpoint(endpoint)
                    .with_bucket_name(bucket)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key)
                    .with_region(region)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false)
                    .build()
                    .map_err(StorageError::from)?;
                let s3 = Arc::new(s3);
                Ok(Storage {
                    store: s3.clone(),
                    s3: Some(s3),
                    local: false,
                })
            }
        }
    }

    /// Starts a streamed upload; feed it with [`Upload::write`], then [`Upload::finish`] or
    /// [`Upload::abort`]. Nothing is visible under `path` until `finish`.
    #[tracing::instrument(level = "debug", name = "storage put", skip_all, fields(otel.kind = "client"))]
    pub async fn upload(
        &self,
        tenant: Uuid,
        path: &str,
        content_type: &str,
    ) -> Result<Upload<'_>, StorageError> {
        let k = key(tenant, path)?;
        let mut opts = PutMultipartOptions::default();
        if !self.local {
            opts.attributes
                .insert(Attribute::ContentType, content_type.to_string().into());
        }
        let inner = self.store.put_multipart_opts(&k, opts).await?;
        Ok(Upload {
            storage: self,
            writer: WriteMultipart::new(inner),
            tenant,
            path: path.to_string(),
            content_type: content_type.to_string(),
            size: 0,
        })
    }

    /// The object's content type, size and body stream.
    #[tracing::instrument(level = "debug", name = "storage get", skip_all, fields(otel.kind = "client"))]
    pub async fn get(
        &self,
        tenant: Uuid,
        path: &str,
    ) -> Result<(String, u64, ObjectStream), StorageError> {
        let k = key(tenant, path)?;
        let res = self.store.get(&k).await?;
        let size = res.meta.size;
        let content_type = if self.local {
            match self.store.get(&meta_key(tenant, path)?).await {
                Ok(m) => String::from_utf8_lossy(&m.bytes().await?).into_owned(),
                Err(_) => "application/octet-stream".into(),
            }
        } else {
            res.attributes
                .get(&Attribute::ContentType)
                .map_or_else(|| "application/octet-stream".to_string(), |v| v.to_string())
        };
        let stream = res.into_stream().map_err(StorageError::from).boxed();
        Ok((content_type, size, stream))
    }

    /// Deletes the object; its size.
    #[tracing::instrument(level = "debug", name = "storage delete", skip_all, fields(otel.kind = "client"))]
    pub async fn delete(&self, tenant: Uuid, path: &str) -> Result<u64, StorageError> {
        let k = key(tenant, path)?;
        let meta = self.store.head(&k).await?;
        self.store.delete(&k).await?;
        if self.local {
            let _ = self.store.delete(&meta_key(tenant, path)?).await;
        }
        Ok(meta.size)
    }

    /// The size of the object at `path`, `None` when there is none.
    #[tracing::instrument(level = "debug", name = "storage head", skip_all, fields(otel.kind = "client"))]
    pub async fn size_of(&self, tenant: Uuid, path: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&key(tenant, path)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Objects of `tenant` whose path starts with `prefix` (a folder prefix, or empty for all).
    #[tracing::instrument(level = "debug", name = "storage list", skip_all, fields(otel.kind = "client"))]
    pub async fn list(&self, tenant: Uuid, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let base = if prefix.is_empty() {
            Path::from(tenant.to_string())
        } else {
            check_path(prefix.trim_end_matches('/'))?;
            key(tenant, prefix.trim_end_matches('/'))?
        };
        let strip = format!("{tenant}/");
        let items: Vec<_> = self.store.list(Some(&base)).try_collect().await?;
        let mut out: Vec<ObjectInfo> = items
            .into_iter()
            .filter_map(|m| {
                let p = m.location.as_ref().strip_prefix(&strip)?.to_string();
                Some(ObjectInfo {
                    path: p,
                    size: m.size,
                    last_modified: time::OffsetDateTime::from_unix_timestamp(
                        m.last_modified.timestamp(),
                    )
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                })
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// A presigned GET URL valid for `ttl` (S3 only).
    #[tracing::instrument(level = "debug", name = "storage presign", skip_all, fields(otel.kind = "client"))]
    pub async fn presign(
        &self,
        tenant: Uuid,
        path: &str,
        ttl: Duration,
    ) -> Result<String, StorageError> {
        let s3 = self.s3.as_ref().ok_or(StorageError::PresignUnsupported)?;
        let k = key(tenant, path)?;
        self.store.head(&k).await?;
        let url = s3.signed_url(http::Method::GET, &k, ttl).await?;
        Ok(url.to_string())
    }

    /// Whether the store answers (for /readyz).
    pub async fn ready(&self) -> bool {
        let mut s = self.store.list(Some(&Path::from("readyz-probe")));
        !matches!(s.next().await, Some(Err(_)))
    }
}

/// A streamed upload in progress.
pub struct Upload<'a> {
    storage: &'a Storage,
    writer: WriteMultipart,
    tenant: Uuid,
    path: String,
    content_type: String,
    size: u64,
}

impl Upload<'_> {
    /// Appends `data`, waiting while too many parts are in flight (bounded memory).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.writer.wait_for_capacity(4).await?;
        self.writer.write(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Completes the upload; returns the object's size.
    pub async fn finish(self) -> Result<u64, StorageError> {
        self.writer.finish().await?;
        if self.storage.local {
            let meta = meta_key(self.tenant, &self.path)?;
            self.storage
                .store
                .put(&meta, PutPayload::from(Bytes::from(self.content_type)))
                .await?;
        }
        Ok(self.size)
    }

    /// Drops what was uploaded so far.
    pub async fn abort(self) {
        if let Err(e) = self.writer.abort().await {
            tracing::warn!(error = %e, "could not abort an upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_odd_paths_are_refused() {
        for ok in ["a.png", "docs/2026/report.pdf", "a..b/c", "ünïcode.txt"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a/./b",
            "a//b",
            "a\\b",
            "a\u{0}b",
            ".meta/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    /// Each rule with its own message, at its bounds; the keys are the tenant's prefix and the path.
    #[test]
    fn each_rule_refuses_with_its_reason_and_keys_sit_under_the_tenant() {
        let reason = |p: &str| match check_path(p) {
            Err(StorageError::InvalidPath(r)) => r,
            other => panic!("{p:?}: {other:?}"),
        };
        assert!(check_path(&"a".repeat(1024)).is_ok());
        assert_eq!(reason(&"a".repeat(1025)), "path must be 1 to 1024 bytes");
        assert_eq!(reason(""), "path must be 1 to 1024 bytes");
        assert_eq!(reason("/a"), "absolute paths are not allowed");
        assert_eq!(
            reason("a\\b"),
            "backslashes and control characters are not allowed"
        );
        assert_eq!(
            reason("a\u{7f}b"),
            "backslashes and control characters are not allowed"
        );
        for p in ["a/", "a/.", "./a", "a/../b", ".metadata", "a/.meta-x"] {
            assert_eq!(
                reason(p),
                "empty, `.` and `..` segments are not allowed",
                "{p:?}"
            );
        }
        assert!(
            check_path("a.meta/b").is_ok(),
            "only a segment starting .meta"
        );

        let t = Uuid::from_u128(0x1234);
        assert_eq!(
            key(t, "docs/a.pdf").expect("key").as_ref(),
            format!("{t}/docs/a.pdf")
        );
        assert!(matches!(key(t, "../x"), Err(StorageError::InvalidPath(_))));
        assert_eq!(
            meta_key(t, "docs/a.pdf").expect("meta key").as_ref(),
            format!(".meta/{t}/docs/a.pdf")
        );
    }
}
