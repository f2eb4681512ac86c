//! Configuration: the file as written ([`file`]) is validated into the runtime [`Config`].
//!
//! Loading never panics and collects every error before reporting; each error points at `file:line:col`.

pub mod duration;
pub mod file;
pub mod rate_limits;
pub mod reload;
mod schema;
pub mod tls;

pub use rate_limits::{FailMode, KeyPart, Rate, RateLimitSpec, Scope};
pub use tls::{AcmeSettings, ChallengeKind, OnDemandSettings, StorageKind, TlsSettings};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;
use toml::Spanned;

use duration::parse_duration;
use file::{
    FileConfig, HeaderRulesFile, JwtFile, RouteFile, ServerEntry, TimeoutsFile, UpstreamFile,
};

/// Header section limit (bytes) unless `limits.max_header_bytes` says otherwise; above it: 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Header field count limit unless `limits.max_headers` says otherwise; above it: 431.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// The whole request header must arrive within this time of its first byte.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time allowed between two reads of a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Request body limit per route unless the route or `limits.max_body_bytes` says otherwise; above it: 413.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Upstream read timeout (time to wait for each read of the response).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream write timeout.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle upstream keep-alive connection is kept in the pool.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries per request across servers of an upstream (1 = no retry).
pub const DEFAULT_MAX_TRIES: u32 = 3;
/// Health check defaults.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
/// Time given to in-flight requests on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// One problem in a config file, located by byte span.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    span: Option<Range<usize>>,
    message: String,
}

impl Diagnostic {
    fn new(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
        }
    }
    fn at<T>(s: &Spanned<T>, message: impl Into<String>) -> Self {
        Self::new(Some(s.span()), message)
    }
}

/// Why a config file was refused: every problem found, each as `FILE:LINE:COL: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// The individual `FILE:LINE:COL: message` lines.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(lines) => lines.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// Load-balancing algorithm of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Weighted,
    LeastConn,
    HashTenant,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Weighted => "weighted",
            Balance::LeastConn => "least_conn",
            Balance::HashTenant => "hash_tenant",
        }
    }
}

/// Protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2c,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub server: ServerSettings,
    pub entrypoints: Entrypoints,
    pub tenancy: Tenancy,
    pub limits: Limits,
    pub trusted_proxies: Vec<IpNet>,
    pub log: LogSettings,
    /// `[auth.jwt]`, when configured.
    pub jwt: Option<JwtSettings>,
    /// `[auth.api_keys]`, when configured.
    pub api_keys: Option<ApiKeySettings>,
    /// `[redis]`, when configured (restart needed to change).
    pub redis: Option<RedisSettings>,
    /// `[tls]`, when configured (then `entrypoints.https` is set too).
    pub tls: Option<TlsSettings>,
    /// `[rate_limits.*]`, by index (routes refer to them by index).
    pub rate_limits: Vec<RateLimitSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
}

/// Largest token accepted before any parsing (bytes) unless `max_token_bytes` says otherwise.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock leeway for `exp`, `nbf` and `iat` unless `leeway` says otherwise.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// One HS256 key. Its secret never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct JwtKey {
    /// `None`: the single key of a set without `kid`s.
    pub kid: Option<String>,
    pub secret: Vec<u8>,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Where asymmetric keys come from, and how often they are re-read.
#[derive(Debug, Clone, PartialEq)]
pub struct JwksSpec {
    pub origin: crate::proxy::jwks::JwksOrigin,
    pub refresh: Duration,
}

/// JWKS refresh interval unless `jwks_refresh` says otherwise.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Validated `[auth.api_keys]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeySettings {
    /// The backend's lookup, with `{prefix}` in it.
    pub lookup_url: String,
    /// A revoked or expired key stops working within this time.
    pub cache_ttl: Duration,
    pub lookup_timeout: Duration,
}

pub const DEFAULT_API_KEY_CACHE_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_API_KEY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Validated `[auth.jwt]`.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// HS256 keys (may be empty when a JWKS is configured).
    pub keys: Vec<JwtKey>,
    pub jwks: Option<JwksSpec>,
    pub tenant_claim: String,
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub max_token_bytes: usize,
}

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

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<from env>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a route does when the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Serve as if the check passed (availability first), counted in a metric.
    Open,
    /// Refuse with 503.
    Closed,
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    None,
    /// A valid token.
    Jwt,
    /// A valid token whose tenant is the host's tenant (or, on a host without a tenant, any tenant).
    JwtTenant,
    /// A valid API key of the host's tenant carrying the route's scopes.
    ApiKey,
    /// Either: an API key when one is presented, else a token bound to the host's tenant.
    JwtOrApiKey,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoints {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    pub base_domains: Vec<String>,
    pub reserved: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: u64,
}

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

#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub addr: SocketAddr,
    /// As written in the file (`host:port`), used in metrics and `/api/routes`.
    pub label: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub servers: Vec<ServerSpec>,
    pub balance: Balance,
    pub protocol: UpstreamProtocol,
    pub health: Option<HealthSpec>,
    pub timeouts: Timeouts,
    pub max_tries: u32,
}

/// How a route matches the Host.
#[derive(Debug, Clone)]
pub enum HostPattern {
    /// `api.aggios.app`; `tenant` is set when the host is `{label}.{base_domain}` with a non-reserved label.
    Exact {
        host: String,
        tenant: Option<String>,
    },
    /// `*.aggios.app`: exactly one label, held here without the `*.` (`aggios.app`).
    Wildcard { suffix: String },
    /// `~^(?P<tenant>…)\.x\.app$`: the `tenant` group, when present, is the tenant.
    Regex { regex: Regex },
}

