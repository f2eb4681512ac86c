//! The request's way through the edge: the [`ProxyHttp`] impl only dispatches each phase to the modules
//! beside it ([`guard`] → [`route`] → [`upstream`] → [`headers`]); errors become answers in
//! [`crate::error`].

pub mod api_key;
pub mod auth;
pub mod canary;
pub mod cors;
pub mod discovery;
pub mod guard;
pub mod head_deadline;
pub mod headers;
pub mod jwks;
pub mod ratelimit;
pub mod revocation;
pub mod route;
pub mod upstream;
pub mod upstream_affinity;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::access_log::Entry;
use crate::config::{AuthPolicy, UpstreamProtocol};
use crate::error::EdgeError;
use crate::metrics::{metrics, requests_series};
use crate::state::{GatewayState, Runtime};
use guard::{check_connection, check_head, check_path, HeadLimits};
use headers::X_REQUEST_ID;
use upstream::ActiveGuard;

/// Where ACME HTTP-01 challenges are asked for.
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Keep-alive idle time for downstream HTTP/1 connections between requests, in seconds.
const DOWNSTREAM_KEEPALIVE_SECS: u64 = 60;

/// The gateway's [`ProxyHttp`] implementation.
pub struct Gateway {
    pub state: Arc<GatewayState>,
    /// Tenants' own domains (known from on-demand TLS), routed as their tenant's.
    pub on_demand: Option<Arc<crate::tls::on_demand::OnDemand>>,
    /// The ACME client: HTTP-01 answers of this replica or, with shared storage, of any replica.
    pub acme: Option<Arc<crate::tls::acme::AcmeClient>>,
    /// Fault injection for tests (`GATEWAY_FAULT_PANIC_PATH`, never set in production): a request for
    /// exactly this path panics inside `request_filter`.
    pub fault_panic_path: Option<String>,
}

/// Runs one of the request's hooks; a panic in it becomes this request's 500 (`internal_error`, with its
/// request id), counted in `gateway_panics_total`, instead of ending the connection's task unanswered.
async fn caught<T>(
    hook: &'static str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await {
        Ok(result) => result,
        Err(_) => {
            metrics().panics.inc();
            tracing::error!(hook, "a request hook panicked; answered 500");
            Err(EdgeError::Internal.into_pingora("a request hook panicked"))
        }
    }
}

/// Counts a request in `gateway_http_connections_active` for as long as it lives.
pub struct InFlight;
impl InFlight {
    fn new() -> InFlight {
        metrics().connections_active.inc();
        InFlight
    }
}
impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().connections_active.dec();
    }
}

/// Lingering close after an error answered before the request body was read: at most this long, and
/// this much of the client's remaining input read and dropped.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Whether a request announces a body (chunked, or a non-zero `Content-Length`).
fn declares_body(req: &pingora::http::RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Per-request state shared by the phases.
pub struct RequestCtx {
    start: Instant,
    _in_flight: InFlight,
    runtime: Option<Arc<Runtime>>,
    request_id: String,
    client_ip: Option<IpAddr>,
    peer_trusted: bool,
    host: String,
    route: Option<usize>,
    tenant: Option<String>,
    server: Option<Arc<upstream::ServerState>>,
    tried: Vec<std::net::SocketAddr>,
    /// Stable or canary upstream (routes with a canary); decided at the first try.
    side: canary::Side,
    /// The side was forced by an override: the answer is kept out of the canary's verdict.
    side_forced: bool,
    /// Answered with an error before the request body was read: close lingering (`logging`).
    linger: bool,
    /// The canary answered 5xx and the request goes to the stable upstream instead (already recorded).
    canary_5xx: bool,
    /// The request's OpenTelemetry span (with `[tracing]`), boxed: the context stays small when off.
    span: Option<Box<crate::otel::RequestSpan>>,
    /// Time to the upstream's response head.
    upstream_ms: Option<f64>,
    tries: u32,
    active: Option<ActiveGuard>,
    response_started: bool,
    upstream_start: Option<Instant>,
    body_bytes: u64,
    error: Option<EdgeError>,
    identity: Option<auth::Identity>,
    /// The request's `Origin`, when the route's CORS policy allows it.
    cors_origin: Option<String>,
    /// A CORS preflight to answer at the edge.
    preflight: bool,
    /// An API key presented on a route that accepts one (checked in `request_filter`).
    api_key: Option<String>,
    /// Whether that key came in `X-API-Key` (else as `Authorization: Bearer ak_…`).
    api_key_from_header: bool,
    /// The key's record, once verified (its id keys `api_key` rate limits).
    api_key_record: Option<Arc<api_key::KeyRecord>>,
    /// `RateLimit-Policy` and `RateLimit` for the response, when the binding policy sends them.
    rate_headers: Option<(String, String)>,
    /// The credential the edge verified: the only one forwarded.
    verified: Verified,
}

/// Which credential the edge checked for the route (the others are removed before the upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verified {
    /// Nothing (auth = "none"): the request goes on as the client sent it.
    Nothing,
    /// A bearer JWT in `Authorization`.
    Jwt,
    /// An API key in `X-API-Key`.
    KeyHeader,
    /// An API key as `Authorization: Bearer ak_…`.
    KeyBearer,
}

