//! Configuration from the environment (shared/DESIGN.md). Every variable is read and checked before
//! start-up; a missing or invalid one stops the process with one line naming it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Where files go.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A local directory (the embedded default).
    Local { dir: PathBuf },
    /// An S3-compatible server.
    S3 {
        endpoint: String,
        bucket: String,
        access_key_id: String,
        secret_access_key: String,
        region: String,
    },
}

/// The backend's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub database_owner_url: String,
    pub database_read_url: Option<String>,
    pub redis_url: String,
    pub jwt_secret: Vec<u8>,
    pub listen: SocketAddr,
    pub internal_listen: Option<SocketAddr>,
    pub storage: StorageConfig,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub max_file_bytes: u64,
    /// Content types served inline from `/api/files`; every other type is served as an attachment.
    pub inline_types: Vec<String>,
    /// Peers whose `X-Aggios-Client-Ip` is believed (the gateways); anyone else's address is the peer's.
    pub trusted_gateways: Vec<ipnet::IpNet>,
    pub migrate_on_start: bool,
    /// Fault injection for tests (`BACKEND_FAULT_PANIC_PATH`, never set in production): a request for
    /// exactly this path panics inside its handler.
    pub fault_panic_path: Option<String>,
    /// A statement slower than this is logged at WARN with its SQL text (placeholders, never the bound
    /// values), rows and elapsed time (`DB_SLOW_QUERY_MS`, default 250).
    pub db_slow_query: Duration,
    /// The platform's base domains (`TENANT_BASE_DOMAINS`, comma-separated): `{tenant}.{base}` hosts.
    pub base_domains: Vec<String>,
    /// The plan of tenants without one of their own (`BACKEND_DEFAULT_PLAN`, default `free`).
    pub default_plan: String,
    /// How often this month's request counts go from Redis to Postgres `usage` (`USAGE_FLUSH_SECS`,
    /// default 5; at most 10: a Redis loss costs at most this window of counts).
    pub usage_flush: Duration,
    /// After SIGTERM, how long requests are still accepted while `/readyz` answers 503, before the
    /// listeners close and in-flight requests finish (`SHUTDOWN_DRAIN_SECS`, default 0; the compose
    /// stack sets it above the gateway's DNS refresh and health-check interval).
    pub shutdown_drain: Duration,
    /// OAuth2: token lifetimes, key rotation, token-endpoint limits.
    pub oauth: OAuthConfig,
}

/// OAuth2 settings (all optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// Access-token lifetime (`OAUTH_ACCESS_TOKEN_TTL_SECS`, default 600, at most 900).
    pub access_ttl: Duration,
    /// Refresh-token lifetime (`OAUTH_REFRESH_TOKEN_TTL_SECS`, default 30 days).
    pub refresh_ttl: Duration,
    /// How long a rotated-in key is published before it signs (`OAUTH_KEY_PUBLISH_AHEAD_SECS`, default
    /// 600: longer than the gateways' JWKS refresh, 300 s by default).
    pub key_publish_ahead: Duration,
    /// Token-endpoint requests per client address and minute (`OAUTH_TOKEN_RATE_PER_IP`, default 60).
    pub token_rate_per_ip: u32,
    /// Token-endpoint requests per client and minute (`OAUTH_TOKEN_RATE_PER_CLIENT`, default 120).
    pub token_rate_per_client: u32,
}

impl Default for OAuthConfig {
    fn default() -> OAuthConfig {
        OAuthConfig {
            access_ttl: Duration::from_secs(600),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            key_publish_ahead: Duration::from_secs(600),
            token_rate_per_ip: 60,
            token_rate_per_client: 120,
        }
    }
}

