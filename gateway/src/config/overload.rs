//! `[overload]`: admission to upstreams under load — how long a request may wait for a slot of its
//! upstream's concurrency limit, and how many may wait. On by default: a config without the section is
//! protected with these defaults.

use std::time::Duration;

use super::file::OverloadFile;
use super::{duration_or, positive, Diagnostic};

/// The longest wait for an upstream slot before 503 + `Retry-After`, unless `queue_timeout` says
/// otherwise.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// Requests that may wait for one upstream's slots at once.
pub const DEFAULT_QUEUE_SIZE: u64 = 1024;
/// Connections open at once on one entrypoint.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 100_000;
/// Connections open at once from one client address (an IPv6 /64); trusted proxies are exempt.
pub const DEFAULT_PER_CLIENT_CONNECTIONS: u64 = 4096;

/// Streams one HTTP/2 connection may have open at once (nginx's `http2_max_concurrent_streams` is 128).
pub const DEFAULT_H2_STREAMS_PER_CONNECTION: u64 = 128;

/// The event-loop delay above which the gateway's core defers reading the next requests of classes
/// over their share (see `edge::backpressure`).
pub const DEFAULT_CORE_DELAY_TARGET: Duration = Duration::from_micros(500);
/// A core delay target above this is refused: the gate would act only after clients see the delay.
const MAX_CORE_DELAY_TARGET: Duration = Duration::from_secs(1);

/// A queue timeout longer than this is refused: a request that waits longer is better refused (its
/// client has likely given up) and the queue would hold it all that time.
const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Validated `[overload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadSettings {
    pub queue_timeout: Duration,
    pub queue_size: usize,
    pub max_connections: usize,
    pub per_client_connections: usize,
    /// Streams one HTTP/2 connection may have open at once (restart needed).
    pub h2_streams_per_connection: usize,
    /// Backpressure at the gateway's own core (`edge::backpressure`): on, and the event-loop delay it
    /// holds the process to.
    pub core_backpressure: bool,
    pub core_delay_target: Duration,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        OverloadSettings {
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            queue_size: DEFAULT_QUEUE_SIZE as usize,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            per_client_connections: DEFAULT_PER_CLIENT_CONNECTIONS as usize,
            h2_streams_per_connection: DEFAULT_H2_STREAMS_PER_CONNECTION as usize,
            core_backpressure: true,
            core_delay_target: DEFAULT_CORE_DELAY_TARGET,
        }
    }
}

/// Validates `[overload]` (defaults when absent).
pub(super) fn validate_overload(
    raw: Option<&OverloadFile>,
    diags: &mut Vec<Diagnostic>,
) -> OverloadSettings {
    let Some(raw) = raw else {
        return OverloadSettings::default();
    };
    let queue_timeout = duration_or(&raw.queue_timeout, DEFAULT_QUEUE_TIMEOUT, diags);
    if let Some(t) = &raw.queue_timeout {
        if queue_timeout > MAX_QUEUE_TIMEOUT {
            diags.push(Diagnostic::at(
                t,
                "overload.queue_timeout must be at most 30s",
            ));
        }
    }
    let max_connections = positive(
        &raw.max_connections,
        DEFAULT_MAX_CONNECTIONS,
        "overload.max_connections",
        diags,
    )
    .min(1 << 24) as usize;
    let per_client_connections = positive(
        &raw.per_client_connections,
        DEFAULT_PER_CLIENT_CONNECTIONS.min(max_connections as u64),
        "overload.per_client_connections",
        diags,
    ) as usize;
    if let Some(p) = &raw.per_client_connections {
        if per_client_connections > max_connections {
            diags.push(Diagnostic::at(
                p,
                format!(
                    "overload.per_client_connections ({per_client_connections}) is above max_connections ({max_connections})"
                ),
            ));
        }
    }
    let core_delay_target = duration_or(&raw.core_delay_target, DEFAULT_CORE_DELAY_TARGET, diags);
    if let Some(t) = &raw.core_delay_target {
        if core_delay_target > MAX_CORE_DELAY_TARGET {
            diags.push(Diagnostic::at(
                t,
                "overload.core_delay_target must be at most 1s",
            ));
        }
    }
    OverloadSettings {
        core_backpressure: raw.core_backpressure.unwrap_or(true),
        core_delay_target,
        queue_timeout,
        queue_size: positive(
            &raw.queue_size,
            DEFAULT_QUEUE_SIZE,
            "overload.queue_size",
            diags,
        )
        .min(1 << 20) as usize,
        max_connections,
        per_client_connections: per_client_connections.min(max_connections),
        h2_streams_per_connection: positive(
            &raw.h2_streams_per_connection,
            DEFAULT_H2_STREAMS_PER_CONNECTION,
            "overload.h2_streams_per_connection",
            diags,
        )
        .min(u64::from(u32::MAX)) as usize,
    }
}
