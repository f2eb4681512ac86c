//! `[[routes]]`, validated: host patterns, matchers, auth policy, limits, header rules, CORS, security
//! headers, and the ambiguity check across routes.

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
    /// A share of the traffic to another upstream, with automatic rollback.
    pub canary: Option<CanarySpec>,
}

/// How a request's side (stable or canary) is chosen when no header or cookie forces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    /// Per client IP: a client stays on one side.
    Client,
    /// Per tenant (per client IP without a tenant).
    Tenant,
    /// Per request.
    None,
}

/// Canary default: the sliding window over which the canary is compared with the stable upstream.
pub const DEFAULT_CANARY_WINDOW: Duration = Duration::from_secs(60);
/// Canary default: requests the canary must have served in the window before it is judged.
pub const DEFAULT_CANARY_MIN_REQUESTS: u64 = 20;
/// Canary default: how much the canary's 5xx ratio may exceed the stable's.
pub const DEFAULT_CANARY_MAX_ERROR_RATIO: f64 = 0.05;
/// Canary default: how many times the stable's p99 the canary's may reach.
pub const DEFAULT_CANARY_MAX_P99_RATIO: f64 = 2.0;

/// `canary = { … }` of a route, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    pub upstream: String,
    /// Percent of the route's traffic (0–100): 0 and 100 are blue-green's two positions.
    pub weight: u8,
    /// A request header whose value `canary` or `stable` picks the side.
    pub header: Option<HeaderName>,
    /// A cookie whose value `canary` or `stable` picks the side.
    pub cookie: Option<String>,
    pub sticky: Sticky,
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_ratio: f64,
    pub max_p99_ratio: f64,
    /// With it, any client may force a side with `canary:SECRET` / `stable:SECRET`; without it, only
    /// trusted proxies (`[forwarding] trusted_proxies`) may, with `canary` / `stable`.
    pub override_secret: Option<String>,
    /// Whether an override may send requests to the canary while its weight is 0.
    pub force_at_zero: bool,
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

pub(super) fn header_rules(h: &HeaderRulesFile, diags: &mut Vec<Diagnostic>) -> HeaderRules {
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
        ],
        "",
        diags,
    );
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
        security: validate_security(r.security_headers.as_ref(), diags),
        canary,
    }
}

