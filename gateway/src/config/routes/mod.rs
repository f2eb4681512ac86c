//! `[[routes]]`, validated: host patterns, matchers, auth policy, limits, header rules, CORS, security
//! headers, and the ambiguity check across routes.

mod ambiguity;
mod canary;
mod client_auth;
mod compression;
mod cors;
mod headers;

pub(super) use ambiguity::{check_ambiguity, warn_policy_gaps};
pub use canary::*;
pub use client_auth::*;
pub use compression::*;
pub use cors::*;
pub use headers::*;

use super::file::{HeaderRulesFile, RouteFile};
use super::{
    file, opt_duration, positive, AuthPolicy, Diagnostic, Limits, OnStoreError, RateLimitSpec,
    Tenancy,
};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use std::collections::HashMap;
use std::time::Duration;
use toml::Spanned;

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
    /// Scopes an API key or an OAuth token needs on this route.
    pub scopes: Vec<String>,
    /// Client addresses served (`allow_ips`; empty: any) and refused (`deny_ips`, which wins), decided
    /// on the client address after trusted-proxy handling and before auth.
    pub ip_access: IpAccess,
    /// Indexes into [`Config::rate_limits`]; all must pass.
    pub rate_limits: Vec<usize>,
    /// Requests count against the tenant's monthly quota (with `[plans]`).
    pub quota: bool,
    pub on_store_error: OnStoreError,
    pub cors: Option<CorsSpec>,
    /// Response compression at the edge (off unless set).
    pub compression: Option<CompressionSpec>,
    pub security: SecurityHeaders,
    /// A share of the traffic to another upstream, with automatic rollback.
    pub canary: Option<CanarySpec>,
    /// Client certificates asked for and verified (`client_auth`).
    pub client_auth: Option<std::sync::Arc<ClientAuthSpec>>,
    /// gRPC-Web calls bridged to gRPC (`grpc_web`).
    pub grpc_web: bool,
}

/// A route's client-address lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAccess {
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
}

impl IpAccess {
    /// Whether any list is set (the request path skips the check otherwise).
    pub fn is_set(&self) -> bool {
        !(self.allow.is_empty() && self.deny.is_empty())
    }

    /// Whether a client at `ip` is served: not denied, and allowed when an allow list is set. An
    /// IPv4-mapped IPv6 address is its IPv4 address; an unknown address is served only without an
    /// allow list.
    pub fn admits(&self, ip: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
            return self.allow.is_empty();
        };
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// `allow_ips` / `deny_ips`: CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
pub(crate) fn ip_list(
    v: &Option<Vec<Spanned<String>>>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for item in v.iter().flatten() {
        let s = item.get_ref().trim();
        match s
            .parse::<ipnet::IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(net) if net.addr().to_canonical() != net.addr() => diags.push(Diagnostic::at(
                item,
                format!("`{s}` is an IPv4-mapped IPv6 network: write the IPv4 network"),
            )),
            Ok(net) if out.contains(&net) => {
                diags.push(Diagnostic::at(item, format!("`{s}` listed twice")))
            }
            Ok(net) => out.push(net),
            Err(_) => diags.push(Diagnostic::at(
                item,
                format!("`{s}` is not an IP address or a CIDR network (10.0.0.0/8, 2001:db8::/32)"),
            )),
        }
    }
    out
}

/// Canary default: the sliding window over which the canary is compared with the stable upstream.
pub const DEFAULT_CANARY_WINDOW: Duration = Duration::from_secs(60);
/// Canary default: requests the canary must have served in the window before it is judged.
pub const DEFAULT_CANARY_MIN_REQUESTS: u64 = 20;
/// Canary default: how much the canary's 5xx ratio may exceed the stable's.
pub const DEFAULT_CANARY_MAX_ERROR_RATIO: f64 = 0.05;
/// Canary default: how many times the stable's p99 the canary's may reach.
pub const DEFAULT_CANARY_MAX_P99_RATIO: f64 = 2.0;

/// What a route is validated against: the rest of the file.
pub(super) struct RouteContext<'a> {
    pub(super) tenancy: &'a Tenancy,
    pub(super) limits: &'a Limits,
    pub(super) upstreams: &'a HashMap<String, ()>,
    pub(super) jwt_configured: bool,
    pub(super) api_keys_configured: bool,
    pub(super) policies: &'a [RateLimitSpec],
}

