//! `POST /api/auth/login | refresh | logout`.

use http::StatusCode;
use hyper::body::Incoming;
use redis::AsyncCommands;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{dummy_hash, new_refresh_token, token_hash};
use crate::db::{self, audit, refresh_tokens, tenants, users};
use crate::http::auth::{denylist_key, principal};
use crate::http::{json, read_json, ApiError, ApiResult, Ctx};

/// Failed logins allowed per account (tenant + email) in [`THROTTLE_WINDOW_SECS`].
pub const MAX_FAILURES_PER_ACCOUNT: i64 = 5;
/// Failed logins allowed per client IP in [`THROTTLE_WINDOW_SECS`].
pub const MAX_FAILURES_PER_IP: i64 = 20;
pub const THROTTLE_WINDOW_SECS: i64 = 900;

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize, Default)]
struct LogoutBody {
    refresh_token: Option<String>,
}

/// The tenant named by the host the gateway forwarded.
pub(crate) async fn host_tenant(ctx: &Ctx) -> Result<tenants::Tenant, ApiError> {
    let host = ctx
        .forwarded_host()
        .ok_or_else(|| ApiError::BadRequest("missing_host", "no forwarded host".into()))?;
    tenants::by_host(&ctx.state.db.primary, &host, &ctx.state.base_domains)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no active tenant for host `{host}`")))
}

fn mirror_key(hash: &[u8]) -> String {
    format!("aggios:refresh:{}", hex::encode(hash))
}

async fn issue_pair(
    ctx: &Ctx,
    tx: &mut sqlx::PgConnection,
    user: &users::User,
    tenant: &tenants::Tenant,
    family: Uuid,
) -> Result<serde_json::Value, ApiError> {
    let (access, _) = ctx
        .state
        .tokens
        .issue(user.id, &user.email, &tenant.subdomain, &user.role)
        .map_err(ApiError::Internal)?;
    let (refresh, hash) = new_refresh_token();
    let expires = OffsetDateTime::now_utc() + ctx.state.refresh_ttl;
    refresh_tokens::insert(tx, user.id, tenant.id, &hash, family, expires).await?;
    // Mirror for fast checks; Postgres stays the source of truth, so a Redis failure is not fatal here.
    let mut redis = ctx.state.redis().await?;
    let ttl = ctx.state.refresh_ttl.as_secs();
    if let Err(e) = redis
        .set_ex::<_, _, ()>(mirror_key(&hash), format!("{}:{family}", user.id), ttl)
        .await
    {
        tracing::warn!(error = %e, "could not mirror the refresh token in Redis");
    }
    Ok(serde_json::json!({
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": ctx.state.tokens.ttl.as_secs(),
    }))
}

pub async fn login(ctx: &Ctx, body: Incoming) -> ApiResult {
    let b: LoginBody = read_json(body).await?;
    let email = b.email.trim().to_lowercase();
    let mut invalid = Vec::new();
    if email.is_empty() || !email.contains('@') || email.len() > 254 {
        invalid.push(("email", "must be an email address".to_string()));
    }
    if b.password.is_empty() || b.password.len() > 1024 {
        invalid.push(("password", "must be 1 to 1024 characters".to_string()));
    }
    if !invalid.is_empty() {
        return Err(ApiError::Validation(invalid));
    }
    let tenant = host_tenant(ctx).await?;
    let user = sign_in(ctx, &tenant, &email, b.password).await?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
    let pair = issue_pair(ctx, &mut tx, &user, &tenant, Uuid::new_v4()).await?;
    audit::record(
        &mut tx,
        &audit::Entry {
            tenant_id: tenant.id,
            user_id: Some(user.id),
            action: "login",
            target: None,
            ip: Some(&ctx.client_ip()),
            request_id: &ctx.request_id,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, &pair))
}

