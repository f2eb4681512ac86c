//! The gateway's Prometheus collectors: one struct, registered once. Names are a contract
//! (shared/DESIGN.md); label values are bounded (route and upstream names, status codes, known methods).

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All collectors of the gateway.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub server_up: IntGaugeVec,
    pub canary_weight: IntGaugeVec,
    pub canary_rollbacks: IntCounterVec,
    pub connections_active: IntGauge,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub malformed: IntCounter,
    /// PROXY protocol headers from trusted balancers, by result (`accepted`, `invalid`, `timeout`).
    pub proxy_protocol: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub auth_rejections: IntCounterVec,
    pub auth_store_errors: IntCounter,
    pub ratelimit_decisions: IntCounterVec,
    pub ratelimit_store_errors: IntCounter,
    pub redis_breaker_open: IntGauge,
    pub tls_cert_expiry: GaugeVec,
    pub ocsp_fetches: IntCounterVec,
    pub ocsp_this_update: GaugeVec,
    pub ocsp_next_update: GaugeVec,
    pub ocsp_failures: IntGaugeVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_refusals: IntCounterVec,
    pub acme_orders: IntCounterVec,
    pub acme_failures: IntGaugeVec,
    pub tls_on_demand: IntCounterVec,
    pub tls_on_demand_cached: IntGauge,
    pub panics: IntCounter,
    pub upstream_connections: IntCounterVec,
    pub upgrade_handovers: IntCounterVec,
    pub upstream_concurrency_limit: IntGaugeVec,
    pub upstream_queue_length: IntGaugeVec,
    pub upstream_queue_wait: HistogramVec,
    pub overload_refusals: IntCounterVec,
    /// Backpressure at the gateway's own core (`edge::backpressure`).
    pub core_concurrency_limit: IntGauge,
    pub core_deferrals: IntCounter,
    /// Tenants' plans (`edge::plan`).
    pub quota_refusals: IntCounterVec,
    pub plan_lookups: IntCounterVec,
    pub plan_invalidations: IntCounter,
    pub plan_subscribed: IntGauge,
    /// Requests by the client's protocol (`http1`, `h2`, `h3`), resolved once: [`Protocol`] indexes it.
    pub requests_by_protocol: [IntCounter; 3],
    /// HTTP/3 (`h3`).
    pub h3_connections_active: IntGauge,
    pub h3_handshakes: IntCounterVec,
    /// `gateway_h3_early_data_requests_total{decision}`: forwarded, held, dropped.
    pub h3_early_requests: IntCounterVec,
}