impl HostPattern {
    /// 0 = exact, 1 = wildcard, 2 = regex: lower is more specific.
    pub fn kind_rank(&self) -> u8 {
        match self {
            HostPattern::Exact { .. } => 0,
            HostPattern::Wildcard { .. } => 1,
            HostPattern::Regex { .. } => 2,
        }
    }
    /// The pattern as ops wrote it (normalised).
    pub fn source(&self) -> String {
        match self {
            HostPattern::Exact { host, .. } => host.clone(),
            HostPattern::Wildcard { suffix } => format!("*.{suffix}"),
            HostPattern::Regex { regex } => format!("~{}", regex.as_str()),
        }
    }
}

/// Header add/set/remove rules.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteTimeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub priority: Option<i64>,
    pub upstream: Option<String>,
    pub strip_prefix: bool,
    pub redirect_https: bool,
    pub max_body_bytes: u64,
    pub timeouts: RouteTimeouts,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    pub auth: AuthPolicy,
    /// Scopes an API key needs on this route.
    pub scopes: Vec<String>,
    /// Indexes into [`Config::rate_limits`]; all must pass.
    pub rate_limits: Vec<usize>,
    pub on_store_error: OnStoreError,
    pub cors: Option<CorsSpec>,
    pub security: SecurityHeaders,
}

/// An allowed CORS origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `https://app.example.com`.
    Exact(String),
    /// `https://*.aggios.app`: scheme plus exactly one label before the suffix (held as `.aggios.app`).
    Wildcard { scheme: String, suffix: String },
    /// `self`: an origin whose host is the request's own host (a tenant calling its own API).
    SameHost,
}

/// A route's CORS policy; preflights are answered at the edge.
#[derive(Debug, Clone)]
pub struct CorsSpec {
    pub origins: Vec<OriginPattern>,
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub credentials: bool,
    pub max_age: u64,
}

/// Security headers added to a route's responses.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security` value, sent on HTTPS responses only.
    pub hsts: Option<HeaderValue>,
    pub content_type_options: bool,
    pub referrer_policy: Option<HeaderValue>,
    pub frame_options: Option<HeaderValue>,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        SecurityHeaders {
            hsts: Some(HeaderValue::from_static("max-age=31536000")),
            content_type_options: true,
            referrer_policy: Some(HeaderValue::from_static("strict-origin-when-cross-origin")),
            frame_options: None,
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut diags = Vec::new();
        let config = parse_inner(path, text, &mut diags);
        if diags.is_empty() {
            if let Some(c) = config {
                return Ok(c);
            }
            diags.push(Diagnostic::new(None, "invalid configuration"));
        }
        Err(ConfigError::Invalid(render(path, text, diags)))
    }

    /// A one-line description for `gateway validate`.
    pub fn summary(&self) -> String {
        let servers: usize = self.upstreams.iter().map(|u| u.servers.len()).sum();
        format!(
            "{}: ok: {} routes, {} upstreams ({} servers), http {}, https {}, admin {}",
            self.source.display(),
            self.routes.len(),
            self.upstreams.len(),
            servers,
            self.entrypoints
                .http
                .map_or("off".into(), |a| a.to_string()),
            self.entrypoints
                .https
                .map_or("off".into(), |a| a.to_string()),
            self.entrypoints
                .admin
                .map_or("off".into(), |a| a.to_string()),
        )
    }

    /// Settings that a reload cannot change, described for the log, when they differ.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.entrypoints != new.entrypoints {
            out.push(format!(
                "entrypoints changed ({:?} -> {:?}); listeners change only on restart",
                self.entrypoints, new.entrypoints
            ));
        }
        if self.redis.as_ref().map(|r| &r.url) != new.redis.as_ref().map(|r| &r.url) {
            out.push("[redis] url changed; the connection changes only on restart".to_string());
        }
        if self.server != new.server {
            out.push("[server] changed; it takes effect on restart".to_string());
        }
        if self.log.format != new.log.format || self.log.level != new.log.level {
            out.push("[log] format/level changed; they take effect on restart".to_string());
        }
        out
    }
}

fn render(path: &Path, text: &str, mut diags: Vec<Diagnostic>) -> Vec<String> {
    diags.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    diags
        .into_iter()
        .map(|d| {
            let (line, col) = d.span.map_or((1, 1), |s| line_col(text, s.start));
            format!("{}:{}:{}: {}", path.display(), line, col, d.message)
        })
        .collect()
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn parse_inner(path: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Option<Config> {
    let doc = match toml_edit::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            diags.push(Diagnostic::new(
                e.span(),
                format!("TOML syntax error: {}", e.message().trim()),
            ));
            return None;
        }
    };
    schema::check_keys(doc.as_table(), diags);
    if !diags.is_empty() {
        return None;
    }
    let raw: FileConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            diags.push(Diagnostic::new(e.span(), e.message().trim().to_string()));
            return None;
        }
    };
    Some(validate(path, raw, diags))
}

pub(crate) fn duration_or(
    v: &Option<Spanned<String>>,
    default: Duration,
    diags: &mut Vec<Diagnostic>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() => {
                diags.push(Diagnostic::at(s, "duration must be greater than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                diags.push(Diagnostic::at(s, e));
                default
            }
        },
    }
}

fn opt_duration(v: &Option<Spanned<String>>, diags: &mut Vec<Diagnostic>) -> Option<Duration> {
    v.as_ref()
        .map(|_| duration_or(v, Duration::from_secs(1), diags))
}

