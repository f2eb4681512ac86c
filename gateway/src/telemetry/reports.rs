//! Error reports to a Sentry-protocol endpoint (`SENTRY_DSN`; off when unset): each 5xx the gateway
//! answers itself (an upstream refused or timed out, no healthy server, a hook's panic), tagged with the
//! request id, tenant, route, method, upstream and release. A panic is also reported by the panic
//! integration with its stack trace. Never a header, a body or a token: the event carries these tags and
//! the error's own text, scrubbed by `contracts::reports::scrub`.

pub use contracts::reports::enabled;
use contracts::reports::sentry;

/// Starts the client when `dsn` is set; keep the guard for the process's life.
pub fn init(
    dsn: Option<&str>,
    environment: Option<String>,
) -> Result<Option<sentry::ClientInitGuard>, contracts::reports::BadDsn> {
    contracts::reports::init(
        dsn,
        environment,
        concat!("aggios-edge-gateway@", env!("CARGO_PKG_VERSION")),
    )
}

/// A 5xx the gateway answered, and what identifies its request.
pub struct Failure<'a> {
    pub request_id: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub tenant: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub detail: String,
}

/// Reports `f` (grouped by error code and route).
pub fn server_error(f: &Failure<'_>) {
    if !contracts::reports::admit() {
        return;
    }
    let status = f.status.to_string();
    sentry::Hub::main().capture_event(contracts::reports::error_event(
        format!("{} {} on {}: {}", f.status, f.code, f.route, f.detail),
        &[f.code, f.route],
        &[
            ("request_id", f.request_id),
            ("status", &status),
            ("route", f.route),
            ("method", f.method),
            ("tenant", f.tenant.unwrap_or("-")),
            ("upstream", f.upstream.unwrap_or("-")),
        ],
    ));
}
