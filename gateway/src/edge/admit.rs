//! Admission: the request stage from the head to the decision to forward — strict checks, route,
//! credentials (JWT, API key, revocation), rate limits — and the answers given here instead (preflights,
//! ACME challenges, HTTPS redirects, refusals).

use super::*;

/// The hooks' own work; the trait methods run each under [`caught`].
impl Gateway {
    /// Validates the request, matches a route and answers here whatever must not reach a backend.
    pub(super) async fn filter_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if let Some(path) = &self.fault_panic_path {
            if session.req_header().uri.path() == path.as_str() {
                panic!("fault injected at {path}");
            }
        }
        let Some(rt) = ctx.request.runtime.clone() else {
            answer(session, ctx, EdgeError::Internal).await?;
            return Ok(true);
        };
        // ACME HTTP-01 comes before any route: the CA asks on plain HTTP, whatever the routes say.
        if let Some(token) = session
            .req_header()
            .uri
            .path()
            .strip_prefix(ACME_CHALLENGE_PATH)
        {
            let answer = match &self.acme {
                Some(acme) => acme.http01(token).await,
                None => None,
            };
            if let Some(key_authorization) = answer {
                self.answer_acme(session, ctx, key_authorization).await?;
                return Ok(true);
            }
        }
        // A request refused here is answered at once; one that goes on waits while its class is over
        // its share of a saturated core.
        let decided = match self.decide(session, ctx, &rt) {
            Ok(()) => {
                let counted = self.count_in_core(ctx, &rt).await;
                if let Some(ticket) = &ctx.request.core {
                    backpressure::mark_h2_connection(session, ticket.class());
                }
                counted
            }
            Err(e) => Err(e),
        };
        if let Err(err) = decided {
            answer(session, ctx, err).await?;
            return Ok(true);
        }
        if ctx.answer.preflight {
            self.answer_preflight(session, ctx, &rt).await?;
            return Ok(true);
        }
        let all: &[usize] = ctx.route(&rt).map_or(&[], |r| &r.spec.rate_limits);
        let mut later = Cow::Borrowed(all);
        let mut early_fields = None;
        if ctx.credential.presented_key().is_some() {
            // Limits by client address (or route) come before the key's lookup: a flood of made-up
            // keys is refused here, not passed on to the backend.
            let (early, rest) = ratelimit::stage::early_late(all, &rt.config.rate_limits);
            if !early.is_empty() {
                match self.check_rate_limits(ctx, &rt, &early, false).await {
                    Ok(fields) => early_fields = fields,
                    Err(err) => {
                        answer(session, ctx, err).await?;
                        return Ok(true);
                    }
                }
            }
            later = Cow::Owned(rest);
            if let Err(err) = self.check_api_key(ctx, &rt).await {
                answer(session, ctx, err).await?;
                return Ok(true);
            }
        }
        // The tenant is known now (host, token or key): its plan (cached) may refuse it outright.
        if let Err(err) = self.check_plan(ctx, &rt).await {
            answer(session, ctx, err).await?;
            return Ok(true);
        }
        // The two Redis questions (each usually answered in process) run concurrently: at most one
        // round trip of latency. A revoked token is refused as such whatever the limits say.
        let (revocation, limits) = tokio::join!(
            self.check_revocation(ctx, &rt),
            self.check_rate_limits(ctx, &rt, &later, true)
        );
        match revocation.and(limits) {
            Ok(fields) => ctx.rate_headers = fields.or(early_fields),
            Err(err) => {
                answer(session, ctx, err).await?;
                return Ok(true);
            }
        }
        let route = ctx
            .route(&rt)
            .map(|r| r.spec.redirect_https)
            .unwrap_or(false);
        let is_tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if route && !is_tls {
            self.redirect_https(session, ctx).await?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Gateway {
    /// Counts the request in its class for the core's fair shares while the process is saturated
    /// (`backpressure`) — the tenant of the verified credential, else the client address (/64), as the
    /// upstream queue classes it — and waits while its class is over its share, at most `deadline`
    /// (then 503 `overloaded_core`, after `[overload] queue_timeout`). One atomic load when the gate
    /// is off.
    async fn count_in_core(
        &self,
        ctx: &mut RequestCtx,
        rt: &Snapshot,
    ) -> std::result::Result<(), EdgeError> {
        let gate = &self.state.core_gate;
        gate.ensure_probe();
        if gate.limit() == 0 {
            return Ok(());
        }
        // A verified tenant weighs by its plan's `concurrency_weight`, as in the upstream queue — read
        // from the process's cache only (no I/O before the gate; a tenant not cached yet weighs 1).
        let weight = ctx.credential.identity().map_or(1, |identity| {
            rt.plans.as_ref().map_or(1, |plans| {
                plans
                    .peek(&identity.tenant)
                    .filter(|p| p.source == crate::edge::plan::Source::Tenant)
                    .map_or(1, |p| p.policy.concurrency_weight.clamp(1, 1000) as usize)
            })
        });
        let class = match (ctx.credential.identity(), ctx.request.client_ip) {
            (Some(identity), _) => crate::support::hash64(identity.tenant.as_bytes()),
            (None, Some(ip)) => match crate::support::client_budget_key(ip) {
                std::net::IpAddr::V4(v4) => crate::support::hash64(&v4.octets()),
                std::net::IpAddr::V6(v6) => crate::support::hash64(&v6.octets()),
            },
            (None, None) => 0,
        };
        ctx.request.core = gate
            .admit(class, weight, rt.config.overload.queue_timeout)
            .await
            .map_err(|_| EdgeError::Overloaded(crate::upstream::admission::Refusal::Core))?;
        Ok(())
    }

    /// The checks and decisions of `request_filter`; `Err` is answered at the edge.
    pub(super) fn decide(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Snapshot,
    ) -> std::result::Result<(), EdgeError> {
        let limits = &rt.config.limits;
        let head_limits = HeadLimits {
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
        };
        if let Some(h1) = session.as_downstream().as_http1() {
            check_head(&h1.get_headers_raw_bytes(), head_limits)?;
        } else {
            // HTTP/2 (over TLS or h2c): the head came parsed, the same limits apply to it.
            let req = session.req_header();
            guard::check_parsed_head(&req.headers, &req.method, &req.uri, head_limits)?;
        }
        let req = session.req_header();
        let host = match req.headers.get(HOST) {
            Some(h) => route::normalize_host(h.as_bytes()),
            None => req
                .uri
                .authority()
                .and_then(|a| route::normalize_host(a.as_str().as_bytes())),
        }
        .ok_or(EdgeError::BadHost)?;
        let path = req.uri.path();
        check_path(path)?;
        if req.headers.contains_key(http::header::CONNECTION) {
            check_connection(&req.headers)?;
        }
        // A preflight is routed as the request it announces, so `methods` matchers apply to it.
        let announced = (req.method == http::Method::OPTIONS
            && req.headers.contains_key(http::header::ORIGIN))
        .then(|| req.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD))
        .flatten()
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
        let method = announced.as_ref().unwrap_or(&req.method);
        // A tenant's own domain is routed as `{tenant}.{first base domain}`: the tenant's routes,
        // with tenant binding. The upstream still sees the domain the client asked for.
        let as_tenant = self
            .on_demand
            .as_ref()
            .and_then(|od| od.tenant_of(&host))
            .zip(rt.config.tenancy.base_domains.first())
            .map(|(tenant, base)| format!("{tenant}.{base}"));
        let view = route::RequestView {
            host: as_tenant.as_deref().unwrap_or(&host),
            path,
            method,
            headers: &req.headers,
        };
        let m = rt.router.lookup(&view).ok_or(EdgeError::NoRoute)?;
        let route = &rt.routes[m.route];
        ctx.request.route = Some(m.route);
        ctx.request.tenant = m.tenant.map(Cow::into_owned);
        ctx.request.host = host.into_owned();
        // Client-address lists, on the address after trusted-proxy handling, before anything else the
        // route decides (CORS, credentials): a refused address learns nothing more.
        if route.spec.ip_access.is_set() && !route.spec.ip_access.admits(ctx.request.client_ip) {
            metrics()
                .auth_rejections
                .with_label_values(&[&route.spec.name, "ip_denied"])
                .inc();
            return Err(EdgeError::IpDenied);
        }
        // The connection's client certificate, verified for this route; with `auth = "client_cert"`
        // it is the credential.
        let client_cert = match &route.spec.client_auth {
            Some(spec) => auth::client_cert::check(session, route, spec)?,
            None => None,
        };
        ctx.request.client_cert = client_cert.is_some();
        if route.spec.grpc_web {
            ctx.answer.grpc_web =
                grpc_web::GrpcWeb::detect(req.headers.get(http::header::CONTENT_TYPE))
                    .map(Box::new);
        }
        if let Some(spec) = &route.spec.compression {
            ctx.answer.compress = Some(compress::Compress::Negotiated {
                coding: compress::negotiate(
                    req.headers
                        .get(http::header::ACCEPT_ENCODING)
                        .map(|v| v.as_bytes()),
                    &spec.algorithms,
                ),
                ruled_out: req.method == http::Method::HEAD
                    || req.headers.contains_key(http::header::RANGE),
            });
        }
        if let Some(len) = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > route.spec.max_body_bytes {
                return Err(EdgeError::BodyTooLarge);
            }
        }
        if let (Some(cors), Some(origin)) =
            (&route.spec.cors, req.headers.get(http::header::ORIGIN))
        {
            if announced.is_some() {
                ctx.answer.preflight = true;
                return Ok(());
            }
            if let Ok(o) = origin.to_str() {
                if cors::origin_allowed(cors, o, &ctx.request.host) {
                    ctx.answer.cors_origin = Some(o.to_string());
                }
            }
        }
        let presented_key = match route.spec.auth {
            AuthPolicy::ApiKey | AuthPolicy::JwtOrApiKey => api_key::presented(&req.headers),
            _ => None,
        };
        if let Some(key) = presented_key {
            // Checked against the key store in `request_filter` (it may need I/O).
            ctx.credential = Credential::KeyPresented {
                key: key.to_string(),
                from_header: req.headers.contains_key("x-api-key"),
            };
        } else if route.spec.auth == AuthPolicy::ApiKey {
            return Err(refused(route, auth::AuthError::MissingToken));
        } else if route.spec.auth == AuthPolicy::ClientCert {
            // Validation guarantees `client_auth` with mode "required" here, so a certificate verified.
            let (Some(cert), Some(spec)) = (client_cert, route.spec.client_auth.as_deref()) else {
                return Err(refused(route, auth::AuthError::ClientCertRequired));
            };
            let identity =
                auth::client_cert::identity(cert, spec).map_err(|a| refused(route, a))?;
            auth::bind_tenant(route.spec.auth, &identity, ctx.request.tenant.as_deref())
                .map_err(|_| refused(route, auth::AuthError::ClientCertOtherTenant))?;
            if ctx.request.tenant.is_none() {
                ctx.request.tenant = Some(identity.tenant.clone());
            }
            ctx.credential = Credential::Cert(identity);
        } else if route.spec.auth != AuthPolicy::None {
            // Before any upstream is chosen: a refused request never opens an upstream connection.
            let identity = Self::authenticate(
                rt,
                route.spec.auth,
                &route.spec.scopes,
                req.headers.get(http::header::AUTHORIZATION),
                ctx.request.tenant.as_deref(),
            )
            .map_err(|a| refused(route, a))?;
            if ctx.request.tenant.is_none() {
                // A host without a tenant (api.…): the tenant comes from the token.
                ctx.request.tenant = Some(identity.tenant.clone());
            }
            ctx.credential = Credential::Jwt(identity);
        }
        if let Some(up) = &route.upstream {
            if !up.any_healthy() {
                return Err(EdgeError::NoHealthyServer);
            }
        }
        Ok(())
    }
}