/// The protocol a request came in over (the `protocol` label of `gateway_http_requests_by_protocol_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1 = 0,
    H2 = 1,
    H3 = 2,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::H2, Protocol::H3];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::H3 => "h3",
        }
    }
}

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_http_requests_total",
                "HTTP requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_http_request_duration_seconds",
                "Time from request head to the end of the response, by route.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_request_duration_seconds",
                "Time from sending to the upstream to its response head, by upstream.",
            )
            .buckets(BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let canary_weight = IntGaugeVec::new(
            Opts::new(
                "gateway_canary_weight",
                "Percent of a route's traffic its canary upstream gets now (0 after a rollback).",
            ),
            &["route"],
        )?;
        let canary_rollbacks = IntCounterVec::new(
            Opts::new(
                "gateway_canary_rollbacks_total",
                "Canaries rolled back automatically (5xx ratio or p99 past the route's thresholds).",
            ),
            &["route"],
        )?;
        let server_up = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_server_up",
                "1 while the server passes its health checks, 0 while it is taken out.",
            ),
            &["upstream", "server"],
        )?;
        let connections_active = IntGauge::new(
            "gateway_http_connections_active",
            "Downstream HTTP requests in progress (HTTP/1 connections busy with a request plus HTTP/2 streams).",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Config reload attempts by result (success|failure).",
            ),
            &["result"],
        )?;
        let last_reload_success = Gauge::new(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )?;
        let malformed = IntCounter::new(
            "gateway_http_malformed_requests_total",
            "Requests refused at the edge for malformed HTTP.",
        )?;
        let proxy_protocol = IntCounterVec::new(
            Opts::new(
                "gateway_proxy_protocol_headers_total",
                "PROXY protocol headers read from trusted balancers, by result (accepted, invalid, timeout).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(proxy_protocol.clone()))?;
        let access_log_dropped = IntCounter::new(
            "gateway_access_log_dropped_total",
            "Access-log lines dropped because stdout could not keep up.",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let auth_rejections = IntCounterVec::new(
            Opts::new(
                "gateway_auth_rejections_total",
                "Requests refused at the edge by authentication, by route and reason.",
            ),
            &["route", "reason"],
        )?;
        registry.register(Box::new(auth_rejections.clone()))?;
        let auth_store_errors = IntCounter::new(
            "gateway_auth_store_errors_total",
            "Revocation checks and API-key lookups the shared store did not answer.",
        )?;
        registry.register(Box::new(auth_store_errors.clone()))?;
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "gateway_ratelimit_decisions_total",
                "Rate-limit decisions, by policy and decision (allowed, refused, shed, fallback_allowed, fallback_refused, fail_open, fail_closed).",
            ),
            &["policy", "decision"],
        )?;
        registry.register(Box::new(ratelimit_decisions.clone()))?;
        let ratelimit_store_errors = IntCounter::new(
            "gateway_ratelimit_store_errors_total",
            "Global rate-limit decisions Redis did not answer (the policy's fail mode decided).",
        )?;
        registry.register(Box::new(ratelimit_store_errors.clone()))?;
        let quota_refusals = IntCounterVec::new(
            Opts::new(
                "gateway_quota_refusals_total",
                "Requests refused by a tenant's plan, by reason (quota_exceeded: the monthly quota is spent; tenant_suspended; policy_unavailable: the policy could not be fetched and on_policy_error = refuse).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(quota_refusals.clone()))?;
        for r in ["quota_exceeded", "tenant_suspended", "policy_unavailable"] {
            quota_refusals.with_label_values(&[r]);
        }
        let plan_lookups = IntCounterVec::new(
            Opts::new(
                "gateway_plan_lookups_total",
                "Tenant policies fetched past the in-process cache, by where they came from (redis, backend) or error (the default plan, or a refusal, applied).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(plan_lookups.clone()))?;
        for r in ["redis", "backend", "error"] {
            plan_lookups.with_label_values(&[r]);
        }
        let plan_invalidations = IntCounter::new(
            "gateway_plan_invalidations_total",
            "Policy change messages received from the backend (each drops cached policies).",
        )?;
        registry.register(Box::new(plan_invalidations.clone()))?;
        let plan_subscribed = IntGauge::new(
            "gateway_plan_changes_subscribed",
            "1 while this replica follows the backend's policy changes on Redis; 0 means changes arrive only when cached policies expire.",
        )?;
        registry.register(Box::new(plan_subscribed.clone()))?;
        let redis_breaker_open = IntGauge::new(
            "gateway_redis_breaker_open",
            "1 while calls to the shared Redis are skipped after a failure (global limits fall back to local decisions, revocation checks fail closed); read at each scrape.",
        )?;
        registry.register(Box::new(redis_breaker_open.clone()))?;
        let tls_cert_expiry = GaugeVec::new(
            Opts::new(
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which the certificate served for each name expires.",
            ),
            &["domain"],
        )?;
        registry.register(Box::new(tls_cert_expiry.clone()))?;
        let ocsp_fetches = IntCounterVec::new(
            Opts::new(
                "gateway_tls_ocsp_fetches_total",
                "OCSP responses fetched for stapling, by result (ok, failed: unreachable responder, refused or unverifiable answer).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(ocsp_fetches.clone()))?;
        let ocsp_this_update = GaugeVec::new(
            Opts::new(
                "gateway_tls_ocsp_this_update_timestamp_seconds",
                "thisUpdate of the OCSP response stapled for each certificate (its first name): time() minus this is the staple's age.",
            ),
            &["domain"],
        )?;
        registry.register(Box::new(ocsp_this_update.clone()))?;
        let ocsp_next_update = GaugeVec::new(
            Opts::new(
                "gateway_tls_ocsp_next_update_timestamp_seconds",
                "nextUpdate of the OCSP response stapled for each certificate (0: none stapled any more, it expired).",
            ),
            &["domain"],
        )?;
        registry.register(Box::new(ocsp_next_update.clone()))?;
        let ocsp_failures = IntGaugeVec::new(
            Opts::new(
                "gateway_tls_ocsp_consecutive_failures",
                "OCSP fetches for each certificate (its first name) that failed since its last good one.",
            ),
            &["domain"],
        )?;
        registry.register(Box::new(ocsp_failures.clone()))?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "gateway_tls_handshakes_total",
                "TLS handshakes on the https entrypoint, by result (ok, failed, timeout).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        let tls_handshake_refusals = IntCounterVec::new(
            Opts::new(
                "gateway_tls_handshake_refusals_total",
                "Handshakes refused for want of a certificate, by reason (unknown_name, no_sni).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(tls_handshake_refusals.clone()))?;
        let acme_orders = IntCounterVec::new(
            Opts::new(
                "gateway_acme_orders_total",
                "ACME certificate orders, by result (success, failure).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(acme_orders.clone()))?;
        let acme_failures = IntGaugeVec::new(
            Opts::new(
                "gateway_acme_consecutive_failures",
                "Failed ACME orders in a row for each name (0 after a success); the retry waits double with each.",
            ),
            &["domain"],
        )?;
        registry.register(Box::new(acme_failures.clone()))?;
        let tls_on_demand = IntCounterVec::new(
            Opts::new(
                "gateway_tls_on_demand_total",
                "On-demand certificate decisions for tenants' own domains (allowed, denied, ask_failed, ask_throttled, throttled, tenant_throttled, backoff, issued, order_failed).",
            ),
            &["decision"],
        )?;
        registry.register(Box::new(tls_on_demand.clone()))?;
        let tls_on_demand_cached = IntGauge::new(
            "gateway_tls_on_demand_cached_answers",
            "Names whose on-demand ask answer is cached (bounded by [tls.on_demand] cache_size).",
        )?;
        registry.register(Box::new(tls_on_demand_cached.clone()))?;
        for d in [
            "allowed",
            "denied",
            "ask_failed",
            "ask_throttled",
            "throttled",
            "tenant_throttled",
            "backoff",
            "issued",
            "order_failed",
        ] {
            tls_on_demand.with_label_values(&[d]);
        }
        for r in ["ok", "failed", "timeout"] {
            tls_handshakes.with_label_values(&[r]);
        }
        for r in ["unknown_name", "no_sni"] {
            tls_handshake_refusals.with_label_values(&[r]);
        }
        for r in ["success", "failure"] {
            acme_orders.with_label_values(&[r]);
        }
        let panics = IntCounter::new(
            "gateway_panics_total",
            "Requests whose hook panicked (answered 500; the process lives on).",
        )?;
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_connections_total",
                "Upstream connections handed to requests: new, or reused from the pool on the thread that \
                 made them or on another (a cross-thread wake-up per I/O event).",
            ),
            &["kind"],
        )?;
        for k in ["new", "reused_same_thread", "reused_other_thread"] {
            upstream_connections.with_label_values(&[k]);
        }
        registry.register(Box::new(upstream_connections.clone()))?;
        let upgrade_handovers = IntCounterVec::new(
            Opts::new(
                "gateway_upgrade_handovers_total",
                "Listening-socket hand-overs on SIGQUIT, by result: sent (to a process of our own uid), \
                 failed (nobody listening, or a peer or socket of another user refused: still serving).",
            ),
            &["result"],
        )?;
        for r in ["sent", "failed"] {
            upgrade_handovers.with_label_values(&[r]);
        }
        registry.register(Box::new(upgrade_handovers.clone()))?;
        let upstream_concurrency_limit = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_concurrency_limit",
                "Requests an upstream may have in flight now ([[upstreams]] concurrency; adaptive: follows its latency).",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(upstream_concurrency_limit.clone()))?;
        let upstream_queue_length = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_queue_length",
                "Requests waiting for a slot of the upstream's concurrency limit.",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(upstream_queue_length.clone()))?;
        let upstream_queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_queue_wait_seconds",
                "Time a request waited for an upstream slot (only requests that waited).",
            )
            .buckets(BUCKETS.to_vec()),
            &["upstream"],
        )?;
        registry.register(Box::new(upstream_queue_wait.clone()))?;
        let overload_refusals = IntCounterVec::new(
            Opts::new(
                "gateway_overload_refusals_total",
                "Requests refused for overload (503 + Retry-After), by upstream and reason: queue_full, deadline.",
            ),
            &["upstream", "reason"],
        )?;
        registry.register(Box::new(overload_refusals.clone()))?;
        let core_concurrency_limit = IntGauge::new(
            "gateway_core_concurrency_limit",
            "Requests the saturated gateway process lets be in progress, shared fairly by tenant (else client); 0 while it is not saturated.",
        )?;
        registry.register(Box::new(core_concurrency_limit.clone()))?;
        let core_deferrals = IntCounter::new(
            "gateway_core_deferrals_total",
            "Keep-alive connections whose next request was read later because their tenant (else client) was over its share of a saturated gateway.",
        )?;
        registry.register(Box::new(core_deferrals.clone()))?;
        let by_protocol = IntCounterVec::new(
            Opts::new(
                "gateway_http_requests_by_protocol_total",
                "HTTP requests answered, by the client's protocol (http1, h2, h3).",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(by_protocol.clone()))?;
        let requests_by_protocol =
            Protocol::ALL.map(|p| by_protocol.with_label_values(&[p.label()]));
        let h3_connections_active = IntGauge::new(
            "gateway_h3_connections_active",
            "QUIC connections of the HTTP/3 entrypoint open now (handshake done).",
        )?;
        registry.register(Box::new(h3_connections_active.clone()))?;
        let h3_handshakes = IntCounterVec::new(
            Opts::new(
                "gateway_h3_handshakes_total",
                "QUIC connection attempts of the HTTP/3 entrypoint by result (accepted, failed, timeout, retry, refused_address, refused_limit).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(h3_handshakes.clone()))?;
        for r in [
            "accepted",
            "failed",
            "timeout",
            "retry",
            "refused_address",
            "refused_limit",
        ] {
            h3_handshakes.with_label_values(&[r]);
        }
        let h3_early_requests = IntCounterVec::new(
            Opts::new(
                "gateway_h3_early_data_requests_total",
                "HTTP/3 requests that reached the edge before their connection's handshake completed (0-RTT), by decision: forwarded (a safe method, sent with Early-Data: 1), held (waited for the handshake), dropped (held, and the handshake never completed).",
            ),
            &["decision"],
        )?;
        registry.register(Box::new(h3_early_requests.clone()))?;
        for d in ["forwarded", "held", "dropped"] {
            h3_early_requests.with_label_values(&[d]);
        }
        registry.register(Box::new(panics.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(server_up.clone()))?;
        registry.register(Box::new(canary_weight.clone()))?;
        registry.register(Box::new(canary_rollbacks.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload_success.clone()))?;
        registry.register(Box::new(malformed.clone()))?;
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]);
        }
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            server_up,
            canary_weight,
            canary_rollbacks,
            connections_active,
            reloads,
            last_reload_success,
            malformed,
            proxy_protocol,
            access_log_dropped,
            auth_rejections,
            auth_store_errors,
            ratelimit_decisions,
            ratelimit_store_errors,
            redis_breaker_open,
            tls_cert_expiry,
            ocsp_fetches,
            ocsp_this_update,
            ocsp_next_update,
            ocsp_failures,
            tls_handshakes,
            tls_handshake_refusals,
            acme_orders,
            acme_failures,
            tls_on_demand,
            tls_on_demand_cached,
            panics,
            upstream_connections,
            upgrade_handovers,
            upstream_concurrency_limit,
            upstream_queue_length,
            upstream_queue_wait,
            overload_refusals,
            core_concurrency_limit,
            core_deferrals,
            quota_refusals,
            plan_lookups,
            plan_invalidations,
            plan_subscribed,
            requests_by_protocol,
            h3_connections_active,
            h3_handshakes,
            h3_early_requests,
        })
    }

    /// Sums of the counter `name`'s samples, keyed by the values of `by` (label names) joined with `/`,
    /// for the admin's summary (the dashboard page computes rates from successive summaries).
    pub fn sum_by(
        &self,
        name: &str,
        by: &[&str],
        keep: impl Fn(&[(&str, &str)]) -> bool,
    ) -> Vec<(String, f64)> {
        let [sums] = self.sums_by(name, by, [&keep]);
        sums
    }

    /// [`Metrics::sum_by`] for several filters at once, all from one reading of the registry: a counter
    /// that one event raises in a single series (a request's status) is then in every sum or in none,
    /// so a subset's sum never runs ahead of its whole's (a route's 5xx against its requests).
    pub fn sums_by<const N: usize>(
        &self,
        name: &str,
        by: &[&str],
        keeps: [&LabelFilter<'_>; N],
    ) -> [Vec<(String, f64)>; N] {
        let mut out: [std::collections::BTreeMap<String, f64>; N] =
            std::array::from_fn(|_| std::collections::BTreeMap::new());
        for family in self.registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let labels: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let key = by
                    .iter()
                    .map(|b| labels.iter().find(|(n, _)| n == b).map_or("", |(_, v)| v))
                    .collect::<Vec<_>>()
                    .join("/");
                let value = m.get_counter().get_value();
                for (keep, sums) in keeps.iter().zip(out.iter_mut()) {
                    if keep(&labels) {
                        *sums.entry(key.clone()).or_default() += value;
                    }
                }
            }
        }
        out.map(|sums| sums.into_iter().collect())
    }

    /// Prometheus text exposition of every collector.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail on I/O; a failure would be a collector bug, reported in-band.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            out.extend_from_slice(format!("# encode error: {e}\n").as_bytes());
        }
        out
    }
}