pub(super) fn validate_route(
    r: &RouteFile,
    cx: &RouteContext<'_>,
    diags: &mut Vec<Diagnostic>,
) -> RouteSpec {
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
    let canary = r
        .canary
        .as_ref()
        .and_then(|c| validate_canary(c, r, upstreams, diags));
    let auth = super::one_of(
        &r.auth,
        "auth",
        &[
            ("none", AuthPolicy::None),
            ("jwt", AuthPolicy::Jwt),
            ("jwt_tenant", AuthPolicy::JwtTenant),
            ("api_key", AuthPolicy::ApiKey),
            ("jwt_or_api_key", AuthPolicy::JwtOrApiKey),
            ("client_cert", AuthPolicy::ClientCert),
        ],
        "",
        diags,
    );
    let client_auth = r
        .client_auth
        .as_ref()
        .and_then(|c| validate_client_auth(c, diags));
    if let (AuthPolicy::ClientCert, Some(a)) = (auth, &r.auth) {
        // The certificate is the credential: it must be asked for, always, and name its tenant.
        match (&r.client_auth, &client_auth) {
            (None, _) => diags.push(Diagnostic::at(
                a,
                format!("route `{name}` uses auth `client_cert` but has no client_auth = {{ mode = \"required\", ca = …, tenant_uri = … }}"),
            )),
            (Some(c), Some(spec)) if spec.mode != ClientAuthMode::Required => diags.push(
                Diagnostic::at(c, "auth = \"client_cert\" needs client_auth.mode = \"required\""),
            ),
            (Some(c), Some(spec)) if spec.tenant_uri.is_none() => diags.push(Diagnostic::at(
                c,
                "auth = \"client_cert\" needs client_auth.tenant_uri (where a certificate names its tenant)",
            )),
            _ => {}
        }
    }
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
        // Scopes bind API keys and OAuth access tokens; a route without credentials has none to check.
        if auth == AuthPolicy::ClientCert {
            diags.push(Diagnostic::at(
                sc,
                "a client certificate carries no scopes: use separate routes (or CAs) per grant",
            ));
        } else if auth == AuthPolicy::None {
            diags.push(Diagnostic::at(
                sc,
                "scopes need credentials that carry them: set auth = \"api_key\", \"jwt_or_api_key\", \"jwt\" or \"jwt_tenant\" (OAuth access tokens)",
            ));
        }
        scopes.push(sc.get_ref().clone());
    }
    let mut rate_limits = Vec::new();
    for rl in r.rate_limits.iter().flatten() {
        match policies.iter().position(|p| &p.name == rl.get_ref()) {
            Some(i) if !rate_limits.contains(&i) => rate_limits.push(i),
            Some(_) => diags.push(Diagnostic::at(rl, "rate limit listed twice")),
            None if rl.get_ref() == super::plans::PLAN_POLICY => diags.push(Diagnostic::at(
                rl,
                "the built-in rate limit `plan` needs a [plans] section (where tenants' plans come from)",
            )),
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
        ip_access: IpAccess {
            allow: ip_list(&r.allow_ips, diags),
            deny: ip_list(&r.deny_ips, diags),
        },
        rate_limits,
        quota: r
            .quota
            .as_ref()
            .map_or(auth.binds_tenant(), |q| *q.get_ref()),
        on_store_error: super::one_of(
            &r.on_store_error,
            "on_store_error",
            &[
                ("open", OnStoreError::Open),
                ("closed", OnStoreError::Closed),
            ],
            "",
            diags,
        ),
        cors: r.cors.as_ref().map(|c| validate_cors(c, diags)),
        compression: r
            .compression
            .as_ref()
            .map(|c| validate_compression(c, diags)),
        security: validate_security(r.security_headers.as_ref(), diags),
        canary,
        client_auth,
        grpc_web: r.grpc_web.as_ref().is_some_and(|g| *g.get_ref()),
    }
}

