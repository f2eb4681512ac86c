//! `PUT|GET|DELETE /api/files/{path}`, `GET /api/files?prefix=`: objects under the caller's tenant.

use std::time::Duration;

use futures_util::TryStreamExt;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::http::auth::caller;
use crate::http::{json, ApiError, ApiResult, Ctx};
use crate::storage::StorageError;

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => ApiError::NotFound("no such file".into()),
            StorageError::InvalidPath(m) => ApiError::BadRequest("invalid_path", m.into()),
            StorageError::PresignUnsupported => ApiError::BadRequest(
                "presign_unsupported",
                "presigned URLs need S3 storage".into(),
            ),
            StorageError::Full(detail) => {
                tracing::error!(error = %detail, "object storage full");
                ApiError::InsufficientStorage
            }
            StorageError::Backend(detail) => {
                tracing::warn!(error = %detail, "object storage error");
                ApiError::Unavailable("storage")
            }
        }
    }
}

/// The object path of `/api/files/{path}`, decoded once. Encoded separators and NUL are refused before
/// decoding, so `%2e%2e%2f` cannot turn into a traversal afterwards.
fn object_path(ctx: &Ctx) -> Result<String, ApiError> {
    let raw = ctx.path.strip_prefix("/api/files/").unwrap_or("");
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return Err(ApiError::BadRequest(
            "invalid_path",
            "encoded separators are not allowed".into(),
        ));
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("invalid_path", "path is not UTF-8".into()))?
        .into_owned();
    crate::storage::check_path(&decoded)?;
    Ok(decoded)
}

fn query_param(ctx: &Ctx, name: &str) -> Option<String> {
    ctx.query.as_deref()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

pub async fn put(ctx: &Ctx, body: Incoming) -> ApiResult {
    let p = caller(ctx, "files:write").await?;
    let path = object_path(ctx)?;
    let plan = crate::http::routes::plans::limits_of(ctx, &p.tenant).await?;
    // The smaller of the service's own cap and the plan's.
    let max = ctx.state.max_file_bytes.min(plan.max_upload_bytes);
    let declared = ctx
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ApiError::PayloadTooLarge);
    }
    let content_type = ctx
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 255)
        .unwrap_or("application/octet-stream")
        .to_string();
    // The storage quota: the upload's size (its whole allowance when it is sent without a length) is
    // reserved before a byte is written, atomically against every other upload of the tenant; the
    // reservation becomes the stored size on success and is released on failure.
    let reserve = declared.unwrap_or(max);
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let pool = &ctx.state.db.primary;
    // A tenant's first upload since quotas are counted: its stored bytes are counted from storage once.
    if !crate::db::plans::storage_known(pool, p.tenant.id).await? {
        let stored: u64 = ctx
            .state
            .storage
            .list(p.tenant.id, "")
            .await?
            .iter()
            .map(|o| o.size)
            .sum();
        crate::db::plans::init_storage(pool, p.tenant.id, as_i64(stored)).await?;
    }
    if !crate::db::plans::reserve(
        pool,
        p.tenant.id,
        as_i64(reserve),
        as_i64(plan.storage_bytes),
    )
    .await?
    {
        return Err(ApiError::PlanLimit(format!(
            "the `{}` plan's storage quota ({} bytes) has no room for this file",
            plan.plan, plan.storage_bytes
        )));
    }
    // The object this upload replaces frees its size once the upload is stored.
    let stored = match ctx.state.storage.size_of(p.tenant.id, &path).await {
        Ok(old) => stream_upload(ctx, p.tenant.id, &path, &content_type, body, reserve)
            .await
            .map(|size| (size, old.unwrap_or(0))),
        Err(e) => Err(e.into()),
    };
    let (size, freed) = *stored.as_ref().unwrap_or(&(0, 0));
    let settled = crate::db::plans::settle(
        pool,
        p.tenant.id,
        as_i64(reserve),
        as_i64(size),
        as_i64(freed),
    )
    .await;
    if let Err(e) = &settled {
        tracing::error!(error = %e, tenant = %p.tenant.subdomain, "could not settle a storage reservation");
    }
    let (size, _) = stored?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "path": path, "size": size, "content_type": content_type }),
    ))
}

/// Streams the body to storage as it arrives (memory stays bounded by the multipart buffer, not the
/// file), refusing it past `max` bytes; the stored size.
async fn stream_upload(
    ctx: &Ctx,
    tenant: uuid::Uuid,
    path: &str,
    content_type: &str,
    mut body: Incoming,
    max: u64,
) -> Result<u64, ApiError> {
    let mut upload = ctx.state.storage.upload(tenant, path, content_type).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(_) => {
                upload.abort().await;
                return Err(ApiError::BadRequest(
                    "invalid_body",
                    "the request body ended early".into(),
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            if upload.size() + data.len() as u64 > max {
                upload.abort().await;
                return Err(ApiError::PayloadTooLarge);
            }
            if let Err(e) = upload.write(&data).await {
                upload.abort().await;
                return Err(e.into());
            }
        }
    }
    Ok(upload.finish().await?)
}

pub async fn get(ctx: &Ctx) -> ApiResult {
    let p = caller(ctx, "files:read").await?;
    let path = object_path(ctx)?;
    if query_param(ctx, "presign").as_deref() == Some("1") {
        let url = ctx
            .state
            .storage
            .presign(p.tenant.id, &path, Duration::from_secs(300))
            .await?;
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "url": url, "expires_in": 300 }),
        ));
    }
    let (content_type, size, stream) = ctx.state.storage.get(p.tenant.id, &path).await?;
    // Streamed from storage: a large file never sits whole in memory.
    let body =
        StreamBody::new(stream.map_ok(Frame::data).map_err(std::io::Error::other)).boxed_unsync();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(size));
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // An uploaded HTML or SVG file opened from our origin would run its scripts there: only inert
    // types are shown inline, everything else downloads.
    if let Some(disposition) = attachment(&content_type, &path, &ctx.state.inline_types) {
        resp.headers_mut()
            .insert(http::header::CONTENT_DISPOSITION, disposition);
    }
    Ok(resp)
}

/// `Content-Disposition: attachment; filename="…"` unless `content_type` is in the inline list.
fn attachment(content_type: &str, path: &str, inline: &[String]) -> Option<HeaderValue> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if inline.contains(&essence) {
        return None;
    }
    let name: String = path
        .rsplit('/')
        .next()
        .unwrap_or("file")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .ok()
        .or(Some(HeaderValue::from_static("attachment")))
}

pub async fn delete(ctx: &Ctx) -> ApiResult {
    let p = caller(ctx, "files:write").await?;
    let path = object_path(ctx)?;
    let size = ctx.state.storage.delete(p.tenant.id, &path).await?;
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    crate::db::plans::settle(&ctx.state.db.primary, p.tenant.id, 0, 0, size).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "deleted": path }),
    ))
}

pub async fn list(ctx: &Ctx) -> ApiResult {
    let p = caller(ctx, "files:read").await?;
    let prefix = query_param(ctx, "prefix").unwrap_or_default();
    let files = ctx.state.storage.list(p.tenant.id, &prefix).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "files": files })))
}
