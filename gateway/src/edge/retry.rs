//! What an upstream's failure or answer means for the request: the canary's figures, and whether the
//! request is tried again on another server or side.

use super::*;

/// A connection failure or a reset counts against the side that had it; a retry after a canary's
/// failure goes to the stable upstream.
pub(super) fn upstream_failed(ctx: &mut RequestCtx, retry: bool) {
    let Some(rt) = ctx.request.runtime.clone() else {
        return;
    };
    if let Some(c) = ctx.route(&rt).and_then(|r| r.canary.as_ref()) {
        let latency = ctx
            .retry
            .upstream_start
            .map_or(Duration::ZERO, |t| t.elapsed());
        if !ctx.retry.side_forced {
            c.state.record(ctx.retry.side, true, latency);
        }
        if retry && ctx.retry.side == canary::Side::Canary {
            ctx.retry.fall_back_to_stable();
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
    if let (Some(route), Some(t0)) = (route, ctx.retry.upstream_start) {
        let elapsed = t0.elapsed();
        ctx.retry.upstream_ms = Some(elapsed.as_secs_f64() * 1e3);
        if let Some(up) = route.upstream_for(ctx.retry.side) {
            up.duration().observe(elapsed.as_secs_f64());
            up.admission.sample(elapsed);
        }
        if let Some(c) = &route.canary {
            let error = upstream_response.status.is_server_error();
            if !ctx.retry.side_forced {
                c.state.record(ctx.retry.side, error, elapsed);
            }
            if error
                && ctx.retry.side == canary::Side::Canary
                && RetryState::replayable(session)
                && ctx.retry.stable_tries_left()
            {
                ctx.retry.canary_5xx = true;
                ctx.retry.fall_back_to_stable();
                ctx.retry.active = None;
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    "the canary answered 5xx: trying the stable upstream",
                );
            }
        }
    }
    // An upgraded connection (WebSocket) lives on for as long as its client wants: it is no longer
    // a request in flight, and must not hold the upstream's slot for hours.
    if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
        ctx.retry.slot = None;
    }
    ctx.retry.response_started = true;
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
        ctx.retry.active = None;
        // A connection the upstream did not take counts against its adaptive limit.
        if let Some(slot) = &ctx.retry.slot {
            slot.admission().failure();
        }
        e.set_retry(ctx.retry.tries_left());
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
        let before_response = !ctx.retry.response_started;
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        if timed_out && e.esource() == &ErrorSource::Upstream {
            if let Some(slot) = &ctx.retry.slot {
                slot.admission().failure();
            }
        }
        e.set_retry(
            RetryState::replayable(session)
                && before_response
                && !timed_out
                && ctx.retry.tries_left(),
        );
        if e.retry() {
            ctx.retry.active = None;
        }
        if !ctx.retry.canary_5xx {
            upstream_failed(ctx, e.retry());
        }
        ctx.retry.canary_5xx = false;
        e
    }
}
