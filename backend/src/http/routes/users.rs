//! `GET /api/users/me`, `GET|POST /api/users`, `GET|PATCH|DELETE /api/users/{id}` (tenant admins).

use http::StatusCode;
use hyper::body::Incoming;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::hash_password;
use crate::db::{self, users};
use crate::http::auth::{admin, principal, Principal};
use crate::http::{json, read_json, ApiError, ApiResult, Ctx};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    email: String,
    password: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default = "member")]
    role: String,
}

fn member() -> String {
    "member".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    first_name: Option<String>,
    last_name: Option<String>,
    role: Option<String>,
    is_active: Option<bool>,
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("no such user".into()))
}

fn check_role(role: &str, by: &Principal, errors: &mut Vec<(&'static str, String)>) {
    match role {
        "admin" | "member" => {}
        "platform_admin" if by.is_platform_admin() => {}
        "platform_admin" => errors.push((
            "role",
            "only platform admins can grant platform_admin".into(),
        )),
        _ => errors.push(("role", "must be admin or member".into())),
    }
}

pub async fn me(ctx: &Ctx) -> ApiResult {
    let p = principal(ctx).await?;
    let user_id = p.user_id;
    let user = ctx
        .state
        .db
        .fresh_read(p.tenant.id, |c| Box::pin(users::get(c, user_id)))
        .await?
        .ok_or_else(|| {
            ApiError::Unauthorized("invalid_token", "the user no longer exists".into())
        })?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "user": user, "tenant": p.tenant }),
    ))
}

pub async fn list(ctx: &Ctx) -> ApiResult {
    let p = admin(ctx).await?;
    let mut tx = ctx.state.db.tenant_tx_read(p.tenant.id).await?;
    let all = users::list(&mut tx).await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "users": all })))
}

pub async fn get(ctx: &Ctx, id: &str) -> ApiResult {
    let p = admin(ctx).await?;
    let id = parse_id(id)?;
    let mut tx = ctx.state.db.tenant_tx_read(p.tenant.id).await?;
    let user = users::get(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "user": user })))
}

pub async fn create(ctx: &Ctx, body: Incoming) -> ApiResult {
    let p = admin(ctx).await?;
    let b: CreateBody = read_json(body).await?;
    let email = b.email.trim().to_lowercase();
    let mut errors = Vec::new();
    if !crate::domain::is_email(&email) {
        errors.push(("email", "must be an email address".to_string()));
    }
    if let Err(m) = crate::domain::check_password(&b.password) {
        errors.push(("password", m.to_string()));
    }
    check_role(&b.role, &p, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let password = b.password;
    let permit = ctx
        .state
        .hashing
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)?;
    drop(permit);
    let plan = crate::http::routes::plans::limits_of(ctx, &p.tenant).await?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    let users_now = db::plans::count_live(&mut tx, db::plans::Counted::Users).await?;
    if users_now >= i64::from(plan.max_users) {
        return Err(ApiError::PlanLimit(format!(
            "the `{}` plan allows {} active users",
            plan.plan, plan.max_users
        )));
    }
    let user = users::create(
        &mut tx,
        &users::NewUser {
            tenant_id: p.tenant.id,
            email: &email,
            password_hash: &hash,
            first_name: &b.first_name,
            last_name: &b.last_name,
            role: &b.role,
        },
    )
    .await?;
    p.audit(ctx, &mut tx, "user_created", Some(&user.id.to_string()))
        .await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "user": user }),
    ))
}

pub async fn update(ctx: &Ctx, id: &str, body: Incoming) -> ApiResult {
    let p = admin(ctx).await?;
    let id = parse_id(id)?;
    let b: PatchBody = read_json(body).await?;
    let mut errors = Vec::new();
    if let Some(r) = &b.role {
        check_role(r, &p, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // Re-activating a user takes a place of the plan's users as creating one does.
    let plan = match b.is_active {
        Some(true) => Some(crate::http::routes::plans::limits_of(ctx, &p.tenant).await?),
        _ => None,
    };
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    if let Some(plan) = plan {
        let inactive = users::get(&mut tx, id).await?.is_some_and(|u| !u.is_active);
        if inactive
            && db::plans::count_live(&mut tx, db::plans::Counted::Users).await?
                >= i64::from(plan.max_users)
        {
            return Err(ApiError::PlanLimit(format!(
                "the `{}` plan allows {} active users",
                plan.plan, plan.max_users
            )));
        }
    }
    let user = users::update(
        &mut tx,
        id,
        b.first_name.as_deref(),
        b.last_name.as_deref(),
        b.role.as_deref(),
        b.is_active,
    )
    .await?
    .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    // A changed role or active flag must not wait for the user's tokens to expire.
    let privileges_changed = b.role.is_some() || b.is_active.is_some();
    if privileges_changed {
        crate::db::refresh_tokens::revoke_user(&mut tx, id).await?;
    }
    p.audit(ctx, &mut tx, "user_updated", Some(&id.to_string()))
        .await?;
    tx.commit().await?;
    if privileges_changed {
        crate::http::auth::revoke_user_tokens(ctx, id).await?;
    }
    Ok(json(StatusCode::OK, &serde_json::json!({ "user": user })))
}

pub async fn delete(ctx: &Ctx, id: &str) -> ApiResult {
    let p = admin(ctx).await?;
    let id = parse_id(id)?;
    if id == p.user_id {
        return Err(ApiError::Validation(vec![(
            "id",
            "you cannot delete yourself".into(),
        )]));
    }
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    if !users::delete(&mut tx, id).await? {
        return Err(ApiError::NotFound("no such user".into()));
    }
    p.audit(ctx, &mut tx, "user_deleted", Some(&id.to_string()))
        .await?;
    tx.commit().await?;
    crate::http::auth::revoke_user_tokens(ctx, id).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "deleted": id })))
}
