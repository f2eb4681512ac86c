//! OAuth2 tables: clients, consents, codes, refresh tokens and the live access tokens of each tenant
//! (row-level security: every function but the signing keys' runs in the caller's tenant transaction),
//! and the platform's signing keys.

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::metrics::QueryTimer;

/// A registered client (the secret's hash is never serialized).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Client {
    pub id: Uuid,
    pub client_id: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub secret_rotated_at: Option<OffsetDateTime>,
}

impl Client {
    /// A confidential client holds a secret; a public one must use PKCE.
    pub fn is_confidential(&self) -> bool {
        self.secret_hash.is_some()
    }
    pub fn allows(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }
}

const CLIENT_COLS: &str = "id, client_id, name, secret_hash, redirect_uris, grant_types, scopes, disabled_at, created_at, secret_rotated_at";

/// What a new client is.
pub struct NewClient<'a> {
    pub tenant_id: Uuid,
    pub client_id: &'a str,
    pub name: &'a str,
    pub secret_hash: Option<&'a str>,
    pub redirect_uris: &'a [String],
    pub grant_types: &'a [String],
    pub scopes: &'a [String],
}

pub async fn create_client(c: &mut PgConnection, n: &NewClient<'_>) -> Result<Client, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.create_client");
    sqlx::query_as::<_, Client>(&format!(
        "INSERT INTO oauth_clients (tenant_id, client_id, name, secret_hash, redirect_uris, grant_types, scopes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {CLIENT_COLS}"
    ))
    .bind(n.tenant_id)
    .bind(n.client_id)
    .bind(n.name)
    .bind(n.secret_hash)
    .bind(n.redirect_uris)
    .bind(n.grant_types)
    .bind(n.scopes)
    .fetch_one(c)
    .await
}

pub async fn list_clients(c: &mut PgConnection) -> Result<Vec<Client>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.list_clients");
    sqlx::query_as::<_, Client>(&format!(
        "SELECT {CLIENT_COLS} FROM oauth_clients ORDER BY created_at, name"
    ))
    .fetch_all(c)
    .await
}

/// The client with this public `client_id` (in the transaction's tenant only).
pub async fn client_by_client_id(
    c: &mut PgConnection,
    client_id: &str,
) -> Result<Option<Client>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.client_by_client_id");
    sqlx::query_as::<_, Client>(&format!(
        "SELECT {CLIENT_COLS} FROM oauth_clients WHERE client_id = $1"
    ))
    .bind(client_id)
    .fetch_optional(c)
    .await
}

pub async fn client_by_id(c: &mut PgConnection, id: Uuid) -> Result<Option<Client>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.client_by_id");
    sqlx::query_as::<_, Client>(&format!(
        "SELECT {CLIENT_COLS} FROM oauth_clients WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(c)
    .await
}

/// A new secret hash for a confidential client; `false` when there is no such confidential client.
pub async fn set_secret(c: &mut PgConnection, id: Uuid, hash: &str) -> Result<bool, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.set_secret");
    let n = sqlx::query(
        "UPDATE oauth_clients SET secret_hash = $2, secret_rotated_at = now() WHERE id = $1 AND secret_hash IS NOT NULL",
    )
    .bind(id)
    .bind(hash)
    .execute(c)
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub async fn set_disabled(
    c: &mut PgConnection,
    id: Uuid,
    disabled: bool,
) -> Result<Option<Client>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.set_disabled");
    sqlx::query_as::<_, Client>(&format!(
        "UPDATE oauth_clients SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END \
         WHERE id = $1 RETURNING {CLIENT_COLS}"
    ))
    .bind(id)
    .bind(disabled)
    .fetch_optional(c)
    .await
}

pub async fn delete_client(c: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.delete_client");
    let n = sqlx::query("DELETE FROM oauth_clients WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Records (or renews, with these scopes) the user's live consent to the client; its id.
pub async fn upsert_consent(
    c: &mut PgConnection,
    tenant_id: Uuid,
    client: Uuid,
    user_id: Uuid,
    scopes: &[String],
) -> Result<Uuid, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.upsert_consent");
    sqlx::query_scalar(
        "INSERT INTO oauth_consents (tenant_id, client, user_id, scopes) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (client, user_id) WHERE revoked_at IS NULL \
         DO UPDATE SET scopes = EXCLUDED.scopes, updated_at = now() RETURNING id",
    )
    .bind(tenant_id)
    .bind(client)
    .bind(user_id)
    .bind(scopes)
    .fetch_one(c)
    .await
}

/// A consent as a tenant admin sees it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ConsentView {
    pub id: Uuid,
    pub client: Uuid,
    pub client_id: String,
    pub client_name: String,
    pub user_id: Uuid,
    pub user_email: String,
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

pub async fn list_consents(c: &mut PgConnection) -> Result<Vec<ConsentView>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.list_consents");
    sqlx::query_as::<_, ConsentView>(
        "SELECT g.id, g.client, c.client_id, c.name AS client_name, g.user_id, u.email AS user_email, \
         g.scopes, g.created_at, g.updated_at \
         FROM oauth_consents g JOIN oauth_clients c ON c.id = g.client JOIN users u ON u.id = g.user_id \
         WHERE g.revoked_at IS NULL ORDER BY g.created_at",
    )
    .fetch_all(c)
    .await
}

