//! Configuration: the file as written ([`file`]) is validated into the runtime [`Config`].
//!
//! Loading never panics and collects every error before reporting; each error points at `file:line:col`.

//! One file per section, each with its own validation; this module only assembles them and runs the
//! checks that span sections (route names and ambiguity, the internal listener in a public upstream).

mod admin;
mod auth;
mod diag;
mod dns;
pub mod dns01;
pub mod duration;
#[macro_use]
mod schema;
pub mod file;
mod forwarding;
pub mod h3;
mod limits;
mod log;
mod overload;
pub mod plans;
pub mod rate_limits;
mod redis;
mod routes;
mod server;
mod tenancy;
mod tenant_stats;
pub mod tls;
mod tracing;
mod upstream_tls;
mod upstreams;

pub use admin::*;
pub use auth::*;
use auth::{validate_api_keys, validate_jwt};
pub use diag::*;
pub use dns::*;
pub use dns01::{DnsProvider, Rfc2136, TsigAlgorithm};
pub use limits::*;
pub use log::*;
pub use overload::*;
pub use redis::*;
pub use routes::*;
use routes::{check_ambiguity, validate_route, RouteContext};
pub use server::*;
pub use tenancy::*;
pub use tenant_stats::*;
pub use tracing::*;
pub use upstream_tls::UpstreamTls;
use upstreams::validate_upstream;
pub use upstreams::*;

pub use rate_limits::{FailMode, KeyPart, Rate, RateLimitSpec, Scope};
pub use tls::{AcmeSettings, ChallengeKind, OnDemandSettings, StorageKind, TlsSettings};

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use toml::Spanned;

