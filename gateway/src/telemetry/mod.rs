//! What the gateway tells SREs: Prometheus series ([`metrics`]), OpenTelemetry spans ([`otel`]), the
//! access log ([`access_log`]) and the per-tenant figures ([`tenant_stats`]).

pub mod access_log;
pub mod metrics;
pub mod otel;
pub mod reports;
pub mod tenant_stats;
