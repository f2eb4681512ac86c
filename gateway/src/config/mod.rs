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
    local_addrs_in(
        authority,
        &std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
    )
}

/// [`local_addrs`] with the hosts file's text given.
fn local_addrs_in(authority: &str, hosts_file: &str) -> Vec<SocketAddr> {
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
        hosts_file
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

/// The whole-file rules of `validate` and what a reload reports (the mutation run of #32: each with
/// its own message and place, and each setting a reload cannot change on its own).
#[cfg(test)]
mod file_rule_tests {
    use super::*;

    const BASE: &str = "[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:2\"]\n";

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text)
            .unwrap_or_else(|e| panic!("{text}\n{}", e.lines().join("\n")))
    }

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(Path::new("t.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.lines(),
        }
    }

    #[test]
    fn names_are_unique() {
        let out = errors(&format!(
            "{BASE}[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:3\"]\n"
        ));
        assert_eq!(out, ["t.toml:7:8: duplicate upstream name `u`"]);
        let route = |name: &str, host: &str| {
            format!("[[routes]]\nname = \"{name}\"\nhosts = [\"{host}\"]\nupstream = \"u\"\n")
        };
        let out = errors(&format!(
            "{BASE}{}{}",
            route("r", "a.test"),
            route("r", "b.test")
        ));
        assert_eq!(out, ["t.toml:11:8: duplicate route name `r`"]);
        let ok = parse(&format!(
            "{BASE}{}{}",
            route("r", "a.test"),
            route("s", "b.test")
        ));
        assert_eq!(ok.routes.len(), 2);
    }

    #[test]
    fn grpc_web_needs_an_http2_upstream() {
        let with = |protocol: &str| {
            format!(
                "[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"g\"\nservers = [\"127.0.0.1:2\"]\n{protocol}\n[[routes]]\nname = \"r\"\nupstream = \"g\"\ngrpc_web = true\n"
            )
        };
        let out = errors(&with(""));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with(
                "t.toml:10:12: grpc_web bridges to gRPC, which needs an HTTP/2 upstream"
            ) && out[0].ends_with("on upstream `g`"),
            "{out:?}"
        );
        assert!(parse(&with("protocol = \"h2c\"")).routes[0].grpc_web);
        assert!(parse(&with("protocol = \"h2\"")).routes[0].grpc_web);
        // Off: no HTTP/2 needed.
        let off = with("").replace("grpc_web = true", "grpc_web = false");
        assert!(!parse(&off).routes[0].grpc_web);
    }

    #[test]
    fn entrypoint_rules() {
        let out = errors("[entrypoints]\nhttp = \"127.0.0.1:1\"\nproxy_protocol = { from = [] }\n");
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("t.toml:3:18: proxy_protocol.from must name the balancers"),
            "{out:?}"
        );
        let c = parse(
            "[entrypoints]\nhttp = \"127.0.0.1:1\"\nproxy_protocol = { from = [\"10.0.0.0/8\"] }\n",
        );
        assert_eq!(
            c.proxy_protocol,
            Some(vec!["10.0.0.0/8".parse::<IpNet>().expect("net")])
        );
        assert_eq!(parse(BASE).proxy_protocol, None);
        assert_eq!(
            errors("[entrypoints]\nhttp = \"127.0.0.1:1\"\nhttps = \"127.0.0.1:2\"\n"),
            ["t.toml:3:9: entrypoints.https needs [tls] (certificate files or [tls.acme])"]
        );
    }

    #[test]
    fn an_upstream_holding_the_backends_internal_listener_is_warned_about() {
        let keys =
            "[auth.api_keys]\nlookup_url = \"http://127.0.0.1:8082/internal/api-keys/{prefix}\"\n";
        let up = |servers: &str| {
            format!("[entrypoints]\nhttp = \"127.0.0.1:1\"\n{keys}[[upstreams]]\nname = \"pub\"\nservers = [{servers}]\n")
        };
        let warned = |servers: &str| {
            let c = parse(&up(servers));
            c.warnings
                .iter()
                .filter(|w| w.contains("the backend's internal listener"))
                .cloned()
                .collect::<Vec<_>>()
        };
        let w = warned("\"127.0.0.1:9\", \"127.0.0.1:8082\"");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("t.toml:6:8: warning: upstream `pub` contains 127.0.0.1:8082"),
            "{w:?}"
        );
        // By name (loopback), and on an address that reaches the same loopback listener.
        assert_eq!(warned("\"localhost:8082\"").len(), 1);
        assert_eq!(warned("\"[::1]:8082\"").len(), 1);
        // Another port, or another machine's address with that port: not the listener.
        assert!(warned("\"127.0.0.1:8083\"").is_empty());
        assert!(warned("\"10.0.0.5:8082\"").is_empty());
        // Without API keys (nor on-demand asks) there is no internal listener to find.
        let plain = BASE.replace("127.0.0.1:2", "127.0.0.1:8082");
        assert!(
            parse(&plain).warnings.is_empty(),
            "{:?}",
            parse(&plain).warnings
        );
    }

    #[test]
    fn local_addresses_without_dns() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let hosts = "127.0.1.1 box.example box # this machine\n::1 ip6-localhost\n# 10.9.9.9 box\n10.0.0.7 other\nnot-an-ip box\n";
        assert_eq!(local_addrs_in("10.1.2.3:80", hosts), [a("10.1.2.3:80")]);
        assert_eq!(local_addrs_in("[::1]:80", hosts), [a("[::1]:80")]);
        let loopback = [a("127.0.0.1:81"), a("[::1]:81")];
        assert_eq!(local_addrs_in("localhost:81", hosts), loopback);
        assert_eq!(local_addrs_in("LocalHost.:81", hosts), loopback);
        assert_eq!(local_addrs_in("api.localhost:81", hosts), loopback);
        assert_eq!(local_addrs_in("BOX:82", hosts), [a("127.0.1.1:82")]);
        assert_eq!(
            local_addrs_in("box.example.:82", hosts),
            [a("127.0.1.1:82")]
        );
        assert_eq!(local_addrs_in("ip6-localhost:83", hosts), [a("[::1]:83")]);
        for none in [
            "other-box:80",
            "notlocalhost:80",
            "box",
            "box:http",
            "box:70000",
            "10.9.9.9:80x",
        ] {
            assert_eq!(local_addrs_in(none, hosts), [], "{none}");
        }
    }

    #[test]
    fn same_listener_is_one_address_or_one_local_port() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        for (x, y) in [
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("127.0.0.1:80", "0.0.0.0:80"),
            ("[::]:80", "127.0.0.2:80"),
            ("[::1]:80", "127.0.0.1:80"),
        ] {
            assert!(same_listener(a(x), a(y)), "{x} {y}");
            assert!(same_listener(a(y), a(x)), "{y} {x}");
        }
        for (x, y) in [
            ("127.0.0.1:80", "127.0.0.1:81"),
            ("10.0.0.1:80", "127.0.0.1:80"),
            ("127.0.0.1:80", "10.0.0.1:80"),
            ("10.0.0.1:80", "10.0.0.2:80"),
        ] {
            assert!(!same_listener(a(x), a(y)), "{x} {y}");
        }
    }

    #[test]
    fn summary_and_error_lines() {
        let c = parse(&format!(
            "{BASE}[[upstreams]]\nname = \"v\"\nservers = [\"127.0.0.1:3\", \"127.0.0.1:4\"]\n[[routes]]\nname = \"r\"\nupstream = \"v\"\n"
        ));
        assert_eq!(
            c.summary(),
            "t.toml: ok: 1 routes, 2 upstreams (3 servers), http 127.0.0.1:1, https off, admin off"
        );
        let missing = Path::new("/nonexistent/aggios/gateway.toml");
        let e = Config::load(missing).expect_err("no such file");
        let lines = e.lines();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("/nonexistent/aggios/gateway.toml: cannot read: "),
            "{lines:?}"
        );
        let two = errors("[entrypoints]\nhttp = \"x\"\nhttps = \"y\"\n");
        assert!(two.len() >= 2, "{two:?}");
        assert_eq!(
            Config::parse(
                Path::new("t.toml"),
                "[entrypoints]\nhttp = \"x\"\nhttps = \"y\"\n"
            )
            .expect_err("bad")
            .to_string(),
            two.join("\n")
        );
    }

    #[test]
    fn a_reload_names_each_setting_that_needs_a_restart() {
        let base = parse(BASE);
        assert_eq!(base.restart_needed(&parse(BASE)), Vec::<String>::new());
        let after = |extra: &str| base.restart_needed(&parse(&format!("{BASE}{extra}")));
        let only = |extra: &str, says: &str| {
            let out = after(extra);
            assert_eq!(out.len(), 1, "{extra}: {out:?}");
            assert!(out[0].starts_with(says), "{extra}: {out:?}");
        };
        only(
            "[limits]\nh2_idle_timeout = \"17s\"\n",
            "limits.h2_idle_timeout changed",
        );
        only("[h3]\nmax_connections_per_ip = 3\n", "[h3] limits changed");
        only("[server]\nthreads = 3\n", "[server] changed");
        only("[log]\nformat = \"pretty\"\n", "[log] format/level changed");
        only("[log]\nlevel = \"debug\"\n", "[log] format/level changed");
        // Read per response or per request: no restart.
        assert_eq!(
            after("[h3]\nalt_svc_max_age = \"1h\"\n"),
            Vec::<String>::new()
        );
        assert_eq!(after("[log]\naccess_log = false\n"), Vec::<String>::new());
        let moved = parse(&BASE.replace("127.0.0.1:1", "127.0.0.1:9"));
        let out = base.restart_needed(&moved);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].starts_with("entrypoints changed ("), "{out:?}");
        // [redis]'s URL comes from the environment: set here on copies. None to one, one to another:
        // changed; the same URL with another timeout (read at each connection): nothing.
        let redis = |url: &str, timeout: u64| {
            let mut c = base.clone();
            c.redis = Some(RedisSettings {
                url: url.into(),
                cluster: false,
                ca_pem: None,
                timeout: std::time::Duration::from_secs(timeout),
                revocation_cache: std::time::Duration::from_secs(1),
            });
            c
        };
        let r1 = redis("redis://127.0.0.1:6379", 1);
        for (a, b) in [
            (&base, &r1),
            (&r1, &base),
            (&r1, &redis("redis://127.0.0.1:6380", 1)),
        ] {
            let out = a.restart_needed(b);
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(out[0].starts_with("[redis] url changed"), "{out:?}");
        }
        assert_eq!(
            r1.restart_needed(&redis("redis://127.0.0.1:6379", 2)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_reload_names_an_acme_storage_move_between_directory_and_redis() {
        let text = "[entrypoints]\nhttp = \"127.0.0.1:1\"\nhttps = \"127.0.0.1:2\"\n[tls.acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ndomains = [\"a.test\"]\nchallenge = \"http-01\"\nstorage = \"/tmp/aggios-acme-test\"\n";
        let dir = parse(text);
        let elsewhere = parse(&text.replace("/tmp/aggios-acme-test", "/tmp/elsewhere"));
        assert_eq!(dir.restart_needed(&elsewhere), Vec::<String>::new());
        let mut redis = dir.clone();
        let acme = redis
            .tls
            .as_mut()
            .and_then(|t| t.acme.as_mut())
            .expect("acme");
        acme.storage = StorageKind::Redis {
            key: [7; 32],
            lease: std::time::Duration::from_secs(30),
        };
        for (a, b) in [(&dir, &redis), (&redis, &dir)] {
            let out = a.restart_needed(b);
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(out[0].starts_with("[tls.acme] storage changed"), "{out:?}");
        }
        // From no ACME to directory storage: only the new listener, not a storage move.
        assert_eq!(
            parse(BASE).restart_needed(&dir).len(),
            1,
            "entrypoints only"
        );
    }
}
