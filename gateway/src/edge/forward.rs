//! Forwarding: the upstream server a request goes to, and the rewriting of the request and of the
//! response on their way (identity and forwarding fields, route rules, security and CORS headers).

use super::*;

/// Choosing the upstream server and rewriting the request and the response on their way.
impl Gateway {
    /// Picks a server of the route's upstream that this request has not tried yet.
    pub(super) async fn choose_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let rt = ctx
            .request
            .runtime
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no runtime"))?;
        let route = ctx
            .route(&rt)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        if ctx.retry.tries == 0 {
            if let Some(c) = &route.canary {
                let req = session.req_header();
                (ctx.retry.side, ctx.retry.side_forced) = c.state.side(
                    &req.headers,
                    ctx.request.tenant.as_deref(),
                    ctx.request.client_ip,
                    ctx.request.peer_trusted,
                );
                if ctx.retry.side == canary::Side::Canary && !c.upstream.any_healthy() {
                    ctx.retry.side = canary::Side::Stable;
                }
            }
        }
        let up = route
            .upstream_for(ctx.retry.side)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "route without upstream"))?;
        // A slot of the upstream's concurrency limit (kept across tries on the same upstream).
        if !ctx
            .retry
            .slot
            .as_ref()
            .is_some_and(|s| s.is_of(&up.admission))
        {
            ctx.retry.slot = None;
            let slot = match up.admission.try_take() {
                Some(slot) => slot,
                None => {
                    // Queued by the tenant of the verified credential; a request without one by its
                    // client address (/64): a Host label alone is the client's choice, and a flood
                    // spread over made-up tenant labels would otherwise get a turn per label.
                    let class = match (ctx.credential.identity(), ctx.request.client_ip) {
                        (Some(identity), _) => Cow::Borrowed(identity.tenant.as_str()),
                        (None, Some(ip)) => {
                            Cow::Owned(crate::support::client_budget_key(ip).to_string())
                        }
                        (None, None) => Cow::Borrowed(""),
                    };
                    // A verified tenant's plan weighs its turn (slots in a row per round).
                    let weight = match (ctx.credential.identity(), &ctx.plan) {
                        (Some(identity), Some(plan))
                            if plan.source == crate::edge::plan::Source::Tenant
                                && plan.policy.tenant == identity.tenant =>
                        {
                            plan.policy.concurrency_weight.clamp(1, 1000)
                        }
                        _ => 1,
                    };
                    let overload = &rt.config.overload;
                    up.admission
                        .wait(&class, weight, overload.queue_timeout, overload.queue_size)
                        .await
                        .map_err(|r| EdgeError::Overloaded(r).into_pingora("upstream overloaded"))?
                }
            };
            ctx.retry.slot = Some(slot);
        }
        let Some(server) = up.select(ctx.request.tenant.as_deref(), &ctx.retry.tried) else {
            let err = if ctx.retry.tried.is_empty() {
                EdgeError::NoHealthyServer
            } else {
                EdgeError::BadGateway
            };
            return Err(err.into_pingora("no server left to try"));
        };
        let mut peer = match &up.spec.tls {
            None => HttpPeer::new(server.addr, false, String::new()),
            Some(tls) => {
                // The upstream's one client configuration (roots, verifier, client certificate, ALPN;
                // vendor patch 0010): its session cache lets reconnections resume.
                let name = tls.server_name(server.via.as_deref(), server.addr);
                let mut peer = HttpPeer::new(server.addr, true, name);
                peer.options.tls_client_config = Some(Arc::clone(&tls.client));
                peer
            }
        };
        ctx.retry.begin(server, up, route.upstream.as_ref());
        let t = up.spec.timeouts;
        let rtmo = route.spec.timeouts;
        let (mut read, mut write) = (rtmo.read.unwrap_or(t.read), rtmo.write.unwrap_or(t.write));
        // A gRPC call's deadline (`grpc-timeout`, forwarded as it came) bounds every wait on the
        // upstream: past it the call is answered DEADLINE_EXCEEDED instead of waiting for the route's
        // read timeout. Each read is bounded by what is left of the deadline when the server is chosen.
        // `grpc-timeout` first: absent on almost every request, so one lookup that misses.
        let req = session.req_header();
        let deadline = req
            .headers
            .get("grpc-timeout")
            .filter(|_| super::reply::is_grpc(req.headers.get(http::header::CONTENT_TYPE)))
            .and_then(|v| grpc_timeout(v.as_bytes()));
        if let Some(deadline) = deadline {
            let left = deadline
                .saturating_sub(ctx.request.start.elapsed())
                .max(Duration::from_millis(1));
            read = read.min(left);
            write = write.min(left);
        }
        let connect = rtmo.connect.unwrap_or(t.connect).min(read);
        peer.options.connection_timeout = Some(connect);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(write);
        if up.spec.send_proxy {
            // The client's connection as this gateway sees it (after an inbound PROXY header), in a
            // header at the start of a connection that serves this client connection only.
            let source = session.client_addr().and_then(|a| a.as_inet()).copied();
            let destination = session.server_addr().and_then(|a| a.as_inet()).copied();
            if let (Some(source), Some(destination)) = (source, destination) {
                peer.options.custom_l4 = Some(Arc::new(
                    crate::upstream::send_proxy::SendProxy::new(source, destination, connect),
                ));
                peer.group_key =
                    crate::upstream::send_proxy::SendProxy::pool_key(source, destination);
            } else {
                // Never a connection without the header the server expects (nor one with a wrong one).
                return Err(
                    EdgeError::Internal.into_pingora("no client address for a PROXY header")
                );
            }
        }
        peer.options.idle_timeout = Some(t.idle);
        if up.protocol.h2() {
            peer.options.alpn = ALPN::H2;
        }
        Ok(Box::new(peer))
    }

    /// Strips what clients must not choose, sets forwarding headers and the route's rewrites.
    pub(super) async fn rewrite_upstream_request(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let upgrade = session.is_upgrade_req();
        let seen = headers::Managed::scan(upstream_request);
        // Only an HTTP/2 upstream gets `TE: trailers`: no lookup for the others.
        let te_trailers = ctx.retry.h2_upstream && headers::accepts_trailers(upstream_request);
        headers::strip_hop_by_hop(upstream_request, seen, upgrade);
        if te_trailers {
            // `TE` is hop-by-hop, but `trailers` (the one value HTTP/2 allows) tells an HTTP/2 server
            // that the client takes trailers: gRPC servers refuse a call without it.
            let _ = upstream_request.insert_header("te", "trailers");
        }
        if let Some(g) = ctx.answer.grpc_web.as_ref() {
            // A browser's gRPC-Web call goes on as gRPC (the edge takes the trailers for it).
            g.rewrite_request(upstream_request)?;
        }
        if !ctx
            .request
            .runtime
            .as_ref()
            .is_some_and(|rt| rt.config.underscores_in_headers)
        {
            headers::strip_underscored(upstream_request, seen);
        }
        // Traced: the backend's span is a child of this request's.
        if let Some(tp) = ctx
            .observe
            .span
            .as_deref()
            .and_then(crate::telemetry::otel::traceparent)
        {
            let _ = upstream_request.insert_header(contracts::traceparent::HEADER, tp);
        }
        headers::set_identity(upstream_request, seen, ctx.credential.identity());
        if ctx.request.client_cert {
            if let Some(cert) = auth::client_cert::peer_cert(session) {
                headers::set_client_cert(upstream_request, cert);
            }
        }
        // Only the credential the edge verified goes on: the backend must not act on another one.
        match ctx.credential.verified() {
            Verified::Nothing => {}
            Verified::Jwt | Verified::KeyBearer => {
                seen.remove(upstream_request, headers::Field::ApiKey);
            }
            Verified::KeyHeader => {
                seen.remove(upstream_request, headers::Field::Authorization);
            }
            Verified::ClientCert => {
                seen.remove(upstream_request, headers::Field::ApiKey);
                seen.remove(upstream_request, headers::Field::Authorization);
            }
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let proto = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            "https"
        } else {
            "http"
        };
        headers::set_forwarded(
            upstream_request,
            seen,
            peer,
            ctx.request.peer_trusted,
            proto,
            &ctx.request.host,
        );
        headers::set_client_ip(upstream_request, seen, ctx.request.client_ip);
        headers::set_request_id(upstream_request, &ctx.request.request_id);
        if let Some(rt) = ctx.request.runtime.as_ref() {
            if let Some(route) = ctx.route(rt) {
                if route.spec.strip_prefix {
                    let pq = upstream_request
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str());
                    if let Some(new) = headers::strip_path_prefix(pq, &route.spec.path_prefix) {
                        let uri = http::Uri::try_from(new).map_err(|e| {
                            Error::because(ErrorType::InternalError, "strip_prefix", e)
                        })?;
                        upstream_request.set_uri(uri);
                    }
                }
                if !route.spec.request_headers.is_empty() {
                    headers::apply_request_rules(upstream_request, &route.spec.request_headers);
                }
            }
        }
        ctx.retry.upstream_start = Some(Instant::now());
        Ok(())
    }

    /// Adds the request id and the route's response rewrites.
    pub(super) async fn rewrite_response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header(
            contracts::headers::REQUEST_ID,
            ctx.request.request_id.as_str(),
        )?;
        if let Some(g) = ctx.answer.grpc_web.as_mut() {
            let h1 = session.as_downstream().as_http1().is_some();
            g.rewrite_response(resp, h1)?;
        }
        if let Some((policy, state)) = ctx.rate_headers.take() {
            resp.insert_header("ratelimit-policy", policy)?;
            resp.insert_header("ratelimit", state)?;
        }
        if let Some(rt) = ctx.request.runtime.as_ref() {
            if let Some(route) = ctx.route(rt) {
                let sec = &route.spec.security;
                if sec.content_type_options {
                    resp.insert_header(
                        "x-content-type-options",
                        http::HeaderValue::from_static("nosniff"),
                    )?;
                }
                if let Some(v) = &sec.referrer_policy {
                    resp.insert_header("referrer-policy", v.clone())?;
                }
                if let Some(v) = &sec.frame_options {
                    resp.insert_header("x-frame-options", v.clone())?;
                }
                // HSTS means nothing over plain HTTP (browsers ignore it there): HTTPS responses only.
                let https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
                if let Some(v) = &sec.hsts {
                    if https {
                        resp.insert_header("strict-transport-security", v.clone())?;
                    }
                }
                // HTTP/3 is advertised on HTTPS responses over TCP (RFC 7838); an HTTP/3 client has it.
                if let (true, Some(v)) = (https, &rt.alt_svc) {
                    if !session.as_downstream().is_custom() {
                        resp.insert_header(http::header::ALT_SVC, v.clone())?;
                    }
                }
                if let (Some(cors), Some(origin)) =
                    (&route.spec.cors, ctx.answer.cors_origin.as_deref())
                {
                    for (n, v) in cors::actual(cors, origin) {
                        resp.insert_header(n, v)?;
                    }
                    resp.append_header(http::header::VARY, "Origin")?;
                }
                if !route.spec.response_headers.is_empty() {
                    headers::apply_response_rules(resp, &route.spec.response_headers);
                }
                if let (Some(spec), Some(compress::Compress::Negotiated { coding, ruled_out })) =
                    (&route.spec.compression, &ctx.answer.compress)
                {
                    let decision = compress::decide(
                        spec,
                        resp,
                        *coding,
                        *ruled_out,
                        route.spec.auth != AuthPolicy::None,
                    );
                    ctx.answer.compress =
                        compress::apply(spec, resp, decision).map(compress::Compress::Encoding);
                }
            }
        }
        Ok(())
    }
}

/// A gRPC `grpc-timeout` value (`TimeoutValue TimeoutUnit`: at most 8 digits, then one of `H M S m u n`),
/// or `None` when it is not one.
pub(super) fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_spec_writes_them() {
        assert_eq!(grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(grpc_timeout(b"100000000m"), None, "nine digits");
        for bad in [&b""[..], b"m", b"10", b"10x", b"-1S", b"1.5S", b" 1S"] {
            assert_eq!(
                grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