/// [`OAuthConfig`] through `get`.
pub fn oauth_from_env_with(
    get: impl Fn(&str) -> Option<String>,
) -> Result<OAuthConfig, ConfigError> {
    let d = OAuthConfig::default();
    let num = |var: &'static str, default: u64, range: std::ops::RangeInclusive<u64>| match get(var)
        .filter(|v| !v.is_empty())
    {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                err(
                    var,
                    format!(
                        "must be a whole number from {} to {}, not `{v}`",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    };
    Ok(OAuthConfig {
        access_ttl: Duration::from_secs(num(
            "OAUTH_ACCESS_TOKEN_TTL_SECS",
            d.access_ttl.as_secs(),
            1..=crate::oauth::MAX_ACCESS_TTL_SECS,
        )?),
        refresh_ttl: Duration::from_secs(num(
            "OAUTH_REFRESH_TOKEN_TTL_SECS",
            d.refresh_ttl.as_secs(),
            60..=365 * 24 * 3600,
        )?),
        key_publish_ahead: Duration::from_secs(num(
            "OAUTH_KEY_PUBLISH_AHEAD_SECS",
            d.key_publish_ahead.as_secs(),
            0..=7 * 24 * 3600,
        )?),
        token_rate_per_ip: num(
            "OAUTH_TOKEN_RATE_PER_IP",
            u64::from(d.token_rate_per_ip),
            1..=1_000_000,
        )? as u32,
        token_rate_per_client: num(
            "OAUTH_TOKEN_RATE_PER_CLIENT",
            u64::from(d.token_rate_per_client),
            1..=1_000_000,
        )? as u32,
    })
}

/// `TENANT_BASE_DOMAINS` unless set.
pub const DEFAULT_BASE_DOMAINS: &str = "aggios.app,aggios.localhost";

/// Where OpenTelemetry spans go: `OTEL_EXPORTER_OTLP_ENDPOINT` (off when unset or empty) and
/// `OTEL_SERVICE_NAME` (default `aggios-edge-backend`). Read apart from [`Config`]: tracing starts
/// before the rest of the configuration is checked, so that its errors are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    pub endpoint: String,
    pub service_name: String,
}

/// [`OtelConfig`] from the process environment, `None` when tracing is off.
pub fn otel_from_env() -> Option<OtelConfig> {
    otel_from_env_with(|k| std::env::var(k).ok())
}

/// [`OtelConfig`] from `get`.
pub fn otel_from_env_with(get: impl Fn(&str) -> Option<String>) -> Option<OtelConfig> {
    let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty())?;
    Some(OtelConfig {
        endpoint,
        service_name: get("OTEL_SERVICE_NAME")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "aggios-edge-backend".into()),
    })
}

/// The slow-statement threshold unless `DB_SLOW_QUERY_MS` says otherwise.
pub const DEFAULT_DB_SLOW_QUERY_MS: u64 = 250;

/// The gateways' addresses unless `TRUSTED_GATEWAYS` says otherwise: loopback (the local stack).
pub const DEFAULT_TRUSTED_GATEWAYS: &str = "127.0.0.0/8,::1/128";

/// Inert types a browser may show inline (no script runs in them; SVG and HTML are not among them).
pub const DEFAULT_INLINE_TYPES: &str =
    "image/png,image/jpeg,image/gif,image/webp,image/avif,text/plain";

/// What the command-line tasks (`migrate`, `tenant create`, `user create`) need: the database only. The
/// compose stack's one-shot `migrate` service has no Redis, JWT or S3 settings, and needs none.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub database_url: String,
    pub database_owner_url: String,
    pub db_slow_query: Duration,
}

/// Reads the database settings through `get` (the process environment in production).
pub fn db_from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<DbConfig, ConfigError> {
    let database_url = get("DATABASE_URL")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| err("DATABASE_URL", "is required"))?;
    check_pg_url("DATABASE_URL", &database_url)?;
    let database_owner_url = get("DATABASE_OWNER_URL")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| database_url.clone());
    check_pg_url("DATABASE_OWNER_URL", &database_owner_url)?;
    let db_slow_query = match get("DB_SLOW_QUERY_MS").filter(|v| !v.is_empty()) {
        None => Duration::from_millis(DEFAULT_DB_SLOW_QUERY_MS),
        Some(v) => Duration::from_millis(v.trim().parse::<u64>().map_err(|_| {
            err(
                "DB_SLOW_QUERY_MS",
                format!("must be a whole number of milliseconds, not `{v}`"),
            )
        })?),
    };
    Ok(DbConfig {
        database_url,
        database_owner_url,
        db_slow_query,
    })
}

/// Reads the database settings from the process environment.
pub fn db_from_env() -> Result<DbConfig, ConfigError> {
    db_from_env_with(|k| std::env::var(k).ok())
}

