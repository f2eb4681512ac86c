//! Observation, last of every request: the metrics, the canary's and the tenant's figures, the trace
//! span, the access-log line, and the lingering close of a refused body.

use super::*;

/// The protocol the client speaks on this request's connection: HTTP/3 sessions are the proxy's
/// custom sessions (see `crate::h3`), the only ones the gateway makes.
pub(super) fn client_protocol(session: &Session) -> Protocol {
    let downstream = session.as_downstream();
    if downstream.is_custom() {
        Protocol::H3
    } else if downstream.is_http2() {
        Protocol::H2
    } else {
        Protocol::Http1
    }
}

impl Gateway {
    /// One access-log line and the request metrics.
    pub(super) async fn observe(
        &self,
        session: &mut Session,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        ctx.retry.active = None;
        ctx.retry.slot = None;
        head_deadline::request_done(session.as_downstream().stream());
        let mut status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let (Some(err), 200) = (&ctx.answer.error, status) {
            // A gRPC refusal goes out as HTTP 200 with its grpc-status: counted as the refusal it is.
            status = err.status();
        }
        let elapsed = ctx.request.start.elapsed();
        let rt = ctx.request.runtime.as_ref();
        let route = rt.and_then(|rt| ctx.route(rt));
        let route_name = route.map_or("<none>", |r| r.spec.name.as_str());
        let protocol = client_protocol(session);
        metrics().requests_by_protocol[protocol as usize].inc();
        let req = session.req_header();
        // The upstream and the error code, computed once for the span and the access-log line.
        let up = route.and_then(|r| r.upstream_for(ctx.retry.side));
        let error = ctx
            .answer
            .error
            .as_ref()
            .map(EdgeError::code)
            .or_else(|| e.map(|e| e.etype().as_str()));
        // A 5xx of the gateway's own making goes to Sentry when SENTRY_DSN is set.
        if status >= 500 && crate::telemetry::reports::enabled() {
            if let Some(code) = error {
                crate::telemetry::reports::server_error(&crate::telemetry::reports::Failure {
                    request_id: &ctx.request.request_id,
                    status,
                    code,
                    route: route_name,
                    method: req.method.as_str(),
                    tenant: ctx.request.tenant.as_deref(),
                    upstream: up.map(|u| u.name.as_str()),
                    detail: e.map_or_else(|| code.to_string(), |e| e.to_string()),
                });
            }
        }
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
        if let Some(span) = ctx.observe.span.take() {
            crate::telemetry::otel::finish(
                *span,
                &crate::telemetry::otel::Outcome {
                    method: req.method.as_str(),
                    route: route_name,
                    tenant: ctx.request.tenant.as_deref(),
                    status,
                    upstream: up.map(|u| u.name.as_str()),
                    server: ctx.retry.server.as_ref().map(|s| s.label.as_str()),
                    upstream_ms: ctx.retry.upstream_ms,
                    error,
                },
            );
        }
        if let Some(tenant) = ctx.request.tenant.as_deref() {
            let sample = crate::telemetry::tenant_stats::Sample {
                status,
                seconds: elapsed.as_secs_f64(),
                ratelimited: matches!(ctx.answer.error, Some(EdgeError::RateLimited(_))),
                overloaded: matches!(ctx.answer.error, Some(EdgeError::Overloaded(_))),
            };
            // A tenant of its own only once the request passed auth: a verified credential, an upstream
            // chosen (a route without auth), or a rate-limit or overload refusal (both decided after
            // auth). Refused before that, the Host's label is only what the client chose: `other`.
            let admitted = !matches!(ctx.credential.verified(), Verified::Nothing)
                || ctx.retry.server.is_some()
                || sample.ratelimited
                || sample.overloaded;
            if admitted {
                self.state.tenant_stats.record(tenant, &sample);
            } else {
                self.state.tenant_stats.record_unadmitted(&sample);
            }
        }
        if self.state.access_log.enabled() {
            let server = ctx.retry.server.as_ref().map(|s| s.label.as_str());
            let host = if ctx.request.host.is_empty() {
                req.headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
            } else {
                ctx.request.host.as_str()
            };
            self.state.access_log.write(&Entry {
                request_id: &ctx.request.request_id,
                client_ip: ctx.request.client_ip,
                host,
                method: req.method.as_str(),
                path: req.uri.path(),
                protocol: protocol.label(),
                status,
                bytes: session.body_bytes_sent(),
                duration: elapsed,
                route: route.map(|r| r.spec.name.as_str()),
                upstream: up.map(|u| u.name.as_str()),
                server,
                tenant: ctx.request.tenant.as_deref(),
                user: ctx.credential.identity().map(|i| i.user_id.as_str()),
                error,
            });
        }
        if ctx.answer.linger {
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