pub(super) fn header_names(
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

pub(super) fn validate_cors(c: &file::CorsFile, diags: &mut Vec<Diagnostic>) -> CorsSpec {
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

pub(super) fn validate_security(
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

/// Two routes are ambiguous when nothing about them ranks one over the other: same priority, same host
/// pattern, same path prefix, same header matchers and overlapping methods.
pub(super) fn check_ambiguity(
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

/// Whether every path under `inner` is under `outer` too (whole segments, as the router matches).
fn prefix_inside(outer: &str, inner: &str) -> bool {
    outer == "/"
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || outer.ends_with('/'))
}

/// The router's host kind (3 exact, 2 wildcard, 1 regex, 0 any) under which `b` matches every host
/// that `p` matches, if it does: the most specific of `b`'s patterns that covers `p`.
fn covering_kind(b: &RouteSpec, p: &HostPattern) -> Option<u8> {
    if b.hosts.is_empty() {
        return Some(0);
    }
    b.hosts
        .iter()
        .filter(|q| match (p, q) {
            (HostPattern::Exact { host, .. }, HostPattern::Exact { host: h, .. }) => host == h,
            (HostPattern::Exact { host, .. }, HostPattern::Wildcard { suffix }) => host
                .strip_suffix(suffix.as_str())
                .and_then(|l| l.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            (HostPattern::Exact { host, .. }, HostPattern::Regex { regex }) => regex.is_match(host),
            (HostPattern::Wildcard { suffix }, HostPattern::Wildcard { suffix: s }) => suffix == s,
            (HostPattern::Regex { regex }, HostPattern::Regex { regex: r }) => {
                regex.as_str() == r.as_str()
            }
            _ => false,
        })
        .map(|q| 3 - q.kind_rank())
        .max()
}

pub(super) fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

/// How much an auth policy checks, for comparing routes (higher is stricter).
fn auth_strength(a: AuthPolicy) -> u8 {
    match a {
        AuthPolicy::None => 0,
        AuthPolicy::Jwt => 1,
        AuthPolicy::ApiKey | AuthPolicy::JwtOrApiKey | AuthPolicy::JwtTenant => 2,
    }
}

fn auth_name(a: AuthPolicy) -> &'static str {
    match a {
        AuthPolicy::None => "none",
        AuthPolicy::Jwt => "jwt",
        AuthPolicy::ApiKey => "api_key",
        AuthPolicy::JwtOrApiKey => "jwt_or_api_key",
        AuthPolicy::JwtTenant => "jwt_tenant",
    }
}

/// Warnings about routes that go around the edge's own policies (`gateway validate`, `--strict`):
/// - a route that reaches an upstream with no rate limit;
/// - a route that its header or method matchers rank above a route covering the same hosts and paths,
///   with weaker auth, fewer rate limits or a larger body cap than that route: a client adds the
///   header and escapes the stricter route.
pub(super) fn warn_policy_gaps(
    raw: &[RouteFile],
    routes: &[RouteSpec],
    diags: &mut Vec<Diagnostic>,
) {
    for (r, spec) in raw.iter().zip(routes) {
        if let Some(up) = &spec.upstream {
            if spec.rate_limits.is_empty() {
                diags.push(Diagnostic::warn(
                    Some(r.name.span()),
                    format!(
                        "route `{}` reaches upstream `{up}` with no rate limit",
                        spec.name
                    ),
                ));
            }
        }
    }
    for (i, a) in routes.iter().enumerate() {
        if a.methods.is_none() && a.headers.is_empty() {
            continue;
        }
        for (j, b) in routes.iter().enumerate() {
            if i == j || a.upstream.is_none() {
                continue;
            }
            // `a` takes requests of `b` when every host `a` matches is one `b` matches too (by
            // matching semantics: `acme.aggios.app` is one of `*.aggios.app`), its path is inside
            // `b`'s, their methods overlap, and the router ranks `a` above `b` for those hosts.
            let rank = |r: &RouteSpec, kind: u8| {
                (
                    r.priority.unwrap_or(0),
                    kind,
                    r.path_prefix.len(),
                    r.methods.is_some(),
                    r.headers.len(),
                )
            };
            let takes = if a.hosts.is_empty() {
                b.hosts.is_empty() && rank(a, 0) > rank(b, 0)
            } else {
                a.hosts.iter().all(|ha| {
                    covering_kind(b, ha).is_some_and(|kb| rank(a, 3 - ha.kind_rank()) > rank(b, kb))
                })
            };
            let inside = prefix_inside(&b.path_prefix, &a.path_prefix);
            if !(takes && inside && methods_overlap(&a.methods, &b.methods)) {
                continue;
            }
            let mut weaker = Vec::new();
            if auth_strength(a.auth) < auth_strength(b.auth) {
                weaker.push(format!(
                    "weaker auth (`{}` instead of `{}`)",
                    auth_name(a.auth),
                    auth_name(b.auth)
                ));
            }
            if b.rate_limits.iter().any(|p| !a.rate_limits.contains(p)) {
                weaker.push("fewer rate limits".to_string());
            }
            if b.scopes.iter().any(|sc| !a.scopes.contains(sc)) {
                weaker.push("fewer API-key scopes".to_string());
            }
            if let Some(ca) = &a.cors {
                let wider = match &b.cors {
                    None => true,
                    Some(cb) => {
                        ca.origins.iter().any(|o| !cb.origins.contains(o))
                            || (ca.credentials && !cb.credentials)
                    }
                };
                if wider {
                    weaker.push("a wider CORS policy".to_string());
                }
            }
            if a.max_body_bytes > b.max_body_bytes {
                weaker.push(format!(
                    "a larger body cap ({} bytes instead of {})",
                    a.max_body_bytes, b.max_body_bytes
                ));
            }
            if !weaker.is_empty() {
                diags.push(Diagnostic::warn(
                    Some(raw[i].name.span()),
                    format!(
                        "route `{}` (chosen by its header or method matchers) takes requests of route `{}` with {}",
                        a.name,
                        b.name,
                        weaker.join(", ")
                    ),
                ));
            }
        }
    }
}

fn validate_canary(
    c: &Spanned<super::file::CanaryFile>,
    r: &RouteFile,
    upstreams: &HashMap<String, ()>,
    diags: &mut Vec<Diagnostic>,
) -> Option<CanarySpec> {
    let f = c.get_ref();
    let name = f.upstream.get_ref();
    let mut ok = true;
    if !upstreams.contains_key(name) {
        diags.push(Diagnostic::at(
            &f.upstream,
            format!("canary upstream `{name}` is not an [[upstreams]] name"),
        ));
        ok = false;
    }
    match &r.upstream {
        None => {
            diags.push(Diagnostic::at(
                c,
                "a canary needs the route's own `upstream` (the stable one)",
            ));
            ok = false;
        }
        Some(u) if u.get_ref() == name => {
            diags.push(Diagnostic::at(
                &f.upstream,
                "the canary upstream is the route's own upstream",
            ));
            ok = false;
        }
        Some(_) => {}
    }
    let weight = match f.weight.as_ref().map(|w| (w, *w.get_ref())) {
        None => 0,
        Some((_, w)) if (0..=100).contains(&w) => w as u8,
        Some((span, _)) => {
            diags.push(Diagnostic::at(
                span,
                "canary weight is a percentage: 0 to 100",
            ));
            0
        }
    };
    let header = f
        .header
        .as_ref()
        .and_then(|h| match HeaderName::try_from(h.get_ref().as_str()) {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(Diagnostic::at(
                    h,
                    "canary header is not a valid header name",
                ));
                None
            }
        });
    let cookie = f.cookie.as_ref().and_then(|k| {
        let v = k.get_ref();
        if !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            Some(v.clone())
        } else {
            diags.push(Diagnostic::at(
                k,
                "canary cookie must be a cookie name (letters, digits, - _ .)",
            ));
            None
        }
    });
    let sticky = super::one_of(
        &f.sticky,
        "canary sticky",
        &[
            ("client", Sticky::Client),
            ("tenant", Sticky::Tenant),
            ("none", Sticky::None),
        ],
        "",
        diags,
    );
    let ratio = |v: &Option<Spanned<f64>>,
                 default: f64,
                 what: &str,
                 max: f64,
                 diags: &mut Vec<Diagnostic>| match v {
        None => default,
        Some(x) if x.get_ref().is_finite() && *x.get_ref() >= 0.0 && *x.get_ref() <= max => {
            *x.get_ref()
        }
        Some(x) => {
            diags.push(Diagnostic::at(
                x,
                format!("canary {what} must be between 0 and {max}"),
            ));
            default
        }
    };
    let max_error_ratio = ratio(
        &f.max_error_ratio,
        DEFAULT_CANARY_MAX_ERROR_RATIO,
        "max_error_ratio",
        1.0,
        diags,
    );
    let max_p99_ratio = ratio(
        &f.max_p99_ratio,
        DEFAULT_CANARY_MAX_P99_RATIO,
        "max_p99_ratio",
        1000.0,
        diags,
    );
    if max_p99_ratio < 1.0 && f.max_p99_ratio.is_some() {
        if let Some(x) = &f.max_p99_ratio {
            diags.push(Diagnostic::at(x, "canary max_p99_ratio below 1 would roll back a canary as fast as the stable upstream"));
        }
    }
    let spec = CanarySpec {
        upstream: name.clone(),
        weight,
        header,
        cookie,
        sticky,
        window: super::duration_or(&f.window, DEFAULT_CANARY_WINDOW, diags),
        min_requests: positive(
            &f.min_requests,
            DEFAULT_CANARY_MIN_REQUESTS,
            "canary min_requests",
            diags,
        ),
        max_error_ratio,
        max_p99_ratio,
        override_secret: f.override_secret_env.as_ref().and_then(|e| {
            match std::env::var(e.get_ref()) {
                Ok(v) if v.len() >= 16 && !v.contains(char::is_whitespace) => Some(v),
                _ => {
                    diags.push(Diagnostic::at(
                        e,
                        format!(
                            "environment variable `{}` must hold the canary override secret (at least 16 characters, no spaces)",
                            e.get_ref()
                        ),
                    ));
                    None
                }
            }
        }),
        force_at_zero: f.force_at_zero.as_ref().is_some_and(|v| *v.get_ref()),
    };
    ok.then_some(spec)
}
