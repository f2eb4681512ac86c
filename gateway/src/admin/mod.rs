//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/api/routes`, `/api/certificates`. Never on a public address.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::config::HostPattern;
use crate::runtime::state::GatewayState;
use crate::telemetry::metrics::metrics;

/// Serves the admin endpoints.
pub struct AdminApp {
    pub state: Arc<GatewayState>,
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// An admin refusal, rendered by the edge's one renderer (the JSON error shape, with a request id).
fn refusal(status: u16, code: &'static str, message: &'static str) -> Response<Vec<u8>> {
    crate::edge::reply::Reply::Admin {
        status,
        code,
        message,
    }
    .to_response(&crate::edge::headers::new_request_id())
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", v.to_string().into_bytes())
}

/// The dashboard's `Content-Security-Policy`: nothing but its own inline script and style (by hash) and
/// requests to this listener; no framing, no form posts, no base-URI games.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |open: &str, close: &str| {
            let start = DASHBOARD.find(open).map_or(0, |i| i + open.len());
            let end = DASHBOARD[start..].find(close).map_or(start, |i| start + i);
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&DASHBOARD.as_bytes()[start..end]);
            format!(
                "'sha256-{}'",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)
            )
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>")
        )
    })
}

fn dashboard_response() -> Response<Vec<u8>> {
    let mut r = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        DASHBOARD.as_bytes().to_vec(),
    );
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(dashboard_csp()),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The live dashboard: one static page, no build step; it polls `/api/routes`, `/api/summary` and
/// `/api/certificates` with the admin token the user gives it (kept in the tab's session storage).
const DASHBOARD: &str = include_str!("dashboard.html");

impl AdminApp {
    /// Counters the dashboard turns into rates: requests and 5xx per route, refusals by reason and
    /// policy, and the top tenants.
    fn summary_json(&self) -> serde_json::Value {
        let m = metrics();
        let all = |_: &[(&str, &str)]| true;
        let five = |l: &[(&str, &str)]| l.iter().any(|(n, v)| *n == "status" && v.starts_with('5'));
        let pairs = |v: Vec<(String, f64)>| -> serde_json::Map<String, serde_json::Value> {
            v.into_iter().map(|(k, n)| (k, json!(n))).collect()
        };
        let rt = self.state.current();
        let k = rt.config.tenant_stats.top_k;
        // The plan each top tenant is on, as this replica applies it (in-process cache only: no I/O).
        let plan_of = |t: &str| {
            rt.plans
                .as_ref()
                .and_then(|p| p.peek(t))
                .map(|r| r.policy.plan.clone())
        };
        let tenants: Vec<_> = self
            .state
            .tenant_stats
            .top(k)
            .into_iter()
            .map(|(t, [requests, errors, limited, overloaded])| {
                let plan = plan_of(&t);
                json!({ "tenant": t, "plan": plan, "requests": requests, "errors": errors, "ratelimited": limited, "overloaded": overloaded })
            })
            .collect();
        // Read together: each request raises one series (its status), so a route's 5xx never run ahead
        // of its requests, and the page's ratio of two summaries' deltas stays within 0–100 %.
        let [requests, errors] =
            m.sums_by("gateway_http_requests_total", &["route"], [&all, &five]);
        json!({
            "time": crate::support::unix_now(),
            "requests_by_route": pairs(requests),
            "errors_by_route": pairs(errors),
            "auth_rejections": pairs(m.sum_by("gateway_auth_rejections_total", &["reason"], all)),
            "ratelimit_refusals": pairs(m.sum_by(
                "gateway_ratelimit_decisions_total",
                &["policy"],
                |l| l.iter().any(|(n, v)| *n == "decision" && *v != "allowed"),
            )),
            "top_tenants": tenants,
        })
    }

    fn certificates_json(&self) -> serde_json::Value {
        let certs: Vec<_> = self
            .state
            .certs
            .list()
            .iter()
            .map(|c| {
                json!({
                    "names": c.names,
                    "issuer": c.issuer,
                    "serial": c.serial,
                    "not_before": c.not_before,
                    "not_after": c.not_after,
                    "source": c.source.kind(),
                    "file": match &c.source {
                        crate::support::cert::Source::File(p) => Some(p.display().to_string()),
                        crate::support::cert::Source::Acme => None,
                    },
                })
            })
            .collect();
        json!({ "certificates": certs })
    }

