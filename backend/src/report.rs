//! Error reports to a Sentry-protocol endpoint (`SENTRY_DSN`; off when unset): a handler's panic and every
//! response of 500 or more, each with the request id, the tenant, the route, the method and the release.
//! Never a token, a password or a body: events carry only those tags and the error's own message, no
//! request data (`send_default_pii` off, `request` and `user` dropped), and every message and exception
//! value goes through [`contracts::redact::secrets`] before it leaves.

use std::sync::Arc;

use contracts::reports::sentry;

pub use contracts::reports::{enabled, scrub};

/// Starts the client when `dsn` is set; keep the guard until exit (it flushes queued events, up to 2 s).
pub fn init(
    dsn: Option<&str>,
    environment: Option<String>,
) -> Result<Option<sentry::ClientInitGuard>, contracts::reports::BadDsn> {
    contracts::reports::init(
        dsn,
        environment,
        concat!("aggios-edge-backend@", env!("CARGO_PKG_VERSION")),
    )
}

/// A hub for one request, its scope tagged with what identifies it; `None` when reports are off.
pub fn request_hub(
    request_id: &str,
    route: &str,
    method: &str,
    headers: &http::HeaderMap,
) -> Option<Arc<sentry::Hub>> {
    // Off (the usual case): one relaxed load, nothing looked up or allocated.
    if !enabled() {
        return None;
    }
    let tenant = headers
        .get(contracts::headers::TENANT_ID)
        .and_then(|v| v.to_str().ok());
    let hub = Arc::new(sentry::Hub::new_from_top(sentry::Hub::current()));
    hub.configure_scope(|scope| {
        scope.set_tag("request_id", request_id);
        scope.set_tag("route", route);
        scope.set_tag("method", method);
        scope.set_tag("tenant", tenant.unwrap_or("-"));
    });
    Some(hub)
}

/// Reports a 5xx answer: its error code and message, grouped by code and route.
pub fn server_error(hub: &sentry::Hub, status: u16, code: &str, route: &str, message: &str) {
    if !contracts::reports::admit() {
        return;
    }
    hub.capture_event(contracts::reports::error_event(
        format!("{status} {code} on {route}: {message}"),
        &[code, route],
        &[("status", &status.to_string())],
    ));
}
