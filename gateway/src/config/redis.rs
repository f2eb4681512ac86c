//! `[redis]`: the store shared by every gateway replica (revocations, global limits, API keys, ACME).

use std::fmt;
use std::time::Duration;

use super::file::RedisFile;
use super::{duration_or, Diagnostic};

/// Per-call Redis timeout unless `[redis] timeout` says otherwise.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(5);

/// How long "this jti is not revoked" is remembered in-process.
pub const DEFAULT_REVOCATION_CACHE: Duration = Duration::from_secs(1);

/// Validated `[redis]`. The URL is read from the environment (it may carry a password).
#[derive(Clone)]
pub struct RedisSettings {
    /// One URL, or with `cluster`, the seed nodes' URLs separated by commas.
    pub url: String,
    pub cluster: bool,
    /// A CA (PEM) to trust for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    pub revocation_cache: Duration,
}

impl RedisSettings {
    /// Where to connect.
    pub fn endpoint(&self) -> crate::support::redis::Endpoint {
        crate::support::redis::Endpoint {
            url: self.url.clone(),
            cluster: self.cluster,
            ca_pem: self.ca_pem.clone(),
            timeout: self.timeout,
        }
    }
}
impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<from env>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Validates `[redis]` (its URL is read from the environment variable it names).
pub(super) fn validate_redis(
    raw: Option<&RedisFile>,
    diags: &mut Vec<Diagnostic>,
) -> Option<RedisSettings> {
    raw.and_then(|r| {
        let url = match std::env::var(r.url_env.get_ref()) {
            Ok(v)
                if v.split(',')
                    .map(str::trim)
                    .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
                    && (r.cluster.unwrap_or(false) || !v.contains(',')) =>
            {
                v
            }
            Ok(_) => {
                diags.push(Diagnostic::at(
                    &r.url_env,
                    format!(
                        "`{}` must hold a redis:// or rediss:// URL (with cluster = true: the nodes' URLs, comma-separated)",
                        r.url_env.get_ref()
                    ),
                ));
                return None;
            }
            Err(_) => {
                diags.push(Diagnostic::at(
                    &r.url_env,
                    format!("environment variable `{}` is not set", r.url_env.get_ref()),
                ));
                return None;
            }
        };
        let ca_pem = r.ca_file.as_ref().and_then(|f| match std::fs::read(f.get_ref()) {
            Ok(pem) if pem.starts_with(b"-----BEGIN") => Some(pem),
            Ok(_) => {
                diags.push(Diagnostic::at(f, format!("ca_file `{}` is not a PEM file", f.get_ref())));
                None
            }
            Err(e) => {
                diags.push(Diagnostic::at(f, format!("cannot read ca_file `{}`: {e}", f.get_ref())));
                None
            }
        });
        Some(RedisSettings {
            url,
            cluster: r.cluster.unwrap_or(false),
            ca_pem,
            timeout: duration_or(&r.timeout, DEFAULT_REDIS_TIMEOUT, diags),
            revocation_cache: duration_or(&r.revocation_cache, DEFAULT_REVOCATION_CACHE, diags),
        })
    })
}