impl RequestCtx {
    fn route<'a>(&self, rt: &'a Runtime) -> Option<&'a crate::state::RouteRt> {
        self.route.map(|i| &rt.routes[i])
    }
}

/// A connection failure or a reset counts against the side that had it; a retry after a canary's
/// failure goes to the stable upstream.
fn upstream_failed(ctx: &mut RequestCtx, retry: bool) {
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
fn upstream_answered(
    session: &Session,
    upstream_response: &ResponseHeader,
    ctx: &mut RequestCtx,
    rt: Option<&Runtime>,
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

/// Writes an edge error as a JSON response, closing the connection when framing can't be trusted.
async fn answer(session: &mut Session, ctx: &mut RequestCtx, err: EdgeError) -> Result<()> {
    if err.closes_connection() {
        session.set_keepalive(None);
    }
    if matches!(
        err,
        EdgeError::Malformed(_)
            | EdgeError::HeaderTooLarge
            | EdgeError::TooManyHeaders
            | EdgeError::BadHost
    ) {
        metrics().malformed.inc();
    }
    let body = err.body(&ctx.request_id);
    let mut resp = ResponseHeader::build(err.status(), Some(4))?;
    resp.insert_header(CONTENT_TYPE, "application/json")?;
    resp.insert_header(CONTENT_LENGTH, body.len())?;
    resp.insert_header(contracts::headers::REQUEST_ID, ctx.request_id.as_str())?;
    if let EdgeError::Auth(a) = &err {
        resp.insert_header(http::header::WWW_AUTHENTICATE, a.www_authenticate())?;
    }
    if let EdgeError::RateLimited(r) = &err {
        resp.insert_header(http::header::RETRY_AFTER, r.retry_after_secs)?;
        resp.insert_header("ratelimit-policy", r.policy_field.as_str())?;
        resp.insert_header("ratelimit", r.ratelimit_field.as_str())?;
    }
    if err.closes_connection() {
        resp.insert_header(http::header::CONNECTION, "close")?;
    }
    ctx.error = Some(err);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// An authentication refusal on `route`, counted in `gateway_auth_rejections_total{route,reason}`.
fn refused(route: &crate::state::RouteRt, a: auth::AuthError) -> EdgeError {
    metrics()
        .auth_rejections
        .with_label_values(&[&route.spec.name, a.reason()])
        .inc();
    EdgeError::Auth(a)
}

/// Maps a Pingora error to the edge error answered for it.
fn classify(e: &Error) -> Option<EdgeError> {
    // An answer one of our hooks decided comes back as itself.
    if let Some(err) = EdgeError::carried(e) {
        return Some(err.clone());
    }
    if let ErrorType::HTTPStatus(code) = e.etype() {
        return Some(match code {
            413 => EdgeError::BodyTooLarge,
            503 => EdgeError::NoHealthyServer,
            502 => EdgeError::BadGateway,
            504 => EdgeError::UpstreamTimeout,
            404 => EdgeError::NoRoute,
            408 => EdgeError::RequestTimeout,
            _ if *code >= 500 => EdgeError::Internal,
            _ => EdgeError::Malformed("invalid request"),
        });
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                EdgeError::UpstreamTimeout
            }
            _ => EdgeError::BadGateway,
        }),
        ErrorSource::Downstream => match e.etype() {
            ErrorType::ReadTimedout => Some(EdgeError::RequestTimeout),
            ErrorType::WriteError
            | ErrorType::ReadError
            | ErrorType::ConnectionClosed
            | ErrorType::WriteTimedout => None,
            _ => Some(EdgeError::Malformed("invalid request body or framing")),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout => EdgeError::UpstreamTimeout,
            ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => {
                EdgeError::BadGateway
            }
            _ => EdgeError::Internal,
        }),
    }
}

