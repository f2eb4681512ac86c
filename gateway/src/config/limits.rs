//! `[limits]`: the request limits enforced at the edge (head size and count, deadlines, body size).

use std::time::Duration;

use super::file::LimitsFile;
use super::{duration_or, positive, Diagnostic};

/// Header section limit (bytes) unless `limits.max_header_bytes` says otherwise; above it: 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

/// Header field count limit unless `limits.max_headers` says otherwise; above it: 431.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// The whole request header must arrive within this time of its first byte.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/2 connection with no stream open is closed after this time.
pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(180);

/// Idle time allowed between two reads of a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Request body limit per route unless the route or `limits.max_body_bytes` says otherwise; above it: 413.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// An HTTP/2 connection with no open stream is closed after this (restart needed).
    pub h2_idle_timeout: Duration,
    pub max_body_bytes: u64,
}

/// Validates `[limits]`.
pub(super) fn validate_limits(raw: &LimitsFile, diags: &mut Vec<Diagnostic>) -> Limits {
    Limits {
        max_header_bytes: positive(
            &raw.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES as u64,
            "limits.max_header_bytes",
            diags,
        ) as usize,
        max_headers: positive(
            &raw.max_headers,
            DEFAULT_MAX_HEADERS as u64,
            "limits.max_headers",
            diags,
        ) as usize,
        header_timeout: duration_or(&raw.header_timeout, DEFAULT_HEADER_TIMEOUT, diags),
        body_timeout: duration_or(&raw.body_timeout, DEFAULT_BODY_TIMEOUT, diags),
        h2_idle_timeout: duration_or(&raw.h2_idle_timeout, DEFAULT_H2_IDLE_TIMEOUT, diags),
        max_body_bytes: positive(
            &raw.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            "limits.max_body_bytes",
            diags,
        ),
    }
}
