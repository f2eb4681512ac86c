//! The route table: (method, path) → handler, and what every handler shares.

pub mod auth;
pub mod error;
pub mod hashing;
pub mod routes;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::metrics::metrics;
use crate::state::AppState;

/// The client address the gateway computed (a contract with the gateway's `edge/headers.rs`).
pub use contracts::headers::CLIENT_IP as CLIENT_IP_HEADER;
pub use error::ApiError;

/// A handler's result.
pub type ApiResult = Result<Response<Body>, ApiError>;

/// Every response body: whole (JSON) or streamed (file downloads).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a handler knows about its request besides the body.
pub struct Ctx {
    pub state: Arc<AppState>,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub request_id: String,
    pub peer: SocketAddr,
}

impl Ctx {
    /// The host the gateway forwarded (`X-Forwarded-Host`, else `Host`), lowercase, without port.
    pub fn forwarded_host(&self) -> Option<String> {
        let raw = self
            .headers
            .get("x-forwarded-host")
            .or_else(|| self.headers.get(http::header::HOST))?;
        let s = raw.to_str().ok()?.split(',').next()?.trim();
        let host = s
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(s, |(h, _)| h);
        Some(host.trim_end_matches('.').to_ascii_lowercase())
    }

    /// The client address: what a trusted gateway computed (`X-Aggios-Client-Ip`, which it sets itself
    /// and strips from clients), else the peer. `X-Forwarded-For` is not read: its last entry is the
    /// gateway's own peer, a load balancer behind which every client would share one address.
    pub fn client_ip(&self) -> String {
        let peer = self.peer.ip();
        let from_gateway = self
            .state
            .trusted_gateways
            .iter()
            .any(|n| n.contains(&peer));
        from_gateway
            .then(|| self.headers.get(CLIENT_IP_HEADER))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
            .unwrap_or(peer)
            .to_string()
    }
}

/// A JSON response.
pub fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads a JSON body of at most 64 KiB into `T`.
pub async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("invalid_body", "could not read the request body".into())
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest("invalid_json", format!("invalid JSON: {e}")))
}

/// Serves one request: dispatch, then the error mapping, request id, metrics and access log.
/// Counts a request in flight from its head until its response is built (or the handler is dropped).
struct InFlight(Arc<AppState>);

impl InFlight {
    fn enter(state: &Arc<AppState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        metrics().in_flight.inc();
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        metrics().in_flight.dec();
    }
}

pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    internal: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let start = Instant::now();
    let _in_flight = InFlight::enter(&state);
    let (parts, body) = req.into_parts();
    let request_id = parts
        .headers
        .get(contracts::headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| contracts::valid_request_id(v.as_bytes()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string);
    let ctx = Ctx {
        state,
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        request_id,
        peer,
    };
    // One route table for both: the endpoint dispatch runs is the one the metrics name.
    let path = ctx.path.clone();
    let segs = routes::segments(&path);
    let endpoint = routes::Endpoint::of(&segs, internal);
    let route = endpoint.label();
    // A panic in a handler ends this request only: 500 with its request id, counted; the process and
    // every other request go on (the panic hook has logged it with its backtrace).
    let handled = std::panic::AssertUnwindSafe(async {
        if ctx.state.fault_panic_path.as_deref() == Some(ctx.path.as_str()) {
            panic!("fault injected at {}", ctx.path);
        }
        routes::dispatch(&ctx, endpoint, &segs, internal, body).await
    });
    // Everything logged while the request is handled (slow statements included) carries its request id.
    // With OpenTelemetry on, it is the request's server span, continuing the gateway's trace.
    let span = tracing::info_span!(
        "request",
        request_id = %ctx.request_id,
        otel.name = %format_args!("{} {route}", ctx.method),
        otel.kind = "server",
        http.route = route,
        http.request.method = %ctx.method,
        http.response.status_code = tracing::field::Empty,
        aggios.tenant = tracing::field::Empty,
    );
    crate::otel::continue_trace(&span, &ctx.headers);
    // The tenant the gateway verified in the token (absent before login): for the trace only.
    if let Some(t) = ctx
        .headers
        .get(contracts::headers::TENANT_ID)
        .and_then(|v| v.to_str().ok())
    {
        span.record("aggios.tenant", t);
    }
    let request_span = span.clone();
    let handled = tracing::Instrument::instrument(handled, span);
    // With SENTRY_DSN set, the request runs under its own hub: a panic inside it is reported (by the
    // panic integration) with the request's tags.
    let hub = crate::report::request_hub(&ctx.request_id, route, ctx.method.as_str(), &ctx.headers);
    let handled = match &hub {
        Some(hub) => futures_util::future::Either::Left(
            contracts::reports::sentry::SentryFutureExt::bind_hub(handled, hub.clone()),
        ),
        None => futures_util::future::Either::Right(handled),
    };
    let mut panicked = false;
    let result =
        match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handled)).await {
            Ok(result) => result,
            Err(_) => {
                panicked = true;
                metrics().panics.inc();
                tracing::error!(request_id = %ctx.request_id, path = %ctx.path, "handler panicked");
                Err(error::ApiError::Internal("handler panicked".to_string()))
            }
        };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            // A 5xx answer is reported (a panic was already, by the panic integration).
            if let (Some(hub), false) = (&hub, panicked) {
                let status = e.status();
                if status.is_server_error() {
                    crate::report::server_error(
                        hub,
                        status.as_u16(),
                        e.code(),
                        route,
                        &e.to_string(),
                    );
                }
            }
            e.into_response(&ctx.request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert(contracts::headers::REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    request_span.record("http.response.status_code", status);
    drop(request_span);
    metrics()
        .requests
        .with_label_values(&[route, ctx.method.as_str(), &status.to_string()])
        .inc();
    metrics()
        .duration
        .with_label_values(&[route])
        .observe(start.elapsed().as_secs_f64());
    tracing::info!(
        request_id = %ctx.request_id, method = %ctx.method, path = %ctx.path, status,
        duration_ms = start.elapsed().as_secs_f64() * 1000.0, "request"
    );
    Ok(resp)
}
