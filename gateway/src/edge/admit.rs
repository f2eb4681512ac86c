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
        let Some(rt) = ctx.runtime.clone() else {
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
        if let Err(err) = self.decide(session, ctx, &rt) {
            answer(session, ctx, err).await?;
            return Ok(true);
        }
        if ctx.preflight {
            self.answer_preflight(session, ctx, &rt).await?;
            return Ok(true);
        }
        let all: &[usize] = ctx.route(&rt).map_or(&[], |r| &r.spec.rate_limits);
        let mut later = Cow::Borrowed(all);
        let mut early_fields = None;
        if ctx.api_key.is_some() {
            // Limits by client address (or route) come before the key's lookup: a flood of made-up
            // keys is refused here, not passed on to the backend.
            let specs = &rt.config.rate_limits;
            let (early, rest): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&i| {
                specs[i].key.iter().all(|k| {
                    matches!(
                        k,
                        crate::config::KeyPart::ClientIp | crate::config::KeyPart::Route
                    )
                })
            });
            if !early.is_empty() {
                match self.check_rate_limits(ctx, &rt, &early).await {
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
        // The two Redis questions (each usually answered in process) run concurrently: at most one
        // round trip of latency. A revoked token is refused as such whatever the limits say.
        let (revocation, limits) = tokio::join!(
            self.check_revocation(ctx, &rt),
            self.check_rate_limits(ctx, &rt, &later)
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
        ctx.route = Some(m.route);
        ctx.tenant = m.tenant.map(Cow::into_owned);
        ctx.host = host.into_owned();
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
                ctx.preflight = true;
                return Ok(());
            }
            if let Ok(o) = origin.to_str() {
                if cors::origin_allowed(cors, o, &ctx.host) {
                    ctx.cors_origin = Some(o.to_string());
                }
            }
        }
        let presented_key = match route.spec.auth {
            AuthPolicy::ApiKey | AuthPolicy::JwtOrApiKey => api_key::presented(&req.headers),
            _ => None,
        };
        if let Some(key) = presented_key {
            // Checked against the key store in `request_filter` (it may need I/O).
            ctx.api_key = Some(key.to_string());
            ctx.api_key_from_header = req.headers.contains_key("x-api-key");
        } else if route.spec.auth == AuthPolicy::ApiKey {
            return Err(refused(route, auth::AuthError::MissingToken));
        } else if route.spec.auth != AuthPolicy::None {
            // Before any upstream is chosen: a refused request never opens an upstream connection.
            let identity = Self::authenticate(
                rt,
                route.spec.auth,
                req.headers.get(http::header::AUTHORIZATION),
                ctx.tenant.as_deref(),
            )
            .map_err(|a| refused(route, a))?;
            if ctx.tenant.is_none() {
                // A host without a tenant (api.…): the tenant comes from the token.
                ctx.tenant = Some(identity.tenant.clone());
            }
            ctx.identity = Some(identity);
            ctx.verified = Verified::Jwt;
        }
        if let Some(up) = &route.upstream {
            if !up.any_healthy() {
                return Err(EdgeError::NoHealthyServer);
            }
        }
        Ok(())
    }

    /// Verifies a presented API key (cached in process, then Redis, then the backend's lookup), binds its
    /// tenant to the host's and checks the route's scopes.
    pub(super) async fn check_api_key(
        &self,
        ctx: &mut RequestCtx,
        rt: &Snapshot,
    ) -> std::result::Result<(), EdgeError> {
        let (Some(key), Some(route)) = (ctx.api_key.as_deref(), ctx.route(rt)) else {
            return Ok(());
        };
        let reject = |a: auth::AuthError| refused(route, a);
        let Some(store) = rt.api_keys.as_ref() else {
            return Err(reject(auth::AuthError::InvalidApiKey));
        };
        // A client that keeps presenting refused keys is stopped before any lookup.
        if let Some(ip) = ctx.client_ip {
            if let Some(retry) = store.over_budget(ip) {
                let limit = store.failures_per_minute();
                return Err(EdgeError::RateLimited(Box::new(
                    crate::edge::error::RateLimitRefusal {
                        policy: "api_key_failures".to_string(),
                        retry_after_secs: retry,
                        policy_field: format!("\"api_key_failures\";q={limit};w=60"),
                        ratelimit_field: format!("\"api_key_failures\";r=0;t={retry}"),
                    },
                )));
            }
        }
        let (identity, record) = match store.verify(key).await {
            Ok(Ok(v)) => v,
            Ok(Err(a)) => {
                if let Some(ip) = ctx.client_ip {
                    store.charge_failure(ip);
                }
                return Err(reject(a));
            }
            Err(e) => {
                // A key that cannot be checked is never let through, whatever `on_store_error` says.
                tracing::warn!(error = %e, "API key lookup failed");
                metrics().auth_store_errors.inc();
                return Err(EdgeError::StoreUnavailable);
            }
        };
        auth::bind_tenant(route.spec.auth, &identity, ctx.tenant.as_deref()).map_err(reject)?;
        if !api_key::has_scopes(&record, &route.spec.scopes) {
            return Err(reject(auth::AuthError::InsufficientScope));
        }
        if ctx.tenant.is_none() {
            ctx.tenant = Some(identity.tenant.clone());
        }
        ctx.identity = Some(identity);
        ctx.api_key_record = Some(record);
        // `api_key::presented` prefers `X-API-Key`; a bearer key is used only without it.
        ctx.verified = if ctx.api_key_from_header {
            Verified::KeyHeader
        } else {
            Verified::KeyBearer
        };
        Ok(())
    }

    /// The route's rate limits: the in-process tier, then one Redis round trip for the global policies.
    /// `Ok` carries the `RateLimit-Policy` / `RateLimit` fields for the response, when they are sent.
    pub(super) async fn check_rate_limits(
        &self,
        ctx: &RequestCtx,
        rt: &Snapshot,
        policies: &[usize],
    ) -> std::result::Result<Option<(String, String)>, EdgeError> {
        use ratelimit::{Outcome, Verdict};
        let Some(route) = ctx.route(rt) else {
            return Ok(None);
        };
        if policies.is_empty() {
            return Ok(None);
        }
        let specs = &rt.config.rate_limits;
        // Per-client counters: per address for IPv4, per /64 for IPv6 (one client holds a whole /64).
        let ip = ctx
            .client_ip
            .map(|i| crate::support::client_budget_key(i).to_string())
            .unwrap_or_default();
        let values = ratelimit::KeyValues {
            client_ip: &ip,
            tenant: ctx.tenant.as_deref(),
            tenant_verified: route.spec.auth.binds_tenant(),
            user: ctx
                .identity
                .as_ref()
                .filter(|_| ctx.api_key_record.is_none())
                .map(|i| i.user_id.as_str()),
            api_key: ctx.api_key_record.as_ref().map(|r| r.id.as_str()),
            route: &route.spec.name,
        };
        let (mut outcomes, global, items) =
            ratelimit::first_tier(specs, &rt.limiters, policies, &values);
        let refused_early = outcomes.iter().any(|o| !o.verdict.allowed());
        if !global.is_empty() && !refused_early {
            let decided = match self.state.global_limits.as_ref() {
                Some(store) => match store.decide(&items).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        metrics().ratelimit_store_errors.inc();
                        if !matches!(e, crate::support::redis::StoreError::Open) {
                            tracing::warn!(error = %e, "global rate limit store unavailable; falling back");
                        }
                        None
                    }
                },
                None => None,
            };
            match decided {
                Some(ds) => {
                    for (i, d) in global.iter().zip(&ds) {
                        let rate = specs[*i].rate_for(values.tenant);
                        outcomes.push(ratelimit::global_outcome(*i, &specs[*i], rate, d));
                    }
                }
                None => {
                    for (i, (key, _)) in global.iter().zip(&items) {
                        outcomes.push(ratelimit::fallback_outcome(
                            *i,
                            &specs[*i],
                            &rt.limiters,
                            values.tenant,
                            key,
                        ));
                    }
                }
            }
        }
        for o in &outcomes {
            rt.limiters.count(o.policy, o.verdict);
        }
        let refused: Option<&Outcome> = outcomes
            .iter()
            .filter(|o| !o.verdict.allowed())
            .max_by_key(|o| o.retry_after);
        let fields = ratelimit::header_fields(specs, &outcomes);
        if let Some(o) = refused {
            let (policy_field, ratelimit_field) = fields.unwrap_or_default();
            return Err(EdgeError::RateLimited(Box::new(
                crate::edge::error::RateLimitRefusal {
                    policy: specs[o.policy].name.clone(),
                    retry_after_secs: ratelimit::ceil_secs(o.retry_after).max(1),
                    policy_field,
                    ratelimit_field,
                },
            )));
        }
        let binding = outcomes.iter().min_by_key(|o| o.remaining);
        if binding.is_some_and(|o| specs[o.policy].headers && o.verdict != Verdict::FailOpen) {
            return Ok(fields);
        }
        Ok(None)
    }

    /// The one Redis round trip of an authenticated request (cached briefly): is its `jti` revoked?
    pub(super) async fn check_revocation(
        &self,
        ctx: &RequestCtx,
        rt: &Snapshot,
    ) -> std::result::Result<(), EdgeError> {
        let (Some(store), Some(identity), Some(route)) = (
            self.state.revocation.as_ref(),
            ctx.identity.as_ref(),
            ctx.route(rt),
        ) else {
            return Ok(());
        };
        let Some(jti) = identity.jti.as_deref() else {
            return Ok(());
        };
        match store.check(jti, &identity.user_id, identity.iat).await {
            revocation::Revocation::Valid => Ok(()),
            revocation::Revocation::Revoked => Err(refused(route, auth::AuthError::Revoked)),
            revocation::Revocation::StoreError => {
                metrics().auth_store_errors.inc();
                match route.spec.on_store_error {
                    crate::config::OnStoreError::Open => Ok(()),
                    crate::config::OnStoreError::Closed => Err(EdgeError::StoreUnavailable),
                }
            }
        }
    }

    pub(super) fn authenticate(
        rt: &Snapshot,
        policy: AuthPolicy,
        header: Option<&http::HeaderValue>,
        host_tenant: Option<&str>,
    ) -> std::result::Result<auth::Identity, auth::AuthError> {
        let token = auth::bearer(header.map(|h| h.as_bytes()))?;
        // Validation guarantees [auth.jwt] exists when a route asks for a token.
        let verifier = rt.jwt.as_ref().ok_or(auth::AuthError::MissingToken)?;
        let identity = verifier.verify(token)?;
        auth::bind_tenant(policy, &identity, host_tenant)?;
        Ok(identity)
    }

    /// Answers a CORS preflight without touching the backend: 204 with the policy, or 403.
    pub(super) async fn answer_preflight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Snapshot,
    ) -> Result<()> {
        let req = session.req_header();
        let (Some(route), Some(origin)) = (
            ctx.route(rt),
            req.headers
                .get(http::header::ORIGIN)
                .and_then(|o| o.to_str().ok()),
        ) else {
            return answer(session, ctx, EdgeError::Internal).await;
        };
        let Some(spec) = &route.spec.cors else {
            return answer(session, ctx, EdgeError::Internal).await;
        };
        let method = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .map_or(&b""[..], |m| m.as_bytes());
        let asked = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .map(|h| h.as_bytes());
        match cors::preflight(spec, origin, &ctx.host, method, asked) {
            Ok(headers) => {
                let mut resp = ResponseHeader::build(204, Some(8))?;
                for (n, v) in headers {
                    resp.insert_header(n, v)?;
                }
                resp.insert_header(contracts::headers::REQUEST_ID, ctx.request_id.as_str())?;
                session.write_response_header(Box::new(resp), true).await?;
                Ok(())
            }
            Err(_) => answer(session, ctx, EdgeError::CorsDenied).await,
        }
    }

    /// The key authorization of a pending HTTP-01 challenge (RFC 8555 §8.3).
    pub(super) async fn answer_acme(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        key_authorization: String,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(200, Some(3))?;
        resp.insert_header(CONTENT_TYPE, "application/octet-stream")?;
        resp.insert_header(CONTENT_LENGTH, key_authorization.len())?;
        resp.insert_header(contracts::headers::REQUEST_ID, ctx.request_id.as_str())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(key_authorization)), true)
            .await?;
        Ok(())
    }

    pub(super) async fn redirect_https(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let pq = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let location = format!("https://{}{}", ctx.host, pq);
        let mut resp = ResponseHeader::build(308, Some(3))?;
        resp.insert_header(LOCATION, location)?;
        resp.insert_header(CONTENT_LENGTH, 0)?;
        resp.insert_header(contracts::headers::REQUEST_ID, ctx.request_id.as_str())?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(())
    }
}

