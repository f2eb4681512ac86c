//! `/healthz` (alive), `/readyz` (Postgres and Redis reachable, not draining), `/metrics`.

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
    let db = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&ctx.state.db.primary)
        .await
        .is_ok();
    let redis_ok = match ctx.state.redis().await {
        Ok(mut redis) => redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .is_ok(),
        Err(_) => false,
    };
    let storage = ctx.state.storage.ready().await;
    let ok = db && redis_ok && storage;
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "postgres": db,
        "redis": redis_ok,
        "storage": storage,
    });
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
