//! The authorization server of each tenant, on the tenant's own host (RFC 6749, 7636, 7009, 7662, 8414):
//! `POST /oauth/token` (client credentials, authorization code with PKCE S256, refresh with rotation and
//! reuse detection), `GET|POST /oauth/authorize` (the consent page: the user signs in with the platform's
//! login and approves the client's scopes), `POST /oauth/revoke`, `POST /oauth/introspect`,
//! `GET /.well-known/oauth-authorization-server` and `GET /.well-known/jwks.json`.
//!
//! Everything is scoped to the host's tenant: a client of another tenant is unknown here, and a user can
//! consent only to clients of their own tenant. Errors are the RFC's codes as JSON, never a 500, and a
//! refused request issues nothing.

use http::{HeaderValue, Response, StatusCode};
use hyper::body::Incoming;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::token_hash;
use crate::db::oauth::{self as db, Client, Under};
use crate::db::{self as dbm, tenants::Tenant, users};
use crate::http::routes::auth::{host_tenant, sign_in};
use crate::http::{full, json, ApiError, ApiResult, Body, Ctx};
use crate::oauth::{self, AccessClaims, OAuthError};

/// A failure of an OAuth endpoint: the RFC's error (answered as such) or a service failure (503/500).
enum Fail {
    OAuth(OAuthError),
    Api(ApiError),
}

impl From<OAuthError> for Fail {
    fn from(e: OAuthError) -> Fail {
        Fail::OAuth(e)
    }
}
impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        Fail::Api(e)
    }
}
impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Fail {
        Fail::Api(e.into())
    }
}
impl From<redis::RedisError> for Fail {
    fn from(e: redis::RedisError) -> Fail {
        Fail::Api(e.into())
    }
}

/// `Cache-Control: no-store` on everything carrying tokens or their errors (RFC 6749 §5.1).
fn no_store(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r.headers_mut()
        .insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn error_response(e: &OAuthError, basic: bool) -> Response<Body> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = no_store(json(
        status,
        &serde_json::json!({ "error": e.code, "error_description": e.description }),
    ));
    if e.status == 401 {
        let scheme = if basic {
            "Basic realm=\"oauth\""
        } else {
            "Bearer realm=\"oauth\""
        };
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(scheme),
        );
    }
    r
}

/// The endpoint's answer: an OAuth error as the RFC's JSON (a client that tried HTTP Basic is asked for
/// it again on 401), a service failure as the API's.
fn finish(ctx: &Ctx, result: Result<Response<Body>, Fail>) -> ApiResult {
    let basic = ctx
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("basic ")));
    match result {
        Ok(r) => Ok(r),
        Err(Fail::OAuth(e)) => Ok(error_response(&e, basic)),
        Err(Fail::Api(ApiError::TooManyAttempts { retry_after })) => {
            let mut r = error_response(
                &OAuthError {
                    code: "too_many_requests",
                    description: "too many requests; retry later".into(),
                    status: 429,
                },
                false,
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            Ok(r)
        }
        Err(Fail::Api(e)) => Err(e),
    }
}

/// A form body (`application/x-www-form-urlencoded`, at most 64 KiB). A parameter given twice is a bad
/// request (RFC 6749 §3.1).
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn parse(bytes: &[u8]) -> Result<Form, OAuthError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(p, _)| p == k) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter `{}` given more than once",
                    oauth::printable(k)
                )));
            }
        }
        Ok(Form(pairs))
    }
}

async fn read_form(ctx: &Ctx, body: Incoming) -> Result<Form, Fail> {
    use http_body_util::{BodyExt, Limited};
    let form_type = ctx
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form_type {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        )
        .into());
    }
    let bytes = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map_err(|_| OAuthError::invalid_request("the body could not be read (at most 64 KiB)"))?
        .to_bytes();
    Ok(Form::parse(&bytes)?)
}

/// One more request in this minute's window of `key`; `Err(TooManyAttempts)` beyond `limit`.
async fn rate(ctx: &Ctx, key: String, limit: u32) -> Result<(), Fail> {
    let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let key = format!("{key}:{}", now / 60);
    let mut redis = ctx.state.redis().await?;
    let (count,): (u64,) = redis::pipe()
        .incr(&key, 1)
        .expire(&key, 120)
        .ignore()
        .query_async(&mut redis)
        .await?;
    if count > u64::from(limit) {
        return Err(ApiError::TooManyAttempts {
            retry_after: 60 - now % 60,
        }
        .into());
    }
    Ok(())
}

