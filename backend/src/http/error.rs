//! `ApiError`: every failure a handler can have, mapped to a status and the JSON body in one place.

use http::{HeaderValue, Response, StatusCode};

/// A handler's failure. Each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is not understood (bad JSON, bad path).
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 401: no valid credentials.
    #[error("{1}")]
    Unauthorized(&'static str, String),
    /// 403: authenticated, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 400: a field of the body cannot be taken; names it (dotted under objects).
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    /// 403: the tenant is suspended by the platform.
    #[error("this tenant is suspended")]
    TenantSuspended,
    /// 409: the tenant's plan allows no more of this.
    #[error("{0}")]
    PlanLimit(String),
    /// 404: nothing there (or not visible to this tenant).
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: a unique constraint; names the field.
    #[error("{field} already exists")]
    Conflict { field: &'static str },
    /// 413.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 422: validation failed; names the fields.
    #[error("validation failed: {}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
    Validation(Vec<(&'static str, String)>),
    /// 429: too many failed attempts.
    #[error("too many attempts; retry later")]
    TooManyAttempts { retry_after: u64 },
    /// 503: Postgres, Redis or storage unavailable; the client may retry.
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// 507: the file store has no room left; nothing was stored.
    #[error("no room left to store this file; nothing was stored")]
    InsufficientStorage,
    /// 500: a bug; the detail goes to the log only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(..) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            ApiError::TenantSuspended => StatusCode::FORBIDDEN,
            ApiError::PlanLimit(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(code, _) | ApiError::Unauthorized(code, _) => code,
            ApiError::Forbidden(_) => "forbidden",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::TenantSuspended => "tenant_suspended",
            ApiError::PlanLimit(_) => "plan_limit",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Validation(_) => "validation_failed",
            ApiError::TooManyAttempts { .. } => "too_many_attempts",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::InsufficientStorage => "insufficient_storage",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The response, with `request_id` in the body.
    pub fn into_response(self, request_id: &str) -> Response<super::Body> {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(request_id, error = %detail, "internal error");
        }
        let mut error = serde_json::json!({ "code": self.code(), "message": self.to_string(), "request_id": request_id });
        if let ApiError::Validation(fields) = &self {
            error["fields"] = fields
                .iter()
                .map(|(f, m)| serde_json::json!({ "field": f, "message": m }))
                .collect();
        }
        if let ApiError::Conflict { field } = &self {
            error["field"] = serde_json::json!(field);
        }
        if let ApiError::InvalidField { field, .. } = &self {
            error["field"] = serde_json::json!(field);
        }
        let mut resp = super::json(self.status(), &serde_json::json!({ "error": error }));
        match self {
            ApiError::Unavailable(_) => {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::TooManyAttempts { retry_after } => {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::Unauthorized(..) => {
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            _ => {}
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable("database")
            }
            sqlx::Error::Database(db) => {
                // Constraint names map to the field a client can fix; nothing of SQL leaks out.
                match (db.code().as_deref(), db.constraint()) {
                    (Some("23505"), Some(c)) if c.contains("email") => {
                        ApiError::Conflict { field: "email" }
                    }
                    (Some("23505"), Some(c)) if c.contains("subdomain") => {
                        ApiError::Conflict { field: "subdomain" }
                    }
                    (Some("23505"), Some(c)) if c.contains("domain") => {
                        ApiError::Conflict { field: "domain" }
                    }
                    (Some("23505"), Some(c)) if c.contains("prefix") => {
                        ApiError::Conflict { field: "prefix" }
                    }
                    (Some("57P01" | "57P02" | "57P03" | "08006" | "08001" | "08003"), _) => {
                        ApiError::Unavailable("database")
                    }
                    _ => ApiError::Internal(format!("database: {e}")),
                }
            }
            _ => ApiError::Internal(format!("database: {e}")),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        tracing::warn!(error = %e, "redis error");
        ApiError::Unavailable("redis")
    }
}
