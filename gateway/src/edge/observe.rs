//! Observation, last of every request: the metrics, the canary's and the tenant's figures, the trace
//! span, the access-log line, and the lingering close of a refused body.

use super::*;

impl Gateway {
    /// One access-log line and the request metrics.
    pub(super) async fn observe(
        &self,
        session: &mut Session,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        ctx.active = None;
        head_deadline::request_done(session.as_downstream().stream());
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let rt = ctx.runtime.as_ref();
        let route = rt.and_then(|rt| ctx.route(rt));
        let route_name = route.map_or("<none>", |r| r.spec.name.as_str());
        let req = session.req_header();
        match route {
            Some(r) => {
                r.count_request(&req.method, status);
                r.duration().observe(elapsed.as_secs_f64());
            }
            None => {
                requests_series(route_name, &req.method, status).inc();
                metrics()
                    .request_duration
                    .with_label_values(&["<none>"])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if let Some(span) = ctx.span.take() {
            let up = route.and_then(|r| r.upstream_for(ctx.side));
            crate::telemetry::otel::finish(
                *span,
                &crate::telemetry::otel::Outcome {
                    method: req.method.as_str(),
                    route: route_name,
                    tenant: ctx.tenant.as_deref(),
                    status,
                    upstream: up.map(|u| u.name.as_str()),
                    server: ctx.server.as_ref().map(|s| s.label.as_str()),
                    upstream_ms: ctx.upstream_ms,
                    error: ctx
                        .error
                        .as_ref()
                        .map(EdgeError::code)
                        .or_else(|| e.map(|e| e.etype().as_str())),
                },
            );
        }
        if let Some(tenant) = ctx.tenant.as_deref() {
            let sample = crate::telemetry::tenant_stats::Sample {
                status,
                seconds: elapsed.as_secs_f64(),
                ratelimited: matches!(ctx.error, Some(EdgeError::RateLimited(_))),
            };
            // A tenant of its own only once the request passed auth: a verified credential, an upstream
            // chosen (a route without auth), or a rate-limit refusal (decided after auth). Refused
            // before that, the Host's label is only what the client chose: `other`.
            let admitted = !matches!(ctx.verified, Verified::Nothing)
                || ctx.server.is_some()
                || sample.ratelimited;
            if admitted {
                self.state.tenant_stats.record(tenant, &sample);
            } else {
                self.state.tenant_stats.record_unadmitted(&sample);
            }
        }
        if self.state.access_log.enabled() {
            let up = route.and_then(|r| r.upstream_for(ctx.side));
            let server = ctx.server.as_ref().map(|s| s.label.as_str());
            let error = ctx
                .error
                .as_ref()
                .map(EdgeError::code)
                .or_else(|| e.map(|e| e.etype().as_str()));
            let host = if ctx.host.is_empty() {
                req.headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
            } else {
                ctx.host.as_str()
            };
            self.state.access_log.write(&Entry {
                request_id: &ctx.request_id,
                client_ip: ctx.client_ip,
                host,
                method: req.method.as_str(),
                path: req.uri.path(),
                status,
                bytes: session.body_bytes_sent(),
                duration: elapsed,
                route: route.map(|r| r.spec.name.as_str()),
                upstream: up.map(|u| u.name.as_str()),
                server,
                tenant: ctx.tenant.as_deref(),
                user: ctx.identity.as_ref().map(|i| i.user_id.as_str()),
                error,
            });
        }
        if ctx.linger {
            // After the access log: the client's remaining input is read and dropped, so that it gets
            // the error response instead of a reset. Boxed: the lingering future (with its 8 KiB read
            // buffer) would otherwise be part of every request's logging future, moved into async_trait's
            // box each time (+8.6 k instructions per request under callgrind, all of it memcpy).
            Box::pin(
                session
                    .as_downstream_mut()
                    .linger_close(LINGER_TIME, LINGER_BYTES),
            )
            .await;
        }
    }
}