/// The per-address limit of the token, revocation and introspection endpoints, before anything else.
async fn rate_by_address(ctx: &Ctx) -> Result<(), Fail> {
    rate(
        ctx,
        format!("aggios:oauth_rate:ip:{}", ctx.client_ip()),
        ctx.state.oauth.token_rate_per_ip,
    )
    .await
}

/// This host's issuer identifier: the scheme the gateway saw (`X-Forwarded-Proto`) and the host.
fn issuer(ctx: &Ctx, tenant: &Tenant) -> String {
    let proto = ctx
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "http" || *p == "https")
        .unwrap_or("https");
    let host = ctx
        .forwarded_host()
        .unwrap_or_else(|| tenant.subdomain.clone());
    format!("{proto}://{host}")
}

/// The client a request authenticates as, in the host's tenant: known, enabled, within its rate, with
/// the right secret (confidential) or none (public). The failures are `invalid_client`, all alike.
async fn authenticate_client(
    ctx: &Ctx,
    tenant: &Tenant,
    form: &Form,
) -> Result<(Client, oauth::ClientAuth), Fail> {
    let authorization = ctx
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let auth = oauth::client_auth(
        authorization,
        form.get("client_id"),
        form.get("client_secret"),
    )?;
    let unknown = || OAuthError::invalid_client("client authentication failed");
    let client = if auth.client_id.len() <= 64 {
        let mut tx = ctx.state.db.tenant_tx_fresh(tenant.id).await?;
        let c = db::client_by_client_id(&mut tx, &auth.client_id).await?;
        tx.commit().await?;
        c.filter(|c| c.disabled_at.is_none())
    } else {
        None
    };
    let Some(client) = client else {
        // An unknown client costs what a known one does when a secret is presented.
        if let Some(secret) = auth.secret.clone() {
            let _ =
                crate::http::hashing::verify(ctx, secret, crate::auth::dummy_hash().into()).await;
        }
        return Err(Fail::OAuth(unknown()));
    };
    rate(
        ctx,
        format!("aggios:oauth_rate:client:{}", client.id),
        ctx.state.oauth.token_rate_per_client,
    )
    .await?;
    match (&client.secret_hash, &auth.secret) {
        (Some(phc), Some(secret)) => {
            if !crate::http::hashing::verify(ctx, secret.clone(), phc.clone()).await? {
                return Err(unknown().into());
            }
        }
        (None, None) => {}
        _ => return Err(unknown().into()),
    }
    Ok((client, auth))
}

/// Puts access tokens on the denylist the gateway and this service read, each until no verifier would
/// accept it any more.
async fn denylist(ctx: &Ctx, tokens: &[(Uuid, OffsetDateTime)]) -> Result<(), Fail> {
    if tokens.is_empty() {
        return Ok(());
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut pipe = redis::pipe();
    for (jti, exp) in tokens {
        let ttl =
            (exp.unix_timestamp() - now).max(0) as u64 + crate::auth::MAX_VERIFIER_LEEWAY_SECS;
        pipe.set_ex(
            contracts::redis_keys::denylist_jti(&jti.to_string()),
            1,
            ttl,
        )
        .ignore();
    }
    let mut redis = ctx.state.redis().await?;
    let _: () = pipe.query_async(&mut redis).await?;
    Ok(())
}

/// Revokes everything issued under `what` in the caller's transaction: refresh tokens in the database,
/// live access tokens on the denylist (before the caller commits: a Redis failure revokes nothing).
pub(crate) async fn revoke_under(
    ctx: &Ctx,
    tx: &mut sqlx::PgConnection,
    what: Under,
) -> Result<usize, ApiError> {
    let live = db::revoke_under(tx, what).await?;
    match denylist(ctx, &live).await {
        Ok(()) => Ok(live.len()),
        Err(Fail::Api(e)) => Err(e),
        Err(Fail::OAuth(e)) => Err(ApiError::Internal(e.to_string())),
    }
}

/// What a new token is issued for.
struct Grant<'a> {
    client: &'a Client,
    /// The user who consented; `None` for client credentials.
    user: Option<Uuid>,
    consent: Option<Uuid>,
    family: Option<Uuid>,
    scopes: Vec<String>,
    with_refresh: bool,
}