fn positive(
    v: &Option<Spanned<i64>>,
    default: u64,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> u64 {
    match v {
        None => default,
        Some(s) if *s.get_ref() > 0 => *s.get_ref() as u64,
        Some(s) => {
            diags.push(Diagnostic::at(
                s,
                format!("{what} must be a positive integer"),
            ));
            default
        }
    }
}

fn socket_addr(
    v: &Option<Spanned<String>>,
    key: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<SocketAddr> {
    let s = v.as_ref()?;
    match s.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            diags.push(Diagnostic::at(
                s,
                format!(
                    "{key}: `{}` is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                    s.get_ref()
                ),
            ));
            None
        }
    }
}

fn validate(path: &Path, raw: FileConfig, diags: &mut Vec<Diagnostic>) -> Config {
    let server = ServerSettings {
        threads: positive(&raw.server.threads, 1, "server.threads", diags) as usize,
        shutdown_grace: duration_or(&raw.server.shutdown_grace, DEFAULT_SHUTDOWN_GRACE, diags),
    };
    let entrypoints = Entrypoints {
        http: socket_addr(&raw.entrypoints.http, "entrypoints.http", diags),
        https: socket_addr(&raw.entrypoints.https, "entrypoints.https", diags),
        admin: socket_addr(&raw.entrypoints.admin, "entrypoints.admin", diags),
    };
    let tls = match (&raw.tls, &raw.entrypoints.https) {
        (Some(t), https) => Some(tls::validate(t, https.as_ref(), raw.redis.is_some(), diags)),
        (None, Some(https)) => {
            diags.push(Diagnostic::at(
                https,
                "entrypoints.https needs [tls] (certificate files or [tls.acme])",
            ));
            None
        }
        (None, None) => None,
    };
    if raw.entrypoints.http.is_none() {
        diags.push(Diagnostic::new(
            None,
            "entrypoints.http is required (e.g. http = \"0.0.0.0:80\")",
        ));
    }

    let mut tenancy = Tenancy::default();
    for d in &raw.tenancy.base_domains {
        let v = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if !is_hostname(&v) {
            diags.push(Diagnostic::at(
                d,
                format!(
                    "tenancy.base_domains: `{}` is not a domain name",
                    d.get_ref()
                ),
            ));
        } else {
            tenancy.base_domains.push(v);
        }
    }
    for r in &raw.tenancy.reserved {
        let v = r.get_ref().to_ascii_lowercase();
        if !is_label(&v) {
            diags.push(Diagnostic::at(
                r,
                format!("tenancy.reserved: `{}` is not a DNS label", r.get_ref()),
            ));
        } else {
            tenancy.reserved.insert(v);
        }
    }

    let limits = Limits {
        max_header_bytes: positive(
            &raw.limits.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES as u64,
            "limits.max_header_bytes",
            diags,
        ) as usize,
        max_headers: positive(
            &raw.limits.max_headers,
            DEFAULT_MAX_HEADERS as u64,
            "limits.max_headers",
            diags,
        ) as usize,
        header_timeout: duration_or(&raw.limits.header_timeout, DEFAULT_HEADER_TIMEOUT, diags),
        body_timeout: duration_or(&raw.limits.body_timeout, DEFAULT_BODY_TIMEOUT, diags),
        max_body_bytes: positive(
            &raw.limits.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            "limits.max_body_bytes",
            diags,
        ),
    };

    let mut trusted_proxies = Vec::new();
    for p in &raw.forwarding.trusted_proxies {
        let s = p.get_ref();
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => diags.push(Diagnostic::at(
                p,
                format!("forwarding.trusted_proxies: `{s}` is not a CIDR or IP address"),
            )),
        }
    }

    let log = LogSettings {
        access_log: raw.log.access_log.unwrap_or(true),
        format: match raw.log.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                diags.push(Diagnostic::at(
                    raw.log.format.as_ref().expect("matched Some"),
                    format!("log.format: `{other}` is not one of json, pretty"),
                ));
                LogFormat::Json
            }
        },
        level: raw
            .log
            .level
            .as_ref()
            .map_or_else(|| "info".to_string(), |l| l.get_ref().clone()),
    };

    let jwt = raw.auth.jwt.as_ref().map(|j| validate_jwt(path, j, diags));
    let api_keys = raw.auth.api_keys.as_ref().map(|a| ApiKeySettings {
        lookup_url: {
            let u = a.lookup_url.get_ref();
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.contains("{prefix}")
                && u.replace("{prefix}", "0").parse::<http::Uri>().is_ok();
            if !ok {
                diags.push(Diagnostic::at(
                    &a.lookup_url,
                    "lookup_url must be an http(s) URL containing `{prefix}`",
                ));
            }
            u.clone()
        },
        cache_ttl: {
            let ttl = duration_or(&a.cache_ttl, DEFAULT_API_KEY_CACHE_TTL, diags);
            if ttl > Duration::from_secs(300) {
                if let Some(t) = &a.cache_ttl {
                    diags.push(Diagnostic::at(
                        t,
                        "cache_ttl is how long a revoked key keeps working; at most 5m",
                    ));
                }
            }
            ttl
        },
        lookup_timeout: duration_or(&a.timeout, DEFAULT_API_KEY_LOOKUP_TIMEOUT, diags),
    });
    let rate_limits = rate_limits::validate(&raw.rate_limits, diags);
    let redis = raw.redis.as_ref().and_then(|r| {
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
    });

    let mut upstreams: Vec<UpstreamSpec> = Vec::new();
    let mut upstream_names: HashMap<String, ()> = HashMap::new();
    for u in &raw.upstreams {
        if upstream_names
            .insert(u.name.get_ref().clone(), ())
            .is_some()
        {
            diags.push(Diagnostic::at(
                &u.name,
                format!("duplicate upstream name `{}`", u.name.get_ref()),
            ));
        }
        upstreams.push(validate_upstream(u, diags));
    }

    let mut routes = Vec::new();
    let mut route_names: HashSet<String> = HashSet::new();
    for r in &raw.routes {
        if !route_names.insert(r.name.get_ref().clone()) {
            diags.push(Diagnostic::at(
                &r.name,
                format!("duplicate route name `{}`", r.name.get_ref()),
            ));
        }
        routes.push(validate_route(
            r,
            &RouteContext {
                tenancy: &tenancy,
                limits: &limits,
                upstreams: &upstream_names,
                jwt_configured: raw.auth.jwt.is_some(),
                api_keys_configured: raw.auth.api_keys.is_some(),
                policies: &rate_limits,
            },
            diags,
        ));
    }
    // Routes whose hosts did not parse are already reported; ranking them would only add noise.
    let complete: Vec<bool> = raw
        .routes
        .iter()
        .zip(&routes)
        .map(|(r, s)| r.hosts.len() == s.hosts.len())
        .collect();
    check_ambiguity(&raw.routes, &routes, &complete, diags);

    Config {
        source: path.to_path_buf(),
        server,
        entrypoints,
        tenancy,
        limits,
        trusted_proxies,
        log,
        jwt,
        api_keys,
        redis,
        tls,
        rate_limits,
        upstreams,
        routes,
    }
}