/// The stage behind the `ProxyHttp` hook of the same purpose.
impl Gateway {
    /// Runs first: snapshots the config, fixes the request id and the client address.
    pub(super) async fn begin(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        ctx.request.start = Instant::now();
        head_deadline::head_done(session.as_downstream().stream());
        let rt = self.state.current();
        let req = session.req_header();
        ctx.request.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if headers::valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => headers::new_request_id(),
        };
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = &rt.config.trusted_proxies;
        ctx.request.peer_trusted = peer.is_some_and(|p| headers::is_trusted(p, trusted));
        ctx.request.client_ip = headers::client_ip(peer, &session.req_header().headers, trusted);
        if let Some(otel) = &self.state.otel {
            let req = session.req_header();
            let parent = req
                .headers
                .get(contracts::traceparent::HEADER)
                .map(|v| v.as_bytes());
            // Only a trusted proxy's trace is continued (with its sampling decision); anyone else's is
            // linked from a new root sampled by our ratio, so a client cannot force sampling.
            ctx.observe.span = Some(Box::new(otel.start(
                req.method.as_str(),
                parent,
                ctx.request.peer_trusted,
            )));
        }
        if self
            .state
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Stopping or handing over to a new process: this response closes the connection, so that a
            // keep-alive client reconnects after it (see `drain`).
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            // Only where the client keeps the connection (HTTP/1.1 without `Connection: close`, or
            // HTTP/1.0 with `Connection: keep-alive`): our idle time instead of Pingora's.
            session.set_keepalive(Some(DOWNSTREAM_KEEPALIVE_SECS));
        }
        session.set_read_timeout(Some(rt.config.limits.body_timeout));
        ctx.request.runtime = Some(rt);
        Ok(())
    }

    /// Counts body bytes against the route's limit (chunked bodies have no length up front), as they
    /// come from the client; then a gRPC-Web `-text` body is decoded. A refusal here is the client's
    /// error (`into_down`): Pingora then ends the call and answers it, where an error it took for the
    /// upstream's would leave an HTTP/2 upstream waiting for the rest of the body.
    pub(super) async fn count_body(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(b), Some(rt)) = (body.as_ref(), ctx.request.runtime.as_ref()) {
            ctx.observe.body_bytes += b.len() as u64;
            if let Some(r) = ctx.route(rt) {
                if ctx.observe.body_bytes > r.spec.max_body_bytes {
                    return Err(EdgeError::BodyTooLarge
                        .into_pingora("request body over max_body_bytes")
                        .into_down());
                }
            }
        }
        if let Some(g) = ctx.answer.grpc_web.as_mut() {
            g.decode_body(body, end_of_stream)
                .map_err(|e| e.into_pingora("gRPC-Web text body").into_down())?;
        }
        Ok(())
    }
}
