//! Argon2id work off the async threads and bounded by `AppState::hashing` (19 MiB and tens of ms of
//! CPU each): passwords at login and on the consent page, OAuth client secrets.

use super::{ApiError, Ctx};
use crate::metrics::metrics;

/// Whether `secret` matches the PHC string `phc`.
pub async fn verify(ctx: &Ctx, secret: String, phc: String) -> Result<bool, ApiError> {
    let permit = ctx
        .state
        .hashing
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let started = std::time::Instant::now();
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&secret, &phc))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))?;
    drop(permit);
    metrics().argon2.observe(started.elapsed().as_secs_f64());
    Ok(ok)
}

/// The PHC string of `secret`.
pub async fn hash(ctx: &Ctx, secret: String) -> Result<String, ApiError> {
    let _permit = ctx
        .state
        .hashing
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || crate::auth::hash_password(&secret))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))?
        .map_err(ApiError::Internal)
}
