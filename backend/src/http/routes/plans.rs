//! Tenant plans. Platform admins: `GET|POST /api/plans`, `PATCH /api/plans/{name}`,
//! `PUT /api/tenants/{id}/plan`, `POST /api/tenants/{id}/suspend|resume`. Tenant admins:
//! `GET /api/tenant/usage`. Internal listener (the gateway): `GET /internal/tenant-policy/{tenant}`.
//!
//! Every change is audited, bumps the policy version of the tenants it touches, drops their entries from
//! the gateway's Redis cache and names them on [`POLICY_CHANNEL`], so that every gateway replica applies
//! it within its next request (or, if the message is lost, within its cache's TTL).

use http::StatusCode;
use hyper::body::Incoming;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::db::{self, plans, tenants};
use crate::http::auth::{admin, platform_admin, Principal};
use crate::http::{json, read_json, ApiError, ApiResult, Ctx};
use crate::plans::{parse_fields, FieldError, Limits};
use contracts::redis_keys::{monthly_requests, tenant_policy, POLICY_CHANNEL};

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::InvalidField {
            field: e.field,
            message: e.message,
        }
    }
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::InvalidField {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// The JSON object of a body (anything else is refused).
async fn read_object(body: Incoming) -> Result<Map<String, Value>, ApiError> {
    match read_json::<Value>(body).await? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::BadRequest(
            "invalid_json",
            "the body must be a JSON object".into(),
        )),
    }
}

/// Which tenants a change touches.
pub enum Touched<'a> {
    One(&'a str),
    Many(Vec<String>),
}

/// Makes a committed change visible to every gateway: drops the cached policies and names the tenants
/// on the channel. Redis being down is logged, not fatal: the gateways' cache TTL bounds the delay.
pub async fn publish(ctx: &Ctx, touched: Touched<'_>) {
    let (keys, message): (Vec<String>, String) = match &touched {
        Touched::One(t) => (vec![tenant_policy(t)], (*t).to_string()),
        Touched::Many(ts) => (ts.iter().map(|t| tenant_policy(t)).collect(), "*".into()),
    };
    let Ok(mut redis) = ctx.state.redis().await else {
        tracing::warn!(
            "Redis unavailable: gateways see the policy change when their cache expires"
        );
        return;
    };
    let mut pipe = redis::pipe();
    for chunk in keys.chunks(500) {
        pipe.unlink(chunk).ignore();
    }
    pipe.publish(POLICY_CHANNEL, message).ignore();
    if let Err(e) = pipe.query_async::<()>(&mut redis).await {
        tracing::warn!(error = %e, "could not publish a policy change; gateways see it when their cache expires");
    }
}

/// Records `action` on `target` in `tenant`'s audit log, done by the platform admin `p`.
async fn audit_in(
    ctx: &Ctx,
    p: &Principal,
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    action: &str,
    target: &str,
) -> Result<(), sqlx::Error> {
    let ip = ctx.client_ip();
    db::audit::record(
        tx,
        &db::audit::Entry {
            tenant_id: tenant,
            user_id: Some(p.user_id),
            action,
            target: Some(target),
            ip: Some(&ip),
            request_id: &ctx.request_id,
        },
    )
    .await
}

pub async fn list(ctx: &Ctx) -> ApiResult {
    platform_admin(ctx).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "plans": plans::list(&ctx.state.db.primary).await?,
            "default_plan": ctx.state.default_plan,
        }),
    ))
}

pub async fn create(ctx: &Ctx, body: Incoming) -> ApiResult {
    let p = platform_admin(ctx).await?;
    let mut obj = read_object(body).await?;
    let name = match obj.remove("name") {
        Some(Value::String(n)) if crate::plans::is_plan_name(&n) => n,
        Some(_) => return Err(invalid("name", "must be a-z, 0-9, - and _, at most 40")),
        None => return Err(invalid("name", "is required")),
    };
    let limits = Limits::from_object(&obj)?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    let Some(plan) = plans::create(&mut tx, &name, &limits).await? else {
        return Err(ApiError::Conflict { field: "name" });
    };
    audit_in(ctx, &p, &mut tx, p.tenant.id, "plan_created", &name).await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "plan": plan }),
    ))
}