pub async fn consent_is_live(c: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.consent_is_live");
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM oauth_consents WHERE id = $1 AND revoked_at IS NULL)",
    )
    .bind(id)
    .fetch_one(c)
    .await
}

/// A new authorization code (its hash).
pub struct NewCode<'a> {
    pub hash: &'a [u8],
    pub tenant_id: Uuid,
    pub client: Uuid,
    pub consent: Uuid,
    pub user_id: Uuid,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub code_challenge: &'a str,
    pub family: Uuid,
    pub expires_at: OffsetDateTime,
}

pub async fn insert_code(c: &mut PgConnection, n: &NewCode<'_>) -> Result<(), sqlx::Error> {
    let _timer = QueryTimer::start("oauth.insert_code");
    sqlx::query(
        "INSERT INTO oauth_codes (code_hash, tenant_id, client, consent, user_id, redirect_uri, scopes, code_challenge, family, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(n.hash)
    .bind(n.tenant_id)
    .bind(n.client)
    .bind(n.consent)
    .bind(n.user_id)
    .bind(n.redirect_uri)
    .bind(n.scopes)
    .bind(n.code_challenge)
    .bind(n.family)
    .bind(n.expires_at)
    .execute(c)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CodeRow {
    pub client: Uuid,
    pub consent: Uuid,
    pub user_id: Uuid,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub code_challenge: String,
    pub family: Uuid,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

/// The code with this hash, locked (two exchanges of one code cannot both succeed), marked used.
/// Returns it as it was before.
pub async fn take_code(c: &mut PgConnection, hash: &[u8]) -> Result<Option<CodeRow>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.take_code");
    let row = sqlx::query_as::<_, CodeRow>(
        "SELECT client, consent, user_id, redirect_uri, scopes, code_challenge, family, expires_at, used_at \
         FROM oauth_codes WHERE code_hash = $1 FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(&mut *c)
    .await?;
    if row.is_some() {
        sqlx::query(
            "UPDATE oauth_codes SET used_at = coalesce(used_at, now()) WHERE code_hash = $1",
        )
        .bind(hash)
        .execute(&mut *c)
        .await?;
        // Codes expire within a minute: those of this tenant older than a day go.
        sqlx::query("DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 day'")
            .execute(c)
            .await?;
    }
    Ok(row)
}

/// A new refresh token (its hash).
pub struct NewRefresh<'a> {
    pub hash: &'a [u8],
    pub tenant_id: Uuid,
    pub client: Uuid,
    pub consent: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub scopes: &'a [String],
    pub family: Uuid,
    pub expires_at: OffsetDateTime,
}

pub async fn insert_refresh(c: &mut PgConnection, n: &NewRefresh<'_>) -> Result<(), sqlx::Error> {
    let _timer = QueryTimer::start("oauth.insert_refresh");
    sqlx::query(
        "INSERT INTO oauth_refresh_tokens (token_hash, tenant_id, client, consent, user_id, scopes, family, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(n.hash)
    .bind(n.tenant_id)
    .bind(n.client)
    .bind(n.consent)
    .bind(n.user_id)
    .bind(n.scopes)
    .bind(n.family)
    .bind(n.expires_at)
    .execute(c)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshRow {
    pub client: Uuid,
    pub consent: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub scopes: Vec<String>,
    pub family: Uuid,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// The refresh token with this hash, locked for the rest of the transaction.
pub async fn refresh_for_update(
    c: &mut PgConnection,
    hash: &[u8],
) -> Result<Option<RefreshRow>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.refresh_for_update");
    sqlx::query_as::<_, RefreshRow>(
        "SELECT client, consent, user_id, scopes, family, expires_at, used_at, revoked_at \
         FROM oauth_refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(c)
    .await
}

pub async fn mark_refresh_used(c: &mut PgConnection, hash: &[u8]) -> Result<(), sqlx::Error> {
    let _timer = QueryTimer::start("oauth.mark_refresh_used");
    sqlx::query("UPDATE oauth_refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(hash)
        .execute(c)
        .await?;
    Ok(())
}

/// Records an issued access token, and forgets the client's expired ones.
pub async fn record_access(
    c: &mut PgConnection,
    jti: Uuid,
    tenant_id: Uuid,
    client: Uuid,
    consent: Option<Uuid>,
    family: Option<Uuid>,
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let _timer = QueryTimer::start("oauth.record_access");
    sqlx::query("DELETE FROM oauth_access_tokens WHERE client = $1 AND expires_at < now()")
        .bind(client)
        .execute(&mut *c)
        .await?;
    sqlx::query(
        "INSERT INTO oauth_access_tokens (jti, tenant_id, client, consent, family, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(jti)
    .bind(tenant_id)
    .bind(client)
    .bind(consent)
    .bind(family)
    .bind(expires_at)
    .execute(c)
    .await?;
    Ok(())
}

/// What a revocation covers.
#[derive(Debug, Clone, Copy)]
pub enum Under {
    Client(Uuid),
    Consent(Uuid),
    Family(Uuid),
}

/// Revokes every refresh token under `what` (and the consent itself) and returns the live access
/// tokens issued under it (`jti`, `exp`), for the denylist.
pub async fn revoke_under(
    c: &mut PgConnection,
    what: Under,
) -> Result<Vec<(Uuid, OffsetDateTime)>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.revoke_under");
    let (column, id) = match what {
        Under::Client(id) => ("client", id),
        Under::Consent(id) => ("consent", id),
        Under::Family(id) => ("family", id),
    };
    sqlx::query(&format!(
        "UPDATE oauth_refresh_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE {column} = $1"
    ))
    .bind(id)
    .execute(&mut *c)
    .await?;
    if let Under::Consent(id) = what {
        sqlx::query(
            "UPDATE oauth_consents SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *c)
        .await?;
    }
    if let Under::Client(id) = what {
        sqlx::query(
            "UPDATE oauth_consents SET revoked_at = coalesce(revoked_at, now()) WHERE client = $1",
        )
        .bind(id)
        .execute(&mut *c)
        .await?;
    }
    sqlx::query_as(&format!(
        "SELECT jti, expires_at FROM oauth_access_tokens WHERE {column} = $1 AND expires_at > now()"
    ))
    .bind(id)
    .fetch_all(c)
    .await
}

/// A signing key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub kid: String,
    pub private_der: Vec<u8>,
    pub public_x: String,
    pub signs_from: OffsetDateTime,
    pub retired_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

const KEY_COLS: &str = "kid, private_der, public_x, signs_from, retired_at, created_at";

/// The keys not retired, oldest first.
pub async fn live_keys(pool: &PgPool) -> Result<Vec<KeyRow>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.live_keys");
    sqlx::query_as::<_, KeyRow>(&format!(
        "SELECT {KEY_COLS} FROM oauth_signing_keys WHERE retired_at IS NULL ORDER BY signs_from, created_at"
    ))
    .fetch_all(pool)
    .await
}

/// Every key, retired ones included (for `backend oauth-key list`).
pub async fn all_keys(pool: &PgPool) -> Result<Vec<KeyRow>, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.all_keys");
    sqlx::query_as::<_, KeyRow>(&format!(
        "SELECT {KEY_COLS} FROM oauth_signing_keys ORDER BY signs_from, created_at"
    ))
    .fetch_all(pool)
    .await
}

/// Adds a key made by `generate` that signs from `signs_from`; its kid.
pub async fn insert_key(
    pool: &PgPool,
    generate: fn() -> (String, Vec<u8>, String),
    signs_from: OffsetDateTime,
) -> Result<String, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.insert_key");
    let (kid, der, x) = generate();
    sqlx::query(
        "INSERT INTO oauth_signing_keys (kid, alg, private_der, public_x, signs_from) VALUES ($1, 'EdDSA', $2, $3, $4)",
    )
    .bind(&kid)
    .bind(der)
    .bind(x)
    .bind(signs_from)
    .execute(pool)
    .await?;
    Ok(kid)
}

/// Makes sure a key signs now: when none does, adds one signing at once. Replicas starting together
/// serialize on an advisory lock, so they add one key between them.
pub async fn ensure_signing_key(
    pool: &PgPool,
    generate: fn() -> (String, Vec<u8>, String),
) -> Result<(), sqlx::Error> {
    let _timer = QueryTimer::start("oauth.ensure_signing_key");
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('aggios.oauth_signing_keys'))")
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM oauth_signing_keys WHERE retired_at IS NULL AND signs_from <= now())",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        let (kid, der, x) = generate();
        sqlx::query(
            "INSERT INTO oauth_signing_keys (kid, alg, private_der, public_x, signs_from) VALUES ($1, 'EdDSA', $2, $3, now())",
        )
        .bind(&kid)
        .bind(der)
        .bind(x)
        .execute(&mut *tx)
        .await?;
        tracing::info!(kid, "created the first OAuth signing key");
    }
    tx.commit().await
}

/// Retires a key at once; `false` when there is no such live key.
pub async fn retire_key(pool: &PgPool, kid: &str) -> Result<bool, sqlx::Error> {
    let _timer = QueryTimer::start("oauth.retire_key");
    let n = sqlx::query(
        "UPDATE oauth_signing_keys SET retired_at = now() WHERE kid = $1 AND retired_at IS NULL",
    )
    .bind(kid)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}
