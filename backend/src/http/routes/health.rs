//! `/healthz` (alive), `/readyz` (Postgres — the primary, or the read replica while the primary is away —
//! Redis and storage reachable, not draining), `/metrics`.

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::http::{json, ApiResult, Ctx};
use crate::metrics::metrics as collectors;

pub async fn healthz(_ctx: &Ctx) -> ApiResult {
    Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok" })))
}

pub async fn readyz(ctx: &Ctx) -> ApiResult {
    // Shutting down: not ready, whatever the dependencies say, so that balancers stop sending here
    // while the requests they already sent are still answered.
    if ctx
        .state
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "draining" }),
        ));
    }
    // Bounded: the gateway's health check waits 1 s, and a primary that refuses connections would make
    // the pool retry until its acquire timeout (3 s).
    let db = answers(&ctx.state.db.primary).await;
    // With the primary away (a failover under way), a backend whose read replica answers still serves
    // token-authenticated reads: it stays in rotation, "degraded", instead of every backend replica
    // leaving the balancer at once for a cause they all share.
    let replica = match &ctx.state.db.replica {
        Some(r) if !db => Some(answers(r).await),
        _ => None,
    };
    let redis_ok = match ctx.state.redis().await {
        Ok(mut redis) => redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .is_ok(),
        Err(_) => false,
    };
    let storage = ctx.state.storage.ready().await;
    let serves = db || replica == Some(true);
    let ok = serves && redis_ok && storage;
    let mut body = serde_json::json!({
        "status": match (ok, db) { (false, _) => "not_ready", (true, true) => "ready", (true, false) => "degraded" },
        "postgres": db,
        "redis": redis_ok,
        "storage": storage,
    });
    if let Some(r) = replica {
        body["replica"] = serde_json::Value::Bool(r);
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(status, &body))
}

pub async fn metrics(ctx: &Ctx) -> ApiResult {
    let m = collectors();
    m.pool
        .with_label_values(&["idle"])
        .set(ctx.state.db.primary.num_idle() as i64);
    m.pool
        .with_label_values(&["active"])
        .set(ctx.state.db.primary.size() as i64 - ctx.state.db.primary.num_idle() as i64);
    // The pool's ceiling, so that "active / max" (the saturation alert) needs no number in the rule.
    m.pool.with_label_values(&["max"]).set(i64::from(
        ctx.state.db.primary.options().get_max_connections(),
    ));
    let mut r = Response::new(crate::http::full(Bytes::from(m.render())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// Whether `pool` answers `SELECT 1` within 400 ms.
async fn answers(pool: &sqlx::PgPool) -> bool {
    let one = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
    matches!(
        tokio::time::timeout(std::time::Duration::from_millis(400), one).await,
        Ok(Ok(1))
    )
}