/// Reads the configuration through `get` (the process environment in production).
pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let required = |var: &'static str| {
        get(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| err(var, "is required"))
    };
    let DbConfig {
        database_url,
        database_owner_url,
        db_slow_query,
    } = db_from_env_with(&get)?;
    let database_read_url = get("DATABASE_READ_URL").filter(|v| !v.is_empty());
    if let Some(u) = &database_read_url {
        check_pg_url("DATABASE_READ_URL", u)?;
    }
    let redis_url = required("REDIS_URL")?;
    if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
        return Err(err("REDIS_URL", "must start with redis:// or rediss://"));
    }
    let jwt_secret = match (
        get("JWT_SECRET").filter(|v| !v.is_empty()),
        get("JWT_SECRET_FILE").filter(|v| !v.is_empty()),
    ) {
        (Some(s), _) => s.into_bytes(),
        (None, Some(path)) => std::fs::read(&path)
            .map(|b| b.trim_ascii_end().to_vec())
            .map_err(|e| err("JWT_SECRET_FILE", format!("cannot read {path}: {e}")))?,
        (None, None) => return Err(err("JWT_SECRET", "is required (or JWT_SECRET_FILE)")),
    };
    if jwt_secret.len() < 32 {
        return Err(err("JWT_SECRET", "must be at least 32 bytes for HS256"));
    }
    let listen = parse_addr(
        "BACKEND_LISTEN",
        get("BACKEND_LISTEN").unwrap_or_else(|| "127.0.0.1:8081".into()),
    )?;
    let internal_listen = get("BACKEND_INTERNAL_LISTEN")
        .filter(|v| !v.is_empty())
        .map(|v| parse_addr("BACKEND_INTERNAL_LISTEN", v))
        .transpose()?;
    let storage = match get("S3_ENDPOINT").filter(|v| !v.is_empty()) {
        Some(endpoint) => {
            url::Url::parse(&endpoint)
                .map_err(|e| err("S3_ENDPOINT", format!("not a URL: {e}")))?;
            StorageConfig::S3 {
                endpoint,
                bucket: get("S3_BUCKET")
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "aggios".into()),
                access_key_id: required("S3_ACCESS_KEY_ID")?,
                secret_access_key: required("S3_SECRET_ACCESS_KEY")?,
                region: get("S3_REGION")
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "us-east-1".into()),
            }
        }
        None => StorageConfig::Local {
            dir: PathBuf::from(
                get("STORAGE_DIR")
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "./data/files".into()),
            ),
        },
    };
    let secs = |var: &'static str, default: u64| -> Result<Duration, ConfigError> {
        match get(var).filter(|v| !v.is_empty()) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| err(var, "must be a positive number of seconds")),
        }
    };
    Ok(Config {
        database_url,
        database_owner_url,
        database_read_url,
        redis_url,
        jwt_secret,
        listen,
        internal_listen,
        storage,
        access_ttl: secs("ACCESS_TOKEN_TTL_SECS", 15 * 60)?,
        refresh_ttl: secs("REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?,
        max_file_bytes: match get("MAX_FILE_BYTES").filter(|v| !v.is_empty()) {
            None => 50 * 1024 * 1024,
            Some(v) => v
                .parse()
                .map_err(|_| err("MAX_FILE_BYTES", "must be a number of bytes"))?,
        },
        trusted_gateways: {
            let raw =
                get("TRUSTED_GATEWAYS").unwrap_or_else(|| DEFAULT_TRUSTED_GATEWAYS.to_string());
            let mut nets = Vec::new();
            for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let net = part
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        err(
                            "TRUSTED_GATEWAYS",
                            "must be a comma-separated list of CIDRs or IPs",
                        )
                    })?;
                nets.push(net);
            }
            nets
        },
        inline_types: get("FILES_INLINE_TYPES")
            .unwrap_or_else(|| DEFAULT_INLINE_TYPES.to_string())
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect(),
        migrate_on_start: !matches!(
            get("MIGRATE_ON_START").as_deref(),
            Some("0" | "false" | "no")
        ),
        fault_panic_path: get("BACKEND_FAULT_PANIC_PATH").filter(|p| p.starts_with('/')),
        base_domains: get("TENANT_BASE_DOMAINS")
            .unwrap_or_else(|| DEFAULT_BASE_DOMAINS.to_string())
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
        default_plan: match get("BACKEND_DEFAULT_PLAN").filter(|v| !v.is_empty()) {
            None => "free".to_string(),
            Some(p) if crate::plans::is_plan_name(&p) => p,
            Some(p) => {
                return Err(err(
                    "BACKEND_DEFAULT_PLAN",
                    format!("`{p}` is not a plan name (a-z, 0-9, - and _, at most 40)"),
                ))
            }
        },
        usage_flush: match get("USAGE_FLUSH_SECS").filter(|v| !v.is_empty()) {
            None => Duration::from_secs(5),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    err(
                        "USAGE_FLUSH_SECS",
                        "must be a whole number of seconds from 1 to 10",
                    )
                })?,
        },
        db_slow_query,
        shutdown_drain: match get("SHUTDOWN_DRAIN_SECS").filter(|v| !v.is_empty()) {
            None => Duration::ZERO,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= 300)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    err(
                        "SHUTDOWN_DRAIN_SECS",
                        "must be a whole number of seconds from 0 to 300",
                    )
                })?,
        },
        oauth: oauth_from_env_with(&get)?,
    })
}

/// Reads the configuration from the process environment.
pub fn from_env() -> Result<Config, ConfigError> {
    from_env_with(|k| std::env::var(k).ok())
}

