//! `GET /api/tenant`, `GET|POST /api/tenants` (platform admins), internal `GET /internal/tenant-domains/{host}`.

use http::StatusCode;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::db::tenants;
use crate::http::auth::principal;
use crate::http::{json, read_json, ApiError, ApiResult, Ctx};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    subdomain: String,
    domain: Option<String>,
}

pub async fn current(ctx: &Ctx) -> ApiResult {
    let p = principal(ctx).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "tenant": p.tenant }),
    ))
}

pub async fn list(ctx: &Ctx) -> ApiResult {
    let p = principal(ctx).await?;
    if !p.is_platform_admin() {
        return Err(ApiError::Forbidden("platform admins only".into()));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "tenants": tenants::list(&ctx.state.db.primary).await? }),
    ))
}

pub async fn create(ctx: &Ctx, body: Incoming) -> ApiResult {
    let p = principal(ctx).await?;
    if !p.is_platform_admin() {
        return Err(ApiError::Forbidden("platform admins only".into()));
    }
    let b: CreateBody = read_json(body).await?;
    let mut errors = Vec::new();
    if b.name.trim().is_empty() || b.name.len() > 200 {
        errors.push(("name", "must be 1 to 200 characters".to_string()));
    }
    if !crate::domain::is_subdomain(&b.subdomain) {
        errors.push(("subdomain", "must be a DNS label: a-z, 0-9, -".to_string()));
    }
    if let Some(d) = &b.domain {
        if !crate::domain::is_domain(d) {
            errors.push(("domain", "must be a domain name".to_string()));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let t = tenants::create(
        &ctx.state.db.primary,
        b.name.trim(),
        &b.subdomain,
        b.domain.as_deref(),
    )
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "tenant": t }),
    ))
}

/// 200 when `host` belongs to an active tenant (subdomain of a base domain, or its own domain), else 404.
pub async fn domain_allowed(ctx: &Ctx, host: &str) -> ApiResult {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match tenants::by_host(&ctx.state.db.asks, &host, &ctx.state.base_domains).await? {
        Some(t) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "allowed": true, "tenant": t.subdomain }),
        )),
        None => Err(ApiError::NotFound(format!(
            "`{host}` is not an active tenant's host"
        ))),
    }
}