/// Reads a secret from `*_env` (the environment) or `*_file`; secrets never sit in the config file.
fn secret(
    env: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
    at: Option<Range<usize>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<u8>> {
    let value = match (env, file) {
        (Some(e), None) => match std::env::var(e.get_ref()) {
            Ok(v) if !v.is_empty() => v.into_bytes(),
            _ => {
                diags.push(Diagnostic::at(
                    e,
                    format!("environment variable `{}` is not set", e.get_ref()),
                ));
                return None;
            }
        },
        (None, Some(f)) => match std::fs::read(f.get_ref()) {
            Ok(v) => v.trim_ascii_end().to_vec(),
            Err(err) => {
                diags.push(Diagnostic::at(
                    f,
                    format!("cannot read `{}`: {err}", f.get_ref()),
                ));
                return None;
            }
        },
        (Some(e), Some(_)) => {
            diags.push(Diagnostic::at(
                e,
                "set either secret_env or secret_file, not both",
            ));
            return None;
        }
        (None, None) => {
            diags.push(Diagnostic::new(at, "a key needs secret_env or secret_file"));
            return None;
        }
    };
    if value.len() < 32 {
        let span = env.as_ref().or(file.as_ref()).map(Spanned::span);
        diags.push(Diagnostic::new(
            span,
            "an HS256 secret must be at least 32 bytes",
        ));
        return None;
    }
    Some(value)
}

fn validate_jwks(config_path: &Path, j: &JwtFile, diags: &mut Vec<Diagnostic>) -> Option<JwksSpec> {
    use crate::proxy::jwks::JwksOrigin;
    let refresh = duration_or(&j.jwks_refresh, DEFAULT_JWKS_REFRESH, diags);
    let origin = match (&j.jwks_file, &j.jwks_url) {
        (Some(f), None) => {
            // Relative to the working directory, like every other path in the file.
            let p = PathBuf::from(f.get_ref());
            match std::fs::read(&p) {
                Ok(bytes) => {
                    if let Err(e) = crate::proxy::jwks::parse(&bytes) {
                        diags.push(Diagnostic::at(
                            f,
                            format!("jwks_file `{}`: {e}", f.get_ref()),
                        ));
                    }
                }
                Err(e) => diags.push(Diagnostic::at(
                    f,
                    format!("cannot read jwks_file `{}`: {e}", f.get_ref()),
                )),
            }
            JwksOrigin::File(p)
        }
        (None, Some(u)) => {
            let s = u.get_ref();
            if !(s.starts_with("https://") || s.starts_with("http://"))
                || s.parse::<http::Uri>().is_err()
            {
                diags.push(Diagnostic::at(u, "jwks_url must be an http(s) URL"));
            }
            JwksOrigin::Url(s.clone())
        }
        (Some(f), Some(_)) => {
            diags.push(Diagnostic::at(
                f,
                "set either jwks_file or jwks_url, not both",
            ));
            return None;
        }
        (None, None) => {
            if let Some(r) = &j.jwks_refresh {
                diags.push(Diagnostic::at(
                    r,
                    "jwks_refresh needs jwks_file or jwks_url",
                ));
            }
            return None;
        }
    };
    let _ = config_path;
    Some(JwksSpec { origin, refresh })
}

fn validate_jwt(config_path: &Path, j: &JwtFile, diags: &mut Vec<Diagnostic>) -> JwtSettings {
    let jwks = validate_jwks(config_path, j, diags);
    let mut keys = Vec::new();
    let hs_configured = j.secret_env.is_some() || j.secret_file.is_some() || !j.keys.is_empty();
    if !hs_configured {
        if j.jwks_file.is_none() && j.jwks_url.is_none() {
            diags.push(Diagnostic::new(
                None,
                "[auth.jwt] needs keys: secret_env, secret_file, keys, jwks_file or jwks_url",
            ));
        }
    } else if j.keys.is_empty() {
        if let Some(s) = secret(&j.secret_env, &j.secret_file, None, diags) {
            keys.push(JwtKey {
                kid: None,
                secret: s,
            });
        }
    } else {
        if let Some(e) = j.secret_env.as_ref().or(j.secret_file.as_ref()) {
            diags.push(Diagnostic::at(
                e,
                "with `keys`, put every secret in a key (with its kid)",
            ));
        }
        let mut seen = HashSet::new();
        for k in &j.keys {
            if !seen.insert(k.kid.get_ref().clone()) {
                diags.push(Diagnostic::at(
                    &k.kid,
                    format!("duplicate kid `{}`", k.kid.get_ref()),
                ));
            }
            if let Some(s) = secret(&k.secret_env, &k.secret_file, Some(k.kid.span()), diags) {
                keys.push(JwtKey {
                    kid: Some(k.kid.get_ref().clone()),
                    secret: s,
                });
            }
        }
    }
    JwtSettings {
        keys,
        jwks,
        tenant_claim: j
            .tenant_claim
            .as_ref()
            .map_or_else(|| "tenant_id".to_string(), |c| c.get_ref().clone()),
        leeway: match &j.leeway {
            None => DEFAULT_JWT_LEEWAY,
            Some(l) => parse_duration(l.get_ref()).unwrap_or_else(|e| {
                diags.push(Diagnostic::at(l, e));
                DEFAULT_JWT_LEEWAY
            }),
        },
        issuer: j.issuer.as_ref().map(|v| v.get_ref().clone()),
        audience: j.audience.as_ref().map(|v| v.get_ref().clone()),
        max_token_bytes: positive(
            &j.max_token_bytes,
            DEFAULT_MAX_TOKEN_BYTES as u64,
            "max_token_bytes",
            diags,
        ) as usize,
    }
}

fn validate_timeouts(t: &TimeoutsFile, diags: &mut Vec<Diagnostic>) -> Timeouts {
    Timeouts {
        connect: duration_or(&t.connect, DEFAULT_CONNECT_TIMEOUT, diags),
        read: duration_or(&t.read, DEFAULT_READ_TIMEOUT, diags),
        write: duration_or(&t.write, DEFAULT_WRITE_TIMEOUT, diags),
        idle: duration_or(&t.idle, DEFAULT_IDLE_TIMEOUT, diags),
    }
}

fn validate_upstream(u: &UpstreamFile, diags: &mut Vec<Diagnostic>) -> UpstreamSpec {
    let name = u.name.get_ref().clone();
    if name.is_empty() {
        diags.push(Diagnostic::at(&u.name, "upstream name must not be empty"));
    }
    let mut servers = Vec::new();
    for entry in u.servers.get_ref() {
        let (addr, weight) = match entry.get_ref() {
            ServerEntry::Addr(a) => (a, None),
            ServerEntry::Weighted(w) => (&w.addr, w.weight),
        };
        let weight = match weight {
            None => 1,
            Some(w) if (1..=1000).contains(&w) => w as u32,
            Some(_) => {
                diags.push(Diagnostic::at(
                    entry,
                    "server weight must be between 1 and 1000",
                ));
                1
            }
        };
        match resolve(addr) {
            Ok(sock) => servers.push(ServerSpec {
                addr: sock,
                label: addr.clone(),
                weight,
            }),
            Err(e) => diags.push(Diagnostic::at(entry, e)),
        }
    }
    if u.servers.get_ref().is_empty() {
        diags.push(Diagnostic::at(
            &u.servers,
            format!("upstream `{name}` has no servers"),
        ));
    }
    let balance = match u.balance.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("weighted") => Balance::Weighted,
        Some("least_conn") => Balance::LeastConn,
        Some("hash_tenant") => Balance::HashTenant,
        Some(other) => {
            diags.push(Diagnostic::at(
                u.balance.as_ref().expect("matched Some"),
                format!("balance `{other}` is not one of round_robin, weighted, least_conn, hash_tenant"),
            ));
            Balance::RoundRobin
        }
    };
    let protocol = match u.protocol.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("h2c") => UpstreamProtocol::H2c,
        Some(other) => {
            diags.push(Diagnostic::at(
                u.protocol.as_ref().expect("matched Some"),
                format!("protocol `{other}` is not one of http1, h2c"),
            ));
            UpstreamProtocol::Http1
        }
    };
    let health = u.health.as_ref().map(|h| {
        let path = h
            .path
            .as_ref()
            .map_or_else(|| "/healthz".to_string(), |p| p.get_ref().clone());
        if !path.starts_with('/') {
            if let Some(p) = &h.path {
                diags.push(Diagnostic::at(p, "health.path must start with `/`"));
            }
        }
        HealthSpec {
            path,
            host: h.host.as_ref().map(|x| x.get_ref().clone()),
            interval: duration_or(&h.interval, DEFAULT_HEALTH_INTERVAL, diags),
            timeout: duration_or(&h.timeout, DEFAULT_HEALTH_TIMEOUT, diags),
            healthy_threshold: positive(
                &h.healthy_threshold,
                DEFAULT_HEALTHY_THRESHOLD as u64,
                "health.healthy_threshold",
                diags,
            ) as u32,
            unhealthy_threshold: positive(
                &h.unhealthy_threshold,
                DEFAULT_UNHEALTHY_THRESHOLD as u64,
                "health.unhealthy_threshold",
                diags,
            ) as u32,
        }
    });
    UpstreamSpec {
        name,
        servers,
        balance,
        protocol,
        health,
        timeouts: validate_timeouts(&u.timeouts, diags),
        max_tries: positive(&u.max_tries, DEFAULT_MAX_TRIES as u64, "max_tries", diags).min(16)
            as u32,
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("server `{addr}` needs a port (host:port)"));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("server `{addr}` does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("server `{addr}` resolves to no address"))
}