/// Signs an access token (and, when asked, a refresh token) for `g`; the token response.
async fn issue(
    ctx: &Ctx,
    tx: &mut sqlx::PgConnection,
    tenant: &Tenant,
    g: Grant<'_>,
) -> Result<Response<Body>, Fail> {
    let now = OffsetDateTime::now_utc();
    let ttl = ctx.state.oauth.access_ttl;
    let expires = now + ttl;
    let jti = Uuid::new_v4();
    let sub = g
        .user
        .map_or_else(|| g.client.client_id.clone(), |u| u.to_string());
    let scope = g.scopes.join(" ");
    let claims = AccessClaims {
        iss: issuer(ctx, tenant),
        sub: sub.clone(),
        user_id: sub,
        tenant_id: tenant.subdomain.clone(),
        client_id: g.client.client_id.clone(),
        scope: scope.clone(),
        jti: jti.to_string(),
        iat: now.unix_timestamp().max(0) as u64,
        exp: expires.unix_timestamp().max(0) as u64,
    };
    let access = ctx
        .state
        .oauth_keys
        .sign(&ctx.state.db.primary, &claims)
        .await
        .map_err(|e| match e {
            crate::oauth::keys::KeyError::Db(e) => ApiError::from(e),
            other => ApiError::Internal(other.to_string()),
        })?;
    db::record_access(
        tx,
        jti,
        tenant.id,
        g.client.id,
        g.consent,
        g.family,
        expires,
    )
    .await?;
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": scope,
    });
    if g.with_refresh {
        let refresh = oauth::new_secret("ort_");
        db::insert_refresh(
            tx,
            &db::NewRefresh {
                hash: &token_hash(&refresh),
                tenant_id: tenant.id,
                client: g.client.id,
                consent: g.consent,
                user_id: g.user,
                scopes: &g.scopes,
                family: g.family.unwrap_or_else(Uuid::new_v4),
                expires_at: now + ctx.state.oauth.refresh_ttl,
            },
        )
        .await?;
        body["refresh_token"] = refresh.into();
    }
    Ok(no_store(json(StatusCode::OK, &body)))
}

/// `POST /oauth/token`.
pub async fn token(ctx: &Ctx, body: Incoming) -> ApiResult {
    let tenant = host_tenant(ctx).await?;
    let result = async {
        rate_by_address(ctx).await?;
        let form = read_form(ctx, body).await?;
        let grant = form
            .get("grant_type")
            .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?
            .to_string();
        if !oauth::GRANT_TYPES.contains(&grant.as_str()) {
            return Err(OAuthError::unsupported_grant_type(format!(
                "grant_type `{}` is not supported",
                oauth::printable(&grant)
            ))
            .into());
        }
        let (client, _) = authenticate_client(ctx, &tenant, &form).await?;
        if !client.allows(&grant) {
            return Err(OAuthError::unauthorized_client(format!(
                "this client may not use the {grant} grant"
            ))
            .into());
        }
        match grant.as_str() {
            "client_credentials" => client_credentials(ctx, &tenant, &client, &form).await,
            "authorization_code" => authorization_code(ctx, &tenant, &client, &form).await,
            _ => refresh_token(ctx, &tenant, &client, &form).await,
        }
    }
    .await;
    finish(ctx, result)
}

async fn client_credentials(
    ctx: &Ctx,
    tenant: &Tenant,
    client: &Client,
    form: &Form,
) -> Result<Response<Body>, Fail> {
    if !client.is_confidential() {
        return Err(OAuthError::unauthorized_client(
            "a public client has no credentials of its own",
        )
        .into());
    }
    let scopes = oauth::granted_scopes(form.get("scope"), &client.scopes)?;
    let mut tx = dbm::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
    let grant = Grant {
        client,
        user: None,
        consent: None,
        family: None,
        scopes,
        with_refresh: false,
    };
    let r = issue(ctx, &mut tx, tenant, grant).await?;
    tx.commit().await?;
    Ok(r)
}