/// The stage behind the `ProxyHttp` hook of the same purpose.
impl Gateway {
    /// Runs first: snapshots the config, fixes the request id and the client address.
    pub(super) async fn begin(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        ctx.start = Instant::now();
        head_deadline::head_done(session.as_downstream().stream());
        let rt = self.state.current();
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
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
        ctx.peer_trusted = peer.is_some_and(|p| headers::is_trusted(p, trusted));
        ctx.client_ip = headers::client_ip(peer, &session.req_header().headers, trusted);
        if let Some(otel) = &self.state.otel {
            let req = session.req_header();
            let parent = req
                .headers
                .get(contracts::traceparent::HEADER)
                .map(|v| v.as_bytes());
            // Only a trusted proxy's trace is continued (with its sampling decision); anyone else's is
            // linked from a new root sampled by our ratio, so a client cannot force sampling.
            ctx.span = Some(Box::new(otel.start(
                req.method.as_str(),
                parent,
                ctx.peer_trusted,
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
        ctx.runtime = Some(rt);
        Ok(())
    }

    /// Counts body bytes against the route's limit (chunked bodies have no length up front).
    pub(super) async fn count_body(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(b), Some(rt)) = (body.as_ref(), ctx.runtime.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if let Some(r) = ctx.route(rt) {
                if ctx.body_bytes > r.spec.max_body_bytes {
                    return Err(
                        EdgeError::BodyTooLarge.into_pingora("request body over max_body_bytes")
                    );
                }
            }
        }
        Ok(())
    }
}