fn header_rules(h: &HeaderRulesFile, diags: &mut Vec<Diagnostic>) -> HeaderRules {
    let mut rules = HeaderRules::default();
    let pairs = |map: &std::collections::BTreeMap<String, Spanned<String>>,
                 diags: &mut Vec<Diagnostic>| {
        let mut out = Vec::new();
        for (k, v) in map {
            match (
                HeaderName::try_from(k.as_str()),
                HeaderValue::from_str(v.get_ref()),
            ) {
                (Ok(n), Ok(val)) => out.push((n, val)),
                (Err(_), _) => diags.push(Diagnostic::at(
                    v,
                    format!("`{k}` is not a valid header name"),
                )),
                (_, Err(_)) => diags.push(Diagnostic::at(
                    v,
                    format!("the value of header `{k}` is not a valid header value"),
                )),
            }
        }
        out
    };
    rules.add = pairs(&h.add, diags);
    rules.set = pairs(&h.set, diags);
    for r in &h.remove {
        match HeaderName::try_from(r.get_ref().as_str()) {
            Ok(n) => rules.remove.push(n),
            Err(_) => diags.push(Diagnostic::at(
                r,
                format!("`{}` is not a valid header name", r.get_ref()),
            )),
        }
    }
    rules
}

/// What a route is validated against: the rest of the file.
struct RouteContext<'a> {
    tenancy: &'a Tenancy,
    limits: &'a Limits,
    upstreams: &'a HashMap<String, ()>,
    jwt_configured: bool,
    api_keys_configured: bool,
    policies: &'a [RateLimitSpec],
}