impl Gateway {
    /// The checks and decisions of `request_filter`; `Err` is answered at the edge.
    fn decide(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
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
    async fn check_api_key(
        &self,
        ctx: &mut RequestCtx,
        rt: &Runtime,
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
                    crate::error::RateLimitRefusal {
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
    async fn check_rate_limits(
        &self,
        ctx: &RequestCtx,
        rt: &Runtime,
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
                        if !matches!(e, crate::shared_redis::StoreError::Open) {
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
                crate::error::RateLimitRefusal {
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
    async fn check_revocation(
        &self,
        ctx: &RequestCtx,
        rt: &Runtime,
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

    fn authenticate(
        rt: &Runtime,
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
    async fn answer_preflight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
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
    async fn answer_acme(
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

    async fn redirect_https(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
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

/// The hooks' own work; the trait methods run each under [`caught`].
impl Gateway {
    /// Validates the request, matches a route and answers here whatever must not reach a backend.
    async fn filter_request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
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

    /// Picks a server of the route's upstream that this request has not tried yet.
    async fn choose_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let rt = ctx
            .runtime
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no runtime"))?;
        let route = ctx
            .route(&rt)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        if ctx.tries == 0 {
            if let Some(c) = &route.canary {
                let req = session.req_header();
                (ctx.side, ctx.side_forced) = c.state.side(
                    &req.headers,
                    ctx.tenant.as_deref(),
                    ctx.client_ip,
                    ctx.peer_trusted,
                );
                if ctx.side == canary::Side::Canary && !c.upstream.any_healthy() {
                    ctx.side = canary::Side::Stable;
                }
            }
        }
        let up = route
            .upstream_for(ctx.side)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "route without upstream"))?;
        let Some(server) = up.select(ctx.tenant.as_deref(), &ctx.tried) else {
            let err = if ctx.tried.is_empty() {
                EdgeError::NoHealthyServer
            } else {
                EdgeError::BadGateway
            };
            return Err(err.into_pingora("no server left to try"));
        };
        ctx.tries += 1;
        ctx.tried.push(server.addr);
        ctx.active = Some(server.begin());
        let mut peer = HttpPeer::new(server.addr, false, String::new());
        ctx.server = Some(server);
        let t = up.spec.timeouts;
        let rtmo = route.spec.timeouts;
        peer.options.connection_timeout = Some(rtmo.connect.unwrap_or(t.connect));
        peer.options.read_timeout = Some(rtmo.read.unwrap_or(t.read));
        peer.options.write_timeout = Some(rtmo.write.unwrap_or(t.write));
        peer.options.idle_timeout = Some(t.idle);
        if up.protocol == UpstreamProtocol::H2c {
            peer.options.alpn = ALPN::H2;
        }
        Ok(Box::new(peer))
    }

    /// Strips what clients must not choose, sets forwarding headers and the route's rewrites.
    async fn rewrite_upstream_request(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let upgrade = session.is_upgrade_req();
        let seen = headers::Managed::scan(upstream_request);
        headers::strip_hop_by_hop(upstream_request, seen, upgrade);
        if !ctx
            .runtime
            .as_ref()
            .is_some_and(|rt| rt.config.underscores_in_headers)
        {
            headers::strip_underscored(upstream_request, seen);
        }
        // Traced: the backend's span is a child of this request's.
        if let Some(tp) = ctx.span.as_deref().and_then(crate::otel::traceparent) {
            let _ = upstream_request.insert_header(contracts::traceparent::HEADER, tp);
        }
        headers::set_identity(upstream_request, seen, ctx.identity.as_ref());
        // Only the credential the edge verified goes on: the backend must not act on another one.
        match ctx.verified {
            Verified::Nothing => {}
            Verified::Jwt | Verified::KeyBearer => {
                seen.remove(upstream_request, headers::Field::ApiKey);
            }
            Verified::KeyHeader => {
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
            ctx.peer_trusted,
            proto,
            &ctx.host,
        );
        headers::set_client_ip(upstream_request, seen, ctx.client_ip);
        headers::set_request_id(upstream_request, &ctx.request_id);
        if let Some(rt) = ctx.runtime.as_ref() {
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
        ctx.upstream_start = Some(Instant::now());
        Ok(())
    }

    /// Adds the request id and the route's response rewrites.
    async fn rewrite_response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header(contracts::headers::REQUEST_ID, ctx.request_id.as_str())?;
        if let Some((policy, state)) = ctx.rate_headers.take() {
            resp.insert_header("ratelimit-policy", policy)?;
            resp.insert_header("ratelimit", state)?;
        }
        if let Some(rt) = ctx.runtime.as_ref() {
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
                if let Some(v) = &sec.hsts {
                    if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
                        resp.insert_header("strict-transport-security", v.clone())?;
                    }
                }
                if let (Some(cors), Some(origin)) = (&route.spec.cors, ctx.cors_origin.as_deref()) {
                    for (n, v) in cors::actual(cors, origin) {
                        resp.insert_header(n, v)?;
                    }
                    resp.append_header(http::header::VARY, "Origin")?;
                }
                if !route.spec.response_headers.is_empty() {
                    headers::apply_response_rules(resp, &route.spec.response_headers);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        caught("request_filter", self.filter_request(session, ctx)).await
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_affinity::record(fd, reused);
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        caught("upstream_peer", self.choose_peer(session, ctx)).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        caught(
            "upstream_request_filter",
            self.rewrite_upstream_request(session, upstream_request, ctx),
        )
        .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        caught("response_filter", self.rewrite_response(session, resp, ctx)).await
    }

    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default builds a (disabled) response-compression module for
    /// every request; the gateway never compresses (the backends do, or not).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            _in_flight: InFlight::new(),
            runtime: None,
            request_id: String::new(),
            client_ip: None,
            peer_trusted: false,
            host: String::new(),
            route: None,
            tenant: None,
            server: None,
            tried: Vec::new(),
            side: canary::Side::Stable,
            side_forced: false,
            linger: false,
            canary_5xx: false,
            span: None,
            upstream_ms: None,
            tries: 0,
            active: None,
            response_started: false,
            upstream_start: None,
            body_bytes: 0,
            error: None,
            identity: None,
            cors_origin: None,
            preflight: false,
            api_key: None,
            api_key_from_header: false,
            api_key_record: None,
            rate_headers: None,
            verified: Verified::Nothing,
        }
    }

    /// Runs first: snapshots the config, fixes the request id and the client address.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
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
    async fn request_body_filter(
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

    /// Connection failures are retried on another server while tries remain.
    fn fail_to_connect(
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
    fn error_while_proxy(
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

    /// The upstream answered: no retry from here on; record its latency.
    /// On a route with a canary, the answer counts for its side; a canary's 5xx to a request that can be
    /// replayed is not passed on but tried again on the stable upstream.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The runtime is lent out of the context, not cloned: no shared reference count touched per request.
        let rt = ctx.runtime.take();
        let answered = upstream_answered(session, upstream_response, ctx, rt.as_deref());
        ctx.runtime = rt;
        answered
    }

    /// Proxying failed: answer with the JSON error that fits.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.request_id.is_empty() {
            ctx.request_id = headers::new_request_id();
        }
        let Some(err) = classify(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = err.status();
        if session.response_written().is_none() {
            // Refused as malformed or too large while it declares a body: the client may still be
            // sending it (a body reader in error counts as done, so the declaration decides).
            ctx.linger = matches!(code, 400 | 413) && declares_body(session.req_header());
            if let Err(write_err) = answer(session, ctx, err).await {
                tracing::debug!(error = %write_err, "could not write the error response");
            }
        } else {
            ctx.error = Some(err);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// One access-log line and the request metrics.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
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
            crate::otel::finish(
                *span,
                &crate::otel::Outcome {
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
            let sample = crate::tenant_stats::Sample {
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
            // the error response instead of a reset.
            session
                .as_downstream_mut()
                .linger_close(LINGER_TIME, LINGER_BYTES)
                .await;
        }
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    /// An answer a hook decided reaches `fail_to_proxy` as itself: a status alone would map a 403 CORS
    /// refusal back to a 400 and a 503 store outage to "no healthy server".
    #[test]
    fn a_hooks_edge_error_comes_back_as_itself() {
        for err in [
            EdgeError::CorsDenied,
            EdgeError::StoreUnavailable,
            EdgeError::BodyTooLarge,
            EdgeError::ConnectNotAllowed,
            EdgeError::Internal,
        ] {
            let e = err.clone().into_pingora("test");
            assert_eq!(classify(&e), Some(err.clone()), "{err:?}");
            assert_eq!(e.etype(), &ErrorType::HTTPStatus(err.status()));
        }
        // Errors Pingora makes itself still map by source and type.
        let up = Error::explain(ErrorType::ConnectTimedout, "x").into_up();
        assert_eq!(classify(&up), Some(EdgeError::UpstreamTimeout));
    }
}
