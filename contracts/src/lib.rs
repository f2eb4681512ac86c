//! The wire contracts between the gateway and the backend, in one place: both crates depend on this one,
//! so a change on one side is a change on the other (or a compile error), never a silent drift.
//!
//! - [`claims`]: the access token the backend issues and the gateway verifies;
//! - [`redis_keys`]: what the backend writes to Redis and the gateway reads (revocations, API-key cache);
//! - [`headers`]: what the gateway sets on requests to the backend (identity, client address, request id);
//! - [`is_label`]: what a tenant subdomain may be (the backend creates it, the gateway routes by it).
//! - [`traceparent`]: the W3C trace context the gateway passes to the backend (one trace across both).
#![forbid(unsafe_code)]

/// The access token's claims.
pub mod claims {
    use serde::{Deserialize, Serialize};
    pub use uuid::Uuid;

    /// Claim names, as the gateway reads them.
    pub const USER_ID: &str = "user_id";
    pub const TENANT_ID: &str = "tenant_id";
    pub const EMAIL: &str = "email";
    pub const ROLE: &str = "role";
    pub const JTI: &str = "jti";

    /// An access token's claims (HS256; the backend signs, the gateway and the backend verify).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AccessClaims {
        pub user_id: Uuid,
        pub email: String,
        /// The tenant's subdomain.
        pub tenant_id: String,
        pub role: String,
        pub iat: u64,
        pub exp: u64,
        /// The token's id: its revocation is `redis_keys::denylist_jti(jti)`.
        pub jti: String,
    }
}

/// Redis keys shared by the backend (writer) and the gateway (reader).
pub mod redis_keys {
    /// A revoked access token, until its `exp` (plus the verifiers' leeway).
    pub fn denylist_jti(jti: &str) -> String {
        format!("aggios:denylist:jti:{jti}")
    }

    /// Unix seconds: every token of the user issued at or before it is refused (written when the user
    /// is deactivated, demoted or deleted).
    pub fn user_not_before(user_id: &str) -> String {
        format!("aggios:user_nbf:{user_id}")
    }

    /// The gateway's cache of an API key's record (the backend deletes it when the key is revoked).
    pub fn api_key(prefix: &str) -> String {
        format!("aggios:apikey:{prefix}")
    }

    /// The gateway's cache of a tenant's effective policy ([`crate::plans::TenantPolicy`]); the backend
    /// deletes it when the tenant's plan, overrides or suspension change.
    pub fn tenant_policy(tenant: &str) -> String {
        format!("aggios:policy:{tenant}")
    }

    /// The Pub/Sub channel on which the backend names a tenant whose policy changed (`*`: every tenant,
    /// after a plan itself changed). Gateways drop their in-process entries on each message.
    pub const POLICY_CHANNEL: &str = "aggios:policy-changes";

    /// A tenant's requests counted in one calendar month (UTC), `month` as `YYYY-MM`: incremented by the
    /// gateway's rate-limit script, flushed to Postgres `usage` by the backend.
    pub fn monthly_requests(tenant: &str, month: &str) -> String {
        format!("aggios:quota:{{{tenant}}}:{month}")
    }
}