    fn routes_json(&self) -> serde_json::Value {
        let rt = self.state.current();
        let routes: Vec<_> = rt
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.spec.name,
                    "hosts": r.spec.hosts.iter().map(HostPattern::source).collect::<Vec<_>>(),
                    "path_prefix": r.spec.path_prefix,
                    "methods": r.spec.methods.as_ref().map(|m| m.iter().map(|x| x.as_str().to_string()).collect::<Vec<_>>()),
                    "priority": r.spec.priority,
                    "upstream": r.spec.upstream,
                    "strip_prefix": r.spec.strip_prefix,
                    "redirect_https": r.spec.redirect_https,
                    "max_body_bytes": r.spec.max_body_bytes,
                    "canary": r.canary.as_ref().map(canary_json),
                    "client_auth": r.spec.client_auth.as_ref().map(|c| json!({
                        "mode": match c.mode {
                            crate::config::ClientAuthMode::Required => "required",
                            crate::config::ClientAuthMode::Optional => "optional",
                        },
                        "ca": c.ca,
                        "crl": c.crl,
                        "tenant_uri": c.tenant_uri.as_ref().map(|t| t.source()),
                    })),
                })
            })
            .collect();
        let upstreams: Vec<_> = rt
            .upstreams
            .iter()
            .map(|u| {
                json!({
                    "name": u.name,
                    "balance": u.balance.as_str(),
                    "protocol": u.protocol.as_str(),
                    "tls": u.spec.tls.as_ref().map(|t| json!({
                        "sni": t.sni,
                        "ca": t.ca.as_deref().unwrap_or("system"),
                        "verify": t.verify,
                        "client_certificate": t.client_cert,
                    })),
                    "servers": u.members().servers.iter().map(|s| json!({
                        "addr": s.label,
                        "via": s.via,
                        "healthy": s.is_healthy(),
                        "active_requests": s.active(),
                    })).collect::<Vec<_>>(),
                    "concurrency": {
                        "limit": u.admission.limit(),
                        "in_flight": u.admission.in_flight(),
                        "queued": u.admission.queued(),
                        "min": u.spec.concurrency.min,
                        "max": u.spec.concurrency.max,
                        "adaptive": u.spec.concurrency.adaptive,
                    },
                })
            })
            .collect();
        json!({ "config": rt.config.source.display().to_string(), "routes": routes, "upstreams": upstreams })
    }
}

/// A route's canary: the split as configured and as it stands, the verdict, both sides' figures.
fn canary_json(c: &crate::upstream::canary::Canary) -> serde_json::Value {
    let (stable, canary) = c.state.figures();
    let side = |f: crate::upstream::canary::Figures| {
        json!({
            "requests": f.requests,
            "errors": f.errors,
            "error_ratio": f.error_ratio(),
            "p99_ms": f.p99.as_secs_f64() * 1e3,
        })
    };
    let verdict = c.state.verdict();
    json!({
        "upstream": c.spec.upstream,
        "weight": c.spec.weight,
        "effective_weight": c.state.weight(),
        "sticky": format!("{:?}", c.spec.sticky).to_ascii_lowercase(),
        "header": c.spec.header.as_ref().map(|h| h.as_str().to_string()),
        "cookie": c.spec.cookie,
        "window_seconds": c.spec.window.as_secs_f64(),
        "min_requests": c.spec.min_requests,
        "max_error_ratio": c.spec.max_error_ratio,
        "max_p99_ratio": c.spec.max_p99_ratio,
        "verdict": if verdict.is_some() { "rolled_back" } else { "serving" },
        "reason": verdict.as_ref().map(|v| v.reason.clone()),
        "rolled_back_at": verdict.as_ref().map(|v| v.at),
        "stable": side(stable),
        "canary": side(canary),
    })
}

/// Why the admin listener refused a request before looking at its path.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminRefusal {
    /// `Host` names neither the listener nor a configured name (a DNS-rebinding page, say).
    Host,
    /// The bearer token is missing or wrong.
    Token,
}

