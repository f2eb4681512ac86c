//! Error reports to a Sentry-protocol endpoint (`SENTRY_DSN`; off when unset): a handler's panic and every
//! response of 500 or more, each with the request id, the tenant, the route, the method and the release.
//! Never a token, a password or a body: events carry only those tags and the error's own message, no
//! request data (`send_default_pii` off, `request` and `user` dropped), and every message and exception
//! value goes through [`contracts::redact::secrets`] before it leaves.

use std::borrow::Cow;
use std::sync::Arc;

/// A `SENTRY_DSN` that is not a DSN.
#[derive(Debug, thiserror::Error)]
#[error("SENTRY_DSN: {0}")]
pub struct ReportError(String);

/// Starts the client when `dsn` is set; keep the guard until exit (it flushes queued events, up to 2 s).
pub fn init(
    dsn: Option<&str>,
    environment: Option<String>,
) -> Result<Option<sentry::ClientInitGuard>, ReportError> {
    let Some(dsn) = dsn.filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| ReportError(format!("{e}")))?;
    let mut options = sentry::ClientOptions::new();
    options.dsn = Some(dsn);
    options.release = Some(Cow::Borrowed(concat!(
        "aggios-edge-backend@",
        env!("CARGO_PKG_VERSION")
    )));
    options.environment = environment.map(Cow::Owned);
    options.send_default_pii = false;
    options.before_send = None;
    let guard = sentry::init(options);
    Ok(Some(guard))
}

/// Whether reports are sent (a client with a DSN is bound).
pub fn enabled() -> bool {
    sentry::Hub::current()
        .client()
        .is_some_and(|c| c.is_enabled())
}

/// A hub for one request, its scope tagged with what identifies it; `None` when reports are off.
pub fn request_hub(
    request_id: &str,
    route: &str,
    method: &str,
    tenant: Option<&str>,
) -> Option<Arc<sentry::Hub>> {
    if !enabled() {
        return None;
    }
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
    let event = sentry::protocol::Event {
        message: Some(format!("{status} {code} on {route}: {message}")),
        level: sentry::Level::Error,
        fingerprint: Cow::Owned(vec![
            Cow::Owned(code.to_string()),
            Cow::Owned(route.to_string()),
        ]),
        tags: [("status".to_string(), status.to_string())].into(),
        ..Default::default()
    };
    hub.capture_event(event);
}

/// The event without request data, secrets redacted from its texts.
pub fn scrub(mut event: sentry::protocol::Event<'static>) -> sentry::protocol::Event<'static> {
    event.request = None;
    event.user = None;
    event.extra.clear();
    if let Some(m) = event.message.as_mut() {
        *m = contracts::redact::secrets(m);
    }
    if let Some(l) = event.logentry.as_mut() {
        l.message = contracts::redact::secrets(&l.message);
        l.params.clear();
    }
    for e in event.exception.values.iter_mut() {
        if let Some(v) = e.value.as_mut() {
            *v = contracts::redact::secrets(v);
        }
    }
    for b in event.breadcrumbs.values.iter_mut() {
        if let Some(m) = b.message.as_mut() {
            *m = contracts::redact::secrets(m);
        }
        b.data.clear();
    }
    event
}