/// Tenant plans: what the backend's internal listener answers at
/// `GET /internal/tenant-policy/{tenant}` and what the gateway caches.
pub mod plans {
    /// A tenant's effective policy: its plan with the tenant's overrides applied.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct TenantPolicy {
        /// The tenant's label (its subdomain).
        pub tenant: String,
        /// The plan's name (named in `RateLimit-Policy`).
        pub plan: String,
        /// Bumped by every change of the tenant's plan, overrides or suspension.
        pub version: i64,
        pub suspended: bool,
        pub requests_per_second: u64,
        pub burst: u64,
        /// The tenant's weight in the fair shares under overload.
        pub concurrency_weight: u32,
        /// Requests per calendar month (UTC); 0 = none.
        pub monthly_requests: u64,
        pub storage_bytes: u64,
        pub max_upload_bytes: u64,
        pub max_api_keys: u32,
        pub max_users: u32,
    }

    /// The calendar month (UTC) of a Unix time, as `YYYY-MM`, and the Unix time at which it ends.
    pub fn month_of(unix_secs: u64) -> (String, u64) {
        let days = (unix_secs / 86_400) as i64;
        let (y, m) = civil(days);
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let end = days_from_civil(ny, nm) as u64 * 86_400;
        (format!("{y:04}-{m:02}"), end)
    }

    /// Year and month of a day count since 1970-01-01 (Howard Hinnant's civil-from-days).
    fn civil(z: i64) -> (i64, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m)
    }

    /// Days since 1970-01-01 of the first day of month `m` of year `y`.
    fn days_from_civil(y: i64, m: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(m);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn months_and_their_ends() {
            assert_eq!(month_of(0), ("1970-01".to_string(), 31 * 86_400));
            // 2026-12-06T11:00:00Z
            let (m, end) = month_of(1_796_554_800);
            assert_eq!(m, "2026-12");
            assert_eq!(end, 1_798_761_600, "2027-01-01T00:00:00Z");
            // The last second of February in a leap year, and the first of March.
            assert_eq!(month_of(1_709_251_199).0, "2024-02");
            assert_eq!(month_of(1_709_251_200).0, "2024-03");
            assert_eq!(month_of(1_709_251_199).1, 1_709_251_200);
        }
    }
}

/// Request headers the gateway sets for the backend (and strips from clients).
pub mod headers {
    pub const USER_ID: &str = "x-user-id";
    pub const TENANT_ID: &str = "x-tenant-id";
    pub const USER_EMAIL: &str = "x-user-email";
    pub const USER_ROLE: &str = "x-user-role";
    /// Every identity header: never taken from a client.
    pub const IDENTITY: [&str; 4] = [USER_ID, TENANT_ID, USER_EMAIL, USER_ROLE];
    /// The OAuth client acting (a verified OAuth access token's `client_id`), and the scopes it was
    /// granted (space-separated). Under `x-auth-`: every such header from a client is stripped.
    pub const OAUTH_CLIENT_ID: &str = "x-auth-client-id";
    pub const OAUTH_SCOPE: &str = "x-auth-scope";
    /// The client certificate the edge verified on a route with `client_auth`: its subject (RFC 4514),
    /// subject alternative names (`DNS:…, URI:…, email:…, IP:…`) and the SHA-256 of its DER (hex); a
    /// byte outside visible ASCII, and `%`, percent-encoded. Under `x-auth-`: stripped from clients.
    pub const CLIENT_CERT_SUBJECT: &str = "x-auth-client-cert-subject";
    pub const CLIENT_CERT_SAN: &str = "x-auth-client-cert-san";
    pub const CLIENT_CERT_SHA256: &str = "x-auth-client-cert-sha256";
    /// The client's address as the gateway saw it (believed only from trusted gateways).
    pub const CLIENT_IP: &str = "x-aggios-client-ip";
    /// The request id, kept end to end.
    pub const REQUEST_ID: &str = "x-request-id";
}

/// The request-id rule both sides apply to a client's `X-Request-Id`: kept when it is 1–128 characters
/// of `[A-Za-z0-9._:-]`, else replaced by a new id.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// API keys of third-party integrations: `ak_{prefix}_{secret}`, the prefix 8 hex digits (the lookup
/// key, shown in listings), the secret 56 hex digits. The backend stores the whole key's SHA-256.
pub mod api_key {
    /// What every key starts with (and how a bearer token is told to be a key).
    pub const MARK: &str = "ak_";
    /// Hex digits of the prefix.
    pub const PREFIX_LEN: usize = 8;
    /// Hex digits of the secret.
    pub const SECRET_LEN: usize = 56;

    /// Splits a key of the right shape into (prefix, secret); `None` for any other shape.
    pub fn split(key: &str) -> Option<(&str, &str)> {
        let (prefix, secret) = key.strip_prefix(MARK)?.split_once('_')?;
        (is_hex(prefix, PREFIX_LEN) && is_hex(secret, SECRET_LEN)).then_some((prefix, secret))
    }

    /// Whether `prefix` has the shape of a key's prefix.
    pub fn is_prefix(prefix: &str) -> bool {
        is_hex(prefix, PREFIX_LEN)
    }