/// Checks `Host` and the bearer token of an admin request (pure; unit-tested).
pub fn admit(
    host: Option<&[u8]>,
    authorization: Option<&[u8]>,
    path: &str,
    listener: Option<std::net::SocketAddr>,
    settings: &crate::config::AdminSettings,
) -> Result<(), AdminRefusal> {
    let host = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| h.trim().to_ascii_lowercase())
        .ok_or(AdminRefusal::Host)?;
    // Split an optional port off (IPv6 literals come in brackets).
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.is_empty() && (n.ends_with(']') || !n.contains(':')) => {
            (n.to_string(), Some(p.to_string()))
        }
        _ => (host.clone(), None),
    };
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    let port_ok =
        |l: std::net::SocketAddr| port.as_deref().is_none_or(|p| p == l.port().to_string());
    // An IP literal is never a rebinding vector (the page's origin would be that IP): on a listener bound
    // to every address (0.0.0.0 / ::), any IP of the host reaches it, as Prometheus scraping pod or
    // container addresses does.
    let allowed = listener.is_some_and(|l| {
        port_ok(l)
            && (name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip == l.ip() || l.ip().is_unspecified())
                || (l.ip().is_loopback() && name == "localhost"))
    }) || settings.names.iter().any(|n| n == name);
    if !allowed {
        return Err(AdminRefusal::Host);
    }
    // Probes stay open; everything else needs the token when one is set.
    if let Some(token) = &settings.token {
        // The dashboard page is static (no data): the browser loads it, then asks for the token.
        if !matches!(path, "/healthz" | "/readyz" | "/dashboard") {
            let presented = authorization
                .and_then(|a| a.strip_prefix(b"Bearer "))
                .unwrap_or_default();
            let same = presented.len() == token.0.len()
                && bool::from(subtle::ConstantTimeEq::ct_eq(presented, token.0.as_slice()));
            if !same {
                return Err(AdminRefusal::Token);
            }
        }
    }
    Ok(())
}

