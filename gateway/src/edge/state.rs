//! What a request reads: the validated config compiled into a router, upstream groups and verifiers
//! ([`Snapshot`]), and the stores shared by every request ([`GatewayState`]). A request takes one
//! snapshot at its start and keeps it to its end, so a reload never changes the rules under a request
//! in flight. `runtime::state` builds both and swaps in a new snapshot on reload.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, RouteSpec};
use crate::edge::auth::jwks::JwksRegistry;
use crate::edge::route::Router;
use crate::support::redis::SharedRedis;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::metrics;
use crate::upstream::discovery::Discovery;
use crate::upstream::{ServerRegistry, Upstream};

/// A route ready to serve.
pub struct RouteRt {
    pub spec: RouteSpec,
    pub upstream: Option<Arc<Upstream>>,
    /// The route's canary upstream and its live state, when it has one.
    pub canary: Option<crate::upstream::canary::Canary>,
    /// `gateway_http_request_duration_seconds{route}`, bound on first use: with 10 000 tenant routes,
    /// binding every series up front costs megabytes for routes that may never see traffic.
    duration: std::sync::OnceLock<prometheus::Histogram>,
    /// `gateway_http_requests_total{route,method,status}` handles for the common methods and statuses,
    /// bound on first use (the table itself too, so that idle routes cost one pointer).
    requests: std::sync::OnceLock<Box<RequestCounters>>,
}

/// Statuses whose request counters a route keeps bound; others are looked up per request.
const COUNTED_STATUSES: [u16; 26] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413,
    422, 429, 500, 502, 503, 504, 507,
];

type RequestCounters =
    [[std::sync::OnceLock<prometheus::IntCounter>; COUNTED_STATUSES.len()]; METHOD_LABELS.len()];

use crate::telemetry::metrics::METHOD_LABELS;

impl RouteRt {
    pub fn new(
        spec: RouteSpec,
        upstream: Option<Arc<Upstream>>,
        canary: Option<crate::upstream::canary::Canary>,
    ) -> RouteRt {
        RouteRt {
            spec,
            upstream,
            canary,
            duration: std::sync::OnceLock::new(),
            requests: std::sync::OnceLock::new(),
        }
    }

    /// Counts one request of `method` answered with `status`.
    pub fn count_request(&self, method: &http::Method, status: u16) {
        let series = || crate::telemetry::metrics::requests_series(&self.spec.name, method, status);
        match COUNTED_STATUSES.iter().position(|s| *s == status) {
            Some(si) => {
                let table = self.requests.get_or_init(|| {
                    Box::new(std::array::from_fn(|_| {
                        std::array::from_fn(|_| std::sync::OnceLock::new())
                    }))
                });
                table[crate::telemetry::metrics::method_index(method)][si]
                    .get_or_init(series)
                    .inc();
            }
            None => series().inc(),
        }
    }

    /// The upstream of `side`: the canary's when it has one and `side` says so, else the route's own.
    pub fn upstream_for(&self, side: crate::upstream::canary::Side) -> Option<&Arc<Upstream>> {
        match (side, &self.canary) {
            (crate::upstream::canary::Side::Canary, Some(c)) => Some(&c.upstream),
            _ => self.upstream.as_ref(),
        }
    }

    /// The route's duration histogram.
    pub fn duration(&self) -> &prometheus::Histogram {
        self.duration.get_or_init(|| {
            metrics()
                .request_duration
                .with_label_values(&[&self.spec.name])
        })
    }
}

/// One compiled config.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// The token verifier of `[auth.jwt]`.
    pub jwt: Option<crate::edge::auth::JwtVerifier>,
    /// The API-key store of `[auth.api_keys]`.
    pub api_keys: Option<crate::edge::auth::api_key::ApiKeyStore>,
    /// Tenants' plans of `[plans]`.
    pub plans: Option<crate::edge::plan::PolicyStore>,
    /// In-process rate-limit state (local policies, fallbacks, shed-early guards).
    pub limiters: crate::edge::ratelimit::Limiters,
    pub router: Router,
    pub routes: Vec<RouteRt>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// `Alt-Svc` for HTTPS responses over TCP, when HTTP/3 is served and `[h3] alt_svc_max_age` is not 0.
    pub alt_svc: Option<http::HeaderValue>,
}

impl Snapshot {
    /// Upstreams that at least one route uses.
    pub fn upstreams_in_use(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.iter().filter(|u| {
            self.routes
                .iter()
                .any(|r| r.upstream.as_ref().is_some_and(|x| Arc::ptr_eq(x, u)))
        })
    }
}

/// Everything the proxy, the admin listener and the reloader share.
pub struct GatewayState {
    pub(crate) runtime: ArcSwap<Snapshot>,
    pub(crate) registry: ServerRegistry,
    /// The last DNS answers for upstream host names (see `upstream::discovery`).
    pub discovery: Discovery,
    /// Canary states, kept across reloads (see `upstream::canary`).
    pub(crate) canaries: crate::upstream::canary::CanaryRegistry,
    /// Per-tenant figures (see `tenant_stats`).
    pub tenant_stats: crate::telemetry::tenant_stats::TenantStats,
    /// OpenTelemetry request spans, when `[tracing]` is configured (set at start).
    pub otel: Option<crate::telemetry::otel::Tracing>,
    pub(crate) background_started: AtomicBool,
    pub access_log: AccessLog,
    /// The connection to `[redis]` (created at start; the URL changes only on restart).
    pub redis: Option<Arc<SharedRedis>>,
    /// The revocation checker (needs `[redis]`).
    pub revocation: Option<crate::edge::auth::revocation::RevocationStore>,
    /// The global rate-limit tier (needs `[redis]`).
    pub global_limits: Option<Arc<crate::edge::ratelimit::global::GlobalStore>>,
    /// JWKS sources, kept across reloads.
    pub jwks: JwksRegistry,
    /// Set once the listeners are bound (the proxy service has started).
    pub listeners_up: AtomicBool,
    /// Set when a stop or an upgrade hand-over begins: responses close their connections (`drain`).
    pub draining: AtomicBool,
    /// Set when SIGTERM arrives with a `[server] shutdown_delay`: `/readyz` answers 503 while the
    /// listeners still serve (`drain::StopSignals`).
    pub stopping: AtomicBool,
    /// The certificates served on the https entrypoint and the pending ACME challenge answers.
    pub certs: Arc<crate::tls::store::CertStore>,
    /// The handshake that asks for client certificates on the names `client_auth` routes serve.
    pub client_auth: Arc<crate::tls::client_auth::Offers>,
    /// Backpressure at the process's own core, kept across reloads (see `edge::backpressure`).
    pub core_gate: Arc<crate::edge::backpressure::CoreGate>,
    /// The port of the HTTP/3 entrypoint this process serves (the first config's: listeners change
    /// only on restart), advertised in `Alt-Svc`.
    pub h3_port: Option<u16>,
}

impl GatewayState {
    /// The current runtime (one atomic load; no lock).
    pub fn current(&self) -> Arc<Snapshot> {
        self.runtime.load_full()
    }
}

impl crate::config::Live for GatewayState {
    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.runtime.load().config)
    }
}
