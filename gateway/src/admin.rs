//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/api/routes`, `/api/certificates`. Never on a public address.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::config::HostPattern;
use crate::metrics::metrics;
use crate::state::GatewayState;

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

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", v.to_string().into_bytes())
}

impl AdminApp {
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
                        crate::tls::cert::Source::File(p) => Some(p.display().to_string()),
                        crate::tls::cert::Source::Acme => None,
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
                    "servers": u.servers.iter().map(|s| json!({
                        "addr": s.label,
                        "healthy": s.is_healthy(),
                        "active_requests": s.active(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "config": rt.config.source.display().to_string(), "routes": routes, "upstreams": upstreams })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics().render(),
            ),
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
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({ "error": { "code": "not_found", "message": "admin endpoints: /metrics /healthz /readyz /api/routes /api/certificates" } }),
            ),
        }
    }
}