/// A user of `tenant` proven by email and password, throttled per account and per client address
/// (failures counted, attempts beyond the limits refused with 429): the login, and the OAuth consent
/// page's sign-in. A failure is audited; 401 `invalid_credentials`.
pub async fn sign_in(
    ctx: &Ctx,
    tenant: &tenants::Tenant,
    email: &str,
    password: String,
) -> Result<users::User, ApiError> {
    let ip = ctx.client_ip();
    let acct_key = format!("aggios:login_fail:acct:{}:{email}", tenant.id);
    let ip_key = format!("aggios:login_fail:ip:{ip}");
    let mut redis = ctx.state.redis().await?;
    // Admission before the password is looked at, atomically: failures plus attempts in flight may not
    // exceed the limit, so parallel guesses cannot all be evaluated against a count read earlier.
    // Attempts beyond it wait for those in flight (a burst of correct logins still gets in) and are
    // refused once the failures alone reach the limit.
    let acct_busy = format!("{acct_key}:inflight");
    let ip_busy = format!("{ip_key}:inflight");
    let admission = redis::Script::new(ADMIT_LOGIN);
    let waited = std::time::Instant::now();
    loop {
        let verdict: i64 = admission
            .key(&acct_key)
            .key(&acct_busy)
            .key(&ip_key)
            .key(&ip_busy)
            .arg(MAX_FAILURES_PER_ACCOUNT)
            .arg(MAX_FAILURES_PER_IP)
            .arg(INFLIGHT_TTL_MS)
            .invoke_async(&mut redis)
            .await?;
        if verdict == 1 {
            break;
        }
        if verdict < 0 || waited.elapsed() > ADMISSION_WAIT {
            let ttl: i64 = redis
                .ttl(if verdict == -2 { &ip_key } else { &acct_key })
                .await?;
            return Err(ApiError::TooManyAttempts {
                retry_after: ttl.max(1) as u64,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let outcome = check_credentials(ctx, tenant, email, password, &ip).await;
    let mut pipe = redis::pipe();
    pipe.decr(&acct_busy, 1).ignore().decr(&ip_busy, 1).ignore();
    match &outcome {
        Ok(_) => {
            pipe.del(&acct_key).ignore();
        }
        Err(ApiError::Unauthorized(..)) => {
            pipe.incr(&acct_key, 1)
                .ignore()
                .expire(&acct_key, THROTTLE_WINDOW_SECS)
                .ignore()
                .incr(&ip_key, 1)
                .ignore()
                .expire(&ip_key, THROTTLE_WINDOW_SECS)
                .ignore();
        }
        Err(_) => {}
    }
    let _: () = pipe.query_async(&mut redis).await?;
    outcome
}

/// Admits one login attempt. KEYS: account failures, account in flight, IP failures, IP in flight;
/// ARGV: account limit, IP limit, in-flight TTL (ms). 1 = go, 0 = wait, -1/-2 = account/IP refused.
const ADMIT_LOGIN: &str = r"
local af = tonumber(redis.call('GET', KEYS[1]) or '0')
local ai = math.max(0, tonumber(redis.call('GET', KEYS[2]) or '0'))
local pf = tonumber(redis.call('GET', KEYS[3]) or '0')
local pi = math.max(0, tonumber(redis.call('GET', KEYS[4]) or '0'))
if af >= tonumber(ARGV[1]) then return -1 end
if pf >= tonumber(ARGV[2]) then return -2 end
if af + ai >= tonumber(ARGV[1]) or pf + pi >= tonumber(ARGV[2]) then return 0 end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return 1
";
/// An attempt in flight holds its slot at most this long (a process that dies mid-attempt).
const INFLIGHT_TTL_MS: u64 = 30_000;
/// How long an attempt waits for a slot before 429.
const ADMISSION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The password check of an admitted attempt: the active user, or 401 (audited).
async fn check_credentials(
    ctx: &Ctx,
    tenant: &tenants::Tenant,
    email: &str,
    password: String,
    ip: &str,
) -> Result<users::User, ApiError> {
    // Read the user in a short transaction: no pooled connection is held during the (slow, CPU-bound)
    // hash verification, so a burst of logins cannot starve every other request of connections.
    let mut tx = db::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
    let user = users::by_email(&mut tx, email).await?;
    tx.commit().await?;
    // Unknown email and wrong password cost the same: one Argon2id verification either way.
    let phc = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |u| u.password_hash.clone());
    let ok = crate::http::hashing::verify(ctx, password, phc).await?;
    match user {
        Some(u) if ok && u.is_active => Ok(u),
        _ => {
            // Counted by the caller.
            let mut tx = db::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
            audit::record(
                &mut tx,
                &audit::Entry {
                    tenant_id: tenant.id,
                    user_id: None,
                    action: "login_failed",
                    target: Some(email),
                    ip: Some(ip),
                    request_id: &ctx.request_id,
                },
            )
            .await?;
            tx.commit().await?;
            Err(ApiError::Unauthorized(
                "invalid_credentials",
                "invalid email or password".into(),
            ))
        }
    }
}

pub async fn refresh(ctx: &Ctx, body: Incoming) -> ApiResult {
    let b: RefreshBody = read_json(body).await?;
    let tenant = host_tenant(ctx).await?;
    let hash = token_hash(b.refresh_token.trim());
    let mut tx = db::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
    let Some(rt) = refresh_tokens::by_hash_for_update(&mut tx, &hash).await? else {
        return Err(ApiError::Unauthorized(
            "invalid_refresh_token",
            "unknown refresh token".into(),
        ));
    };
    let mut redis = ctx.state.redis().await?;
    if rt.revoked_at.is_some() {
        // A rotated token came back: someone holds a stolen copy. Kill the whole family.
        let hashes = refresh_tokens::revoke_family(&mut tx, rt.family_id).await?;
        audit::record(
            &mut tx,
            &audit::Entry {
                tenant_id: tenant.id,
                user_id: Some(rt.user_id),
                action: "refresh_reuse_detected",
                target: Some(&rt.family_id.to_string()),
                ip: Some(&ctx.client_ip()),
                request_id: &ctx.request_id,
            },
        )
        .await?;
        tx.commit().await?;
        for h in hashes {
            let _: Result<(), _> = redis.del(mirror_key(&h)).await;
        }
        return Err(ApiError::Unauthorized(
            "refresh_token_reused",
            "refresh token already used; all sessions of this login were revoked".into(),
        ));
    }
    if rt.expires_at < OffsetDateTime::now_utc() {
        return Err(ApiError::Unauthorized(
            "refresh_token_expired",
            "the refresh token has expired".into(),
        ));
    }
    let user = users::get(&mut tx, rt.user_id)
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(|| {
            ApiError::Unauthorized("invalid_refresh_token", "the user no longer exists".into())
        })?;
    refresh_tokens::revoke(&mut tx, rt.id).await?;
    let pair = issue_pair(ctx, &mut tx, &user, &tenant, rt.family_id).await?;
    tx.commit().await?;
    let _: Result<(), _> = redis.del(mirror_key(&hash)).await;
    Ok(json(StatusCode::OK, &pair))
}

pub async fn logout(ctx: &Ctx, body: Incoming) -> ApiResult {
    let p = principal(ctx).await?;
    let b: LogoutBody = read_json::<LogoutBody>(body).await.unwrap_or_default();
    let mut redis = ctx.state.redis().await?;
    let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    // The gateway and this service refuse the token's jti until no verifier would accept it any more:
    // its `exp` plus the largest clock leeway either of them allows.
    let ttl = p.exp.saturating_sub(now) + crate::auth::MAX_VERIFIER_LEEWAY_SECS;
    let _: () = redis.set_ex(denylist_key(&p.jti), 1, ttl).await?;
    let mut tx = db::tenant_tx(&ctx.state.db.primary, p.tenant.id).await?;
    if let Some(rt) = b.refresh_token {
        if let Some(found) =
            refresh_tokens::by_hash_for_update(&mut tx, &token_hash(rt.trim())).await?
        {
            if found.user_id == p.user_id {
                for h in refresh_tokens::revoke_family(&mut tx, found.family_id).await? {
                    let _: Result<(), _> = redis.del(mirror_key(&h)).await;
                }
            }
        }
    }
    audit::record(
        &mut tx,
        &audit::Entry {
            tenant_id: p.tenant.id,
            user_id: Some(p.user_id),
            action: "logout",
            target: None,
            ip: Some(&ctx.client_ip()),
            request_id: &ctx.request_id,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "status": "logged_out" }),
    ))
}
