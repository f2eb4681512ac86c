//! The request's context, one typed part per stage, in the order a request meets them: what admission
//! fixed ([`Admitted`]), the caller's [`Credential`], the rate-limit outcome, the tries on upstream
//! servers ([`RetryState`]), and what the answer and the observation need ([`Answering`],
//! [`Observation`]). Each stage writes its own part and reads those of the stages before it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::auth::{api_key::KeyRecord, Identity};
use super::error::EdgeError;
use super::state::{RouteRt, Snapshot};
use crate::telemetry::metrics::metrics;
use crate::upstream::{canary, ActiveGuard, ServerState, Upstream};

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

/// Per-request state shared by the stages.
pub struct RequestCtx {
    pub(super) request: Admitted,
    pub(super) credential: Credential,
    /// The tenant's plan (with `[plans]`), once the tenant is known.
    pub(super) plan: Option<super::plan::Resolved>,
    /// `RateLimit-Policy` and `RateLimit` for the response, when the binding policy sends them.
    pub(super) rate_headers: Option<(String, String)>,
    pub(super) retry: RetryState,
    pub(super) answer: Answering,
    pub(super) observe: Observation,
}

/// What admission fixed: the snapshot of the rules, the request's id, the client, the host, the route
/// and the tenant.
pub(super) struct Admitted {
    pub start: Instant,
    _in_flight: InFlight,
    /// The rules this request runs under, from its start to its end (a reload never changes them).
    pub runtime: Option<Arc<Snapshot>>,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// The connection comes from a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    pub host: String,
    /// Index of the route in the snapshot.
    pub route: Option<usize>,
    pub tenant: Option<String>,
    /// Counted in its class while the process is saturated (see `edge::backpressure`).
    pub core: Option<super::backpressure::CoreTicket>,
    /// The route's `client_auth` verified the connection's certificate: its fields go upstream.
    pub client_cert: bool,
}

/// The caller's credential, as far as the edge has checked it.
pub(super) enum Credential {
    /// None checked: the route has no auth (the request goes on as the client sent it), or the
    /// request was refused before.
    None,
    /// An API key presented on a route that accepts one, not yet verified (`request_filter` looks it
    /// up, which may need I/O); `from_header` when it came in `X-API-Key`.
    KeyPresented { key: String, from_header: bool },
    /// A bearer JWT in `Authorization`, verified.
    Jwt(Identity),
    /// A client certificate, verified for the route (`auth = "client_cert"`).
    Cert(Identity),
    /// An API key, verified (its id keys `api_key` rate limits).
    Key {
        identity: Identity,
        record: Arc<KeyRecord>,
        from_header: bool,
    },
}

/// Which credential header the edge verified: the only one forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verified {
    /// Nothing (auth = "none"): the request goes on as the client sent it.
    Nothing,
    /// A bearer JWT in `Authorization`.
    Jwt,
    /// An API key in `X-API-Key`.
    KeyHeader,
    /// An API key as `Authorization: Bearer ak_…`.
    KeyBearer,
    /// The client certificate: neither `Authorization` nor `X-API-Key` was verified.
    ClientCert,
}

