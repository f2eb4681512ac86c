//! Checks across routes: two routes that match the same requests (refused unless priorities decide),
//! and a looser policy shadowing a stricter one (warned).

use super::*;

/// Two routes are ambiguous when nothing about them ranks one over the other: same priority, same host
/// pattern, same path prefix, same header matchers and overlapping methods.
pub(crate) fn check_ambiguity(
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
pub(super) fn prefix_inside(outer: &str, inner: &str) -> bool {
    outer == "/"
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || outer.ends_with('/'))
}

/// The router's host kind (3 exact, 2 wildcard, 1 regex, 0 any) under which `b` matches every host
/// that `p` matches, if it does: the most specific of `b`'s patterns that covers `p`.
pub(super) fn covering_kind(b: &RouteSpec, p: &HostPattern) -> Option<u8> {
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
pub(super) fn auth_strength(a: AuthPolicy) -> u8 {
    match a {
        AuthPolicy::None => 0,
        AuthPolicy::Jwt => 1,
        AuthPolicy::ApiKey
        | AuthPolicy::JwtOrApiKey
        | AuthPolicy::JwtTenant
        | AuthPolicy::ClientCert => 2,
    }
}

pub(super) fn auth_name(a: AuthPolicy) -> &'static str {
    match a {
        AuthPolicy::None => "none",
        AuthPolicy::Jwt => "jwt",
        AuthPolicy::ApiKey => "api_key",
        AuthPolicy::JwtOrApiKey => "jwt_or_api_key",
        AuthPolicy::JwtTenant => "jwt_tenant",
        AuthPolicy::ClientCert => "client_cert",
    }
}

/// Warnings about routes that go around the edge's own policies (`gateway validate`, `--strict`):
/// - a route that reaches an upstream with no rate limit;
/// - a route that its header or method matchers rank above a route covering the same hosts and paths,
///   with weaker auth, fewer rate limits or a larger body cap than that route: a client adds the
///   header and escapes the stricter route.
pub(crate) fn warn_policy_gaps(
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
            if b.ip_access.is_set() && a.ip_access != b.ip_access {
                weaker.push("other client-address lists (allow_ips/deny_ips)".to_string());
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
