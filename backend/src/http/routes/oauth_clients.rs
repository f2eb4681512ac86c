//! What a tenant's admins manage of OAuth (all audited): clients — `GET|POST /api/oauth/clients`,
//! `PATCH|DELETE /api/oauth/clients/{id}` (disable/enable, delete), `POST /api/oauth/clients/{id}/secret`
//! (rotate; the new secret is shown once) — and the consents users granted — `GET /api/oauth/consents`,
//! `DELETE /api/oauth/consents/{id}`. Disabling or deleting a client, or revoking a consent, revokes
//! every token issued under it: refresh tokens at once, access tokens at the edge within its
//! revocation cache time.

use http::StatusCode;
use hyper::body::Incoming;
use serde::Deserialize;
use uuid::Uuid;

use crate::db::{self, oauth::Under};
use crate::http::auth::{admin, Principal};
use crate::http::routes::oauth::revoke_under;
use crate::http::{json, read_json, ApiError, ApiResult, Ctx};
use crate::oauth::{self, GRANT_TYPES, SCOPES};

/// Clients a tenant may register.
pub const MAX_CLIENTS_PER_TENANT: i64 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    /// A confidential client gets a secret; a public one (a native or browser app) must use PKCE.
    #[serde(default = "yes")]
    confidential: bool,
}

fn yes() -> bool {
    true
}

fn check(b: &CreateBody) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if b.name.trim().is_empty() || b.name.len() > 100 {
        errors.push(("name", "must be 1 to 100 characters".to_string()));
    }
    if b.grant_types.is_empty() {
        errors.push((
            "grant_types",
            format!("name at least one of {}", GRANT_TYPES.join(", ")),
        ));
    }
    if let Some(bad) = b
        .grant_types
        .iter()
        .find(|g| !GRANT_TYPES.contains(&g.as_str()))
    {
        errors.push((
            "grant_types",
            format!(
                "unknown grant type `{}`; known: {}",
                oauth::printable(bad),
                GRANT_TYPES.join(", ")
            ),
        ));
    }
    let has = |g: &str| b.grant_types.iter().any(|x| x == g);
    if has("client_credentials") && !b.confidential {
        errors.push((
            "grant_types",
            "a public client cannot use client_credentials".into(),
        ));
    }
    if has("refresh_token") && !has("authorization_code") {
        errors.push((
            "grant_types",
            "refresh_token comes with authorization_code".into(),
        ));
    }
    if has("authorization_code") && b.redirect_uris.is_empty() {
        errors.push((
            "redirect_uris",
            "authorization_code needs at least one redirect URI".into(),
        ));
    }
    if b.redirect_uris.len() > 10 {
        errors.push(("redirect_uris", "at most 10".into()));
    }
    for u in &b.redirect_uris {
        if let Err(e) = oauth::check_redirect_uri(u) {
            errors.push(("redirect_uris", e));
        }
    }
    if let Some(bad) = b.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        errors.push((
            "scopes",
            format!(
                "unknown scope `{}`; known: {}",
                oauth::printable(bad),
                SCOPES.join(", ")
            ),
        ));
    }
    errors
}

