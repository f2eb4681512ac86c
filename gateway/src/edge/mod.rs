//! The request's way through the edge. The [`ProxyHttp`] impl here only dispatches each hook to its
//! stage, in the order a request meets them:
//! - `admit`: the head's checks ([`guard`]), the route ([`route`]), the credential ([`auth`], [`jwks`],
//!   [`api_key`], [`revocation`]), the limits ([`ratelimit`]), and the answers given at the edge;
//! - `forward`: the server ([`upstream`], [`canary`]) and the request and response rewrites ([`headers`],
//!   [`cors`]);
//! - `retry`: what an upstream's failure or answer means (another server, the stable side);
//! - `answer`: every error the edge writes ([`crate::edge::error`]), and Pingora's errors mapped back;
//! - `observe`: metrics, tenant figures, trace span and the access-log line.

pub mod auth;
pub mod backpressure;
pub mod compress;
pub mod connections;
pub mod cors;
pub mod error;
pub mod grpc_web;
pub mod guard;
pub mod head_deadline;
pub mod headers;
pub mod plan;
pub mod proxy_header;
pub mod ratelimit;
pub mod reply;
pub mod route;
pub mod state;

mod admit;
mod answer;
pub mod ctx;
mod forward;
mod observe;
mod retry;

use answer::{answer, caught, refused, LINGER_BYTES, LINGER_TIME};
use retry::upstream_answered;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::config::AuthPolicy;
use crate::edge::error::EdgeError;
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::{metrics, requests_series, Protocol};
use crate::upstream::{affinity as upstream_affinity, canary};
use auth::{api_key, revocation};
pub use ctx::RequestCtx;
use ctx::{Credential, RetryState, Verified};
use guard::{check_connection, check_head, check_path, HeadLimits};
use headers::X_REQUEST_ID;
use reply::Reply;
use state::{GatewayState, Snapshot};

/// Where ACME HTTP-01 challenges are asked for.
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Keep-alive idle time for downstream HTTP/1 connections between requests, in seconds.
const DOWNSTREAM_KEEPALIVE_SECS: u64 = 60;

/// The gateway's [`ProxyHttp`] implementation.
pub struct Gateway {
    pub state: Arc<GatewayState>,
    /// Tenants' own domains (known from on-demand TLS), routed as their tenant's.
    pub on_demand: Option<Arc<crate::acme::on_demand::OnDemand>>,
    /// The ACME client: HTTP-01 answers of this replica or, with shared storage, of any replica.
    pub acme: Option<Arc<crate::acme::AcmeClient>>,
    /// Fault injection for tests (`GATEWAY_FAULT_PANIC_PATH`, never set in production): a request for
    /// exactly this path panics inside `request_filter`.
    pub fault_panic_path: Option<String>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        caught("request_filter", self.filter_request(session, ctx)).await
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_affinity::record(fd, reused);
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        caught("upstream_peer", self.choose_peer(session, ctx)).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        caught(
            "upstream_request_filter",
            self.rewrite_upstream_request(session, upstream_request, ctx),
        )
        .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        caught("response_filter", self.rewrite_response(session, resp, ctx)).await
    }

    /// A compressed response's body chunks through its encoder (`compress`), a gRPC-Web `-text` one
    /// through base64 (`grpc_web`).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(compress::Compress::Encoding(encoder)) = ctx.answer.compress.as_mut() {
            *body = compress::encode(encoder.as_mut(), body.as_ref(), end_of_stream)?;
        }
        if let Some(g) = ctx.answer.grpc_web.as_ref() {
            g.encode_body(body);
        }
        Ok(None)
    }

    /// gRPC-Web: the upstream's trailers written as the body's last frame (`grpc_web`).
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        Ok(ctx
            .answer
            .grpc_web
            .as_mut()
            .and_then(|g| g.trailers(upstream_trailers)))
    }

    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default builds a (disabled) response-compression module for
    /// every request; the gateway compresses on routes that ask for it, in its own hooks (`compress`).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Runs first: snapshots the config, fixes the request id and the client address.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.begin(session, ctx).await
    }

    /// Counts body bytes against the route's limit (chunked bodies have no length up front).
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.count_body(session, body, end_of_stream, ctx).await
    }

    /// Connection failures are retried on another server while tries remain.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(session, peer, ctx, e)
    }

    /// A reset before any response byte is retried for idempotent methods whose body can be replayed.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.proxy_failed(peer, session, e, ctx, client_reused)
    }

    /// The upstream answered: no retry from here on; record its latency.
    /// On a route with a canary, the answer counts for its side; a canary's 5xx to a request that can be
    /// replayed is not passed on but tried again on the stable upstream.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The runtime is lent out of the context, not cloned: no shared reference count touched per request.
        let rt = ctx.request.runtime.take();
        let answered = upstream_answered(session, upstream_response, ctx, rt.as_deref());
        ctx.request.runtime = rt;
        answered
    }

    /// Proxying failed: answer with the JSON error that fits.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        self.fail(session, e, ctx).await
    }

    /// One access-log line and the request metrics.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.observe(session, e, ctx).await
    }

    /// While the process is saturated, a keep-alive connection carries its class to its next request
    /// (nothing is allocated otherwise).
    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        let class = ctx.request.core.as_ref()?.class();
        // A class alone is never held back: nothing to carry.
        if !self.state.core_gate.contended() {
            return None;
        }
        Some(Box::new(class))
    }

    /// An HTTP/2 connection keeps the class of its streams, and its next stream is processed later
    /// while that class is over its share (`backpressure`).
    fn h2_stream_gate(&self) -> Option<Arc<dyn pingora::protocols::http::v2::server::StreamGate>> {
        let overload = &self.state.current().config.overload;
        if !overload.core_backpressure {
            return None;
        }
        Some(Arc::new(backpressure::StreamClass::new(
            Arc::clone(&self.state.core_gate),
            overload.queue_timeout,
        )))
    }

    /// … and its next request is read later while that class is over its share (`backpressure`).
    fn defer_next_request(
        &self,
        prev: &(dyn std::any::Any + Send + Sync),
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        let class = prev.downcast_ref::<backpressure::CoreClass>()?;
        let gate = &self.state.core_gate;
        if gate.limit() == 0 {
            return None;
        }
        gate.defer_read(*class, self.state.current().config.overload.queue_timeout)
    }
}
