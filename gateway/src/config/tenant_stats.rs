//! `[tenant_stats]`: per-tenant figures, and how many tenants Prometheus sees.

use std::time::Duration;

use super::file::TenantStatsFile;
use super::{duration_or, positive, Diagnostic};

/// `[tenant_stats]`: per-tenant figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantStatsSettings {
    /// Tenants named in Prometheus (the rest are `other`).
    pub top_k: usize,
    /// How often the tenants are ranked again.
    pub interval: Duration,
    /// Tenants counted exactly.
    pub max_tenants: usize,
    /// Tenants not seen for this long leave the table at the next ranking.
    pub idle_evict: Duration,
}

/// `[tenant_stats]` defaults: tenants named in Prometheus, how often they are ranked, how many are
/// counted exactly (each costs ~300 bytes; beyond, new tenants count in `other` only).
pub const DEFAULT_TENANT_TOP_K: u64 = 20;

pub const DEFAULT_TENANT_INTERVAL: Duration = Duration::from_secs(15);

pub const DEFAULT_MAX_TENANTS: u64 = 200_000;

/// A tenant not seen for this long leaves the exact table (its place goes to a newer tenant).
pub const DEFAULT_TENANT_IDLE_EVICT: Duration = Duration::from_secs(3600);

/// Validates `[tenant_stats]` (defaults when absent).
pub(super) fn validate_tenant_stats(
    ts: Option<&TenantStatsFile>,
    diags: &mut Vec<Diagnostic>,
) -> TenantStatsSettings {
    TenantStatsSettings {
        top_k: positive(
            &ts.and_then(|t| t.top_k.clone()),
            DEFAULT_TENANT_TOP_K,
            "tenant_stats.top_k",
            diags,
        )
        .min(1000) as usize,
        interval: duration_or(
            &ts.and_then(|t| t.interval.clone()),
            DEFAULT_TENANT_INTERVAL,
            diags,
        ),
        max_tenants: positive(
            &ts.and_then(|t| t.max_tenants.clone()),
            DEFAULT_MAX_TENANTS,
            "tenant_stats.max_tenants",
            diags,
        ) as usize,
        idle_evict: duration_or(
            &ts.and_then(|t| t.idle_evict.clone()),
            DEFAULT_TENANT_IDLE_EVICT,
            diags,
        ),
    }
}