/// A postgres:// URL with one host, or libpq's list of hosts (`postgres://u:p@pg-a,pg-b:5433/db`, the
/// primary and the replicas the backend may fail over to): each host's URL must parse.
fn check_pg_url(var: &'static str, v: &str) -> Result<(), ConfigError> {
    let hosts = crate::db::primary::split_hosts(v).map_err(|e| err(var, e.to_string()))?;
    for one in hosts {
        let u = url::Url::parse(&one).map_err(|e| err(var, format!("not a URL: {e}")))?;
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return Err(err(var, "must be a postgres:// URL"));
        }
    }
    Ok(())
}

fn parse_addr(var: &'static str, v: String) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| err(var, format!("`{v}` is not an IP:port address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const OK: &[(&str, &str)] = &[
        ("DATABASE_URL", "postgres://app:pw@127.0.0.1/aggios"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];

    #[test]
    fn command_line_tasks_need_the_database_settings_only() {
        // The compose stack's `migrate` service: two database URLs, no Redis, JWT or S3.
        let get = env(&[
            ("DATABASE_URL", "postgres://app:pw@postgres/aggios"),
            ("DATABASE_OWNER_URL", "postgres://owner:pw@postgres/aggios"),
        ]);
        let db = db_from_env_with(&get).expect("database settings");
        assert_eq!(db.database_owner_url, "postgres://owner:pw@postgres/aggios");
        assert_eq!(
            db.db_slow_query,
            Duration::from_millis(DEFAULT_DB_SLOW_QUERY_MS)
        );
        let e = from_env_with(&get).expect_err("serving needs more");
        assert!(e.to_string().contains("REDIS_URL"), "{e}");
        let e = db_from_env_with(env(&[("DATABASE_URL", "mysql://x")])).expect_err("checked");
        assert!(e.to_string().contains("DATABASE_URL"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = from_env_with(env(OK)).expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8081");
        assert!(matches!(c.storage, StorageConfig::Local { .. }));
        assert_eq!(c.access_ttl, Duration::from_secs(900));
    }

    #[test]
    fn database_url_may_list_the_hosts_to_fail_over_to() {
        let mut pairs: Vec<(&str, &str)> = OK
            .iter()
            .filter(|(n, _)| *n != "DATABASE_URL")
            .copied()
            .collect();
        pairs.push((
            "DATABASE_URL",
            "postgres://app:pw@postgres:5432,postgres-replica:5432/aggios",
        ));
        let c = from_env_with(env(&pairs)).expect("a host list is valid");
        assert_eq!(
            crate::db::host_options(&c.database_url, c.db_slow_query)
                .expect("hosts")
                .iter()
                .map(|o| o.get_host().to_string())
                .collect::<Vec<_>>(),
            ["postgres", "postgres-replica"]
        );
    }

    #[test]
    fn each_error_names_its_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("DATABASE_URL", "", "DATABASE_URL"),
            ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
            (
                "DATABASE_URL",
                "postgres://app@pg-a,,pg-b/aggios",
                "DATABASE_URL",
            ),
            (
                "DATABASE_URL",
                "postgres://app@pg-a,pg-b:port/aggios",
                "DATABASE_URL",
            ),
            ("REDIS_URL", "127.0.0.1", "REDIS_URL"),
            ("JWT_SECRET", "short", "JWT_SECRET"),
            ("BACKEND_LISTEN", "nope", "BACKEND_LISTEN"),
            ("DB_SLOW_QUERY_MS", "fast", "DB_SLOW_QUERY_MS"),
            ("DB_SLOW_QUERY_MS", "-5", "DB_SLOW_QUERY_MS"),
            ("S3_ENDPOINT", "http://127.0.0.1:9000", "S3_ACCESS_KEY_ID"),
        ];
        for (k, v, var) in cases {
            let mut pairs: Vec<(&str, &str)> = OK.iter().filter(|(n, _)| n != k).copied().collect();
            pairs.push((k, v));
            let e = from_env_with(env(&pairs)).expect_err(k);
            assert_eq!(e.var, *var, "{e}");
        }
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn tracing_and_base_domains_come_from_the_environment_here() {
        assert_eq!(otel_from_env_with(|_| None), None);
        assert_eq!(
            otel_from_env_with(
                |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".into())
            ),
            Some(OtelConfig {
                endpoint: "http://c:4318".into(),
                service_name: "aggios-edge-backend".into()
            })
        );
        let env = |k: &str| match k {
            "DATABASE_URL" => Some("postgres://a@localhost/db".to_string()),
            "REDIS_URL" => Some("redis://127.0.0.1".to_string()),
            "JWT_SECRET" => Some("x".repeat(32)),
            "TENANT_BASE_DOMAINS" => Some(" Aggios.App , ,shop.example".to_string()),
            _ => None,
        };
        let c = from_env_with(env).expect("config");
        assert_eq!(c.base_domains, ["aggios.app", "shop.example"]);
    }
}