async fn authorization_code(
    ctx: &Ctx,
    tenant: &Tenant,
    client: &Client,
    form: &Form,
) -> Result<Response<Body>, Fail> {
    let code = form
        .get("code")
        .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let verifier = form
        .get("code_verifier")
        .ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
    let redirect_uri = form
        .get("redirect_uri")
        .ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
    let mut tx = dbm::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
    let Some(row) = db::take_code(&mut tx, &token_hash(code)).await? else {
        return Err(OAuthError::invalid_grant("unknown authorization code").into());
    };
    if row.used_at.is_some() {
        // A code presented twice: someone else holds it. What its first exchange issued is revoked.
        let n = revoke_under(ctx, &mut tx, Under::Family(row.family)).await?;
        audit(
            ctx,
            &mut tx,
            tenant,
            Some(row.user_id),
            "oauth_code_reused",
            &client.client_id,
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(client = %client.client_id, revoked = n, "authorization code reused");
        return Err(OAuthError::invalid_grant(
            "the authorization code was already used; the tokens issued with it are revoked",
        )
        .into());
    }
    // Every refusal below has burnt the code (it was marked used above): it is single-use whatever
    // happens.
    let refuse =
        |d: &str| -> Result<Response<Body>, Fail> { Err(OAuthError::invalid_grant(d).into()) };
    let outcome = if row.client != client.id {
        refuse("the code was issued to another client")
    } else if row.expires_at <= OffsetDateTime::now_utc() {
        refuse("the authorization code has expired")
    } else if row.redirect_uri != redirect_uri {
        refuse("redirect_uri differs from the authorization request's")
    } else if !oauth::pkce_s256_matches(verifier, &row.code_challenge) {
        refuse("code_verifier does not match the code_challenge")
    } else if !db::consent_is_live(&mut tx, row.consent).await? {
        refuse("the consent was revoked")
    } else if !users::get(&mut tx, row.user_id)
        .await?
        .is_some_and(|u| u.is_active)
    {
        refuse("the user is no longer active")
    } else {
        let grant = Grant {
            client,
            user: Some(row.user_id),
            consent: Some(row.consent),
            family: Some(row.family),
            scopes: row.scopes.clone(),
            with_refresh: client.allows("refresh_token"),
        };
        issue(ctx, &mut tx, tenant, grant).await
    };
    tx.commit().await?;
    outcome
}

async fn refresh_token(
    ctx: &Ctx,
    tenant: &Tenant,
    client: &Client,
    form: &Form,
) -> Result<Response<Body>, Fail> {
    let presented = form
        .get("refresh_token")
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    let hash = token_hash(presented);
    let mut tx = dbm::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
    let Some(row) = db::refresh_for_update(&mut tx, &hash).await? else {
        return Err(OAuthError::invalid_grant("unknown refresh token").into());
    };
    if row.client != client.id {
        return Err(
            OAuthError::invalid_grant("the refresh token was issued to another client").into(),
        );
    }
    if row.used_at.is_some() && row.revoked_at.is_none() {
        // A rotated token came back: someone holds a stolen copy. The whole family goes.
        revoke_under(ctx, &mut tx, Under::Family(row.family)).await?;
        audit(
            ctx,
            &mut tx,
            tenant,
            row.user_id,
            "oauth_refresh_reused",
            &client.client_id,
        )
        .await?;
        tx.commit().await?;
        return Err(OAuthError::invalid_grant(
            "the refresh token was already used; every token of this grant is revoked",
        )
        .into());
    }
    if row.revoked_at.is_some() || row.used_at.is_some() {
        return Err(OAuthError::invalid_grant("the refresh token was revoked").into());
    }
    if row.expires_at <= OffsetDateTime::now_utc() {
        return Err(OAuthError::invalid_grant("the refresh token has expired").into());
    }
    if let Some(consent) = row.consent {
        if !db::consent_is_live(&mut tx, consent).await? {
            return Err(OAuthError::invalid_grant("the consent was revoked").into());
        }
    }
    if let Some(user) = row.user_id {
        if !users::get(&mut tx, user)
            .await?
            .is_some_and(|u| u.is_active)
        {
            return Err(OAuthError::invalid_grant("the user is no longer active").into());
        }
    }
    // A refresh may narrow the scopes, never widen them (RFC 6749 §6).
    let scopes = oauth::granted_scopes(form.get("scope"), &row.scopes)?;
    db::mark_refresh_used(&mut tx, &hash).await?;
    let grant = Grant {
        client,
        user: row.user_id,
        consent: row.consent,
        family: Some(row.family),
        scopes,
        with_refresh: true,
    };
    let r = issue(ctx, &mut tx, tenant, grant).await?;
    tx.commit().await?;
    Ok(r)
}

async fn audit(
    ctx: &Ctx,
    tx: &mut sqlx::PgConnection,
    tenant: &Tenant,
    user: Option<Uuid>,
    action: &str,
    target: &str,
) -> Result<(), sqlx::Error> {
    crate::db::audit::record(
        tx,
        &crate::db::audit::Entry {
            tenant_id: tenant.id,
            user_id: user,
            action,
            target: Some(target),
            ip: Some(&ctx.client_ip()),
            request_id: &ctx.request_id,
        },
    )
    .await
}

/// An access token of this host's tenant that verifies and is not on the denylist.
async fn live_access_token(
    ctx: &Ctx,
    tenant: &Tenant,
    token: &str,
) -> Result<Option<AccessClaims>, Fail> {
    let Some(claims) = ctx
        .state
        .oauth_keys
        .verify(&ctx.state.db.primary, token)
        .await?
        .filter(|c| c.tenant_id == tenant.subdomain)
    else {
        return Ok(None);
    };
    let mut redis = ctx.state.redis().await?;
    let revoked: bool =
        redis::AsyncCommands::exists(&mut redis, contracts::redis_keys::denylist_jti(&claims.jti))
            .await?;
    Ok((!revoked).then_some(claims))
}

/// `POST /oauth/revoke` (RFC 7009): the client's own access or refresh token. Revoking a refresh token
/// revokes its whole grant (every token issued under it). An unknown token, or another client's, is
/// answered 200 all the same, and nothing happens to it.
pub async fn revoke(ctx: &Ctx, body: Incoming) -> ApiResult {
    let tenant = host_tenant(ctx).await?;
    let result = async {
        rate_by_address(ctx).await?;
        let form = read_form(ctx, body).await?;
        let (client, _) = authenticate_client(ctx, &tenant, &form).await?;
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        if token.matches('.').count() == 2 {
            if let Some(c) = live_access_token(ctx, &tenant, token).await? {
                if c.client_id == client.client_id {
                    let jti = Uuid::parse_str(&c.jti).unwrap_or_default();
                    let exp = OffsetDateTime::from_unix_timestamp(c.exp as i64)
                        .unwrap_or_else(|_| OffsetDateTime::now_utc());
                    denylist(ctx, &[(jti, exp)]).await?;
                }
            }
        } else {
            let mut tx = dbm::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
            if let Some(row) = db::refresh_for_update(&mut tx, &token_hash(token)).await? {
                if row.client == client.id {
                    revoke_under(ctx, &mut tx, Under::Family(row.family)).await?;
                    audit(
                        ctx,
                        &mut tx,
                        &tenant,
                        row.user_id,
                        "oauth_token_revoked",
                        &client.client_id,
                    )
                    .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(no_store(json(StatusCode::OK, &serde_json::json!({}))))
    }
    .await;
    finish(ctx, result)
}

/// `POST /oauth/introspect` (RFC 7662), for confidential clients of the host's tenant: whether a token
/// of this tenant is active, and what it grants.
pub async fn introspect(ctx: &Ctx, body: Incoming) -> ApiResult {
    let tenant = host_tenant(ctx).await?;
    let result = async {
        rate_by_address(ctx).await?;
        let form = read_form(ctx, body).await?;
        let (client, _) = authenticate_client(ctx, &tenant, &form).await?;
        if !client.is_confidential() {
            return Err(OAuthError::invalid_client("introspection is for confidential clients").into());
        }
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let inactive = serde_json::json!({ "active": false });
        let answer = if token.matches('.').count() == 2 {
            match live_access_token(ctx, &tenant, token).await? {
                Some(c) => serde_json::json!({
                    "active": true, "token_type": "Bearer", "scope": c.scope, "client_id": c.client_id,
                    "sub": c.sub, "tenant_id": c.tenant_id, "iss": c.iss, "jti": c.jti,
                    "iat": c.iat, "exp": c.exp,
                }),
                None => inactive,
            }
        } else {
            let mut tx = ctx.state.db.tenant_tx_fresh(tenant.id).await?;
            let row = db::refresh_for_update(&mut tx, &token_hash(token)).await?;
            let answer = match row {
                Some(r)
                    if r.used_at.is_none()
                        && r.revoked_at.is_none()
                        && r.expires_at > OffsetDateTime::now_utc() =>
                {
                    let owner = db::client_by_id(&mut tx, r.client).await?;
                    let consent_ok = match r.consent {
                        Some(c) => db::consent_is_live(&mut tx, c).await?,
                        None => true,
                    };
                    match owner.filter(|o| o.disabled_at.is_none() && consent_ok) {
                        Some(o) => serde_json::json!({
                            "active": true, "token_type": "refresh_token", "scope": r.scopes.join(" "),
                            "client_id": o.client_id,
                            "sub": r.user_id.map_or_else(|| o.client_id.clone(), |u| u.to_string()),
                            "tenant_id": tenant.subdomain, "exp": r.expires_at.unix_timestamp(),
                        }),
                        None => inactive,
                    }
                }
                _ => inactive,
            };
            tx.commit().await?;
            answer
        };
        Ok(no_store(json(StatusCode::OK, &answer)))
    }
    .await;
    finish(ctx, result)
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn metadata(ctx: &Ctx) -> ApiResult {
    let tenant = host_tenant(ctx).await?;
    let iss = issuer(ctx, &tenant);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/oauth/authorize"),
            "token_endpoint": format!("{iss}/oauth/token"),
            "revocation_endpoint": format!("{iss}/oauth/revoke"),
            "introspection_endpoint": format!("{iss}/oauth/introspect"),
            "jwks_uri": format!("{iss}/.well-known/jwks.json"),
            "scopes_supported": oauth::SCOPES,
            "response_types_supported": ["code"],
            "grant_types_supported": oauth::GRANT_TYPES,
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "authorization_response_iss_parameter_supported": true,
        }),
    ))
}

/// `GET /.well-known/jwks.json`: the published signing keys (one set for every tenant host).
pub async fn jwks(ctx: &Ctx) -> ApiResult {
    let set = ctx.state.oauth_keys.jwks(&ctx.state.db.primary).await?;
    let mut r = json(StatusCode::OK, &set);
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(r)
}

/// An authorization request, checked: the client, where to send the user back, and what is asked.
struct AuthzRequest {
    client: Client,
    redirect_uri: String,
    scopes: Vec<String>,
    state: Option<String>,
    code_challenge: String,
}

/// Why an authorization request is refused: before the redirect URI is trusted, on a page of ours (never
/// a redirect to an unverified URI); after, back to the client with the error.
enum AuthzRefusal {
    Page(String),
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

async fn check_authorization(
    ctx: &Ctx,
    tenant: &Tenant,
    params: &Form,
) -> Result<Result<AuthzRequest, AuthzRefusal>, ApiError> {
    let Some(client_id) = params.get("client_id").filter(|c| c.len() <= 64) else {
        return Ok(Err(AuthzRefusal::Page("client_id is missing".into())));
    };
    let mut tx = ctx.state.db.tenant_tx_fresh(tenant.id).await?;
    let client = db::client_by_client_id(&mut tx, client_id).await?;
    tx.commit().await?;
    let Some(client) = client.filter(|c| c.disabled_at.is_none()) else {
        return Ok(Err(AuthzRefusal::Page(
            "this application is not registered here".into(),
        )));
    };
    let redirect_uri = match params.get("redirect_uri") {
        Some(presented) => {
            if !client
                .redirect_uris
                .iter()
                .any(|r| oauth::redirect_uri_matches(presented, r))
            {
                return Ok(Err(AuthzRefusal::Page(
                    "redirect_uri is not registered for this application".into(),
                )));
            }
            presented.to_string()
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Ok(Err(AuthzRefusal::Page("redirect_uri is required".into())));
        }
    };
    let state = params.get("state").map(str::to_string);
    let back = |error: &'static str, description: &str| {
        Ok(Err(AuthzRefusal::Redirect {
            redirect_uri: redirect_uri.clone(),
            error,
            description: description.to_string(),
            state: state.clone(),
        }))
    };
    if params.get("response_type") != Some("code") {
        return back("unsupported_response_type", "response_type must be code");
    }
    if !client.allows("authorization_code") {
        return back(
            "unauthorized_client",
            "this client may not use the authorization code grant",
        );
    }
    match (
        params.get("code_challenge"),
        params.get("code_challenge_method"),
    ) {
        (Some(c), Some("S256")) if c.len() == 43 && oauth::is_pkce_value(c) => {}
        (Some(_), Some("S256")) => return back("invalid_request", "code_challenge is malformed"),
        (Some(_), _) => {
            return back(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not supported)",
            )
        }
        (None, _) => {
            return back(
                "invalid_request",
                "PKCE is required: code_challenge with S256",
            )
        }
    }
    let scopes = match oauth::granted_scopes(params.get("scope"), &client.scopes) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return back("invalid_scope", "no scope to grant"),
        Err(e) => return back("invalid_scope", &e.description),
    };
    let code_challenge = params.get("code_challenge").unwrap_or_default().to_string();
    Ok(Ok(AuthzRequest {
        client,
        redirect_uri,
        scopes,
        state,
        code_challenge,
    }))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page of ours: no script, no framing, not cached, no referrer.
