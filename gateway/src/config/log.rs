//! `[log]`: the access log and the process log's format and level.

use super::file::LogFile;
use super::{one_of, Diagnostic};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub access_log: bool,
    pub format: LogFormat,
    pub level: String,
}

/// Validates `[log]`.
pub(super) fn validate_log(raw: &LogFile, diags: &mut Vec<Diagnostic>) -> LogSettings {
    LogSettings {
        access_log: raw.access_log.unwrap_or(true),
        format: one_of(
            &raw.format,
            "log.format:",
            &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
            "",
            diags,
        ),
        level: raw
            .level
            .as_ref()
            .map_or_else(|| "info".to_string(), |l| l.get_ref().clone()),
    }
}