/// Keeps or drops a sample by its labels (name, value).
pub type LabelFilter<'a> = dyn Fn(&[(&str, &str)]) -> bool + 'a;

/// The process-wide collectors.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics::new().expect("metric definitions are static and valid"))
}

/// A bounded method label.
pub fn method_label(m: &http::Method) -> &'static str {
    METHOD_LABELS[method_index(m)]
}

/// Three ASCII digits of a status, without allocating.
pub fn status_digits(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// The `gateway_http_requests_total` series of `route`, `method` and `status` (a label look-up: routes
/// keep theirs bound, see `RouteRt::count_request`).
pub fn requests_series(route: &str, method: &http::Method, status: u16) -> IntCounter {
    let digits = status_digits(status);
    metrics().requests.with_label_values(&[
        route,
        method_label(method),
        std::str::from_utf8(&digits).unwrap_or("0"),
    ])
}

/// The `method` label values, in [`method_index`] order.
pub const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// The index of `m`'s label in [`METHOD_LABELS`].
pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &[(&str, &str)]) -> bool {
        true
    }

    fn five(l: &[(&str, &str)]) -> bool {
        l.iter().any(|(n, v)| *n == "status" && v.starts_with('5'))
    }

    fn get(sums: &[(String, f64)], key: &str) -> f64 {
        sums.iter().find(|(k, _)| k == key).map_or(0.0, |(_, v)| *v)
    }

    #[test]
    fn sums_by_keys_by_label_and_filters_each_sum() {
        let m = Metrics::new().expect("metrics");
        for (route, method, status, n) in [
            ("a", "GET", "200", 3),
            ("a", "POST", "503", 2),
            ("a", "GET", "404", 1),
            ("b", "GET", "500", 1),
        ] {
            m.requests
                .with_label_values(&[route, method, status])
                .inc_by(n);
        }
        let [requests, errors] =
            m.sums_by("gateway_http_requests_total", &["route"], [&all, &five]);
        assert_eq!(
            requests,
            vec![("a".to_string(), 6.0), ("b".to_string(), 1.0)]
        );
        assert_eq!(errors, vec![("a".to_string(), 2.0), ("b".to_string(), 1.0)]);
        assert_eq!(
            m.sum_by("gateway_http_requests_total", &["route"], five),
            errors
        );
        let by_two = m.sum_by("gateway_http_requests_total", &["route", "status"], all);
        assert_eq!(get(&by_two, "a/200"), 3.0);
        assert_eq!(get(&by_two, "b/500"), 1.0);
        assert!(m.sum_by("no_such_metric", &["route"], all).is_empty());
    }

    /// The dashboard's 5xx ratio once read 120 %: requests and errors were two readings, and a request
    /// counted between them was in the errors only. Read together, a route whose every request fails has
    /// exactly as many errors as requests in every summary, however fast it counts meanwhile.
    #[test]
    fn a_subset_read_with_its_whole_never_runs_ahead_of_it() {
        let m = std::sync::Arc::new(Metrics::new().expect("metrics"));
        let failing = m.requests.with_label_values(&["down", "GET", "503"]);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counter = {
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    failing.inc();
                }
            })
        };
        for _ in 0..300 {
            let [requests, errors] =
                m.sums_by("gateway_http_requests_total", &["route"], [&all, &five]);
            assert_eq!(get(&requests, "down"), get(&errors, "down"));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        counter.join().expect("counter thread");
        let [requests, _] = m.sums_by("gateway_http_requests_total", &["route"], [&all, &five]);
        assert!(get(&requests, "down") > 0.0);
    }
}
