//! `[tracing]`: OpenTelemetry export of request spans (off when absent).

use super::file::TracingFile;
use super::Diagnostic;

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP base address (`/v1/traces` is appended).
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Share of new traces recorded (a client's sampled flag decides for the traces it started).
    pub sample_ratio: f64,
}

/// Validates `[tracing]` (None when absent or unusable).
pub(super) fn validate_tracing(
    raw: Option<&TracingFile>,
    diags: &mut Vec<Diagnostic>,
) -> Option<TracingSettings> {
    raw.and_then(|t| {
        let endpoint = t.otlp_endpoint.get_ref();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            diags.push(Diagnostic::at(
                &t.otlp_endpoint,
                "tracing.otlp_endpoint must be an http:// or https:// address (OTLP over HTTP, port 4318)",
            ));
            return None;
        }
        let sample_ratio = match &t.sample_ratio {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                diags.push(Diagnostic::at(r, "tracing.sample_ratio must be between 0 and 1"));
                1.0
            }
        };
        Some(TracingSettings {
            otlp_endpoint: endpoint.clone(),
            service_name: t
                .service_name
                .as_ref()
                .map_or_else(|| "aggios-edge-gateway".to_string(), |s| s.get_ref().clone()),
            sample_ratio,
        })
    })
}
