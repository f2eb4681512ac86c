//! `audit_log`: who did what, per tenant.

use sqlx::PgConnection;
use uuid::Uuid;

/// One audit row, in the caller's tenant transaction.
pub struct Entry<'a> {
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub request_id: &'a str,
}

#[tracing::instrument(level = "debug", name = "audit.record", skip_all, fields(otel.kind = "client", db.system = "postgresql"))]
pub async fn record(c: &mut PgConnection, e: &Entry<'_>) -> Result<(), sqlx::Error> {
    let _timer = crate::metrics::QueryTimer::start("audit.record");
    sqlx::query("INSERT INTO audit_log (tenant_id, user_id, action, target, ip, request_id) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(e.tenant_id)
        .bind(e.user_id)
        .bind(e.action)
        .bind(e.target)
        .bind(e.ip)
        .bind(e.request_id)
        .execute(c)
        .await?;
    Ok(())
}