fn validate_route(r: &RouteFile, cx: &RouteContext<'_>, diags: &mut Vec<Diagnostic>) -> RouteSpec {
    let RouteContext {
        tenancy,
        limits,
        upstreams,
        jwt_configured,
        api_keys_configured,
        policies,
    } = *cx;
    let name = r.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        diags.push(Diagnostic::at(
            &r.name,
            "route name must be non-empty and use only letters, digits, `-`, `_` and `.`",
        ));
    }
    let mut hosts = Vec::new();
    for h in &r.hosts {
        match parse_host_pattern(h.get_ref(), tenancy) {
            Ok(p) => hosts.push(p),
            Err(e) => diags.push(Diagnostic::at(h, e)),
        }
    }
    let path_prefix = r
        .path_prefix
        .as_ref()
        .map_or_else(|| "/".to_string(), |p| p.get_ref().clone());
    if !path_prefix.starts_with('/') {
        if let Some(p) = &r.path_prefix {
            diags.push(Diagnostic::at(p, "path_prefix must start with `/`"));
        }
    }
    let methods = r.methods.as_ref().map(|ms| {
        let mut out = Vec::new();
        for m in ms {
            match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) => out.push(method),
                Err(_) => diags.push(Diagnostic::at(
                    m,
                    format!("`{}` is not an HTTP method", m.get_ref()),
                )),
            }
        }
        out
    });
    let mut headers = Vec::new();
    for (k, v) in &r.headers {
        match (
            HeaderName::try_from(k.as_str()),
            HeaderValue::from_str(v.get_ref()),
        ) {
            (Ok(n), Ok(val)) => headers.push((n, val)),
            _ => diags.push(Diagnostic::at(
                v,
                format!("header matcher `{k}` has an invalid name or value"),
            )),
        }
    }
    match &r.upstream {
        Some(u) if !upstreams.contains_key(u.get_ref()) => {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            let hint = known
                .iter()
                .map(|k| (strsim::damerau_levenshtein(u.get_ref(), k), *k))
                .filter(|(d, _)| *d <= 2)
                .min_by_key(|(d, _)| *d)
                .map_or_else(String::new, |(_, k)| format!(" (did you mean `{k}`?)"));
            diags.push(Diagnostic::at(
                u,
                format!(
                    "route `{name}` refers to unknown upstream `{}`{hint}",
                    u.get_ref()
                ),
            ));
        }
        None if !r.redirect_https => {
            diags.push(Diagnostic::at(
                &r.name,
                format!("route `{name}` needs `upstream` (or `redirect_https = true`)"),
            ));
        }
        _ => {}
    }
    let auth = match r.auth.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("none") => AuthPolicy::None,
        Some("jwt") => AuthPolicy::Jwt,
        Some("jwt_tenant") => AuthPolicy::JwtTenant,
        Some("api_key") => AuthPolicy::ApiKey,
        Some("jwt_or_api_key") => AuthPolicy::JwtOrApiKey,
        Some(other) => {
            diags.push(Diagnostic::at(
                r.auth.as_ref().expect("matched Some"),
                format!(
                    "auth `{other}` is not one of none, jwt, jwt_tenant, api_key, jwt_or_api_key"
                ),
            ));
            AuthPolicy::None
        }
    };
    let needs_jwt = matches!(
        auth,
        AuthPolicy::Jwt | AuthPolicy::JwtTenant | AuthPolicy::JwtOrApiKey
    );
    let needs_keys = matches!(auth, AuthPolicy::ApiKey | AuthPolicy::JwtOrApiKey);
    if let Some(a) = &r.auth {
        if needs_jwt && !jwt_configured {
            diags.push(Diagnostic::at(
                a,
                format!(
                    "route `{name}` uses auth `{}` but there is no [auth.jwt] section",
                    a.get_ref()
                ),
            ));
        }
        if needs_keys && !api_keys_configured {
            diags.push(Diagnostic::at(
                a,
                format!(
                    "route `{name}` uses auth `{}` but there is no [auth.api_keys] section",
                    a.get_ref()
                ),
            ));
        }
    }
    let mut scopes = Vec::new();
    for sc in r.scopes.iter().flatten() {
        if !needs_keys {
            diags.push(Diagnostic::at(
                sc,
                "scopes apply to API keys: set auth = \"api_key\" or \"jwt_or_api_key\"",
            ));
        }
        scopes.push(sc.get_ref().clone());
    }
    let mut rate_limits = Vec::new();
    for rl in r.rate_limits.iter().flatten() {
        match policies.iter().position(|p| &p.name == rl.get_ref()) {
            Some(i) if !rate_limits.contains(&i) => rate_limits.push(i),
            Some(_) => diags.push(Diagnostic::at(rl, "rate limit listed twice")),
            None => {
                let mut msg = format!("no [rate_limits.{}] policy", rl.get_ref());
                if !policies.is_empty() {
                    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                    msg.push_str(&format!("; defined: {}", names.join(", ")));
                }
                diags.push(Diagnostic::at(rl, msg));
            }
        }
    }
    RouteSpec {
        name,
        hosts,
        path_prefix,
        methods,
        headers,
        priority: r.priority.as_ref().map(|p| *p.get_ref()),
        upstream: r.upstream.as_ref().map(|u| u.get_ref().clone()),
        strip_prefix: r.strip_prefix,
        redirect_https: r.redirect_https,
        max_body_bytes: positive(
            &r.max_body_bytes,
            limits.max_body_bytes,
            "max_body_bytes",
            diags,
        ),
        timeouts: RouteTimeouts {
            connect: opt_duration(&r.timeouts.connect, diags),
            read: opt_duration(&r.timeouts.read, diags),
            write: opt_duration(&r.timeouts.write, diags),
        },
        request_headers: header_rules(&r.request_headers, diags),
        response_headers: header_rules(&r.response_headers, diags),
        auth,
        scopes,
        rate_limits,
        on_store_error: match r.on_store_error.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("open") => OnStoreError::Open,
            Some("closed") => OnStoreError::Closed,
            Some(other) => {
                diags.push(Diagnostic::at(
                    r.on_store_error.as_ref().expect("matched Some"),
                    format!("on_store_error `{other}` is not one of open, closed"),
                ));
                OnStoreError::Open
            }
        },
        cors: r.cors.as_ref().map(|c| validate_cors(c, diags)),
        security: validate_security(r.security_headers.as_ref(), diags),
    }
}