/// How deeply a host regex may nest groups and repetitions. The regex crate's default (250) lets a
/// pattern such as `a**…*` (found by fuzzing) recurse deep enough in its parser to overflow a 2 MiB
/// thread stack in a debug build; no host pattern needs more than a few levels.
pub const HOST_REGEX_NEST_LIMIT: u32 = 32;
/// The compiled size a host regex may reach (the crate's default is 10 MiB per regex, times every route).
pub const HOST_REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Parses one `hosts` entry.
pub fn parse_host_pattern(text: &str, tenancy: &Tenancy) -> Result<HostPattern, String> {
    if let Some(re) = text.strip_prefix('~') {
        let regex = regex::RegexBuilder::new(re)
            .case_insensitive(true)
            .nest_limit(HOST_REGEX_NEST_LIMIT)
            .size_limit(HOST_REGEX_SIZE_LIMIT)
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
pub use contracts::is_label;

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

/// Each rule of a route on its own, with its message and place (the mutation run of #32).
#[cfg(test)]
mod rule_tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const UPSTREAMS: &str = "[entrypoints]\nhttp = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"users\"\nservers = [\"127.0.0.1:2\"]\n[[upstreams]]\nname = \"files\"\nservers = [\"127.0.0.1:3\"]\n";
    /// The route's first key is on line 10.
    fn route(body: &str) -> String {
        format!("{UPSTREAMS}[[routes]]\n{body}\n")
    }

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(Path::new("t.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.lines(),
        }
    }

    fn one_error(text: &str) -> String {
        let out = errors(text);
        assert_eq!(out.len(), 1, "{text}\n{out:?}");
        out[0].clone()
    }

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text)
            .unwrap_or_else(|e| panic!("{text}\n{}", e.lines().join("\n")))
    }

    #[test]
    fn route_names() {
        for bad in ["", "a b", "a/b", "é"] {
            let e = one_error(&route(&format!("name = \"{bad}\"\nupstream = \"users\"")));
            assert!(
                e.starts_with("t.toml:10:8: route name must be non-empty"),
                "{bad:?}: {e}"
            );
        }
        let ok = parse(&route("name = \"Az09-_.x\"\nupstream = \"users\""));
        assert_eq!(ok.routes[0].name, "Az09-_.x");
    }

    #[test]
    fn host_patterns() {
        let tenancy = Tenancy {
            base_domains: vec!["aggios.app".into()],
            reserved: ["api".to_string()].into_iter().collect(),
        };
        let p = |s: &str| parse_host_pattern(s, &tenancy);
        match p("Acme.Aggios.App.") {
            Ok(HostPattern::Exact { host, tenant }) => {
                assert_eq!(
                    (host.as_str(), tenant.as_deref()),
                    ("acme.aggios.app", Some("acme"))
                )
            }
            other => panic!("{other:?}"),
        }
        for no_tenant in [
            "api.aggios.app",
            "a.b.aggios.app",
            "aggios.app",
            "acme.other.app",
        ] {
            match p(no_tenant) {
                Ok(HostPattern::Exact { tenant: None, .. }) => {}
                other => panic!("{no_tenant}: {other:?}"),
            }
        }
        let w = p("*.Aggios.app").expect("wildcard");
        assert_eq!((w.kind_rank(), w.source()), (1, "*.aggios.app".to_string()));
        let r = p("~^(?P<tenant>[a-z]+)\\.x\\.app$").expect("regex");
        assert_eq!(r.kind_rank(), 2);
        assert_eq!(r.source(), "~^(?P<tenant>[a-z]+)\\.x\\.app$");
        let e = p("a.test").expect("exact");
        assert_eq!((e.kind_rank(), e.source()), (0, "a.test".to_string()));
        assert!(
            matches!(&r, HostPattern::Regex { regex } if regex.is_match("ACME.X.APP")),
            "case-insensitive"
        );
        for (bad, says) in [
            ("*.-x.test", "invalid wildcard host `*.-x.test`"),
            ("*.a..b", "invalid wildcard host `*.a..b`"),
            (
                "*.",
                "invalid host `*.`: a wildcard may only be the whole first label",
            ),
            ("a.*.test", "a wildcard may only be the whole first label"),
            ("*x.test", "a wildcard may only be the whole first label"),
            ("a..test", "invalid host `a..test`: not a host name"),
            ("~(", "invalid host regex `(`"),
        ] {
            let e = p(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        // And in a file, at the entry's place.
        let e = one_error(&route(
            "name = \"r\"\nhosts = [\"a.test\", \"a..test\"]\nupstream = \"users\"",
        ));
        assert!(e.starts_with("t.toml:11:20: invalid host `a..test`"), "{e}");
    }

    #[test]
    fn host_names() {
        let label = |n: usize| "a".repeat(n);
        let long = [label(63), label(63), label(63), label(61)].join(".");
        assert_eq!(long.len(), 253);
        assert!(is_hostname(&long));
        assert!(!is_hostname(&format!("{long}a")));
        assert!(!is_hostname(""));
        for ok in [
            "a_b.test",
            "_dmarc.x.test",
            "a-b_c9.test",
            &format!("{}_.x", label(62)),
        ] {
            assert!(is_hostname(ok), "{ok}");
        }
        for bad in [
            &format!("{}_.x", label(63)) as &str,
            "A_b.test",
            "a_b!.test",
            "a.b..c",
            "-a.test",
        ] {
            assert!(!is_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn path_methods_and_header_matchers() {
        let c = parse(&route("name = \"r\"\nupstream = \"users\"\nmethods = [\"get\", \"Post\"]\nheaders = { \"x-v\" = \"2\" }"));
        let r = &c.routes[0];
        assert_eq!(r.path_prefix, "/");
        assert_eq!(r.methods, Some(vec![Method::GET, Method::POST]));
        assert_eq!(
            r.headers,
            [(
                HeaderName::from_static("x-v"),
                HeaderValue::from_static("2")
            )]
        );
        assert_eq!(
            one_error(&route(
                "name = \"r\"\nupstream = \"users\"\npath_prefix = \"api\""
            )),
            "t.toml:12:15: path_prefix must start with `/`"
        );
        assert_eq!(
            one_error(&route(
                "name = \"r\"\nupstream = \"users\"\nmethods = [\"GET\", \"G T\"]"
            )),
            "t.toml:12:19: `G T` is not an HTTP method"
        );
        for bad in [
            "headers = { \"a b\" = \"1\" }",
            "headers = { \"x\" = \"a\\u0001b\" }",
        ] {
            let e = one_error(&route(&format!(
                "name = \"r\"\nupstream = \"users\"\n{bad}"
            )));
            assert!(
                e.starts_with("t.toml:12:") && e.contains("has an invalid name or value"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn upstream_references() {
        let e = one_error(&route("name = \"r\"\nupstream = \"fules\""));
        assert_eq!(
            e,
            "t.toml:11:12: route `r` refers to unknown upstream `fules` (did you mean `files`?)"
        );
        let e = one_error(&route("name = \"r\"\nupstream = \"usezz\""));
        assert!(
            e.ends_with("(did you mean `users`?)"),
            "two edits away: {e}"
        );
        let e = one_error(&route("name = \"r\"\nupstream = \"uzzzs\""));
        assert!(
            e.ends_with("unknown upstream `uzzzs`"),
            "three edits: no hint: {e}"
        );
        assert_eq!(
            one_error(&route("name = \"r\"")),
            "t.toml:10:8: route `r` needs `upstream` (or `redirect_https = true`)"
        );
        let c = parse(&route("name = \"r\"\nredirect_https = true"));
        assert!(c.routes[0].redirect_https && c.routes[0].upstream.is_none());
    }

    #[test]
    fn auth_needs_its_section() {
        let jwt = "[auth.jwt]\njwks_url = \"https://issuer.test/jwks.json\"\n";
        let keys =
            "[auth.api_keys]\nlookup_url = \"http://127.0.0.1:8082/internal/api-keys/{prefix}\"\n";
        let with = |auth: &str, sections: &str| {
            format!("{UPSTREAMS}{sections}[[routes]]\nname = \"r\"\nupstream = \"users\"\nauth = \"{auth}\"\n")
        };
        for auth in ["jwt", "jwt_tenant"] {
            let e = one_error(&with(auth, ""));
            assert!(
                e.ends_with(&format!(
                    "route `r` uses auth `{auth}` but there is no [auth.jwt] section"
                )),
                "{e}"
            );
            assert_eq!(
                parse(&with(auth, jwt)).routes[0].auth.binds_tenant(),
                auth == "jwt_tenant"
            );
            errors(&with(auth, keys));
        }
        let e = one_error(&with("api_key", ""));
        assert!(
            e.ends_with("uses auth `api_key` but there is no [auth.api_keys] section"),
            "{e}"
        );
        parse(&with("api_key", keys));
        errors(&with("api_key", jwt));
        assert_eq!(errors(&with("jwt_or_api_key", "")).len(), 2);
        assert!(one_error(&with("jwt_or_api_key", jwt)).contains("[auth.api_keys]"));
        assert!(one_error(&with("jwt_or_api_key", keys)).contains("[auth.jwt]"));
        parse(&with("jwt_or_api_key", &format!("{jwt}{keys}")));
        parse(&with("none", ""));
        let e = one_error(&with("client_cert", ""));
        assert!(e.ends_with("uses auth `client_cert` but has no client_auth = { mode = \"required\", ca = …, tenant_uri = … }"), "{e}");
        // Scopes need credentials that carry them.
        let scoped = |auth: &str, sections: &str| {
            format!("{UPSTREAMS}{sections}[[routes]]\nname = \"r\"\nupstream = \"users\"\nauth = \"{auth}\"\nscopes = [\"files:read\"]\n")
        };
        let e = one_error(&scoped("none", ""));
        assert!(
            e.starts_with("t.toml:13:11: scopes need credentials that carry them"),
            "{e}"
        );
        assert_eq!(
            parse(&scoped("api_key", keys)).routes[0].scopes,
            ["files:read"]
        );
        assert_eq!(parse(&scoped("jwt", jwt)).routes[0].scopes, ["files:read"]);
    }

    #[test]
    fn rate_limit_references() {
        let policies = "[rate_limits.a]\nkey = \"client_ip\"\nlimit = 1\nperiod = \"1s\"\n[rate_limits.b]\nkey = \"client_ip\"\nlimit = 2\nperiod = \"1s\"\n";
        let with = |list: &str, sections: &str| {
            format!("{UPSTREAMS}{sections}[[routes]]\nname = \"r\"\nupstream = \"users\"\nrate_limits = [{list}]\n")
        };
        let c = parse(&with("\"b\", \"a\"", policies));
        let names: Vec<&str> = c.routes[0]
            .rate_limits
            .iter()
            .map(|i| c.rate_limits[*i].name.as_str())
            .collect();
        assert_eq!(names, ["b", "a"]);
        let e = one_error(&with("\"a\", \"a\"", policies));
        assert!(
            e.starts_with("t.toml:20:21: rate limit listed twice"),
            "{e}"
        );
        let e = one_error(&with("\"c\"", policies));
        assert!(
            e.ends_with("no [rate_limits.c] policy; defined: a, b"),
            "{e}"
        );
        let e = one_error(&with("\"c\"", ""));
        assert!(e.ends_with("no [rate_limits.c] policy"), "{e}");
    }

    /// `auth = "client_cert"`: the certificate is the credential, so it must always be asked for and
    /// name its tenant.
    #[test]
    fn client_cert_auth_needs_a_required_certificate_that_names_its_tenant() {
        let dir = tempfile::tempdir().expect("dir");
        crate::tls::dev::generate(dir.path(), &["a.test".to_string()]).expect("dev CA");
        let ca = dir.path().join("dev-ca.crt");
        let with = |client_auth: &str| {
            route(&format!(
                "name = \"r\"\nupstream = \"users\"\nauth = \"client_cert\"\nclient_auth = {{ ca = \"{}\"{client_auth} }}",
                ca.display()
            ))
        };
        let uri = ", tenant_uri = \"spiffe://partners.example/tenant/{tenant}\"";
        let c = parse(&with(&format!(", mode = \"required\"{uri}")));
        assert!(c.routes[0].client_auth.is_some());
        let e = one_error(&with(&format!(", mode = \"optional\"{uri}")));
        assert!(
            e.starts_with(
                "t.toml:13:15: auth = \"client_cert\" needs client_auth.mode = \"required\""
            ),
            "{e}"
        );
        let e = one_error(&with(", mode = \"required\""));
        assert!(
            e.starts_with("t.toml:13:15: auth = \"client_cert\" needs client_auth.tenant_uri"),
            "{e}"
        );
    }

    /// The request path skips the address check when no list is set: each list alone sets it.
    #[test]
    fn an_address_list_is_set_by_either_list() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().expect("net");
        assert!(!IpAccess::default().is_set());
        let allow = IpAccess {
            allow: vec![net("10.0.0.0/8")],
            deny: vec![],
        };
        let deny = IpAccess {
            allow: vec![],
            deny: vec![net("10.0.0.0/8")],
        };
        assert!(allow.is_set() && deny.is_set());
        let c = parse(&route("name = \"r\"\nupstream = \"users\""));
        assert!(!c.routes[0].ip_access.is_set());
        let c = parse(&route(
            "name = \"r\"\nupstream = \"users\"\ndeny_ips = [\"192.0.2.1\"]",
        ));
        assert!(c.routes[0].ip_access.is_set());
    }

    #[test]
    fn quota_follows_the_tenant_binding_unless_set() {
        let jwt = "[auth.jwt]\njwks_url = \"https://issuer.test/jwks.json\"\n";
        let with = |auth: &str, quota: &str| {
            parse(&format!("{UPSTREAMS}{jwt}[[routes]]\nname = \"r\"\nupstream = \"users\"\nauth = \"{auth}\"\n{quota}\n")).routes[0].quota
        };
        assert!(with("jwt_tenant", ""));
        assert!(!with("jwt", ""));
        assert!(!with("jwt_tenant", "quota = false"));
        assert!(with("jwt", "quota = true"));
    }
}
