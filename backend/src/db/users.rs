//! `users`, always inside a tenant-scoped transaction.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    #[serde(skip)]
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub role: String,
    pub is_active: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const COLS: &str =
    "id, tenant_id, email, password_hash, first_name, last_name, role, is_active, created_at";

#[tracing::instrument(level = "debug", name = "users.by_email", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn by_email(c: &mut PgConnection, email: &str) -> Result<Option<User>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("users.by_email");
    sqlx::query_as::<_, User>(&format!(
        "SELECT {COLS} FROM users WHERE lower(email) = lower($1)"
    ))
    .bind(email)
    .fetch_optional(c)
    .await
}

#[tracing::instrument(level = "debug", name = "users.get", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn get(c: &mut PgConnection, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("users.get");
    sqlx::query_as::<_, User>(&format!("SELECT {COLS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await
}

#[tracing::instrument(level = "debug", name = "users.list", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn list(c: &mut PgConnection) -> Result<Vec<User>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("users.list");
    sqlx::query_as::<_, User>(&format!(
        "SELECT {COLS} FROM users ORDER BY created_at, email"
    ))
    .fetch_all(c)
    .await
}

/// New user fields.
pub struct NewUser<'a> {
    pub tenant_id: Uuid,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub role: &'a str,
}

#[tracing::instrument(level = "debug", name = "users.create", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn create(c: &mut PgConnection, u: &NewUser<'_>) -> Result<User, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("users.create");
    sqlx::query_as::<_, User>(&format!(
        "INSERT INTO users (tenant_id, email, password_hash, first_name, last_name, role) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLS}"
    ))
    .bind(u.tenant_id)
    .bind(u.email)
    .bind(u.password_hash)
    .bind(u.first_name)
    .bind(u.last_name)
    .bind(u.role)
    .fetch_one(c)
    .await
}

/// Changes the given fields; `None` leaves a field as it is.
#[tracing::instrument(level = "debug", name = "users.update", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn update(
    c: &mut PgConnection,
    id: Uuid,
    first_name: Option<&str>,
    last_name: Option<&str>,
    role: Option<&str>,
    is_active: Option<bool>,
) -> Result<Option<User>, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("users.update");
    sqlx::query_as::<_, User>(&format!(
        "UPDATE users SET first_name = coalesce($2, first_name), last_name = coalesce($3, last_name), role = coalesce($4, role), is_active = coalesce($5, is_active), updated_at = now() WHERE id = $1 RETURNING {COLS}"
    ))
    .bind(id)
    .bind(first_name)
    .bind(last_name)
    .bind(role)
    .bind(is_active)
    .fetch_optional(c)
    .await
}

#[tracing::instrument(level = "debug", name = "users.delete", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn delete(c: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("users.delete");
    Ok(sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?
        .rows_affected()
        == 1)
}
