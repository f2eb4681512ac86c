//! OpenTelemetry traces, on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variable; the
//! collector's OTLP/HTTP base address). Each request is a server span that continues the gateway's
//! `traceparent`; database calls (`db` module) and object-storage calls are its child spans. Off, the
//! child spans are debug-level and disabled: the logs' filter does not want them.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The layer that turns this process's spans into OpenTelemetry spans, with the provider to flush at
/// exit; `None` when tracing is off (`config` is `None`: no `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn layer<S>(
    config: Option<&crate::config::OtelConfig>,
) -> Result<Option<(impl Layer<S>, SdkTracerProvider)>, OtelError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(config) = config else {
        return Ok(None);
    };
    let endpoint = &config.endpoint;
    let service = config.service_name.clone();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(std::time::Duration::from_millis(500))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        // The gateway decides: a request it traces is traced here too.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer("aggios-edge-backend");
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("backend", tracing::Level::DEBUG)
        .with_default(tracing::Level::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    Ok(Some((layer, provider)))
}

/// Makes `span` continue the trace of the request's `traceparent` (the gateway's span as its parent).
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let Some(t) = headers
        .get(contracts::traceparent::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(contracts::traceparent::parse)
    else {
        return;
    };
    let parent = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(t.trace_id),
        SpanId::from_bytes(t.span_id),
        TraceFlags::new(t.flags),
        true,
        TraceState::default(),
    ));
    let _ = span.set_parent(parent);
}
