//! Configuration: the file as written ([`file`]) is validated into the runtime [`Config`].
//!
//! Loading never panics and collects every error before reporting; each error points at `file:line:col`.

mod auth;
pub mod dns01;
pub mod duration;
#[macro_use]
mod schema;
pub mod file;
pub mod rate_limits;
mod routes;
pub mod tls;
mod upstreams;

use auth::validate_jwt;
pub use auth::*;
pub use dns01::{DnsProvider, Rfc2136, TsigAlgorithm};
pub use routes::*;
use routes::{check_ambiguity, validate_route, RouteContext};
use upstreams::validate_upstream;
pub use upstreams::*;

pub use rate_limits::{FailMode, KeyPart, Rate, RateLimitSpec, Scope};
pub use tls::{AcmeSettings, ChallengeKind, OnDemandSettings, StorageKind, TlsSettings};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use duration::parse_duration;
use file::FileConfig;

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
/// Time given to in-flight requests on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// One problem in a config file, located by byte span.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    span: Option<Range<usize>>,
    message: String,
    /// A warning does not refuse the file (`gateway validate --strict` makes it an error).
    warning: bool,
}

impl Diagnostic {
    fn new(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            warning: false,
        }
    }
    fn at<T>(s: &Spanned<T>, message: impl Into<String>) -> Self {
        Self::new(Some(s.span()), message)
    }
    /// A warning at `span`.
    fn warn(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            ..Self::new(span, message)
        }
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

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP base address (`/v1/traces` is appended).
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Share of new traces recorded (a client's sampled flag decides for the traces it started).
    pub sample_ratio: f64,
}

/// The config in force now, for the systems beside the request path (ACME, on-demand TLS) that must
/// follow reloads without holding the whole gateway state (implemented by `runtime::state`).
pub trait Live: Send + Sync {
    /// The current config (one atomic load).
    fn config(&self) -> std::sync::Arc<Config>;
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    /// `FILE:LINE:COL: warning: …` lines: accepted, but worth an operator's look.
    pub warnings: Vec<String>,
    /// `[admin]`: who may use the admin listener.
    pub admin: AdminSettings,
    pub server: ServerSettings,
    pub entrypoints: Entrypoints,
    pub tenancy: Tenancy,
    pub limits: Limits,
    pub trusted_proxies: Vec<IpNet>,
    /// `[forwarding] underscores_in_headers`: whether request fields named with `_` go upstream.
    pub underscores_in_headers: bool,
    pub log: LogSettings,
    /// `[auth.jwt]`, when configured.
    pub jwt: Option<JwtSettings>,
    /// `[auth.api_keys]`, when configured.
    pub api_keys: Option<ApiKeySettings>,
    /// `[redis]`, when configured (restart needed to change).
    pub redis: Option<RedisSettings>,
    /// `[dns]`: resolution of upstream servers given as host names.
    pub dns: DnsSettings,
    /// `[tenant_stats]`.
    pub tenant_stats: TenantStatsSettings,
    /// `[tracing]`: OpenTelemetry export, when configured (restart needed to change).
    pub tracing: Option<TracingSettings>,
    /// `[tls]`, when configured (then `entrypoints.https` is set too).
    pub tls: Option<TlsSettings>,
    /// `[rate_limits.*]`, by index (routes refer to them by index).
    pub rate_limits: Vec<RateLimitSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
}

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

/// How often upstream host names are resolved again unless `[dns] refresh` says otherwise.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// How long one DNS query may take unless `[dns] timeout` says otherwise.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Validated `[dns]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Name servers to ask (UDP, then TCP on truncation); empty: the system's (`/etc/resolv.conf`,
    /// with its search domains, as Docker and Kubernetes set them).
    pub nameservers: Vec<SocketAddr>,
    pub refresh: Duration,
    pub timeout: Duration,
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

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    /// One work-stealing runtime for all threads instead of one single-threaded runtime per thread.
    pub work_stealing: bool,
    /// One service per thread, each with its own `SO_REUSEPORT` listening sockets, runtime and upstream
    /// connection pool: a connection and its upstream connections stay on the thread that accepted it.
    pub reuseport: bool,
    pub shutdown_grace: Duration,
    /// The Unix socket over which a running gateway hands its listening sockets to its successor.
    pub upgrade_sock: std::path::PathBuf,
}