impl Credential {
    /// The verified caller.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Credential::Jwt(i) | Credential::Cert(i) | Credential::Key { identity: i, .. } => {
                Some(i)
            }
            Credential::None | Credential::KeyPresented { .. } => None,
        }
    }

    /// The verified API key's record.
    pub fn key_record(&self) -> Option<&Arc<KeyRecord>> {
        match self {
            Credential::Key { record, .. } => Some(record),
            _ => None,
        }
    }

    /// An API key presented and not yet verified.
    pub fn presented_key(&self) -> Option<&str> {
        match self {
            Credential::KeyPresented { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Which credential header was verified.
    pub fn verified(&self) -> Verified {
        match self {
            Credential::None | Credential::KeyPresented { .. } => Verified::Nothing,
            Credential::Jwt(_) => Verified::Jwt,
            Credential::Cert(_) => Verified::ClientCert,
            // `api_key::presented` prefers `X-API-Key`; a bearer key is used only without it.
            Credential::Key {
                from_header: true, ..
            } => Verified::KeyHeader,
            Credential::Key {
                from_header: false, ..
            } => Verified::KeyBearer,
        }
    }
}

/// The tries on upstream servers: which servers were tried, on which side of a canary, and whether
/// another try is allowed.
pub(super) struct RetryState {
    pub server: Option<Arc<ServerState>>,
    pub tried: Vec<SocketAddr>,
    /// Stable or canary upstream (routes with a canary); decided at the first try.
    pub side: canary::Side,
    /// The side was forced by an override: the answer is kept out of the canary's verdict.
    pub side_forced: bool,
    /// The canary answered 5xx and the request goes to the stable upstream instead (already recorded).
    pub canary_5xx: bool,
    pub tries: u32,
    /// `max_tries` of the upstream of the current try, and of the route's own (stable) upstream: set
    /// when the try begins ([`RetryState::begin`]), read by every retry decision.
    max_tries: u32,
    stable_max_tries: u32,
    pub active: Option<ActiveGuard>,
    /// A slot of the upstream's concurrency limit, held until the response is done.
    pub slot: Option<crate::upstream::admission::Slot>,
    pub upstream_start: Option<Instant>,
    /// Time to the upstream's response head.
    pub upstream_ms: Option<f64>,
    pub response_started: bool,
    /// The current try speaks HTTP/2 to its upstream (`h2c`, `h2`).
    pub h2_upstream: bool,
}

impl RetryState {
    /// A try on `server` of `upstream`, on a route whose own upstream is `stable`.
    pub fn begin(
        &mut self,
        server: Arc<ServerState>,
        upstream: &Upstream,
        stable: Option<&Arc<Upstream>>,
    ) {
        self.tries += 1;
        self.tried.push(server.addr);
        self.active = Some(server.begin());
        self.server = Some(server);
        self.max_tries = upstream.spec.max_tries;
        self.h2_upstream = upstream.protocol.h2();
        self.stable_max_tries = stable.map_or(1, |u| u.spec.max_tries);
    }

    /// Whether the upstream of the current try allows another.
    pub fn tries_left(&self) -> bool {
        self.tries < self.max_tries
    }

    /// Whether the route's stable upstream allows another try (a canary's 5xx goes there).
    pub fn stable_tries_left(&self) -> bool {
        self.tries < self.stable_max_tries
    }

    /// The next try goes to the route's stable upstream (after the canary failed or answered 5xx).
    pub fn fall_back_to_stable(&mut self) {
        self.side = canary::Side::Stable;
        self.max_tries = self.stable_max_tries;
    }

    /// Whether the request can be sent again: an idempotent method whose body Pingora still holds.
    pub fn replayable(session: &pingora::proxy::Session) -> bool {
        session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
    }
}

/// What the answer needs: the edge's own error, a CORS origin to echo, a preflight to answer, and
/// whether to close lingering.
pub(super) struct Answering {
    pub error: Option<EdgeError>,
    /// The request's `Origin`, when the route's CORS policy allows it.
    pub cors_origin: Option<String>,
    /// A CORS preflight to answer at the edge.
    pub preflight: bool,
    /// Answered with an error before the request body was read: close lingering (`logging`).
    pub linger: bool,
    /// Response compression, on routes that have it (`edge::compress`).
    pub compress: Option<crate::edge::compress::Compress>,
    /// A gRPC-Web call bridged to gRPC, on routes with `grpc_web` (`edge::grpc_web`); boxed, so that
    /// every other request's context stays as small as it was.
    pub grpc_web: Option<Box<crate::edge::grpc_web::GrpcWeb>>,
}

/// What the observation needs beyond the other parts.
pub(super) struct Observation {
    /// The request's OpenTelemetry span (with `[tracing]`), boxed: the context stays small when off.
    pub span: Option<Box<crate::telemetry::otel::RequestSpan>>,
    pub body_bytes: u64,
}

impl RequestCtx {
    /// A context for a request that has just begun.
    pub(super) fn new() -> RequestCtx {
        RequestCtx {
            request: Admitted {
                start: Instant::now(),
                _in_flight: InFlight::new(),
                runtime: None,
                request_id: String::new(),
                client_ip: None,
                peer_trusted: false,
                host: String::new(),
                route: None,
                tenant: None,
                core: None,
                client_cert: false,
            },
            credential: Credential::None,
            plan: None,
            rate_headers: None,
            retry: RetryState {
                server: None,
                tried: Vec::new(),
                side: canary::Side::Stable,
                side_forced: false,
                canary_5xx: false,
                tries: 0,
                max_tries: 1,
                stable_max_tries: 1,
                active: None,
                slot: None,
                upstream_start: None,
                upstream_ms: None,
                response_started: false,
                h2_upstream: false,
            },
            answer: Answering {
                error: None,
                cors_origin: None,
                preflight: false,
                linger: false,
                compress: None,
                grpc_web: None,
            },
            observe: Observation {
                span: None,
                body_bytes: 0,
            },
        }
    }

    /// The request's route in `rt`.
    pub(super) fn route<'a>(&self, rt: &'a Snapshot) -> Option<&'a RouteRt> {
        self.request.route.map(|i| &rt.routes[i])
    }
}
