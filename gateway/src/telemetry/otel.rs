//! OpenTelemetry traces, off unless `[tracing] otlp_endpoint` is set.
//!
//! One span per request (server kind): it continues the W3C `traceparent` of a trusted proxy (from
//! other clients it starts a new root linked to theirs),
//! carries the route, tenant, status and upstream timing, and is passed to the backend as the parent in
//! the `traceparent` the gateway sets on the upstream request. Spans leave through OTLP over HTTP
//! (protobuf) from the SDK's own batch thread. Off, the proxy holds no span and does one `Option` check
//! per hook.

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

pub use crate::config::TracingSettings as Settings;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The request spans' tracer.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

/// A request's span.
pub type RequestSpan = opentelemetry_sdk::trace::Span;

impl Tracing {
    pub fn new(s: &Settings) -> Result<Tracing, OtelError> {
        let endpoint = format!("{}/v1/traces", s.otlp_endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| OtelError::Exporter(e.to_string()))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_millis(500))
                    .with_max_queue_size(8192)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                s.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(s.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("aggios-edge-gateway");
        Ok(Tracing { provider, tracer })
    }

    /// Starts a request's span. A valid `traceparent` from a trusted peer is continued (its sampled
    /// flag decides); from anyone else it only becomes a link of a new root trace, which our own
    /// `sample_ratio` samples: a client cannot force the recording (and export) of its requests.
    pub fn start(&self, method: &str, traceparent: Option<&[u8]>, trusted: bool) -> RequestSpan {
        let remote = traceparent
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(contracts::traceparent::parse)
            .map(|t| {
                SpanContext::new(
                    TraceId::from_bytes(t.trace_id),
                    SpanId::from_bytes(t.span_id),
                    TraceFlags::new(t.flags),
                    true,
                    TraceState::default(),
                )
            });
        let builder = self
            .tracer
            .span_builder(Cow::Owned(format!("{method} request")))
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.to_string())]);
        match remote {
            Some(cx) if trusted => builder
                .start_with_context(&self.tracer, &Context::new().with_remote_span_context(cx)),
            Some(cx) => builder
                .with_links(vec![opentelemetry::trace::Link::with_context(cx)])
                .start_with_context(&self.tracer, &Context::new()),
            None => builder.start_with_context(&self.tracer, &Context::new()),
        }
    }

    /// Sends what is queued (at the end of a graceful stop).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// The `traceparent` for the upstream request: this span as the parent.
pub fn traceparent(span: &RequestSpan) -> Option<String> {
    let cx = span.span_context();
    cx.is_valid().then(|| {
        contracts::traceparent::format(&contracts::traceparent::TraceParent {
            trace_id: cx.trace_id().to_bytes(),
            span_id: cx.span_id().to_bytes(),
            flags: cx.trace_flags().to_u8(),
        })
    })
}

/// What the gateway learned about the request, set on its span before it ends.
pub struct Outcome<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub tenant: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub server: Option<&'a str>,
    pub upstream_ms: Option<f64>,
    pub error: Option<&'a str>,
}

/// Ends a request's span with its outcome.
pub fn finish(mut span: RequestSpan, o: &Outcome<'_>) {
    span.update_name(Cow::Owned(format!("{} {}", o.method, o.route)));
    span.set_attribute(KeyValue::new("http.route", o.route.to_string()));
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(o.status),
    ));
    if let Some(t) = o.tenant {
        span.set_attribute(KeyValue::new("aggios.tenant", t.to_string()));
    }
    if let Some(u) = o.upstream {
        span.set_attribute(KeyValue::new("aggios.upstream", u.to_string()));
    }
    if let Some(s) = o.server {
        span.set_attribute(KeyValue::new("server.address", s.to_string()));
    }
    if let Some(ms) = o.upstream_ms {
        span.set_attribute(KeyValue::new("aggios.upstream_ms", ms));
    }
    if let Some(e) = o.error {
        span.set_attribute(KeyValue::new("error.type", e.to_string()));
    }
    if o.status >= 500 || o.status == 0 {
        span.set_status(Status::error(o.error.unwrap_or("server error").to_string()));
    }
    span.end();
}
