//! What an upstream's failure or answer means for the request: the canary's figures, and whether the
//! request is tried again on another server or side.

use super::*;

/// A connection failure or a reset counts against the side that had it; a retry after a canary's
/// failure goes to the stable upstream.
pub(super) fn upstream_failed(ctx: &mut RequestCtx, retry: bool) {
    let Some(rt) = ctx.runtime.clone() else {
        return;
    };
    if let Some(c) = ctx.route(&rt).and_then(|r| r.canary.as_ref()) {
        let latency = ctx.upstream_start.map_or(Duration::ZERO, |t| t.elapsed());
        if !ctx.side_forced {
            c.state.record(ctx.side, true, latency);
        }
        if retry && ctx.side == canary::Side::Canary {
            ctx.side = canary::Side::Stable;
        }
    }
}

/// The upstream's response head arrived: its latency, and on a route with a canary, the answer counted for
/// its side; a canary's 5xx to a request that can be replayed is not passed on but tried again on the stable
/// upstream.
pub(super) fn upstream_answered(
    session: &Session,
    upstream_response: &ResponseHeader,
    ctx: &mut RequestCtx,
    rt: Option<&Snapshot>,
) -> Result<()> {
    let route = rt.and_then(|rt| ctx.route(rt));
    if let (Some(route), Some(t0)) = (route, ctx.upstream_start) {
        let elapsed = t0.elapsed();
        ctx.upstream_ms = Some(elapsed.as_secs_f64() * 1e3);
        if let Some(up) = route.upstream_for(ctx.side) {
            up.duration().observe(elapsed.as_secs_f64());
        }
        if let Some(c) = &route.canary {
            let error = upstream_response.status.is_server_error();
            if !ctx.side_forced {
                c.state.record(ctx.side, error, elapsed);
            }
            if error && ctx.side == canary::Side::Canary {
                let replayable = session.req_header().method.is_idempotent()
                    && !session.as_ref().retry_buffer_truncated();
                let max = route.upstream.as_ref().map_or(1, |u| u.spec.max_tries);
                if replayable && ctx.tries < max {
                    ctx.canary_5xx = true;
                    ctx.side = canary::Side::Stable;
                    ctx.active = None;
                    return Error::e_explain(
                        ErrorType::HTTPStatus(502),
                        "the canary answered 5xx: trying the stable upstream",
                    );
                }
            }
        }
    }
    ctx.response_started = true;
    Ok(())
}

/// The stage behind the `ProxyHttp` hook of the same purpose.
impl Gateway {
    /// Connection failures are retried on another server while tries remain.
    pub(super) fn connect_failed(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.active = None;
        let max = ctx
            .runtime
            .as_ref()
            .and_then(|rt| ctx.route(rt))
            .and_then(|r| r.upstream_for(ctx.side))
            .map_or(1, |u| u.spec.max_tries);
        e.set_retry(ctx.tries < max);
        upstream_failed(ctx, e.retry());
        e
    }

    /// A reset before any response byte is retried for idempotent methods whose body can be replayed.
    pub(super) fn proxy_failed(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let max = ctx
            .runtime
            .as_ref()
            .and_then(|rt| ctx.route(rt))
            .and_then(|r| r.upstream_for(ctx.side))
            .map_or(1, |u| u.spec.max_tries);
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let before_response = !ctx.response_started;
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        e.set_retry(replayable && before_response && !timed_out && ctx.tries < max);
        if e.retry() {
            ctx.active = None;
        }
        if !ctx.canary_5xx {
            upstream_failed(ctx, e.retry());
        }
        ctx.canary_5xx = false;
        e
    }
}