fn dedup(v: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

async fn audit(
    ctx: &Ctx,
    p: &Principal,
    tx: &mut sqlx::PgConnection,
    action: &str,
    target: &str,
) -> Result<(), ApiError> {
    p.audit(ctx, tx, action, Some(target)).await?;
    Ok(())
}

pub async fn create(ctx: &Ctx, body: Incoming) -> ApiResult {
    let p = admin(ctx).await?;
    let b: CreateBody = read_json(body).await?;
    let errors = check(&b);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let secret = b.confidential.then(|| oauth::new_secret("ocs_"));
    let secret_hash = match &secret {
        Some(s) => Some(crate::http::hashing::hash(ctx, s.clone()).await?),
        None => None,
    };
    let client_id = oauth::new_client_id();
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    if db::oauth::list_clients(&mut tx).await?.len() as i64 >= MAX_CLIENTS_PER_TENANT {
        return Err(ApiError::PlanLimit(format!(
            "a tenant may register at most {MAX_CLIENTS_PER_TENANT} OAuth clients"
        )));
    }
    let client = db::oauth::create_client(
        &mut tx,
        &db::oauth::NewClient {
            tenant_id: p.tenant.id,
            client_id: &client_id,
            name: b.name.trim(),
            secret_hash: secret_hash.as_deref(),
            redirect_uris: &dedup(&b.redirect_uris),
            grant_types: &dedup(&b.grant_types),
            scopes: &dedup(&b.scopes),
        },
    )
    .await?;
    audit(ctx, &p, &mut tx, "oauth_client_created", &client.client_id).await?;
    tx.commit().await?;
    let mut out = serde_json::json!({ "client": client });
    if let Some(s) = secret {
        out["client_secret"] = s.into();
    }
    Ok(json(StatusCode::CREATED, &out))
}

pub async fn list(ctx: &Ctx) -> ApiResult {
    let p = admin(ctx).await?;
    let mut tx = ctx.state.db.tenant_tx_read(p.tenant.id).await?;
    let clients = db::oauth::list_clients(&mut tx).await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "clients": clients }),
    ))
}

fn parse_id(id: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no such {what}")))
}

pub async fn delete(ctx: &Ctx, id: &str) -> ApiResult {
    let p = admin(ctx).await?;
    let id = parse_id(id, "client")?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    let Some(client) = db::oauth::client_by_id(&mut tx, id).await? else {
        return Err(ApiError::NotFound("no such client".into()));
    };
    let revoked = revoke_under(ctx, &mut tx, Under::Client(id)).await?;
    db::oauth::delete_client(&mut tx, id).await?;
    audit(ctx, &p, &mut tx, "oauth_client_deleted", &client.client_id).await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "deleted": id, "access_tokens_revoked": revoked }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    disabled: bool,
}

pub async fn update(ctx: &Ctx, id: &str, body: Incoming) -> ApiResult {
    let p = admin(ctx).await?;
    let id = parse_id(id, "client")?;
    let b: PatchBody = read_json(body).await?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    let Some(client) = db::oauth::set_disabled(&mut tx, id, b.disabled).await? else {
        return Err(ApiError::NotFound("no such client".into()));
    };
    let revoked = if b.disabled {
        revoke_under(ctx, &mut tx, Under::Client(id)).await?
    } else {
        0
    };
    let action = if b.disabled {
        "oauth_client_disabled"
    } else {
        "oauth_client_enabled"
    };
    audit(ctx, &p, &mut tx, action, &client.client_id).await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "client": client, "access_tokens_revoked": revoked }),
    ))
}

/// A new secret for a confidential client; the old one stops working at once.
pub async fn rotate_secret(ctx: &Ctx, id: &str) -> ApiResult {
    let p = admin(ctx).await?;
    let id = parse_id(id, "client")?;
    let secret = oauth::new_secret("ocs_");
    let hash = crate::http::hashing::hash(ctx, secret.clone()).await?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    if !db::oauth::set_secret(&mut tx, id, &hash).await? {
        return Err(ApiError::NotFound("no such confidential client".into()));
    }
    audit(
        ctx,
        &p,
        &mut tx,
        "oauth_client_secret_rotated",
        &id.to_string(),
    )
    .await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "client_secret": secret }),
    ))
}

pub async fn consents(ctx: &Ctx) -> ApiResult {
    let p = admin(ctx).await?;
    let mut tx = ctx.state.db.tenant_tx_read(p.tenant.id).await?;
    let list = db::oauth::list_consents(&mut tx).await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "consents": list }),
    ))
}

pub async fn revoke_consent(ctx: &Ctx, id: &str) -> ApiResult {
    let p = admin(ctx).await?;
    let id = parse_id(id, "consent")?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    if !db::oauth::consent_is_live(&mut tx, id).await? {
        return Err(ApiError::NotFound("no such consent".into()));
    }
    let revoked = revoke_under(ctx, &mut tx, Under::Consent(id)).await?;
    audit(ctx, &p, &mut tx, "oauth_consent_revoked", &id.to_string()).await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "revoked": id, "access_tokens_revoked": revoked }),
    ))
}