impl AdminApp {
    /// The tenant's plan and this month's quota figures (with `[plans]`): its policy as this replica
    /// applies it, and the exact count from Redis.
    async fn plan_json(
        &self,
        rt: &crate::edge::state::Snapshot,
        tenant: &str,
    ) -> Option<serde_json::Value> {
        let store = rt.plans.as_ref()?;
        let resolved = store.resolve(tenant).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (month, ends) = contracts::plans::month_of(now);
        let used: Option<u64> = match &self.state.redis {
            Some(redis) => {
                let key = contracts::redis_keys::monthly_requests(tenant, &month);
                redis
                    .call(|mut c| async move {
                        redis::cmd("GET")
                            .arg(key)
                            .query_async::<Option<u64>>(&mut c)
                            .await
                    })
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        Some(match resolved {
            Ok(r) => json!({
                "plan": r.policy.plan,
                "source": format!("{:?}", r.source).to_lowercase(),
                "version": r.policy.version,
                "suspended": r.policy.suspended,
                "requests_per_second": r.policy.requests_per_second,
                "burst": r.policy.burst,
                "concurrency_weight": r.policy.concurrency_weight,
                "month": month,
                "month_ends": ends,
                "monthly_requests": { "used": used.unwrap_or(0), "limit": r.policy.monthly_requests },
            }),
            Err(()) => {
                json!({ "source": "error", "month": month, "monthly_requests": { "used": used } })
            }
        })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let rt = self.state.current();
        let headers = &session.req_header().headers;
        match admit(
            headers.get(http::header::HOST).map(|h| h.as_bytes()),
            headers
                .get(http::header::AUTHORIZATION)
                .map(|h| h.as_bytes()),
            &path,
            rt.config.entrypoints.admin,
            &rt.config.admin,
        ) {
            Ok(()) => {}
            Err(AdminRefusal::Host) => {
                return refusal(
                    403,
                    "host_not_allowed",
                    "the admin listener answers its own address or a name in [admin] names",
                )
            }
            Err(AdminRefusal::Token) => {
                return refusal(
                    401,
                    "missing_or_bad_token",
                    "Authorization: Bearer <[admin] token_env> required",
                );
            }
        }
        match path.as_str() {
            "/metrics" => {
                // The breaker is a deadline, not an event: its state is read when scraped.
                let open = self.state.redis.as_ref().is_some_and(|r| r.is_open());
                metrics().redis_breaker_open.set(i64::from(open));
                let mut body = metrics().render();
                body.extend_from_slice(self.state.tenant_stats.exposition().as_bytes());
                respond(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            "/healthz" => json_response(StatusCode::OK, json!({ "status": "ok" })),
            "/readyz" => match self.state.ready() {
                Ok(()) => json_response(StatusCode::OK, json!({ "status": "ready" })),
                Err(why) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "status": "not_ready", "reason": why }),
                ),
            },
            "/api/routes" => json_response(StatusCode::OK, self.routes_json()),
            "/api/certificates" => json_response(StatusCode::OK, self.certificates_json()),
            "/api/summary" => json_response(StatusCode::OK, self.summary_json()),
            "/dashboard" => dashboard_response(),
            p if p.starts_with("/api/tenants/") && p.ends_with("/stats") => {
                let tenant = &p["/api/tenants/".len()..p.len() - "/stats".len()];
                if tenant.is_empty()
                    || tenant.len() > 63
                    || !tenant
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    refusal(400, "invalid_tenant", "a tenant is one lowercase DNS label")
                } else {
                    let mut stats = self.state.tenant_stats.stats_json(tenant);
                    if let Some(plan) = self.plan_json(&rt, tenant).await {
                        stats["plan"] = plan;
                    }
                    json_response(StatusCode::OK, stats)
                }
            }
            _ => refusal(
                404,
                "not_found",
                "admin endpoints: /metrics /healthz /readyz /api/routes /api/certificates /api/tenants/{tenant}/stats",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminSettings, AdminToken};

    fn addr(s: &str) -> Option<std::net::SocketAddr> {
        Some(s.parse().expect("addr"))
    }

    #[test]
    fn host_must_name_the_listener_or_a_configured_name() {
        let none = AdminSettings::default();
        let l = addr("127.0.0.1:9000");
        let ok = |h: &str| admit(Some(h.as_bytes()), None, "/metrics", l, &none);
        assert_eq!(ok("127.0.0.1:9000"), Ok(()));
        assert_eq!(ok("127.0.0.1"), Ok(()));
        assert_eq!(ok("localhost:9000"), Ok(()));
        assert_eq!(ok("LOCALHOST"), Ok(()));
        // DNS rebinding: an attacker's name pointing at 127.0.0.1.
        assert_eq!(ok("evil.example:9000"), Err(AdminRefusal::Host));
        assert_eq!(ok("127.0.0.1:9001"), Err(AdminRefusal::Host));
        assert_eq!(ok("10.0.0.1:9000"), Err(AdminRefusal::Host));
        assert_eq!(
            admit(None, None, "/metrics", l, &none),
            Err(AdminRefusal::Host)
        );
        let named = AdminSettings {
            names: vec!["gw-1.internal".into()],
            token: None,
        };
        assert_eq!(
            admit(Some(b"gw-1.internal:9000"), None, "/", l, &named),
            Ok(())
        );
        // On a non-loopback listener, `localhost` is not its address.
        let public = addr("10.1.2.3:9000");
        assert_eq!(
            admit(Some(b"localhost:9000"), None, "/", public, &none),
            Err(AdminRefusal::Host)
        );
        assert_eq!(
            admit(Some(b"10.1.2.3:9000"), None, "/", public, &none),
            Ok(())
        );
        assert_eq!(
            admit(Some(b"[::1]:9000"), None, "/", addr("[::1]:9000"), &none),
            Ok(())
        );
        // Bound to every address: any IP literal of the host on the port, still no foreign name.
        let any = addr("0.0.0.0:9000");
        assert_eq!(
            admit(Some(b"10.244.1.7:9000"), None, "/", any, &none),
            Ok(())
        );
        assert_eq!(
            admit(Some(b"10.244.1.7:9001"), None, "/", any, &none),
            Err(AdminRefusal::Host)
        );
        assert_eq!(
            admit(Some(b"evil.example:9000"), None, "/", any, &none),
            Err(AdminRefusal::Host)
        );
        assert_eq!(
            admit(Some(b"localhost:9000"), None, "/", any, &none),
            Err(AdminRefusal::Host)
        );
    }

    #[test]
    fn token_guards_everything_but_the_probes() {
        let s = AdminSettings {
            names: vec![],
            token: Some(AdminToken(b"s3cret-s3cret-s3cret".to_vec())),
        };
        let l = addr("127.0.0.1:9000");
        let call =
            |auth: Option<&[u8]>, path: &str| admit(Some(b"127.0.0.1:9000"), auth, path, l, &s);
        assert_eq!(call(None, "/metrics"), Err(AdminRefusal::Token));
        assert_eq!(
            call(Some(b"Bearer wrong"), "/api/routes"),
            Err(AdminRefusal::Token)
        );
        assert_eq!(
            call(Some(b"Bearer s3cret-s3cret-s3cret"), "/metrics"),
            Ok(())
        );
        assert_eq!(call(None, "/healthz"), Ok(()));
        assert_eq!(call(None, "/readyz"), Ok(()));
    }
}