fn page(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title><style>body{{font:16px system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}\
         label{{display:block;margin:.5rem 0}}input{{width:100%;padding:.4rem}}button{{margin:.8rem .5rem 0 0;padding:.5rem 1rem}}\
         .err{{color:#a00}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    no_store(r)
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    no_store(r)
}

fn refusal(ctx: &Ctx, tenant: &Tenant, r: AuthzRefusal) -> Response<Body> {
    match r {
        AuthzRefusal::Page(why) => page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            &format!("<p class=\"err\">{}</p>", escape(&why)),
        ),
        AuthzRefusal::Redirect {
            redirect_uri,
            error,
            description,
            state,
        } => {
            let iss = issuer(ctx, tenant);
            let mut params = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = state.as_deref() {
                params.push(("state", s));
            }
            params.push(("iss", iss.as_str()));
            redirect(&oauth::redirect_with(&redirect_uri, &params))
        }
    }
}

fn scope_text(scope: &str) -> &'static str {
    match scope {
        "files:read" => "read your organisation's files",
        "files:write" => "upload, change and delete your organisation's files",
        "users:read" => "see the users of your organisation",
        _ => "an unknown permission",
    }
}

/// The consent page: who asks, for what, and the platform's sign-in.
fn consent_page(tenant: &Tenant, req: &AuthzRequest, params: &Form, error: Option<&str>) -> String {
    let mut hidden = String::new();
    for name in [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ] {
        if let Some(v) = params.get(name) {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape(v)
            ));
        }
    }
    let scopes: String = req
        .scopes
        .iter()
        .map(|s| format!("<li><code>{}</code>: {}</li>", escape(s), scope_text(s)))
        .collect();
    format!(
        "<p><strong>{client}</strong> asks to act on your behalf at <strong>{org}</strong>:</p><ul>{scopes}</ul>\
         <p>It will be sent back to <code>{to}</code>.</p>{err}\
         <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
         <label>Email <input name=\"email\" type=\"email\" autocomplete=\"username\" required></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button name=\"decision\" value=\"approve\">Allow</button><button name=\"decision\" value=\"deny\" formnovalidate>Deny</button></form>",
        client = escape(&req.client.name),
        org = escape(&tenant.name),
        to = escape(&req.redirect_uri),
        err = error.map_or_else(String::new, |e| format!("<p class=\"err\">{}</p>", escape(e))),
    )
}