use file::FileConfig;

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
    /// `[entrypoints] proxy_protocol.from`: the balancers whose connections start with a PROXY protocol
    /// header (v1 or v2) naming the client; `None`: off. Reloadable (read at each accept).
    pub proxy_protocol: Option<Vec<IpNet>>,
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
    /// Admission to upstreams under load (`[overload]`, on by default).
    pub overload: OverloadSettings,
    /// `[tls]`, when configured (then `entrypoints.https` is set too).
    pub tls: Option<TlsSettings>,
    /// `[h3]`: the HTTP/3 entrypoint's settings (defaults when absent; used only with `entrypoints.h3`).
    pub h3: h3::H3Settings,
    /// `[plans]`, when configured.
    pub plans: Option<plans::PlanSettings>,
    /// `[rate_limits.*]`, by index (routes refer to them by index); with `[plans]`, the built-in
    /// `plan` policy last.
    pub rate_limits: Vec<RateLimitSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
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
        let h3_listener = |c: &Config| h3::H3Settings {
            alt_svc_max_age: None,
            ..c.h3.clone()
        };
        if h3_listener(self) != h3_listener(new) {
            out.push(
                "[h3] limits changed; they take effect on restart (alt_svc_max_age at once)"
                    .to_string(),
            );
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
    schema::check_keys(doc.as_table(), <FileConfig as schema::Shaped>::SHAPE, diags);
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
    let server = server::validate_server(&raw.server, diags);
    let entrypoints = server::validate_entrypoints(&raw.entrypoints, diags);
    let proxy_protocol = raw.entrypoints.proxy_protocol.as_ref().map(|pp| {
        let from = routes::ip_list(&Some(pp.get_ref().from.clone()), diags);
        if from.is_empty() {
            diags.push(Diagnostic::at(
                pp,
                "proxy_protocol.from must name the balancers that send the header (CIDRs or addresses); nobody else is believed",
            ));
        }
        from
    });
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
    let tenancy = tenancy::validate_tenancy(&raw.tenancy, diags);
    let limits = limits::validate_limits(&raw.limits, diags);
    let trusted_proxies = forwarding::validate_trusted_proxies(&raw.forwarding, diags);
    let log = log::validate_log(&raw.log, diags);
    let jwt = raw.auth.jwt.as_ref().map(|j| validate_jwt(path, j, diags));
    let api_keys = raw
        .auth
        .api_keys
        .as_ref()
        .map(|a| validate_api_keys(a, diags));
    let mut rate_limits = rate_limits::validate(&raw.rate_limits, diags);
    let plans = raw.plans.as_ref().map(|p| plans::validate_plans(p, diags));
    if let Some(p) = &plans {
        rate_limits.push(p.policy());
    }
    let tracing = tracing::validate_tracing(raw.tracing.as_ref(), diags);
    let tenant_stats = tenant_stats::validate_tenant_stats(raw.tenant_stats.as_ref(), diags);
    let dns = dns::validate_dns(raw.dns.as_ref(), diags);
    let redis = redis::validate_redis(raw.redis.as_ref(), diags);
    let overload = overload::validate_overload(raw.overload.as_ref(), diags);

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
    // gRPC-Web is bridged to gRPC, which is HTTP/2 only.
    for (r, spec) in raw.routes.iter().zip(&routes) {
        let (Some(flag), Some(up)) = (&r.grpc_web, &spec.upstream) else {
            continue;
        };
        let h2 = upstreams
            .iter()
            .find(|u| &u.name == up)
            .is_none_or(|u| matches!(u.protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2));
        if spec.grpc_web && !h2 {
            diags.push(Diagnostic::at(
                flag,
                format!("grpc_web bridges to gRPC, which needs an HTTP/2 upstream: set protocol = \"h2c\" or \"h2\" on upstream `{up}`"),
            ));
        }
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
        proxy_protocol,
        tenancy,
        limits,
        trusted_proxies,
        underscores_in_headers: forwarding::underscores_in_headers(&raw.forwarding),
        log,
        jwt,
        api_keys,
        redis,
        dns,
        tenant_stats,
        tracing,
        overload,
        tls,
        h3: h3::validate_h3(raw.h3.as_ref(), diags),
        plans,
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
    /// `[plans]`: the built-in `plan` limit needs the section, its name is reserved, and its keys are
    /// checked with their positions.
    #[test]
    fn plans_are_validated() {
        let base = "[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nhosts = [\"*.a.test\"]\nupstream = \"u\"\nrate_limits = [\"plan\"]\n";
        let out = lines(base);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("t.toml:10:16:") && out[0].contains("needs a [plans] section"),
            "{out:?}"
        );
        let plans =
            "[plans]\nlookup_url = \"http://127.0.0.1:8082/internal/tenant-policy/{tenant}\"\n";
        let ok = Config::parse(Path::new("t.toml"), &format!("{base}{plans}")).expect("valid");
        let p = ok
            .rate_limits
            .iter()
            .find(|r| r.plan)
            .expect("the built-in policy");
        assert_eq!(
            (p.name.as_str(), p.rate.limit),
            ("plan", 10),
            "the default plan's rate until known"
        );
        assert!(
            ok.routes[0].quota == ok.routes[0].auth.binds_tenant(),
            "default: tenant auth counts"
        );
        for (extra, at, says) in [
            ("[plans]\nlookup_url = \"http://x/no-placeholder\"\n", "t.toml:12:14:", "{tenant}"),
            ("[plans]\nlookup_url = \"http://x/{tenant}\"\non_policy_error = \"open\"\n", "t.toml:13:19:", "never unlimited"),
            ("[plans]\nlookup_url = \"http://x/{tenant}\"\ncache_ttl = \"1h\"\n", "t.toml:13:13:", "at most 5m"),
            ("[plans]\nlookup_url = \"http://x/{tenant}\"\ndefault = { requests_per_second = 0 }\n", "t.toml:13:", "requests_per_second"),
            ("[plans]\nlookup_url = \"http://x/{tenant}\"\n[rate_limits.plan]\nkey = \"tenant\"\nlimit = 1\nperiod = \"1s\"\n", "t.toml:15:", "built in"),
        ] {
            let out = lines(&format!("{base}{extra}"));
            assert!(out.iter().any(|l| l.starts_with(at) && l.contains(says)), "{extra}: {out:?}");
        }
    }

    /// `allow_ips` / `deny_ips`: CIDRs and addresses of both families, bad entries named where they are;
    /// deny wins, an IPv4-mapped client is its IPv4 address, an unknown address only passes without an
    /// allow list.
    #[test]
    fn client_address_lists_are_validated_and_decide() {
        let route = |lists: &str| {
            format!(
                "[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n{lists}\n"
            )
        };
        let ok = Config::parse(
            Path::new("t.toml"),
            &route("allow_ips = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\ndeny_ips = [\"10.66.0.1/16\"]"),
        )
        .expect("valid");
        let access = &ok.routes[0].ip_access;
        assert_eq!(
            access.deny[0].to_string(),
            "10.66.0.0/16",
            "host bits dropped"
        );
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().expect("ip"));
        assert!(access.admits(ip("10.1.2.3")));
        assert!(access.admits(ip("::ffff:10.1.2.3")));
        assert!(access.admits(ip("2001:db8::1")));
        assert!(access.admits(ip("192.0.2.7")));
        assert!(!access.admits(ip("192.0.2.8")));
        assert!(!access.admits(ip("10.66.9.9")), "deny wins");
        assert!(!access.admits(ip("2001:db9::1")));
        assert!(!access.admits(None));
        let open = crate::config::IpAccess {
            allow: vec![],
            deny: vec!["192.0.2.0/24".parse().expect("net")],
        };
        assert!(
            open.admits(None) && open.admits(ip("::1")) && !open.admits(ip("::ffff:192.0.2.1"))
        );
        // A route chosen by its method matcher over a listed route must not open a way around it.
        let outranked = Config::parse(
            Path::new("t.toml"),
            &format!(
                "{}[[routes]]\nname = \"r-get\"\nmethods = [\"GET\"]\npriority = 10\nupstream = \"u\"\n",
                route("allow_ips = [\"10.0.0.0/8\"]")
            ),
        )
        .expect("valid, with a warning");
        assert!(
            outranked
                .warnings
                .iter()
                .any(|w| w.contains("route `r-get`") && w.contains("client-address lists")),
            "{:?}",
            outranked.warnings
        );
        for (lists, at, says) in [
            (
                "allow_ips = [\"10.0.0.0/33\"]",
                "t.toml:9:14:",
                "not an IP address or a CIDR",
            ),
            (
                "deny_ips = [\"1.2.3.4\", \"nope\"]",
                "t.toml:9:24:",
                "`nope`",
            ),
            (
                "allow_ips = [\"::ffff:10.0.0.0/104\"]",
                "t.toml:9:14:",
                "IPv4-mapped",
            ),
            (
                "deny_ips = [\"10.0.0.0/8\", \"10.0.0.0/8\"]",
                "t.toml:9:27:",
                "listed twice",
            ),
        ] {
            let out = lines(&route(lists));
            assert!(
                out.iter().any(|l| l.starts_with(at) && l.contains(says)),
                "{lists}: {out:?}"
            );
        }
    }

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

    /// `[overload]` and an upstream's `concurrency` have safe defaults; nonsense is refused with its place.
    #[test]
    fn overload_settings_default_safely_and_refuse_nonsense() {
        let base = "[entrypoints]\nhttp = \"127.0.0.1:1\"\n";
        let up = |c: &str| {
            format!("{base}[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:2\"]\n{c}\n")
        };
        let c = Config::parse(Path::new("t.toml"), &up("")).expect("valid");
        assert_eq!(c.overload, OverloadSettings::default());
        assert_eq!(
            c.overload.queue_timeout,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(c.upstreams[0].concurrency, ConcurrencySpec::default());
        assert!(c.upstreams[0].concurrency.adaptive);
        let fixed = Config::parse(
            Path::new("t.toml"),
            &up("concurrency = { max = 7, adaptive = false }"),
        )
        .expect("valid");
        assert_eq!(fixed.upstreams[0].concurrency.max, 7);
        for (bad, why) in [
            ("concurrency = { min = 0 }", "between 1 and"),
            ("concurrency = { max = -3 }", "between 1 and"),
            (
                "concurrency = { min = 50, max = 10 }",
                "min (50) is above max (10)",
            ),
            (
                "concurrency = { min = 5, adaptive = false }",
                "adaptive limit only",
            ),
            ("concurrency = { maxx = 5 }", "unknown key `maxx`"),
        ] {
            let out = lines(&up(bad));
            assert!(
                out.iter()
                    .any(|l| l.starts_with("t.toml:6:") && l.contains(why)),
                "{bad}: {out:?}"
            );
        }
        for (bad, why) in [
            ("queue_timeout = \"0s\"", "greater than zero"),
            ("queue_timeout = \"5m\"", "at most 30s"),
            ("queue_size = 0", "positive integer"),
            ("max_connections = 0", "positive integer"),
            ("core_delay_target = \"0ms\"", "greater than zero"),
            ("core_delay_target = \"2s\"", "at most 1s"),
            ("core_delay_target = \"fast\"", "expected a number"),
            ("core_backpressure = \"yes\"", "invalid type"),
            (
                "max_connections = 10\nper_client_connections = 20",
                "per_client_connections (20) is above max_connections (10)",
            ),
        ] {
            let out = lines(&format!("{base}[overload]\n{bad}\n"));
            assert!(
                out.iter()
                    .any(|l| l.starts_with("t.toml:") && l.contains(why)),
                "{bad}: {out:?}"
            );
        }
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