/// `[server] reuseport` when the file does not say (README, Multi-core: the figures behind it).
pub const DEFAULT_REUSEPORT: bool = true;

/// The directory of the hand-over socket when neither `[server] upgrade_sock` nor `$RUNTIME_DIRECTORY`
/// (systemd's `RuntimeDirectory=`) says otherwise. Never a directory others can write to: whoever can
/// bind the socket's path first receives the listening sockets at the next upgrade.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/aggios-edge";

/// Where the listening sockets are handed over on a zero-downtime upgrade, unless `[server] upgrade_sock`
/// says otherwise: `upgrade.sock` in `$RUNTIME_DIRECTORY` (its first entry), else in
/// [`DEFAULT_RUNTIME_DIR`].
pub fn default_upgrade_sock() -> std::path::PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| s.starts_with('/'))
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    dir.join("upgrade.sock")
}

/// Why the hand-over socket's directory cannot be trusted, if it exists: another user could bind the
/// socket's path before the new process, or replace it. `None` when it is ours and private (or absent:
/// `gateway run` creates it, mode 0700).
pub fn upgrade_dir_problem(sock: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = sock.parent().filter(|_| sock.is_absolute()) else {
        return Some(format!(
            "server.upgrade_sock {} must be an absolute path in a private directory",
            sock.display()
        ));
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            return Some(format!(
                "server.upgrade_sock: cannot check {}: {e}",
                dir.display()
            ))
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        Some(format!(
            "server.upgrade_sock: {} is not a directory (a link is refused too)",
            dir.display()
        ))
    } else if meta.uid() != me {
        Some(format!(
            "server.upgrade_sock: the directory {} belongs to uid {}, not to this user (uid {me}): \
             its owner could take the listening sockets at the next upgrade",
            dir.display(),
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "server.upgrade_sock: the directory {} is writable by others (mode {:o}): another user \
             could bind the socket first and take the listening sockets; use a private directory \
             (mode 0700), e.g. {DEFAULT_RUNTIME_DIR}",
            dir.display(),
            meta.mode() & 0o7777
        ))
    } else {
        None
    }
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
    /// An HTTP/2 connection with no open stream is closed after this (restart needed).
    pub h2_idle_timeout: Duration,
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
        let (warnings, errors): (Vec<Diagnostic>, Vec<Diagnostic>) =
            diags.into_iter().partition(|d| d.warning);
        let mut errors = errors;
        if errors.is_empty() {
            if let Some(mut c) = config {
                c.warnings = render(path, text, warnings);
                return Ok(c);
            }
            errors.push(Diagnostic::new(None, "invalid configuration"));
        }
        Err(ConfigError::Invalid(render(path, text, errors)))
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
        if self.limits.h2_idle_timeout != new.limits.h2_idle_timeout {
            out.push("limits.h2_idle_timeout changed; it takes effect on restart".to_string());
        }
        let redis_storage = |c: &Config| {
            c.tls
                .as_ref()
                .and_then(|t| t.acme.as_ref())
                .is_some_and(|a| a.storage.dir().is_none())
        };
        if redis_storage(self) != redis_storage(new) {
            out.push("[tls.acme] storage changed between a directory and redis; it takes effect on restart".to_string());
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
            let kind = if d.warning { "warning: " } else { "" };
            format!("{}:{}:{}: {kind}{}", path.display(), line, col, d.message)
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

/// The message of a file that a TOML parser panicked on.
const PARSER_FAILED: &str =
    "the TOML parser failed on this file (an internal error of the parser); nothing was loaded";

/// Runs a third-party TOML parser: toml_edit 0.23 panics on some malformed files (found by fuzzing:
/// "all items have spans"), and a bad file must be an error, never a crash of the gateway or of its
/// reloader. Only the parsers' calls are guarded; a panic in our own code stays a bug that shows.
fn guarded<T>(parse: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).ok()
}

fn parse_inner(path: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Option<Config> {
    let Some(parsed) = guarded(|| toml_edit::Document::parse(text)) else {
        diags.push(Diagnostic::new(None, PARSER_FAILED));
        return None;
    };
    let doc = match parsed {
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
    let Some(parsed) = guarded(|| toml::from_str::<FileConfig>(text)) else {
        diags.push(Diagnostic::new(None, PARSER_FAILED));
        return None;
    };
    let raw: FileConfig = match parsed {
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

/// An enumerated value: the choice `value` names, or a diagnostic at `span` listing every allowed
/// spelling (`{what} \`{value}\` is not one of a, b, c{note}`) and `None`.
pub(super) fn pick<T: Copy>(
    value: &str,
    span: Range<usize>,
    what: &str,
    choices: &[(&str, T)],
    note: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
        return Some(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    diags.push(Diagnostic::new(
        Some(span),
        format!("{what} `{value}` is not one of {}{note}", names.join(", ")),
    ));
    None
}

/// An optional enumerated key: the first choice when absent or invalid (invalid is also a diagnostic,
/// see [`pick`]).
pub(super) fn one_of<T: Copy>(
    v: &Option<Spanned<String>>,
    what: &str,
    choices: &[(&str, T)],
    note: &str,
    diags: &mut Vec<Diagnostic>,
) -> T {
    let default = choices[0].1;
    match v {
        None => default,
        Some(s) => pick(s.get_ref(), s.span(), what, choices, note, diags).unwrap_or(default),
    }
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

/// `[server] reuseport`: on unless set to false; it cannot go with one work-stealing pool (that pool is
/// one runtime, where `reuseport` makes one per thread).
fn reuseport(server: &file::ServerFile, diags: &mut Vec<Diagnostic>) -> bool {
    match &server.reuseport {
        Some(r) if *r.get_ref() && server.work_stealing == Some(true) => {
            diags.push(Diagnostic::at(
                r,
                "server.reuseport = true gives each thread its own runtime; it cannot go with \
                 server.work_stealing = true (set one of them to false)",
            ));
            false
        }
        Some(r) => *r.get_ref(),
        None => DEFAULT_REUSEPORT && server.work_stealing != Some(true),
    }
}

/// `[server] upgrade_sock`, or the default; refused when its directory is not private.
fn upgrade_sock(server: &file::ServerFile, diags: &mut Vec<Diagnostic>) -> std::path::PathBuf {
    let sock = server
        .upgrade_sock
        .as_ref()
        .map_or_else(default_upgrade_sock, |s| s.get_ref().into());
    if let Some(problem) = upgrade_dir_problem(&sock) {
        diags.push(Diagnostic::new(
            server.upgrade_sock.as_ref().map(|s| s.span()),
            problem,
        ));
    }
    sock
}

/// The addresses `authority` (`HOST:PORT`) stands for without asking DNS: an IP literal, `localhost`
/// and `*.localhost` (loopback, RFC 6761), or a name in `/etc/hosts`. Empty for anything else.
fn local_addrs(authority: &str) -> Vec<SocketAddr> {
    if let Ok(a) = authority.parse::<SocketAddr>() {
        return vec![a];
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Vec::new();
    };
    let Ok(port) = port.parse::<u16>() else {
        return Vec::new();
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ips: Vec<std::net::IpAddr> = if host == "localhost" || host.ends_with(".localhost") {
        vec![
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ]
    } else {
        std::fs::read_to_string("/etc/hosts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let l = l.split('#').next()?;
                let mut f = l.split_whitespace();
                let ip = f.next()?.parse::<std::net::IpAddr>().ok()?;
                f.any(|n| n.eq_ignore_ascii_case(&host)).then_some(ip)
            })
            .collect()
    };
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Whether a connection to `a` may reach the listener at `b`: the same address, or both on this
/// machine (loopback or unspecified) with the same port.
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
    a == b || (a.port() == b.port() && local(a.ip()) && local(b.ip()))
}

fn validate(path: &Path, raw: FileConfig, diags: &mut Vec<Diagnostic>) -> Config {
    let server = ServerSettings {
        threads: positive(&raw.server.threads, 1, "server.threads", diags) as usize,
        work_stealing: raw.server.work_stealing.unwrap_or(false),
        reuseport: reuseport(&raw.server, diags),
        shutdown_grace: duration_or(&raw.server.shutdown_grace, DEFAULT_SHUTDOWN_GRACE, diags),
        upgrade_sock: upgrade_sock(&raw.server, diags),
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
        h2_idle_timeout: duration_or(&raw.limits.h2_idle_timeout, DEFAULT_H2_IDLE_TIMEOUT, diags),
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
        format: one_of(
            &raw.log.format,
            "log.format:",
            &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
            "",
            diags,
        ),
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
        failures_per_minute: positive(
            &a.failures_per_minute,
            u64::from(DEFAULT_API_KEY_FAILURES_PER_MINUTE),
            "failures_per_minute",
            diags,
        )
        .min(u64::from(u32::MAX)) as u32,
    });
    let rate_limits = rate_limits::validate(&raw.rate_limits, diags);
    let tracing = raw.tracing.as_ref().and_then(|t| {
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
    });
    let ts = raw.tenant_stats.as_ref();
    let tenant_stats = TenantStatsSettings {
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
    };
    let dns = DnsSettings {
        nameservers: raw
            .dns
            .as_ref()
            .and_then(|d| d.nameservers.as_ref())
            .map(|list| {
                list.get_ref()
                    .iter()
                    .filter_map(|n| {
                        let text = n.get_ref();
                        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                            text.parse::<std::net::IpAddr>()
                                .ok()
                                .map(|ip| SocketAddr::new(ip, 53))
                        });
                        if parsed.is_none() {
                            diags.push(Diagnostic::at(
                                n,
                                format!(
                                    "dns.nameservers: `{text}` is not an IP or IP:port address"
                                ),
                            ));
                        }
                        parsed
                    })
                    .collect()
            })
            .unwrap_or_default(),
        refresh: duration_or(
            &raw.dns.as_ref().and_then(|d| d.refresh.clone()),
            DEFAULT_DNS_REFRESH,
            diags,
        ),
        timeout: duration_or(
            &raw.dns.as_ref().and_then(|d| d.timeout.clone()),
            DEFAULT_DNS_TIMEOUT,
            diags,
        ),
    };
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
    routes::warn_policy_gaps(&raw.routes, &routes, diags);
    // The backend's internal listener (API-key lookups, on-demand asks) must not sit in a public upstream.
    let internal: Vec<SocketAddr> = api_keys
        .iter()
        .map(|a| a.lookup_url.as_str())
        .chain(
            tls.iter()
                .flat_map(|t| t.on_demand.iter().map(|o| o.ask.as_str())),
        )
        .filter_map(|url| {
            let authority = url.split("://").nth(1)?.split('/').next()?;
            Some(local_addrs(authority))
        })
        .flatten()
        .collect();
    for (u, spec) in raw.upstreams.iter().zip(&upstreams) {
        if let Some(s) = spec.servers.iter().find(|s| {
            let addrs = match &s.target {
                ServerTarget::Addr(a) => vec![*a],
                ServerTarget::Name { host, port } => local_addrs(&format!("{host}:{port}")),
            };
            addrs
                .iter()
                .any(|a| internal.iter().any(|i| same_listener(*a, *i)))
        }) {
            diags.push(Diagnostic::warn(
                Some(u.name.span()),
                format!(
                    "upstream `{}` contains {}, the backend's internal listener (API-key lookups, tenant-domain asks): routes would expose it",
                    spec.name, s.label
                ),
            ));
        }
    }

    let admin = validate_admin(
        &raw.admin,
        entrypoints.admin,
        raw.entrypoints.admin.as_ref().map(Spanned::span),
        diags,
    );
    Config {
        source: path.to_path_buf(),
        warnings: Vec::new(),
        admin,
        server,
        entrypoints,
        tenancy,
        limits,
        trusted_proxies,
        underscores_in_headers: raw
            .forwarding
            .underscores_in_headers
            .as_ref()
            .is_some_and(|v| *v.get_ref()),
        log,
        jwt,
        api_keys,
        redis,
        dns,
        tenant_stats,
        tracing,
        tls,
        rate_limits,
        upstreams,
        routes,
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

    /// A crash of the `config` fuzz target, kept: toml_edit panicked on it ("all items have spans").
    #[test]
    fn a_file_the_toml_parser_panics_on_is_an_error() {
        let text = std::str::from_utf8(include_bytes!(
            "../../../fuzz/corpus/config/crash-9cb6a0c7628878dcf57adfc706390d9aade748d9"
        ))
        .expect("utf-8");
        let out = lines(text);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("t.toml:1:1: the TOML parser failed"),
            "{out:?}"
        );
    }

    /// Found replaying the `config` corpus in a debug build: a host regex of stacked repetitions
    /// (`$$…***…???…`) made the regex parser recurse past a 2 MiB thread stack. Nesting is now capped.
    #[test]
    fn a_deeply_nested_host_regex_is_an_error_not_a_stack_overflow() {
        let deep = format!("~a{}", "*".repeat(200));
        let out = lines(&format!(
            "[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nhosts = ['{deep}']\nupstream = \"u\"\n"
        ));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("t.toml:8:10: invalid host regex") && out[0].contains("nested"),
            "{out:?}"
        );
        let text = std::str::from_utf8(include_bytes!(
            "../../../fuzz/corpus/config/80fe5ac196a06ec1848d91c78df42346a839c18a"
        ))
        .expect("utf-8");
        assert!(!lines(text).is_empty());
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

/// `[admin]`, validated.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Host names (besides the listener's own address) that requests may name in `Host`.
    pub names: Vec<String>,
    /// A bearer token every endpoint but `/healthz` and `/readyz` requires. Never in `Debug` output.
    pub token: Option<AdminToken>,
}

/// The admin bearer token.
#[derive(Clone)]
pub struct AdminToken(pub Vec<u8>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn validate_admin(
    a: &file::AdminFile,
    listener: Option<SocketAddr>,
    listener_at: Option<Range<usize>>,
    diags: &mut Vec<Diagnostic>,
) -> AdminSettings {
    let mut names = Vec::new();
    for n in &a.names {
        let v = n.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if is_hostname(&v) {
            names.push(v);
        } else {
            diags.push(Diagnostic::at(
                n,
                format!("admin.names: `{}` is not a host name", n.get_ref()),
            ));
        }
    }
    let token = a
        .token_env
        .as_ref()
        .and_then(|t| match std::env::var(t.get_ref()) {
            Ok(v) if v.trim().len() >= 16 => Some(AdminToken(v.trim().as_bytes().to_vec())),
            Ok(_) => {
                diags.push(Diagnostic::at(
                    t,
                    format!("`{}` must hold at least 16 characters", t.get_ref()),
                ));
                None
            }
            Err(_) => {
                diags.push(Diagnostic::at(
                    t,
                    format!("environment variable `{}` is not set", t.get_ref()),
                ));
                None
            }
        });
    if let Some(addr) = listener {
        if !addr.ip().is_loopback() && a.token_env.is_none() {
            diags.push(Diagnostic::warn(
                listener_at,
                format!("entrypoints.admin {addr} is beyond loopback and [admin] has no token_env: anyone who reaches it reads the metrics, routes and certificates"),
            ));
        }
    }
    AdminSettings { names, token }
}