fn header_names(
    list: &Option<Vec<Spanned<String>>>,
    default: &[&'static str],
    diags: &mut Vec<Diagnostic>,
) -> Vec<HeaderName> {
    match list {
        None => default.iter().map(|h| HeaderName::from_static(h)).collect(),
        Some(l) => l
            .iter()
            .filter_map(|h| match HeaderName::try_from(h.get_ref().as_str()) {
                Ok(n) => Some(n),
                Err(_) => {
                    diags.push(Diagnostic::at(
                        h,
                        format!("`{}` is not a header name", h.get_ref()),
                    ));
                    None
                }
            })
            .collect(),
    }
}

fn validate_cors(c: &file::CorsFile, diags: &mut Vec<Diagnostic>) -> CorsSpec {
    let mut origins = Vec::new();
    for o in &c.origins {
        let v = o.get_ref().to_ascii_lowercase();
        if v == "self" {
            origins.push(OriginPattern::SameHost);
            continue;
        }
        let Some((scheme, host)) = v.split_once("://") else {
            diags.push(Diagnostic::at(
                o,
                format!(
                    "origin `{}` must be `scheme://host[:port]`, `scheme://*.domain` or `self`",
                    o.get_ref()
                ),
            ));
            continue;
        };
        if !matches!(scheme, "http" | "https") || host.contains('/') || host.is_empty() {
            diags.push(Diagnostic::at(
                o,
                format!(
                    "origin `{}` must be `scheme://host[:port]` without a path",
                    o.get_ref()
                ),
            ));
            continue;
        }
        if v == "*" || host == "*" {
            diags.push(Diagnostic::at(
                o,
                "`*` is not allowed: list origins, use `https://*.domain`, or `self`",
            ));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            origins.push(OriginPattern::Wildcard {
                scheme: scheme.to_string(),
                suffix: format!(".{suffix}"),
            });
        } else {
            origins.push(OriginPattern::Exact(v.trim_end_matches('/').to_string()));
        }
    }
    let methods = match &c.methods {
        None => vec![Method::GET, Method::HEAD, Method::POST],
        Some(ms) => ms
            .iter()
            .filter_map(
                |m| match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                    Ok(x) => Some(x),
                    Err(_) => {
                        diags.push(Diagnostic::at(
                            m,
                            format!("`{}` is not an HTTP method", m.get_ref()),
                        ));
                        None
                    }
                },
            )
            .collect(),
    };
    CorsSpec {
        origins,
        methods,
        headers: header_names(&c.headers, &["authorization", "content-type"], diags),
        expose_headers: header_names(&c.expose_headers, &["x-request-id"], diags),
        credentials: c.credentials,
        max_age: positive(&c.max_age, 600, "cors.max_age", diags),
    }
}

