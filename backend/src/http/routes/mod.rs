//! Dispatch by method and path; one module per resource.

pub mod api_keys;
pub mod auth;
pub mod files;
pub mod health;
pub mod tenants;
pub mod users;

use http::Method;
use hyper::body::Incoming;

use super::{ApiError, ApiResult, Ctx};

/// The public listener's routes.
pub async fn dispatch(ctx: &Ctx, body: Incoming) -> ApiResult {
    let segs: Vec<&str> = ctx.path.trim_start_matches('/').split('/').collect();
    match (&ctx.method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => health::healthz(ctx).await,
        (&Method::GET, ["readyz"]) => health::readyz(ctx).await,
        (&Method::GET, ["metrics"]) => health::metrics(ctx).await,
        (&Method::POST, ["api", "auth", "login"]) => auth::login(ctx, body).await,
        (&Method::POST, ["api", "auth", "refresh"]) => auth::refresh(ctx, body).await,
        (&Method::POST, ["api", "auth", "logout"]) => auth::logout(ctx, body).await,
        (&Method::GET, ["api", "users", "me"]) => users::me(ctx).await,
        (&Method::GET, ["api", "users"]) => users::list(ctx).await,
        (&Method::POST, ["api", "users"]) => users::create(ctx, body).await,
        (&Method::GET, ["api", "users", id]) => users::get(ctx, id).await,
        (&Method::PATCH, ["api", "users", id]) => users::update(ctx, id, body).await,
        (&Method::DELETE, ["api", "users", id]) => users::delete(ctx, id).await,
        (&Method::GET, ["api", "api-keys"]) => api_keys::list(ctx).await,
        (&Method::POST, ["api", "api-keys"]) => api_keys::create(ctx, body).await,
        (&Method::DELETE, ["api", "api-keys", id]) => api_keys::revoke(ctx, id).await,
        (&Method::GET, ["api", "files"]) => files::list(ctx).await,
        (&Method::PUT, ["api", "files", _, ..]) => files::put(ctx, body).await,
        (&Method::GET, ["api", "files", _, ..]) => files::get(ctx).await,
        (&Method::DELETE, ["api", "files", _, ..]) => files::delete(ctx).await,
        (&Method::GET, ["api", "tenant"]) => tenants::current(ctx).await,
        (&Method::GET, ["api", "tenants"]) => tenants::list(ctx).await,
        (&Method::POST, ["api", "tenants"]) => tenants::create(ctx, body).await,
        (_, ["healthz" | "readyz" | "metrics"])
        | (_, ["api", "auth", "login" | "refresh" | "logout"])
        | (_, ["api", "users", ..])
        | (_, ["api", "files", ..])
        | (_, ["api", "api-keys", ..])
        | (_, ["api", "tenant" | "tenants"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound("no such endpoint".into())),
    }
}

/// The internal listener's routes (never exposed through the gateway).
pub async fn dispatch_internal(ctx: &Ctx) -> ApiResult {
    let segs: Vec<&str> = ctx.path.trim_start_matches('/').split('/').collect();
    match (&ctx.method, segs.as_slice()) {
        (&Method::GET, ["internal", "tenant-domains", host]) => {
            tenants::domain_allowed(ctx, host).await
        }
        (&Method::GET, ["internal", "api-keys", prefix]) => api_keys::lookup(ctx, prefix).await,
        (&Method::GET, ["healthz"]) => health::healthz(ctx).await,
        _ => Err(ApiError::NotFound("no such endpoint".into())),
    }
}