/// `GET /oauth/authorize`: the consent page, or the refusal.
pub async fn authorize_page(ctx: &Ctx) -> ApiResult {
    let tenant = host_tenant(ctx).await?;
    let params = match Form::parse(ctx.query.as_deref().unwrap_or_default().as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return Ok(refusal(ctx, &tenant, AuthzRefusal::Page(e.description)));
        }
    };
    match check_authorization(ctx, &tenant, &params).await? {
        Err(r) => Ok(refusal(ctx, &tenant, r)),
        Ok(req) => Ok(page(
            StatusCode::OK,
            "Allow access?",
            &consent_page(&tenant, &req, &params, None),
        )),
    }
}

/// `POST /oauth/authorize`: the user's decision. Approving signs the user in (the platform's login,
/// throttled alike), records the consent and sends the user back with a single-use code.
pub async fn authorize_decision(ctx: &Ctx, body: Incoming) -> ApiResult {
    let tenant = host_tenant(ctx).await?;
    let params = match read_form(ctx, body).await {
        Ok(p) => p,
        Err(Fail::OAuth(e)) => return Ok(refusal(ctx, &tenant, AuthzRefusal::Page(e.description))),
        Err(Fail::Api(e)) => return Err(e),
    };
    let req = match check_authorization(ctx, &tenant, &params).await? {
        Err(r) => return Ok(refusal(ctx, &tenant, r)),
        Ok(req) => req,
    };
    let back = |error: &'static str, description: &str| {
        refusal(
            ctx,
            &tenant,
            AuthzRefusal::Redirect {
                redirect_uri: req.redirect_uri.clone(),
                error,
                description: description.to_string(),
                state: req.state.clone(),
            },
        )
    };
    if params.get("decision") != Some("approve") {
        return Ok(back("access_denied", "the user denied the request"));
    }
    let email = params
        .get("email")
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    let password = params.get("password").unwrap_or_default().to_string();
    if email.is_empty() || password.is_empty() || email.len() > 254 || password.len() > 1024 {
        return Ok(page(
            StatusCode::BAD_REQUEST,
            "Allow access?",
            &consent_page(
                &tenant,
                &req,
                &params,
                Some("Enter your email and password."),
            ),
        ));
    }
    let user = match sign_in(ctx, &tenant, &email, password).await {
        Ok(u) => u,
        Err(ApiError::Unauthorized(..)) => {
            return Ok(page(
                StatusCode::UNAUTHORIZED,
                "Allow access?",
                &consent_page(&tenant, &req, &params, Some("Invalid email or password.")),
            ))
        }
        Err(ApiError::TooManyAttempts { .. }) => {
            return Ok(page(
                StatusCode::TOO_MANY_REQUESTS,
                "Allow access?",
                &consent_page(
                    &tenant,
                    &req,
                    &params,
                    Some("Too many failed attempts; try again later."),
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let code = oauth::new_secret("oac_");
    let mut tx = dbm::tenant_tx(&ctx.state.db.primary, tenant.id).await?;
    let consent =
        db::upsert_consent(&mut tx, tenant.id, req.client.id, user.id, &req.scopes).await?;
    db::insert_code(
        &mut tx,
        &db::NewCode {
            hash: &token_hash(&code),
            tenant_id: tenant.id,
            client: req.client.id,
            consent,
            user_id: user.id,
            redirect_uri: &req.redirect_uri,
            scopes: &req.scopes,
            code_challenge: &req.code_challenge,
            family: Uuid::new_v4(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(oauth::CODE_TTL_SECS),
        },
    )
    .await?;
    audit(
        ctx,
        &mut tx,
        &tenant,
        Some(user.id),
        "oauth_consent_granted",
        &req.client.client_id,
    )
    .await?;
    tx.commit().await?;
    let iss = issuer(ctx, &tenant);
    let mut out = vec![("code", code.as_str())];
    if let Some(s) = req.state.as_deref() {
        out.push(("state", s));
    }
    out.push(("iss", iss.as_str()));
    Ok(redirect(&oauth::redirect_with(&req.redirect_uri, &out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_given_twice_is_refused_and_html_is_escaped() {
        assert!(Form::parse(b"a=1&b=2").is_ok());
        let e = Form::parse(b"scope=a&scope=b").err().expect("dup");
        assert_eq!(e.code, "invalid_request");
        let f = Form::parse(b"a=&b=x%20y").expect("form");
        assert_eq!(f.get("a"), None, "empty is absent (RFC 6749 section 3.1)");
        assert_eq!(f.get("b"), Some("x y"));
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }
}