    fn is_hex(s: &str, n: usize) -> bool {
        s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// Secrets out of text that leaves the process in error reports (Sentry): JWTs, bearer credentials, API
/// keys and long random tokens (refresh tokens, secrets) become `[redacted]`. Request and tenant ids
/// (hex, UUIDs) and paths stay: they are what makes a report useful.
pub mod redact {
    /// `text` with every secret-looking token replaced by `[redacted]`.
    pub fn secrets(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut after_bearer = false;
        let mut rest = text;
        while !rest.is_empty() {
            let start = rest.find(is_token_char).unwrap_or(rest.len());
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
            let token = &rest[..end];
            if token.is_empty() {
                break;
            }
            if after_bearer || is_secret(token) {
                out.push_str("[redacted]");
            } else {
                out.push_str(token);
            }
            after_bearer =
                token.eq_ignore_ascii_case("bearer") || token.eq_ignore_ascii_case("basic");
            rest = &rest[end..];
            // "Bearer" counts only when the credential follows after spaces.
            if after_bearer && !rest.starts_with(' ') {
                after_bearer = false;
            }
        }
        out
    }

    fn is_token_char(c: char) -> bool {
        // Not '/': a path's segments are judged one by one (a token in a path is redacted, the path kept).
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '~' | '+' | '=')
    }

    fn is_secret(token: &str) -> bool {
        let t = token.trim_end_matches('.');
        // A JWT (header.payload.signature, the header's JSON starting `{"`).
        (t.starts_with("eyJ") && t.contains('.'))
            || t.starts_with(super::api_key::MARK) && t.len() > super::api_key::MARK.len() + 4
            // Long random strings; ids in hex or UUID form are kept.
            || (t.len() >= 40
                && !t.contains('.')
                && !t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    }

    #[cfg(test)]
    mod tests {
        use super::secrets;

        #[test]
        fn tokens_keys_and_bearer_credentials_are_redacted_ids_stay() {
            let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
            let key = format!("ak_0123abcd_{}", "f".repeat(56));
            let refresh = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1u";
            let request_id = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e";
            let tenant = "0b7e1e0c-1f4e-4a55-9a2b-0c0d0e0f1a2b";
            let text = format!(
                "token {jwt}, key={key}; Authorization: Bearer opaque-secret refresh \"{refresh}\" \
                 request {request_id} tenant {tenant} at /api/files/x.txt, fault at /api/fault/{jwt}"
            );
            let out = secrets(&text);
            for secret in [jwt, key.as_str(), "opaque-secret", refresh] {
                assert!(!out.contains(secret), "{secret} in {out}");
            }
            for kept in [
                request_id,
                tenant,
                "/api/files/x.txt",
                "Authorization: Bearer",
                "/api/fault/[redacted]",
            ] {
                assert!(out.contains(kept), "{kept} lost from {out}");
            }
            assert_eq!(secrets("no secrets here"), "no secrets here");
        }
    }
}

/// Error reports to a Sentry-protocol endpoint (`SENTRY_DSN`), as both binaries send them: no request
/// data (`send_default_pii` off; `request`, `user`, extras and breadcrumb data dropped), every message and
/// exception value through [`redact::secrets`].
#[cfg(feature = "reports")]
pub mod reports {
    use std::borrow::Cow;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    pub use sentry;

    static ENABLED: AtomicBool = AtomicBool::new(false);

    /// A `SENTRY_DSN` that is not a DSN.
    #[derive(Debug)]
    pub struct BadDsn(pub String);

    impl std::fmt::Display for BadDsn {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SENTRY_DSN: {}", self.0)
        }
    }

    impl std::error::Error for BadDsn {}

    /// Starts the client when `dsn` is set (`release` like `aggios-edge-gateway@0.1.0`); keep the guard
    /// until exit (it flushes queued events, up to 2 s).
    pub fn init(
        dsn: Option<&str>,
        environment: Option<String>,
        release: &'static str,
    ) -> Result<Option<sentry::ClientInitGuard>, BadDsn> {
        let Some(dsn) = dsn.filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| BadDsn(format!("{e}")))?;
        let mut options = sentry::ClientOptions::new();
        options.dsn = Some(dsn);
        options.release = Some(Cow::Borrowed(release));
        options.environment = environment.filter(|e| !e.is_empty()).map(Cow::Owned);
        options.send_default_pii = false;
        options.before_send = Some(Arc::new(|event| Some(scrub(event))));
        let guard = sentry::init(options);
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some(guard))
    }

    /// At most this many 5xx events leave the process per second. A client that can make 5xx answers
    /// (a route whose upstream is down answers every request 502) would otherwise make the process
    /// build and queue one event per request and spend the project's Sentry quota; Sentry groups them
    /// anyway, and the metrics count every one.
    pub const MAX_EVENTS_PER_SECOND: u64 = 10;

    static WINDOW: AtomicU64 = AtomicU64::new(0);

    /// Whether one more 5xx event may be sent in this second (lock-free; one CAS when admitted).
    pub fn admit() -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        admit_in(&WINDOW, now, MAX_EVENTS_PER_SECOND)
    }

    /// `window` holds the second (high bits) and the events admitted in it (low 20 bits).
    fn admit_in(window: &AtomicU64, second: u64, max: u64) -> bool {
        let mut cur = window.load(Ordering::Relaxed);
        loop {
            let (sec, count) = (cur >> 20, cur & 0xF_FFFF);
            let next = if sec == second {
                if count >= max {
                    return false;
                }
                cur + 1
            } else {
                (second << 20) | 1
            };
            match window.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Whether reports are sent (one relaxed load: cheap enough for every request).
    pub fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    /// The event without request data, secrets redacted from its texts.
    pub fn scrub(mut event: sentry::protocol::Event<'static>) -> sentry::protocol::Event<'static> {
        use super::redact::secrets;
        event.request = None;
        event.user = None;
        event.extra.clear();
        if let Some(m) = event.message.as_mut() {
            *m = secrets(m);
        }
        if let Some(l) = event.logentry.as_mut() {
            l.message = secrets(&l.message);
            l.params.clear();
        }
        for e in event.exception.values.iter_mut() {
            if let Some(v) = e.value.as_mut() {
                *v = secrets(v);
            }
        }
        for b in event.breadcrumbs.values.iter_mut() {
            if let Some(m) = b.message.as_mut() {
                *m = secrets(m);
            }
            b.data.clear();
        }
        event
    }

    /// An error event: `message`, grouped by `fingerprint`, with `tags`.
    pub fn error_event(
        message: String,
        fingerprint: &[&str],
        tags: &[(&str, &str)],
    ) -> sentry::protocol::Event<'static> {
        sentry::protocol::Event {
            message: Some(message),
            level: sentry::Level::Error,
            fingerprint: Cow::Owned(
                fingerprint
                    .iter()
                    .map(|f| Cow::Owned(f.to_string()))
                    .collect(),
            ),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[cfg(test)]
    mod tests {
        /// The crate alone carries what sending needs: before the `reports` feature named sentry's
        /// transport, a binary built by itself (the gateway's image) panicked here ("compiled without
        /// transport") as soon as SENTRY_DSN was set.
        #[test]
        fn a_dsn_starts_a_client_with_a_transport() {
            let guard =
                super::init(Some("http://key@127.0.0.1:9/1"), None, "test@0").expect("a valid DSN");
            assert!(guard.is_some() && super::enabled());
            assert!(matches!(
                super::init(Some("not a dsn"), None, "test@0"),
                Err(super::BadDsn(_))
            ));
            assert!(super::init(Some(""), None, "test@0")
                .expect("off")
                .is_none());
        }

        /// A flood of 5xx sends at most the limit's events a second; the next second sends again.
        #[test]
        fn a_flood_of_5xx_sends_a_bounded_number_of_events() {
            let window = std::sync::atomic::AtomicU64::new(0);
            let admitted = (0..10_000)
                .filter(|_| super::admit_in(&window, 1_000, 10))
                .count();
            assert_eq!(admitted, 10);
            assert!(super::admit_in(&window, 1_001, 10), "a new second");
        }
    }
}

/// A tenant subdomain: one DNS label of lowercase letters, digits and inner hyphens, 1 to 63 bytes.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Metric names are a contract too (shared/DESIGN.md): what alert rules and dashboards may name.
pub mod metrics {
    use std::collections::BTreeSet;

    /// The metric names starting with `prefix` in PromQL text (alert rules, a dashboard's JSON), leaving
    /// out recording rules' names (`level:metric:operation`). The tests check each against a live
    /// `/metrics`.
    pub fn names_in(text: &str, prefix: &str) -> BTreeSet<String> {
        let bytes = text.as_bytes();
        let mut out = BTreeSet::new();
        let mut i = 0;
        while let Some(pos) = text[i..].find(prefix) {
            let start = i + pos;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            let before = start.checked_sub(1).map(|b| bytes[b]);
            let word_start =
                !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b':');
            if word_start && bytes.get(end) != Some(&b':') {
                out.insert(text[start..end].to_string());
            }
            i = end.max(start + 1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_names_skip_recording_rules() {
        let names = super::metrics::names_in(
            "sum(rate(gateway_http_requests_total[5m])) / route:gateway_http_requests:rate5m > gateway_x",
            "gateway_",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["gateway_http_requests_total", "gateway_x"]
        );
    }

    use super::*;

    #[test]
    fn claim_names_are_the_serialised_field_names() {
        let c = claims::AccessClaims {
            user_id: uuid::Uuid::nil(),
            email: "a@b.test".into(),
            tenant_id: "acme".into(),
            role: "admin".into(),
            iat: 1,
            exp: 2,
            jti: "j".into(),
        };
        let v = serde_json::to_value(&c).expect("json");
        for name in [
            claims::USER_ID,
            claims::TENANT_ID,
            claims::EMAIL,
            claims::ROLE,
            claims::JTI,
        ] {
            assert!(v.get(name).is_some(), "{name} missing from {v}");
        }
    }

    #[test]
    fn labels() {
        for ok in ["acme", "a", "a-b", "x1", &"a".repeat(63)] {
            assert!(is_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "é", &"a".repeat(64)] {
            assert!(!is_label(bad), "{bad}");
        }
    }
}

/// W3C Trace Context `traceparent` (`00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`): the
/// gateway continues a client's trace and passes its own span as the parent to the backend.
pub mod traceparent {
    /// The header's name.
    pub const HEADER: &str = "traceparent";

    /// A parsed `traceparent`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TraceParent {
        pub trace_id: [u8; 16],
        pub span_id: [u8; 8],
        /// Bit 0: sampled.
        pub flags: u8,
    }

    fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
        if s.len() != 2 * N
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }

    /// Parses a `traceparent` value; `None` for anything malformed, an unknown version `ff`, or all-zero
    /// ids (the specification's invalid values). Future versions are read by their first four fields.
    pub fn parse(v: &str) -> Option<TraceParent> {
        let mut parts = v.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if hex::<1>(version)? == [0xff] || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let t = TraceParent {
            trace_id: hex::<16>(trace)?,
            span_id: hex::<8>(span)?,
            flags: hex::<1>(flags)?[0],
        };
        (t.trace_id != [0; 16] && t.span_id != [0; 8]).then_some(t)
    }

    /// Formats a version-00 `traceparent`.
    pub fn format(t: &TraceParent) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        for b in t.trace_id {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('-');
        for b in t.span_id {
            s.push_str(&format!("{b:02x}"));
        }
        s.push_str(&format!("-{:02x}", t.flags));
        s
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_and_formats_w3c_traceparent() {
            let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let t = parse(v).expect("valid");
            assert_eq!(t.flags, 1);
            assert_eq!(format(&t), v);
            for bad in [
                "",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            ] {
                assert_eq!(parse(bad), None, "{bad}");
            }
            assert!(
                parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some()
            );
        }
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn api_keys_and_request_ids_have_one_rule() {
        let key = format!("ak_0a1b2c3d_{}", "e".repeat(56));
        assert_eq!(api_key::split(&key), Some(("0a1b2c3d", &*"e".repeat(56))));
        for bad in [
            "",
            "ak_",
            "ak_0a1b2c3d",
            "ak_xyz_abc",
            "ak_0a1b2c3d_00",
            "bk_0a1b2c3d_",
        ] {
            assert_eq!(api_key::split(bad), None, "{bad}");
        }
        assert!(api_key::is_prefix("0a1b2c3d"));
        assert!(!api_key::is_prefix("0a1b2c3"));
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"bad id"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }
}