pub async fn update(ctx: &Ctx, name: &str, body: Incoming) -> ApiResult {
    let p = platform_admin(ctx).await?;
    let obj = read_object(body).await?;
    let fields = parse_fields(&obj, "")?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    let current = plans::get(&mut tx, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no plan `{name}`")))?;
    let limits = current.limits.with(&fields);
    let plan = plans::update(&mut tx, name, &limits)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no plan `{name}`")))?;
    let on_it = plans::tenants_on(&mut tx, name, name == ctx.state.default_plan).await?;
    audit_in(ctx, &p, &mut tx, p.tenant.id, "plan_updated", name).await?;
    tx.commit().await?;
    publish(ctx, Touched::Many(on_it)).await;
    Ok(json(StatusCode::OK, &serde_json::json!({ "plan": plan })))
}

/// The tenant named by `id`: its id, or its subdomain.
async fn target_tenant(ctx: &Ctx, id: &str) -> Result<tenants::Tenant, ApiError> {
    let found = match Uuid::parse_str(id) {
        Ok(uuid) => tenants::by_id(&ctx.state.db.primary, uuid).await?,
        Err(_) => tenants::by_subdomain(&ctx.state.db.primary, id).await?,
    };
    found.ok_or_else(|| ApiError::NotFound("no such tenant".into()))
}

/// `PUT /api/tenants/{id}/plan` `{plan, overrides}`: `plan` null = the default plan; `overrides`
/// replaces the tenant's overrides (absent: none).
pub async fn set_tenant_plan(ctx: &Ctx, id: &str, body: Incoming) -> ApiResult {
    let p = platform_admin(ctx).await?;
    let t = target_tenant(ctx, id).await?;
    let mut obj = read_object(body).await?;
    let plan = match obj.remove("plan") {
        Some(Value::String(n)) => Some(n),
        Some(Value::Null) | None => None,
        Some(_) => return Err(invalid("plan", "must be a plan's name or null")),
    };
    let overrides = match obj.remove("overrides") {
        Some(Value::Object(m)) => m,
        Some(Value::Null) | None => Map::new(),
        Some(_) => return Err(invalid("overrides", "must be an object of plan fields")),
    };
    if let Some(extra) = obj.keys().next() {
        return Err(invalid(
            extra,
            "no such field; the body has plan and overrides",
        ));
    }
    parse_fields(&overrides, "overrides.")?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, t.id).await?;
    let effective_name = plan.as_deref().unwrap_or(&ctx.state.default_plan);
    if plans::get(&mut tx, effective_name).await?.is_none() {
        return Err(invalid("plan", &format!("no plan `{effective_name}`")));
    }
    plans::set_tenant_plan(&mut tx, t.id, plan.as_deref()).await?;
    plans::set_overrides(&mut tx, t.id, &overrides).await?;
    let summary = format!(
        "plan={effective_name} overrides={}",
        Value::Object(overrides.clone())
    );
    audit_in(ctx, &p, &mut tx, t.id, "tenant_plan_set", &summary).await?;
    tx.commit().await?;
    publish(ctx, Touched::One(&t.subdomain)).await;
    let t = target_tenant(ctx, &t.id.to_string()).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "policy": policy_of(ctx, &t).await? }),
    ))
}

/// `POST /api/tenants/{id}/suspend` and `…/resume`.
pub async fn set_suspended(ctx: &Ctx, id: &str, suspended: bool) -> ApiResult {
    let p = platform_admin(ctx).await?;
    let t = target_tenant(ctx, id).await?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, t.id).await?;
    plans::set_suspended(&mut tx, t.id, suspended).await?;
    let action = if suspended {
        "tenant_suspended"
    } else {
        "tenant_resumed"
    };
    audit_in(ctx, &p, &mut tx, t.id, action, &t.subdomain).await?;
    tx.commit().await?;
    publish(ctx, Touched::One(&t.subdomain)).await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "tenant": t.subdomain, "suspended": suspended }),
    ))
}