fn validate_security(
    s: Option<&file::SecurityHeadersFile>,
    diags: &mut Vec<Diagnostic>,
) -> SecurityHeaders {
    let Some(s) = s else {
        return SecurityHeaders::default();
    };
    let text = |v: &Option<Spanned<String>>,
                default: Option<&'static str>,
                diags: &mut Vec<Diagnostic>| match v {
        None => default.map(HeaderValue::from_static),
        Some(x) if x.get_ref().is_empty() => None,
        Some(x) => HeaderValue::from_str(x.get_ref())
            .map_err(|_| diags.push(Diagnostic::at(x, "not a valid header value")))
            .ok(),
    };
    let max_age = positive(&s.hsts_max_age, 31_536_000, "hsts_max_age", diags);
    let hsts = s.hsts.unwrap_or(true).then(|| {
        let v = if s.hsts_include_subdomains.unwrap_or(false) {
            format!("max-age={max_age}; includeSubDomains")
        } else {
            format!("max-age={max_age}")
        };
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("max-age=31536000"))
    });
    SecurityHeaders {
        hsts,
        content_type_options: s.content_type_options.unwrap_or(true),
        referrer_policy: text(
            &s.referrer_policy,
            Some("strict-origin-when-cross-origin"),
            diags,
        ),
        frame_options: text(&s.frame_options, None, diags),
    }
}

/// Parses one `hosts` entry.
pub fn parse_host_pattern(text: &str, tenancy: &Tenancy) -> Result<HostPattern, String> {
    if let Some(re) = text.strip_prefix('~') {
        let regex = regex::RegexBuilder::new(re)
            .case_insensitive(true)
            .build()
            .map_err(|e| {
                format!(
                    "invalid host regex `{re}`: {}",
                    e.to_string().lines().last().unwrap_or("")
                )
            })?;
        return Ok(HostPattern::Regex { regex });
    }
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix("*.") {
        if !is_hostname(suffix) {
            return Err(format!(
                "invalid wildcard host `{text}`: expected `*.` followed by a domain"
            ));
        }
        return Ok(HostPattern::Wildcard {
            suffix: suffix.to_string(),
        });
    }
    if lower.contains('*') {
        return Err(format!(
            "invalid host `{text}`: a wildcard may only be the whole first label (`*.example.com`)"
        ));
    }
    if !is_hostname(&lower) {
        return Err(format!("invalid host `{text}`: not a host name"));
    }
    let tenant = lower.split_once('.').and_then(|(label, rest)| {
        (tenancy.base_domains.iter().any(|b| b == rest) && !tenancy.reserved.contains(label))
            .then(|| label.to_string())
    });
    Ok(HostPattern::Exact {
        host: lower,
        tenant,
    })
}

/// A DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A host name of dot-separated labels (also accepts IPv4 literals); lowercase expected.
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            is_label(l)
                || (l.len() <= 63
                    && l.contains('_')
                    && l.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    }))
        })
}

/// Two routes are ambiguous when nothing about them ranks one over the other: same priority, same host
/// pattern, same path prefix, same header matchers and overlapping methods.
fn check_ambiguity(
    raw: &[RouteFile],
    routes: &[RouteSpec],
    complete: &[bool],
    diags: &mut Vec<Diagnostic>,
) {
    type Key = (Option<i64>, String, String, Vec<(String, Vec<u8>)>);
    let mut seen: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        if !complete[i] {
            continue;
        }
        let mut headers: Vec<(String, Vec<u8>)> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        headers.sort();
        let host_keys: Vec<String> = if r.hosts.is_empty() {
            vec!["<any>".to_string()]
        } else {
            r.hosts.iter().map(HostPattern::source).collect()
        };
        let mut reported = false;
        for host in host_keys {
            let key = (
                r.priority,
                host.clone(),
                r.path_prefix.clone(),
                headers.clone(),
            );
            let bucket = seen.entry(key).or_default();
            for &j in bucket.iter() {
                if !reported && methods_overlap(&routes[j].methods, &r.methods) {
                    diags.push(Diagnostic::at(
                        &raw[i].name,
                        format!(
                            "route `{}` is ambiguous with route `{}` (both match host `{host}` and path_prefix `{}` at the same priority); set `priority` or make `methods`/`headers` disjoint",
                            r.name, routes[j].name, r.path_prefix
                        ),
                    ));
                    reported = true;
                }
            }
            bucket.push(i);
        }
    }
}

fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        match Config::parse(Path::new("t.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.lines(),
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn reports_all_unknown_keys_with_suggestions() {
        let out = lines("[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[routes]]\nname = \"a\"\nhots = []\nupstraem = \"x\"\n");
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            out[0].starts_with(
                "t.toml:5:1: unknown key `hots` in `routes[0]` (did you mean `hosts`?)"
            ),
            "{out:?}"
        );
        assert!(
            out[1].starts_with("t.toml:6:1: unknown key `upstraem`"),
            "{out:?}"
        );
    }

    #[test]
    fn ambiguous_routes_are_an_error_unless_disjoint() {
        let base = "[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:2\"]\n";
        let amb = format!("{base}[[routes]]\nname = \"a\"\nhosts = [\"*.x.app\"]\nupstream = \"u\"\n[[routes]]\nname = \"b\"\nhosts = [\"*.X.app\"]\nupstream = \"u\"\n");
        let out = lines(&amb);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].contains("route `b` is ambiguous with route `a`"),
            "{out:?}"
        );
        let ok = format!("{base}[[routes]]\nname = \"a\"\nhosts = [\"*.x.app\"]\nmethods = [\"GET\"]\nupstream = \"u\"\n[[routes]]\nname = \"b\"\nhosts = [\"*.x.app\"]\nmethods = [\"POST\"]\nupstream = \"u\"\n");
        assert!(lines(&ok).is_empty());
    }
}