/// The effective policy of `t`.
async fn policy_of(
    ctx: &Ctx,
    t: &tenants::Tenant,
) -> Result<contracts::plans::TenantPolicy, ApiError> {
    let (name, limits) = plans::effective(&ctx.state.db.primary, t, &ctx.state.default_plan)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(format!("tenant {}: its plan does not exist", t.subdomain))
        })?;
    Ok(limits.policy(
        &t.subdomain,
        &name,
        t.policy_version,
        t.suspended_at.is_some(),
    ))
}

/// `GET /internal/tenant-policy/{tenant}`: the effective policy the gateway enforces. 404 for a label
/// that is no active tenant's.
pub async fn internal_policy(ctx: &Ctx, tenant: &str) -> ApiResult {
    if !contracts::is_label(tenant) {
        return Err(ApiError::NotFound("no such tenant".into()));
    }
    let t = tenants::by_subdomain(&ctx.state.db.internal, tenant)
        .await?
        .filter(|t| t.is_active)
        .ok_or_else(|| ApiError::NotFound("no such tenant".into()))?;
    let (name, limits) = plans::effective(&ctx.state.db.internal, &t, &ctx.state.default_plan)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("tenant {tenant}: its plan does not exist")))?;
    Ok(json(
        StatusCode::OK,
        &limits.policy(
            &t.subdomain,
            &name,
            t.policy_version,
            t.suspended_at.is_some(),
        ),
    ))
}

/// The first day of the current month (UTC), and its `YYYY-MM` label.
pub fn this_month() -> (time::Date, String) {
    let now = time::OffsetDateTime::now_utc();
    let label = contracts::plans::month_of(now.unix_timestamp().max(0) as u64).0;
    (now.date().replace_day(1).unwrap_or(now.date()), label)
}

/// `GET /api/tenant/usage` (tenant admins): this month's requests and the storage in use, each against
/// the tenant's plan.
pub async fn usage(ctx: &Ctx) -> ApiResult {
    let p = admin(ctx).await?;
    let policy = policy_of(ctx, &p.tenant).await?;
    let (month, label) = this_month();
    let mut tx = ctx.state.db.tenant_tx_read(p.tenant.id).await?;
    let flushed = plans::requests_of_month(&mut tx, month).await?;
    let (used, reserved) = plans::storage(&mut tx).await?;
    tx.commit().await?;
    // Redis holds the exact count; Postgres what was last flushed (the floor if Redis lost it).
    let live: Option<i64> = match ctx.state.redis().await {
        Ok(mut r) => {
            redis::AsyncCommands::get(&mut r, monthly_requests(&p.tenant.subdomain, &label))
                .await
                .ok()
                .flatten()
        }
        Err(_) => None,
    };
    let requests = live.unwrap_or(0).max(flushed);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "tenant": p.tenant.subdomain,
            "plan": policy.plan,
            "month": label,
            "requests": { "used": requests, "limit": policy.monthly_requests },
            "storage_bytes": { "used": used, "reserved": reserved, "limit": policy.storage_bytes },
            "max_upload_bytes": policy.max_upload_bytes,
            "max_api_keys": policy.max_api_keys,
            "max_users": policy.max_users,
            "requests_per_second": policy.requests_per_second,
            "burst": policy.burst,
        }),
    ))
}

/// The effective limits of the caller's tenant (for the backend's own quotas).
pub async fn limits_of(
    ctx: &Ctx,
    t: &tenants::Tenant,
) -> Result<contracts::plans::TenantPolicy, ApiError> {
    policy_of(ctx, t).await
}
